"""A synthetic addiction-treatment clinic that fills the data contract.

Why it exists: to train, test and demo the dropout model without real client
data. The generator is a small agent simulation, so the signals the model must
learn arise the way they do in clinics rather than being painted on:

* Each client has a latent engagement level (an Ornstein-Uhlenbeck walk around a
  personal mean) and a latent alliance (bond, goal/task agreement).
* Attendance of every booked session depends on engagement; a miss lowers
  engagement a little, so misses cluster.
* The daily hazard of disengaging rises with low engagement, low alliance,
  recent misses, unrepaired alliance ruptures and the first weeks of treatment.
  A fixed share of the hazard ignores all of that: some dropouts are sudden.
* A dropout stops coming: the sessions already booked turn into no-shows,
  nothing new is booked, and the clinic files the discharge weeks later (or at
  once for walk-outs). Filings due after the snapshot leave the episode open.
* SRS/GSRS follow the client's alliance with a ceiling effect and occasional
  ruptures; WAI-SR is rated by client and therapist, and the therapist's rating
  tracks engagement, so the client-therapist gap widens before dropout.
* Clinics that use PCOMS (``SynthConfig.pcoms_share``) ask for an ORS at the start of
  the intake and of each individual or family session (``outcome``). Wellbeing follows
  the dose-effect curve of Howard, Kopta, Krause & Orlinsky (1986, American
  Psychologist 41:159-164: about half of clients reliably improved by 8 sessions,
  three quarters by 26; over seeds the simulation gives about 0.6 by 8 and 0.75-0.9
  by 26 among those still rated, who are the better responders), with smaller gains
  from higher intakes;
  stronger alliances (r = .28, Flückiger et al. 2018) and engagement improve sooner.
  About 6% of episodes worsen reliably (Lambert & Ogles 2004: 5-10%).
  Lack of progress has no hazard of its own: not-on-track clients drop out more
  (1.4-2.3 times as often over seeds, judged by less than 5 points of change by the
  fourth rating) because progress and dropout share the latent state -- the
  direction the feedback literature supports (Lambert, Whipple & Kleinstäuber 2018,
  Psychotherapy 55:520-537), with no published strength to copy.
* Therapists in some clinics (``SynthConfig.notes_share``) note signs of strain, a
  rupture and the repair steps after some sessions (``notes``). Signs grow likelier as
  bond, goal/task agreement and engagement weaken; about 70% of ruptures are noted;
  repair steps are recorded for most resolved ruptures and some unresolved ones.
  Unresolved ruptures linger (above), so repaired ruptures recover on the next SRS
  and end in dropout less often, as rupture resolution goes with better outcomes
  (Safran, Muran & Eubanks-Carter 2011, Psychotherapy 48:80-87: r = .24; Eubanks,
  Muran & Safran 2018, Psychotherapy 55:508-519: r = .29). Here the association of a
  recorded repair with staying is weaker (r = .02-.14 over seeds; dropout 27% against
  34%): dropout is not the published outcome, and the repair record is noisy.
* A few clients (``SynthConfig.tas_share``, drawn apart from age and every other
  trait) are also rated on the TAS (Therapeutic Alliance Scale for Children, revised,
  as ``config/instruments.toml`` registers it) by client and therapist, about monthly
  like the WAI-SR: totals only (12-48), since which items are reverse-scored is not
  registered. It is a youth measure and these clients are adults: it is here so the
  registered-form path is exercised, not as a model of who would be rated with it.

Demographics (birth year, sex, race/ethnicity) are drawn independently of every
behavioural latent and never influence behaviour, so a fairness report on this
data measures the model, not the simulation.

Everything comes from one ``numpy.random.default_rng(seed)`` stream consumed in
a fixed order, so a config always yields bit-identical tables (consents and
identifiers draw from a stream of their own, ``retention.clinic.synth.consents``, the
made-up contact details from another, ``retention.clinic.synth.contacts``, and the ORS
ratings and session notes from a third, so the other tables are the same whichever
clinics collect them: ORS rows are numbered after the alliance measures).
Rows are built as tuples and timestamps as integer minutes, which keeps 100,000
clients feasible.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from retention.clinic.instruments import WAI_SR_KEY
from retention.clinic.synth import notes, outcome
from retention.clinic.synth.config import DAY, EPOCH_ORDINAL, SynthConfig, day_number, weekday_of
from retention.clinic.synth.consents import add_consents_and_identifiers
from retention.clinic.synth.contacts import add_contacts
from retention.clinic.synth.frames import Sink, to_frames


# ----------------------------------------------------------------------- programs
@dataclass(frozen=True)
class _Program:
    weight: float  # share of admissions
    planned_days: int
    attend_logit: float  # log-odds of attending for an average client
    hazard: float  # baseline daily hazard of disengaging
    walkout_share: float  # dropouts that are left_against_advice, filed at once
    step_down_share: float  # completions recorded as transferred to the next level of care


_PROGRAMS: dict[str, _Program] = {
    "outpatient": _Program(0.36, 120, 0.75, 0.0019, 0.10, 0.05),
    "intensive_outpatient": _Program(0.17, 60, 0.75, 0.0022, 0.15, 0.15),
    "medication_assisted": _Program(0.19, 180, 1.10, 0.0013, 0.10, 0.05),
    "partial_hospitalization": _Program(0.07, 30, 1.60, 0.0042, 0.45, 0.25),
    "residential": _Program(0.08, 30, 3.30, 0.0033, 0.90, 0.30),
    "detox": _Program(0.08, 7, 3.00, 0.0120, 0.90, 0.45),
    "other": _Program(0.05, 90, 0.75, 0.0020, 0.15, 0.05),
}
_PROGRAM_NAMES = tuple(_PROGRAMS)
_PROGRAM_WEIGHTS = np.array([p.weight for p in _PROGRAMS.values()]) / sum(
    p.weight for p in _PROGRAMS.values()
)

_DURATION = {  # minutes
    "intake": 90,
    "individual": 50,
    "family": 60,
    "group": 90,
    "medication": 20,
    "case_management": 30,
}
# Log-odds shift of attending, by service: medication visits are kept best.
_SERVICE_ATTEND = {
    "intake": 0.0,
    "individual": 0.0,
    "family": -0.2,
    "group": -0.15,
    "medication": 0.5,
    "case_management": -0.1,
}
_TELEHEALTH_SERVICES = frozenset({"individual", "family", "case_management"})

# Exits that are not disengagement, as daily hazards.
_OTHER_EXITS = (
    ("transferred", 0.00040),
    ("incarcerated", 0.00022),
    ("administrative", 0.00018),
    ("other", 0.00012),
    ("deceased", 0.00003),
)
_OTHER_EXIT_HAZARD = sum(rate for _, rate in _OTHER_EXITS)

# Hazard model: daily hazard = program.hazard * (SUDDEN + exp(linear predictor)).
_SUDDEN = 0.35  # state-independent share: dropouts with no warning signs
_HAZARD_ENGAGEMENT = 0.9
_HAZARD_ALLIANCE = 0.6
_HAZARD_MISSES = 0.45
_HAZARD_RUPTURE = 0.8
_HAZARD_EARLY = 1.4
_EARLY_DAYS = 18.0
_HAZARD_CENTRE = 1.0  # keeps program.hazard near the hazard of an average client

# Engagement dynamics (log-odds units).
_ENGAGEMENT_SD = 0.75  # between clients
_ENGAGEMENT_WOBBLE = 0.45  # within client, stationary sd
_ENGAGEMENT_MEMORY = 35.0  # days
_MISS_PENALTY = 0.22
_ATTEND_BONUS = 0.04
_MISS_MEMORY = 14.0  # days
_RUPTURE_MEMORY = 28.0  # days
_CLINIC_CANCEL = 0.03
_READMISSION = 0.09  # clients flagged to return; some cannot before the snapshot

# Alliance measurement.
_SRS_FIDELITY = {"individual": 0.9, "family": 0.9, "group": 0.8}
_NO_ITEMS_SHARE = 0.05
_WAI_FIRST_DAY = 14
_WAI_INTERVAL_DAYS = 26
_RUPTURE_BASE = -3.2
_RUPTURE_REPAIR = 0.55
_AUX_STREAM = 61_206  # mixed into the seed: ORS and session notes, apart from the above

_CLINIC_NAMES = ("north", "south", "east", "west", "central", "river", "hill", "lake")
_RACE = ("white", "black", "hispanic", "asian", "native_american", "multiracial", "other")
_RACE_P = (0.52, 0.16, 0.15, 0.04, 0.03, 0.03, 0.02)  # remainder: not recorded


# ------------------------------------------------------------------------ people
@dataclass(frozen=True)
class _Clinic:
    name: str
    case_managers: tuple[str, ...]
    clinicians: tuple[str, ...]
    clinician_effect: tuple[float, ...]  # alliance shift per clinician (therapist effects)
    prescriber: str
    attend_shift: float


@dataclass(frozen=True)
class _Client:
    """A client's stable traits; none of them is a demographic."""

    client_id: str
    clinic: _Clinic
    clinician: int
    telehealth_share: float
    engagement: float  # personal mean of the engagement walk
    bond: float  # alliance latents, standard normal
    goal_task: float
    booking_lead: float  # days ahead standing sessions are booked
    weekday: int  # preferred weekday for individual sessions
    minute: int  # preferred time of day for individual sessions
    evening_groups: bool
    takes_group: bool  # outpatient clients who also attend a weekly group


