"""What a therapist notes after a session: signs of strain, a rupture, the steps of repair.

Therapists in some clinics write a short structured note after some sessions
(``session_observations``). What the simulation follows, and how strongly:

* Signs (``contract.SIGNS``) grow likelier as the latent alliance weakens: each is a
  logistic function of the client's bond, goal/task agreement, engagement drifting
  below its own mean, recent misses and unrepaired ruptures (``LOGITS``). A rupture in
  the session makes its markers likely: withdrawal markers (withdrawal, lack of trust,
  a breakdown in communication) when it hit the bond, confrontation markers
  (rejecting suggestions, frustration, anger) when it hit goals or tasks -- the two
  kinds Safran, Muran & Eubanks-Carter (2011, Psychotherapy 48:80-87) describe. The
  weights are modelling choices, not published numbers.
* A rupture is noted for ``NOTICED`` of the sessions the simulation ruptured (the SRS
  drops); therapists miss some.
* Whether a rupture is resolved is the simulation's own draw (about 55%, more with a
  stronger bond). Repair steps (``contract.REPAIR_STEPS``) are recorded for
  ``STEPS_IF_RESOLVED`` of resolved and ``STEPS_IF_UNRESOLVED`` of unresolved noted
  ruptures (attempts that did not hold). An unresolved rupture lingers: it depresses
  the following SRS and attendance and raises the dropout hazard for weeks, so
  ruptures noted with a repair recover on the next SRS and end in dropout less often
  than ruptures noted without one. Published strength: rupture resolution and
  outcome r = .24 (Safran, Muran & Eubanks-Carter 2011, 3 studies, N = 148) and
  r = .29, 95% CI .10-.47 (Eubanks, Muran & Safran 2018, Psychotherapy 55:508-519,
  11 studies, N = 1,314), with symptom outcomes. Here (eight seeds of 2,000 clients)
  episodes whose noted ruptures all have a repair recorded end in dropout 27% of the
  time against 34% with an unrepaired one (r = .02-.14 with staying, mean .075), and
  the next SRS is at or above 36 after 62% of repaired ruptures against 52% of
  unrepaired ones; weaker than published, as dropout is not the published outcome and
  the record of a repair is noisy (``tests/clinic/test_synth.py`` holds the directions).

Every draw comes from the caller's Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from retention.clinic.contract import REPAIR_STEPS, SIGNS

# Notes are written after this share of attended sessions, and after every session
# where the therapist noticed a rupture.
NOTE_SHARE = {"individual": 0.6, "family": 0.6, "group": 0.25}
NOTICED = 0.7
FALSE_RUPTURE = 0.01  # a rupture noted where the simulation had none
STEPS_IF_RESOLVED = 0.85
STEPS_IF_UNRESOLVED = 0.3
# Each repair step's chance once a repair is recorded; acknowledging comes first.
STEP_SHARE = {
    "acknowledged": 0.9,
    "clarified": 0.55,
    "took_responsibility": 0.35,
    "revisited_goals_tasks": 0.45,
    "monitored": 0.5,
}
DRIFT_SD = 0.45  # stationary sd of engagement around its mean (simulation)

# Logit of each sign: base + weights on (bond, goal_task, drift in sds, misses,
# rupture_load, bond rupture now, goal/task rupture now).
LOGITS: dict[str, tuple[float, tuple[float, ...]]] = {
    "lack_of_trust": (-3.6, (-0.9, 0.0, 0.0, 0.0, 0.5, 1.6, 0.0)),
    "communication_breakdown": (-3.8, (-0.4, -0.3, -0.2, 0.0, 0.6, 1.4, 0.6)),
    "inconsistent_engagement": (-3.2, (0.0, 0.0, -0.9, 0.5, 0.3, 0.0, 0.0)),
    "rejects_suggestions": (-3.7, (0.0, -0.9, 0.0, 0.0, 0.3, 0.0, 1.6)),
    "tasks_not_done": (-3.1, (0.0, -0.7, -0.6, 0.2, 0.0, 0.0, 0.6)),
    "frustration": (-3.7, (0.0, -0.4, 0.0, 0.0, 0.7, 0.4, 1.6)),
    "anger": (-4.8, (-0.2, -0.2, 0.0, 0.0, 0.7, 0.2, 1.4)),
    "withdrawal": (-3.6, (-0.6, 0.0, -0.6, 0.2, 0.5, 1.6, 0.0)),
}
assert set(LOGITS) == set(SIGNS) and set(STEP_SHARE) == set(REPAIR_STEPS)


@dataclass(frozen=True)
class Strain:
    """The client's hidden state in one session, as a therapist could see it."""

    bond: float
    goal_task: float
    drift: float  # engagement minus the client's own mean (log-odds units)
    misses: float  # recent misses, decaying
    rupture_load: float  # unrepaired ruptures, decaying
    rupture: bool  # the alliance ruptured in this session
    bond_rupture: bool  # ... and the rupture hit the bond (else goals or tasks)


@dataclass(frozen=True)
class Note:
    """One session note: space-separated codes (None when there are none)."""

    signs: str | None
    rupture: bool
    repair_steps: str | None


def sign_probabilities(s: Strain) -> dict[str, float]:
    """Each sign's chance of being noted in this session."""
    terms = (s.bond, s.goal_task, s.drift / DRIFT_SD, s.misses, s.rupture_load,
             float(s.rupture and s.bond_rupture), float(s.rupture and not s.bond_rupture))
    return {
        sign: 1.0 / (1.0 + math.exp(-(base + sum(w * t for w, t in zip(weights, terms,
                                                                        strict=True)))))
        for sign, (base, weights) in LOGITS.items()
    }


def take_note(
    s: Strain, resolved: bool, service: str, rng: np.random.Generator
) -> Note | None:
    """The note after an attended session, or None when none was written."""
    u = rng.random(3 + len(LOGITS)).tolist()
    noticed = u[0] < (NOTICED if s.rupture else FALSE_RUPTURE)
    if not noticed and u[1] >= NOTE_SHARE.get(service, 0.0):
        return None
    chances = sign_probabilities(s)
    signs = [sign for sign, v in zip(SIGNS, u[3:], strict=True) if v < chances[sign]]
    steps: list[str] = []
    if noticed and u[2] < (STEPS_IF_RESOLVED if resolved or not s.rupture
                           else STEPS_IF_UNRESOLVED):
        share = dict(STEP_SHARE)
        if s.rupture and not s.bond_rupture:
            share["revisited_goals_tasks"] = 0.7
        steps = [step for step, v in zip(REPAIR_STEPS, rng.random(len(REPAIR_STEPS)).tolist(),
                                         strict=True) if v < share[step]]
        steps = steps or ["acknowledged"]
    return Note(" ".join(signs) or None, noticed, " ".join(steps) or None)
