"""The synthetic client's wellbeing over an episode, and the ORS that rates it.

Clinics that use PCOMS ask the client for an Outcome Rating Scale (ORS; Miller,
Duncan, Brown, Sparks & Claud 2003, Journal of Brief Therapy 2:91-100) at the start
of each session: four 0-10 items (individual, interpersonal, social, overall), total
0-40, higher is better; adults in clinical samples mostly rate below the cutoff of 25.

What the simulation follows, and how strongly:

* Dose-effect (Howard, Kopta, Krause & Orlinsky 1986, American Psychologist
  41:159-164): the share of clients measurably improved is a normal ogive of log
  sessions, about 50% by 8 sessions and 75% by 26. Each client's dose to a reliable
  improvement (``RELIABLE_CHANGE`` points) is therefore log-normal with median 8 and
  log-sd ``log(26/8) / 0.674``; the gain grows with log sessions, negatively
  accelerated, toward an asymptote, so clients who start higher have less room and
  gain less (from ``ASYMPTOTE - RELIABLE_CHANGE`` up they never improve reliably).
* Alliance and outcome (Flückiger, Del Re, Wampold & Horvath 2018, Psychotherapy,
  doi:10.1037/pst0000172: r = .278 face to face): the client's latent alliance
  correlates -0.28 with the log dose to improvement, so stronger alliances improve
  sooner. Engagement adds -0.2 (a modelling choice, not a published number).
* Not-on-track clients drop out more: the simulation gives lack of progress no hazard
  of its own. The direction follows from the shared latents (alliance, engagement,
  unrepaired ruptures raise the dropout hazard and slow or depress the ORS). The
  feedback literature supports the direction without giving a strength for it:
  routine outcome feedback helps most the clients not on track (Lambert, Whipple &
  Kleinstäuber 2018, Psychotherapy 55:520-537) and lowers dropout a little (de Jong
  et al. 2021, Clinical Psychology Review 85:102002: OR 1.19, 95% CI 1.03-1.38).
* Deterioration: some clients get worse, about 5-10% in psychotherapy (Lambert & Ogles
  2004, in Bergin and Garfield's Handbook, 5th ed., as widely cited; not checked
  against the chapter). ``WORSEN_SHARE`` of episodes, likelier with a weak alliance and
  low engagement, follow the same curve downward, reaching a reliable deterioration at
  their dose ``improves_at`` (never, from an intake under ``RELIABLE_CHANGE``).
* Measurement: a rating is the trajectory plus the client's state that day (drifting
  engagement and unrepaired ruptures lower it) plus noise of ``SEM`` points, the
  standard error a reliable change index of 5 points implies (5 / (1.96 * sqrt 2)).

Intake levels are a modelling choice (mean 19, sd 6.5: about 80% below the cutoff),
not a published distribution. Every draw comes from the caller's Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CUTOFF = 25.0  # adult clinical cutoff (Miller et al. 2003)
RELIABLE_CHANGE = 5.0  # reliable change index, ORS points
SEM = RELIABLE_CHANGE / (1.96 * math.sqrt(2.0))  # measurement error it implies
INTAKE_MEAN = 19.0
INTAKE_SD = 6.5
ASYMPTOTE = 34.0  # where gains level off: a modelling choice
# Howard et al. (1986): half improved by 8 sessions, three quarters by 26.
MEDIAN_DOSE = 8.0
DOSE_LOG_SD = math.log(26.0 / 8.0) / 0.6745
ALLIANCE_OUTCOME = 0.28  # Flückiger et al. (2018)
ENGAGEMENT_OUTCOME = 0.45  # modelling choice
ALLIANCE_SD = 0.88  # sd of the simulation's (bond + goal_task) / 2
ENGAGEMENT_SD = 0.75  # sd of clients' mean engagement (simulation._ENGAGEMENT_SD)
# Episodes whose wellbeing worsens: the log-odds at an average alliance and engagement,
# and its fall per sd of either (about 7% of episodes overall).
WORSEN_LOGIT = -2.75
WORSEN_PER_SD = 0.5
WORSEN_FLOOR = 12.0  # the most a worsening course can lose, ORS points
# How the day's state moves a rating (ORS points): per unit of engagement below the
# client's own mean, and per unrepaired rupture still weighing on the alliance.
DRIFT_POINTS = 4.0
RUPTURE_POINTS = 2.0
# Therapy sessions count towards the dose; medication and case-management visits do not.
THERAPY = frozenset({"individual", "family", "group"})
# ORS is asked at the start of these sessions (groups use a group outcome measure).
RATED = frozenset({"intake", "individual", "family"})


@dataclass(slots=True)
class Wellbeing:
    """One episode's wellbeing trajectory in ORS points."""

    intake: float
    improves_at: float  # therapy sessions to a reliable change (improvement or worsening)
    worsens: bool = False  # the course goes down
    dose: int = 0  # therapy sessions attended so far

    def expected(self) -> float:
        """Intake plus a change log-linear in sessions that levels off: up towards
        ``ASYMPTOTE``, or down by at most ``WORSEN_FLOOR`` for a worsening course."""
        room = min(self.intake, WORSEN_FLOOR) if self.worsens else ASYMPTOTE - self.intake
        if room <= 0:
            return self.intake
        # Reaches RELIABLE_CHANGE at ``improves_at`` (never when the room is smaller).
        reach = min(RELIABLE_CHANGE / room, 0.999)
        rate = -math.log(1.0 - reach) / math.log(1.0 + self.improves_at)
        change = room * (1.0 - (1.0 + self.dose) ** -rate)
        return self.intake - change if self.worsens else self.intake + change


def start(alliance: float, mean_engagement: float, rng: np.random.Generator) -> Wellbeing:
    """Draw an episode's intake level and dose to improvement from the client's latents."""
    z_intake, z_dose = rng.standard_normal(2).tolist()
    u = float(rng.random())
    intake = min(38.0, max(1.0, INTAKE_MEAN + INTAKE_SD * z_intake))
    alliance_z, engagement_z = alliance / ALLIANCE_SD, mean_engagement / ENGAGEMENT_SD
    worsen = WORSEN_LOGIT - WORSEN_PER_SD * (alliance_z + engagement_z)
    worsens = u < 1.0 / (1.0 + math.exp(-worsen))
    own = math.sqrt(1.0 - ALLIANCE_OUTCOME**2 - ENGAGEMENT_OUTCOME**2)
    z = -ALLIANCE_OUTCOME * alliance_z - ENGAGEMENT_OUTCOME * engagement_z + own * z_dose
    if worsens:  # the better the latents, the later a worsening course shows
        z = -z
    return Wellbeing(intake, MEDIAN_DOSE * math.exp(DOSE_LOG_SD * z), worsens)


def ors_items(
    wellbeing: Wellbeing, drift: float, rupture_load: float, rng: np.random.Generator
) -> list[float]:
    """Four 0-10 items (to a tenth) centred on today's level; their sum is the total."""
    level = wellbeing.expected() + DRIFT_POINTS * drift - RUPTURE_POINTS * rupture_load
    level += SEM * float(rng.standard_normal())
    # Items share the level; a little item noise, summing to zero on average.
    noise = (0.8 * rng.standard_normal(4)).tolist()
    mean_noise = sum(noise) / 4
    return [round(min(10.0, max(0.0, level / 4 + n - mean_noise)), 1) for n in noise]