def _clinics(n: int, rng: np.random.Generator) -> list[_Clinic]:
    clinics = []
    for i in range(n):
        name = _CLINIC_NAMES[i] if i < len(_CLINIC_NAMES) else f"{i + 1:02d}"
        n_cm = int(rng.integers(3, 6))
        n_clin = int(rng.integers(4, 8))
        clinics.append(
            _Clinic(
                name=f"clinic-{name}",
                case_managers=tuple(f"cm-{name}-{j + 1:02d}" for j in range(n_cm)),
                clinicians=tuple(f"clin-{name}-{j + 1:02d}" for j in range(n_clin)),
                clinician_effect=tuple(float(x) for x in rng.normal(0.0, 0.12, n_clin)),
                prescriber=f"md-{name}-01",
                attend_shift=float(rng.normal(0.0, 0.15)),
            )
        )
    return clinics


def _demographics(admit_year: int, rng: np.random.Generator) -> tuple[int, str, str | None]:
    """Independent of everything else by design (see module docstring)."""
    age = 18 + int(52 * rng.beta(2.0, 3.2))
    sex = ("female", "male", "other")[int(rng.choice(3, p=(0.37, 0.61, 0.02)))]
    r = rng.random()
    race: str | None = None
    cumulative = 0.0
    for label, p in zip(_RACE, _RACE_P, strict=True):
        cumulative += p
        if r < cumulative:
            race = label
            break
    return admit_year - age, sex, race


def _client_traits(client_id: str, clinic: _Clinic, rng: np.random.Generator) -> _Client:
    z_engagement, z_alliance, z_bond, z_goal = rng.standard_normal(4)
    alliance = 0.35 * z_engagement + math.sqrt(1 - 0.35**2) * z_alliance
    return _Client(
        client_id=client_id,
        clinic=clinic,
        clinician=int(rng.integers(len(clinic.clinicians))),
        telehealth_share=float(rng.uniform(0.0, 0.6)) if rng.random() < 0.7 else 0.0,
        engagement=_ENGAGEMENT_SD * float(z_engagement),
        bond=0.75 * alliance + 0.66 * float(z_bond),
        goal_task=0.75 * alliance + 0.66 * float(z_goal),
        booking_lead=float(rng.uniform(7.0, 21.0)),
        weekday=int(rng.integers(5)),
        minute=int(rng.integers(16, 34)) * 30,  # 08:00-16:30
        evening_groups=bool(rng.random() < 0.4),
        takes_group=bool(rng.random() < 0.3),
    )


# ---------------------------------------------------------------------- schedule
_Slot = tuple[int, int, str, int]  # weekday, minute of day, service, every n weeks


def _weekly_template(program: str, c: _Client) -> list[_Slot]:
    """The standing weekly sessions of a program for this client."""
    own = (c.weekday, c.minute, "individual", 1)
    afternoon = (c.weekday, 13 * 60 + 30, "individual", 1)
    group_minute = 17 * 60 + 30 if c.evening_groups else 9 * 60 + 30
    if program == "outpatient":
        group = ((c.weekday + 2) % 5, 17 * 60 + 30, "group", 1)
        return [own, group] if c.takes_group else [own]
    if program == "intensive_outpatient":
        groups = [(d, group_minute, "group", 1) for d in (0, 2, 4)]
        return [*groups, (1 + 2 * (c.weekday % 2), 13 * 60, "individual", 1)]
    if program == "medication_assisted":
        dose = ((c.weekday + 2) % 5, 7 * 60 + 30 + 30 * (c.minute // 30 % 4), "medication", 1)
        return [dose, (c.weekday, 13 * 60 + 30, "individual", 2)]
    if program == "partial_hospitalization":
        return [*((d, 9 * 60, "group", 1) for d in range(5)), afternoon]
    if program == "residential":
        return [*((d, 10 * 60, "group", 1) for d in range(7)), afternoon]
    if program == "detox":
        return [(d, 8 * 60, "medication", 1) for d in range(7)]
    return [
        (c.weekday, c.minute, "case_management", 1),
        ((c.weekday + 1) % 5, c.minute, "individual", 2),
    ]


def _sessions(
    program: str, c: _Client, admit_day: int, last_day: int, rng: np.random.Generator,
    extra: int = 0,
) -> tuple[list[int], list[str], list[bool]]:
    """Start minute, service and telehealth of every planned session after the intake."""
    template = _weekly_template(program, c)
    # Extra standing sessions on the following weekdays, an hour after the client's slot.
    template += [((c.weekday + 1 + k) % 5, c.minute + 60, "individual", 1) for k in range(extra)]
    monday = admit_day - weekday_of(admit_day)
    planned: list[tuple[int, str]] = []
    for week in range((last_day - monday) // 7 + 1):
        for weekday, minute, service, every in template:
            day = monday + 7 * week + weekday
            if admit_day < day <= last_day and week % every == 0:
                planned.append((day * DAY + minute, service))
    if program == "detox" and admit_day + 2 <= last_day:
        planned.append(((admit_day + 2) * DAY + 14 * 60, "case_management"))
    planned.sort()
    starts = [s for s, _ in planned]
    u = rng.random((len(planned), 2)).tolist()
    services = [
        "family" if svc == "individual" and uu[0] < 0.06 else svc
        for (_, svc), uu in zip(planned, u, strict=True)
    ]
    tele_share = 0.0 if program in ("residential", "detox") else c.telehealth_share
    telehealth = [
        uu[1] < (tele_share if svc in _TELEHEALTH_SERVICES else 0.1 * tele_share)
        and not (svc == "group" and program == "partial_hospitalization")
        for svc, uu in zip(services, u, strict=True)
    ]
    return starts, services, telehealth


def _booking_times(
    starts: Sequence[int],
    services: Sequence[str],
    lead: float,
    intake_end: int,
    rng: np.random.Generator,
) -> list[int]:
    """Standing sessions are booked ``lead`` days ahead (groups a week), never before intake."""
    jitter = rng.uniform(-2.0, 2.0, len(starts)).tolist()
    group_lead = rng.uniform(2.0, 7.0, len(starts)).tolist()
    booked = []
    for start, svc, j, g in zip(starts, services, jitter, group_lead, strict=True):
        days_ahead = g if svc == "group" else lead + j
        booked.append(min(max(start - int(days_ahead * DAY), intake_end), start - 60))
    return booked


# ------------------------------------------------------------------------ status
def _resolved_at(status: str, start: int, service: str, booked: int, end: int, u: float) -> int:
    """When the EHR row was last touched for a resolved session (always before ``end``)."""
    if status in ("attended", "no_show"):
        session_end = start + _DURATION[service]
        same_day = session_end + int(u * (DAY - 1 - session_end % DAY))
        late = (start // DAY + (1 if u < 0.8 else 2)) * DAY + 9 * 60 + int(u * 480)
        return late if u > 0.7 and late < end else same_day
    if status == "late_cancel":
        return max(start - 60 - int(u * 1300), booked + 1)
    # cancelled_by_client / cancelled_by_clinic: a call a few days before
    return max(start - int((0.5 + 3.5 * u) * DAY), booked + 1)


def _miss_status(u: float) -> str:
    if u < 0.62:
        return "no_show"
    return "late_cancel" if u < 0.80 else "cancelled_by_client"


# ---------------------------------------------------------------------- alliance
_BOND_RUPTURE = (0.45, 0.15, 0.15, 0.25)
_GOAL_RUPTURE = (0.10, 0.35, 0.30, 0.25)
_MAX_DEFICIT = 6.0  # per item, before ruptures: even poor alliances rarely rate near 0


def _srs_items(
    bond: float,
    goal_task: float,
    shift: float,
    rupture: float,
    bond_type: bool,
    z: Sequence[float],
) -> list[float]:
    """Four 0-10 items with a ceiling effect: most clients score near 10 on every item.

    The deficit below 10 is log-normal in the alliance latent, so good alliances
    crowd at the ceiling while poor ones leave a long low tail. Item 1
    (relationship) follows bond, items 2-3 (goals, approach) goal/task agreement,
    item 4 (overall) both. ``rupture`` is a sudden drop in points.
    """
    latents = (bond, goal_task, goal_task, (bond + goal_task) / 2)
    weights = _BOND_RUPTURE if bond_type else _GOAL_RUPTURE
    common = 0.3 * z[0] + shift
    items = []
    for latent, noise, w in zip(latents, z[1:5], weights, strict=True):
        deficit = min(_MAX_DEFICIT, 0.6 * math.exp(common - latent + 0.3 * noise) - 0.1)
        deficit = max(0.0, deficit) + rupture * w
        items.append(round(min(10.0, max(0.0, 10.0 - deficit)), 1))
    return items


def _wai_items(means: Mapping[str, float], rng: np.random.Generator) -> list[float]:
    """Twelve integer 1-5 items whose subscale (published key) centres are ``means``."""
    noise = rng.standard_normal(12).tolist()
    items = [0.0] * 12
    for name, key in WAI_SR_KEY.items():
        for item in key:
            items[item - 1] = float(min(5, max(1, round(means[name] + 0.6 * noise[item - 1]))))
    return items


# ----------------------------------------------------------------------- episode
@dataclass
class _Episode:
    episode_id: str
    program: str
    admit_day: int
    planned_days: int
    engagement_shift: float  # readmissions start a little less engaged


@dataclass(slots=True)
class _State:
    """The client's hidden state during one episode."""

    mean_engagement: float
    engagement: float  # log-odds shift of attending; low means drifting away
    bond: float
    goal_task: float
    clinician_shift: float  # therapist effect on SRS deficits
    misses: float = 0.0  # recent misses, decaying
    rupture_load: float = 0.0  # unrepaired ruptures, decaying
    last_wai_day: int = -(10**9)

    def dropout_hazard(self, program: _Program, days_in: float) -> float:
        """Daily hazard of disengaging; ``_SUDDEN`` of the baseline ignores the state."""
        linear = (
            -_HAZARD_ENGAGEMENT * self.engagement
            - _HAZARD_ALLIANCE * (self.bond + self.goal_task) / 2
            + _HAZARD_MISSES * self.misses
            + _HAZARD_RUPTURE * self.rupture_load
            + _HAZARD_EARLY * math.exp(-days_in / _EARLY_DAYS)
            - _HAZARD_CENTRE
        )
        return program.hazard * (_SUDDEN + math.exp(linear))

    def drift(self, dt: float, z: float) -> None:
        """Advance ``dt`` days: engagement wanders around its mean, memories fade."""
        decay = math.exp(-dt / _ENGAGEMENT_MEMORY)
        wobble = _ENGAGEMENT_WOBBLE * math.sqrt(1.0 - decay * decay) * z
        self.engagement = self.mean_engagement + (self.engagement - self.mean_engagement) * decay
        self.engagement += wobble
        self.misses *= math.exp(-dt / _MISS_MEMORY)
        self.rupture_load *= math.exp(-dt / _RUPTURE_MEMORY)

    def hold_session(self, base_logit: float, u: Sequence[float]) -> str:
        """Status of a booked session; a miss discourages, attending encourages a little."""
        if u[3] < _CLINIC_CANCEL:
            return "cancelled_by_clinic"
        logit = base_logit + self.engagement - 0.3 * self.rupture_load
        if u[4] < 1.0 / (1.0 + math.exp(-logit)):
            self.engagement += _ATTEND_BONUS
            return "attended"
        self.misses += 1.0
        self.engagement -= _MISS_PENALTY
        return _miss_status(u[5])

    def rupture(self, u: float, rng: np.random.Generator) -> tuple[float, bool, bool]:
        """Points lost to a rupture in this session (0 if none), whether it hit the bond,
        and whether it was resolved.

        Repaired ruptures show in one session only; unrepaired ones linger in
        ``rupture_load``, depressing later ratings and attendance and raising hazard.
        """
        alliance = (self.bond + self.goal_task) / 2
        deviation = self.engagement - self.mean_engagement
        p = 1.0 / (1.0 + math.exp(-_RUPTURE_BASE + 0.5 * alliance + 0.4 * deviation))
        if u >= p:
            return 0.0, False, False
        points = 6.0 + 6.0 * rng.random()
        bond_type = rng.random() < 0.4
        resolved = rng.random() < _RUPTURE_REPAIR + 0.1 * self.bond
        if not resolved:
            self.rupture_load += 1.0
            self.engagement -= 0.4
        return points, bond_type, resolved


class _EpisodeRun:
    """One episode of one client, simulated session by session into the sink."""

    def __init__(
        self, ep: _Episode, client: _Client, end_day: int, rng: np.random.Generator, sink: Sink,
        extra: int = 0, aux: np.random.Generator | None = None, pcoms: bool = False,
        notes: bool = False, tas: bool = False,
    ) -> None:
        self.ep, self.c, self.rng, self.sink = ep, client, rng, sink
        self.extra = extra
        # ORS and session notes draw from ``aux`` only, so the other tables stay as they
        # were whichever clinics collect them.
        self.aux = aux if aux is not None else np.random.default_rng([_AUX_STREAM, 0])
        self.pcoms, self.notes, self.tas = pcoms, notes, tas
        self.last_tas_day = -(10**9)
        self.program = _PROGRAMS[ep.program]
        self.end_day = end_day
        self.end = end_day * DAY
        self.planned_end_day = ep.admit_day + ep.planned_days

    def run(self) -> int | None:
        """Simulate the episode; return its discharge day if filed before the snapshot."""
        ep, c, rng, end = self.ep, self.c, self.rng, self.end
        intake = ep.admit_day * DAY + 8 * 60 + 30 * int(rng.integers(0, 13))
        last_day = min(self.planned_end_day, self.end_day + 24)
        starts, services, tele = _sessions(ep.program, c, ep.admit_day, last_day, rng,
                                           self.extra)
        intake_end = intake + _DURATION["intake"]
        booked = _booking_times(starts, services, c.booking_lead, intake_end, rng)
        # Per session: exit?, exit time, exit kind, clinic cancel, attend?, miss kind,
        # update lag, rupture?  Normals: engagement step, then five SRS noises.
        uniforms = rng.random((len(starts), 8)).tolist()
        normals = rng.standard_normal((len(starts), 6)).tolist()
        intake_booked = intake - int(rng.uniform(1.0, 14.0) * DAY)
        updated = _resolved_at("attended", intake, "intake", intake_booked, end, rng.random())
        intake_appt = self._appointment(intake, intake_booked, "attended", "intake", False,
                                        updated)

        mean_e = c.engagement + ep.engagement_shift
        state = _State(
            mean_e,
            mean_e + 0.3 * float(rng.standard_normal()),
            c.bond,
            c.goal_task,
            c.clinic.clinician_effect[c.clinician],
        )
        # Drawn for every episode, rated only where the clinic uses PCOMS.
        self.wellbeing = outcome.start((c.bond + c.goal_task) / 2, mean_e, self.aux)
        if self.pcoms:
            self._rate_outcome(state, intake_appt, intake)
        attend_base = self.program.attend_logit + c.clinic.attend_shift
        t_prev = last_attended = intake
        exit_reason: str | None = None
        tau = 0
        k = 0
        for k, t in enumerate(starts):  # k: where the sessions left after the loop start
            if t >= end:
                break
            u, z = uniforms[k], normals[k]
            dt = (t - t_prev) / DAY
            days_in = (t_prev - intake) / DAY
            drop_rate = state.dropout_hazard(self.program, days_in)
            total = drop_rate + _OTHER_EXIT_HAZARD
            if u[0] < 1.0 - math.exp(-total * dt):  # an exit before this session
                tau = t_prev + int(u[1] * (t - t_prev))
                exit_reason = _exit_reason(self.program, drop_rate / total, u[2])
                break
            state.drift(dt, z[0])
            service = services[k]
            status = state.hold_session(
                attend_base + _SERVICE_ATTEND[service] + (0.2 if tele[k] else 0.0), u
            )
            updated = _resolved_at(status, t, service, booked[k], end, u[6])
            appt = self._appointment(t, booked[k], status, service, tele[k], updated)
            if status == "attended":
                last_attended = t
                if self.pcoms and service in outcome.RATED:
                    self._rate_outcome(state, appt, t)
                if service in _SRS_FIDELITY:
                    self._rate_alliance(state, appt, t, service, days_in, u[7], z)
                if service in outcome.THERAPY:
                    self.wellbeing.dose += 1
            t_prev = t
        else:
            k = len(starts)

        filing_day: int | None = None
        if exit_reason is not None:
            filing_day = _filing_day(exit_reason, tau, last_attended, rng)
        elif self.planned_end_day < self.end_day:
            filing_day = self.planned_end_day
        remaining = zip(starts[k:], services[k:], tele[k:], booked[k:], strict=True)
        self._close_remaining(remaining, exit_reason, tau, filing_day)
        return self._discharge(exit_reason, filing_day)

    def _rate_alliance(
        self,
        state: _State,
        appt: int,
        start: int,
        service: str,
        days_in: float,
        u: float,
        z: Sequence[float],
    ) -> None:
        """SRS (GSRS in groups) at the end of an attended session; WAI-SR about monthly.

        Where therapists keep session notes, the note on this session follows.
        """
        before = (state.engagement - state.mean_engagement, state.misses, state.rupture_load)
        points, bond_type, resolved = state.rupture(u, self.rng)
        if self.notes:
            strain = notes.Strain(state.bond, state.goal_task, *before, rupture=points > 0,
                                  bond_rupture=bond_type)
            self._note(appt, start, service, strain, resolved)
        if self.rng.random() < _SRS_FIDELITY[service]:
            # Alliances build over the first weeks; unrepaired ruptures depress every item.
            shift = state.clinician_shift + 0.35 * state.rupture_load
            shift += 0.25 * math.exp(-days_in / 21)
            items = _srs_items(state.bond, state.goal_task, shift, points, bond_type, z[1:6])
            instrument = "GSRS" if service == "group" else "SRS"
            at = start + _DURATION[service] - 5
            self._measure(appt, instrument, "client", at, items)
        if service == "individual":
            self._maybe_wai(state, appt, start)
            if self.tas:
                self._maybe_tas(state, appt, start)

    def _rate_outcome(self, state: _State, appt: int, start: int) -> None:
        """ORS at the start of an attended session, from the client's wellbeing today."""
        items = outcome.ors_items(self.wellbeing, state.engagement - state.mean_engagement,
                                  state.rupture_load, self.aux)
        with_items = self.aux.random() >= _NO_ITEMS_SHARE
        self._aux_measure(appt, "ORS", "client", start + 2, round(sum(items), 1),
                          items if with_items else None)

    def _maybe_tas(self, state: _State, appt: int, start: int) -> None:
        """TAS totals by client and therapist, on the WAI-SR's monthly rhythm.

        Totals only: which items are reverse-scored is not registered, so no item
        responses are made up. Client ratings sit near the ceiling; the therapist's
        follow engagement, as on the WAI-SR.
        """
        day = start // DAY
        if day - self.ep.admit_day < _WAI_FIRST_DAY or day - self.last_tas_day < _WAI_INTERVAL_DAYS:
            return
        self.last_tas_day = day
        alliance, load = (state.bond + state.goal_task) / 2, state.rupture_load
        drift = state.engagement - state.mean_engagement
        z = self.aux.standard_normal(2).tolist()
        means = {
            "client": 3.45 + 0.3 * alliance - 0.25 * load + 0.2 * z[0],
            "therapist": 3.2 + 0.2 * alliance + 0.45 * drift + 0.15 * self.c.engagement
            - 0.3 * load + 0.2 * z[1],
        }
        at = start + _DURATION["individual"] - 8
        for k, (rater, mean) in enumerate(means.items()):
            total = float(min(48, max(12, round(12 * mean))))
            self._aux_measure(appt, "TAS", rater, at + 5 * k, total, None)

    def _aux_measure(
        self, appt: int, instrument: str, rater: str, at: int, total: float,
        items: Sequence[float] | None,
    ) -> None:
        """A measure (and its items, if any) from the stream apart: numbered after the rest."""
        aux, sink = self.aux, self.sink
        index = len(sink.outcome_measures)
        updated = at + int(aux.integers(0, 60)) if aux.random() < 0.3 else at
        sink.outcome_measures.append((self.ep.episode_id, self.c.client_id, appt, instrument,
                                      rater, at, total, None, None, None, updated))
        if items is not None:
            sink.outcome_items.extend((index, n + 1, v) for n, v in enumerate(items))

    def _note(
        self, appt: int, start: int, service: str, strain: notes.Strain, resolved: bool
    ) -> None:
        """The therapist's note on an attended session, if one is written before the snapshot.

        Most are written the same day, some one to four days later; a few EHRs do not
        say when (``recorded_at`` null).
        """
        note = notes.take_note(strain, resolved, service, self.aux)
        if note is None:
            return
        u, v, w = self.aux.random(3).tolist()
        session_end = start + _DURATION[service]
        if u < 0.6:
            written = session_end + 10 + int(v * min(240, DAY - 11 - session_end % DAY))
        else:
            written = (start // DAY + 1 + int(v * 4)) * DAY + 9 * 60 + int(w * 480)
        if written >= self.end:
            return
        recorded = None if w < 0.1 else written
        clinician = self.sink.appointments[appt][7]
        self.sink.observations.append((
            self.ep.episode_id, self.c.client_id, appt, start, recorded, clinician,
            note.signs, note.rupture, note.repair_steps, written,
        ))

    def _maybe_wai(self, state: _State, appt: int, start: int) -> None:
        """WAI-SR about monthly, by client and therapist; the therapist sees disengagement.

        Clients rate near the ceiling whatever their engagement, so the client minus
        therapist gap widens as engagement falls.
        """
        day = start // DAY
        if (
            day - self.ep.admit_day < _WAI_FIRST_DAY
            or day - state.last_wai_day < _WAI_INTERVAL_DAYS
        ):
            return
        state.last_wai_day = day
        b, g, load = state.bond, state.goal_task, state.rupture_load
        client_means = {
            "goal": 4.05 + 0.45 * g - 0.3 * load,
            "task": 4.0 + 0.45 * g - 0.3 * load,
            "bond": 4.2 + 0.4 * b - 0.25 * load,
        }
        drift = state.engagement - state.mean_engagement
        seen = 0.45 * drift + 0.15 * self.c.engagement - 0.35 * load
        therapist_means = {
            "goal": 3.75 + 0.25 * g + seen,
            "task": 3.7 + 0.25 * g + seen,
            "bond": 3.9 + 0.25 * b + seen,
        }
        at = start + _DURATION["individual"] - 8
        self._measure(appt, "WAI-SR", "client", at, _wai_items(client_means, self.rng))
        self._measure(appt, "WAI-SR", "therapist", at + 5, _wai_items(therapist_means, self.rng))

    def _close_remaining(
        self,
        remaining: Iterable[tuple[int, str, bool, int]],
        exit_reason: str | None,
        tau: int,
        filing_day: int | None,
    ) -> None:
        """Sessions after the loop: still booked at the snapshot, or missed after an exit.

        After an exit nothing new is booked; slots booked before it are missed until
        the discharge is filed, which removes the rest.
        """
        end = self.end
        book_limit = tau if exit_reason is not None else end - 1
        filed = end if filing_day is None else min(end, filing_day * DAY)
        dropout = exit_reason in ("dropped_out", "left_against_advice")
        for start, service, telehealth, booked in remaining:
            if booked > book_limit or (filed < end and start >= filed):
                continue
            if start >= end:
                status, updated = "scheduled", booked
            else:
                u = self.rng.random()
                status = _miss_status(u) if dropout else "no_show"
                updated = _resolved_at(status, start, service, booked, end, u)
            self._appointment(start, booked, status, service, telehealth, updated)

    def _discharge(self, exit_reason: str | None, filing_day: int | None) -> int | None:
        """Write the episode row; discharges filed on or after ``end`` are not in the snapshot."""
        rng = self.rng
        planned = self.planned_end_day if rng.random() > 0.05 else None
        row = (self.ep.episode_id, self.c.client_id, self.ep.program, self.ep.admit_day, planned)
        if filing_day is None or filing_day >= self.end_day:
            admitted = self.ep.admit_day * DAY + 8 * 60
            self.sink.episodes.append((*row, None, None, admitted + int(rng.integers(60, 480))))
            return None
        if exit_reason is None:
            step_down = rng.random() < self.program.step_down_share
            exit_reason = "transferred" if step_down else "completed"
        filed = filing_day * DAY + 9 * 60 + int(rng.integers(0, 540))
        late = filed + int(rng.integers(0, 4)) * DAY
        updated = late if late < self.end else filed
        self.sink.episodes.append((*row, filing_day, exit_reason, updated))
        return filing_day

    def _appointment(
        self, start: int, booked: int, status: str, service: str, telehealth: bool, updated: int
    ) -> int:
        """Append an appointment row; return its index (the id is assigned later)."""
        c = self.c
        if service == "medication":
            clinician = c.clinic.prescriber
        else:  # groups are run by the clinic's group lead
            clinician = c.clinic.clinicians[0 if service == "group" else c.clinician]
        self.sink.appointments.append(
            (
                self.ep.episode_id,
                c.client_id,
                start,
                booked,
                status,
                service,
                telehealth,
                clinician,
                updated,
            )
        )
        return len(self.sink.appointments) - 1

    def _measure(
        self, appt: int, instrument: str, rater: str, at: int, items: Sequence[float]
    ) -> None:
        """One measure row and its items; a few measures carry totals only."""
        rng, sink = self.rng, self.sink
        goal = task = bond = None
        if instrument == "WAI-SR":
            goal, task, bond = (
                sum(items[i - 1] for i in WAI_SR_KEY[name]) / len(WAI_SR_KEY[name])
                for name in ("goal", "task", "bond")
            )
        index = len(sink.measures)
        with_items = rng.random() >= _NO_ITEMS_SHARE
        updated = at + int(rng.integers(0, 60)) if rng.random() < 0.3 else at
        sink.measures.append(
            (
                self.ep.episode_id,
                self.c.client_id,
                appt,
                instrument,
                rater,
                at,
                round(sum(items), 1),
                goal,
                task,
                bond,
                updated,
            )
        )
        if with_items:
            sink.items.extend((index, n + 1, v) for n, v in enumerate(items))


def _exit_reason(program: _Program, dropout_share: float, u: float) -> str:
    if u < dropout_share:
        walkout = u / dropout_share < program.walkout_share
        return "left_against_advice" if walkout else "dropped_out"
    u = (u - dropout_share) / (1.0 - dropout_share) * _OTHER_EXIT_HAZARD
    for reason, rate in _OTHER_EXITS:
        if u < rate:
            return reason
        u -= rate
    return _OTHER_EXITS[-1][0]


def _filing_day(exit_reason: str, tau: int, last_attended: int, rng: np.random.Generator) -> int:
    """Dropouts are noticed 2-8 weeks after the last visit; everything else within days."""
    tau_day = tau // DAY
    if exit_reason == "dropped_out":
        return max(tau_day + 1, last_attended // DAY + int(rng.integers(14, 57)))
    return tau_day + int(rng.integers(0, 4))


# ---------------------------------------------------------------------- generate
def generate(config: SynthConfig) -> dict[str, pd.DataFrame]:
    """Simulate the clinic and return one DataFrame per contract table.

    Columns follow ``retention.contract`` in order; dates are ``datetime.date``,
    timestamps naive ``datetime64``. Pure: the same config gives identical frames.
    """
    rng = np.random.default_rng(config.seed)
    aux = np.random.default_rng([_AUX_STREAM, config.seed])
    clinics = _clinics(config.n_clinics, rng)
    pcoms = _some_clinics(clinics, config.pcoms_share, aux)
    noting = _some_clinics(clinics, config.notes_share, aux)
    clinic_p = rng.dirichlet(np.full(config.n_clinics, 6.0))
    end_day = day_number(config.end)
    first_day = end_day - config.history_days
    width = max(6, len(str(config.n_clients)))
    sink = Sink()
    for number in range(1, config.n_clients + 1):
        client_id = f"C{number:0{width}d}"
        clinic = clinics[int(rng.choice(config.n_clinics, p=clinic_p))]
        c = _client_traits(client_id, clinic, rng)
        returns = rng.random() < _READMISSION
        span = config.history_days * (0.6 if returns else 1.0)
        admit_day = first_day + int(rng.random() * span)
        birth_year, sex, race = _demographics(_year(admit_day), rng)
        case_manager = None if rng.random() < 0.03 else str(rng.choice(clinic.case_managers))
        # Independent of age and every other trait: no feature can stand in for them.
        tas = bool(aux.random() < config.tas_share)
        sink.clients.append((client_id, clinic.name, case_manager, birth_year, sex, race))
        episode = 1
        while True:
            program = _PROGRAM_NAMES[int(rng.choice(len(_PROGRAM_NAMES), p=_PROGRAM_WEIGHTS))]
            planned = max(3, round(_PROGRAMS[program].planned_days * config.episode_length_scale
                                   * math.exp(rng.normal(0, 0.15))))
            ep = _Episode(
                f"E{number:0{width}d}-{episode}", program, admit_day, planned, -0.25 * (episode - 1)
            )
            discharged = _EpisodeRun(ep, c, end_day, rng, sink,
                                     config.extra_sessions_per_week, aux,
                                     clinic.name in pcoms, clinic.name in noting, tas).run()
            if not returns or episode > 1 or discharged is None:
                break
            admit_day = discharged + int(rng.integers(14, 151))
            if admit_day >= end_day:
                break
            episode += 1
    add_consents_and_identifiers(sink, config)  # a stream of its own: the above is unchanged
    add_contacts(sink, config)  # another stream of its own: made-up names and phones
    return to_frames(sink)


def _some_clinics(clinics: Sequence[_Clinic], share: float,
                  aux: np.random.Generator) -> frozenset[str]:
    """The names of ``round(share * n)`` clinics, drawn from ``aux``."""
    chosen = aux.permutation(len(clinics))[:round(share * len(clinics))]
    return frozenset(clinics[int(i)].name for i in chosen)


def _year(day: int) -> int:
    return date.fromordinal(day + EPOCH_ORDINAL).year
