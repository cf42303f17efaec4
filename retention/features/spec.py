"""The model's inputs: name, kind, reason family and clinically expected direction.

This list is the single source of truth for the feature order the model is
trained on, the monotone constraints it must respect, and the reason family
each feature's contribution is summed into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from retention.clinic import contract

Kind = Literal["numeric", "categorical"]

# Reason families: the recognised signs of disengagement and a weakening alliance.
INCONSISTENT_ENGAGEMENT = "inconsistent_engagement"
DISENGAGEMENT = "disengagement"
ALLIANCE_RUPTURE = "alliance_rupture"
WEAK_BOND = "weak_bond"
GOAL_TASK_DISAGREEMENT = "goal_task_disagreement"
RATER_GAP = "rater_gap"
EARLY_TREATMENT = "early_treatment"
SETTING = "setting"
MEASUREMENT = "measurement"
NOT_ON_TRACK = "not_on_track"
OBSERVED_STRAIN = "observed_strain"

FAMILIES = (
    INCONSISTENT_ENGAGEMENT,
    DISENGAGEMENT,
    ALLIANCE_RUPTURE,
    WEAK_BOND,
    GOAL_TASK_DISAGREEMENT,
    RATER_GAP,
    NOT_ON_TRACK,
    OBSERVED_STRAIN,
    EARLY_TREATMENT,
    SETTING,
    MEASUREMENT,
)
# Families that describe where the client is, how care is delivered and how the alliance
# is measured: shown as context, never as a cause of risk or as something going well.
CONTEXT_FAMILIES = (EARLY_TREATMENT, SETTING, MEASUREMENT)


@dataclass(frozen=True)
class FeatureSpec:
    """One model input.

    ``monotone`` is the direction risk must move as the value rises (+1 up,
    -1 down, 0 free); it is enforced in training where it holds clinically.
    """

    name: str
    family: str
    description: str
    kind: Kind = "numeric"
    monotone: int = 0


FEATURES: tuple[FeatureSpec, ...] = (
    # Attendance over recent weeks.
    FeatureSpec("sessions_scheduled_28d", INCONSISTENT_ENGAGEMENT,
                "client-facing sessions scheduled in the last 28 days"),
    FeatureSpec("attended_28d", INCONSISTENT_ENGAGEMENT,
                "sessions attended in the last 28 days", monotone=-1),
    FeatureSpec("missed_28d", INCONSISTENT_ENGAGEMENT,
                "no-shows and late cancellations in the last 28 days", monotone=1),
    FeatureSpec("client_cancelled_28d", INCONSISTENT_ENGAGEMENT,
                "sessions the client cancelled in the last 28 days"),
    FeatureSpec("miss_rate_28d", INCONSISTENT_ENGAGEMENT,
                "share of scheduled sessions missed in the last 28 days", monotone=1),
    FeatureSpec("miss_rate_90d", INCONSISTENT_ENGAGEMENT,
                "share of scheduled sessions missed in the last 90 days", monotone=1),
    FeatureSpec("attended_7d", INCONSISTENT_ENGAGEMENT,
                "sessions attended in the last 7 days", monotone=-1),
    FeatureSpec("missed_7d", INCONSISTENT_ENGAGEMENT,
                "no-shows and late cancellations in the last 7 days", monotone=1),
    FeatureSpec("attended_14d", INCONSISTENT_ENGAGEMENT,
                "sessions attended in the last 14 days", monotone=-1),
    FeatureSpec("missed_14d", INCONSISTENT_ENGAGEMENT,
                "no-shows and late cancellations in the last 14 days", monotone=1),
    FeatureSpec("miss_rate_14d", INCONSISTENT_ENGAGEMENT,
                "share of scheduled sessions missed in the last 14 days", monotone=1),
    # Disengagement.
    FeatureSpec("days_since_attended", DISENGAGEMENT,
                "days since the last attended session (since admission if none)", monotone=1),
    FeatureSpec("consecutive_misses", DISENGAGEMENT,
                "missed sessions since the last attended one", monotone=1),
    FeatureSpec("booked_next_14d", DISENGAGEMENT,
                "sessions booked in the next 14 days, as known at the as-of date", monotone=-1),
    FeatureSpec("days_to_next_booked", DISENGAGEMENT,
                "days until the next booked session (missing if none)"),
    FeatureSpec("attended_trend_14d", DISENGAGEMENT,
                "sessions attended in the last 14 days minus those in the 14 days before "
                "(missing if admitted less than 28 days ago)"),
    # Stage of treatment.
    FeatureSpec("days_in_treatment", EARLY_TREATMENT, "days since admission"),
    FeatureSpec("days_to_planned_end", EARLY_TREATMENT,
                "days until the planned discharge (missing if none planned)"),
    # Setting.
    FeatureSpec("program", SETTING, "treatment program", kind="categorical"),
    FeatureSpec("telehealth_share_90d", SETTING,
                "share of attended sessions held by telehealth in the last 90 days"),
    FeatureSpec("group_share_90d", SETTING,
                "share of scheduled sessions that were groups in the last 90 days"),
    FeatureSpec("clinic_cancelled_28d", SETTING,
                "sessions the clinic cancelled in the last 28 days"),
    FeatureSpec("booking_lead_days_90d", SETTING,
                "median calendar days from booking to session, client-facing sessions of the "
                "last 90 days booked before the as-of date (missing if none)"),
    # Session-by-session alliance (SRS, GSRS).
    FeatureSpec("srs_latest", ALLIANCE_RUPTURE, "latest SRS total (0-40)", monotone=-1),
    FeatureSpec("srs_change", ALLIANCE_RUPTURE,
                "latest SRS total minus the previous one", monotone=-1),
    FeatureSpec("srs_below_cutoff_last3", ALLIANCE_RUPTURE,
                "of the last three SRS, how many were below 36", monotone=1),
    FeatureSpec("srs_min_last3", ALLIANCE_RUPTURE, "lowest of the last three SRS totals",
                monotone=-1),
    FeatureSpec("srs_mean_last3", ALLIANCE_RUPTURE, "mean of the last three SRS totals",
                monotone=-1),
    FeatureSpec("srs_slope_last3", ALLIANCE_RUPTURE,
                "least-squares change of the SRS total per rating over the last three "
                "(missing with fewer than three)"),
    FeatureSpec("srs_low_run_last3", ALLIANCE_RUPTURE,
                "of the last three SRS, how many in a row up to the latest were below 36",
                monotone=1),
    FeatureSpec("gsrs_latest", ALLIANCE_RUPTURE, "latest GSRS total (0-40)", monotone=-1),
    FeatureSpec("gsrs_change", ALLIANCE_RUPTURE,
                "latest GSRS total minus the previous one", monotone=-1),
    # Bond and trust.
    FeatureSpec("srs_relationship_latest", WEAK_BOND,
                "relationship item of the latest SRS (0-10)", monotone=-1),
    FeatureSpec("wai_client_bond", WEAK_BOND, "latest client-rated WAI-SR bond (1-5)",
                monotone=-1),
    FeatureSpec("wai_therapist_bond", WEAK_BOND, "latest therapist-rated WAI-SR bond (1-5)"),
    # Agreement on goals and tasks.
    FeatureSpec("srs_goals_latest", GOAL_TASK_DISAGREEMENT,
                "goals-and-topics item of the latest SRS (0-10)", monotone=-1),
    FeatureSpec("srs_approach_latest", GOAL_TASK_DISAGREEMENT,
                "approach-or-method item of the latest SRS (0-10)", monotone=-1),
    FeatureSpec("wai_client_goal", GOAL_TASK_DISAGREEMENT,
                "latest client-rated WAI-SR goal (1-5)", monotone=-1),
    FeatureSpec("wai_client_task", GOAL_TASK_DISAGREEMENT,
                "latest client-rated WAI-SR task (1-5)", monotone=-1),
    FeatureSpec("wai_therapist_goal", GOAL_TASK_DISAGREEMENT,
                "latest therapist-rated WAI-SR goal (1-5)"),
    FeatureSpec("wai_therapist_task", GOAL_TASK_DISAGREEMENT,
                "latest therapist-rated WAI-SR task (1-5)"),
    # Other alliance forms the registry lets the model read (config/instruments.toml).
    FeatureSpec("other_alliance_share", ALLIANCE_RUPTURE,
                "latest client rating on another registered alliance form (the TAS as "
                "shipped), as a share of its range with 1 the best end (missing if none)",
                monotone=-1),
    # Client and therapist seeing the alliance differently.
    FeatureSpec("wai_rater_gap", RATER_GAP,
                "client minus therapist WAI-SR mean of goal, task and bond"),
    # Outcome ratings (ORS) against the course expected from the intake.
    FeatureSpec("ors_intake", NOT_ON_TRACK,
                "first client ORS total of the episode, the intake (0-40; missing if none)"),
    # Free: a client who feels better may also leave early, having got what they came for.
    FeatureSpec("ors_latest", NOT_ON_TRACK, "latest client ORS total (0-40; missing if none)"),
    FeatureSpec("ors_sessions", NOT_ON_TRACK,
                "client ORS ratings so far in the episode, the intake included (0 if none)"),
    FeatureSpec("ors_change", NOT_ON_TRACK,
                "latest client ORS total minus the intake (missing with fewer than two)"),
    FeatureSpec("ors_expected_gap", NOT_ON_TRACK,
                "latest client ORS total minus the total expected at that rating from the "
                "intake (missing with fewer than two, or without an expected course)",
                monotone=-1),
    FeatureSpec("ors_not_on_track", NOT_ON_TRACK,
                "1 if the latest client ORS is below the band expected from the intake, else 0 "
                "(missing with fewer than two, or without an expected course)", monotone=1),
    FeatureSpec("ors_reliable_deterioration", NOT_ON_TRACK,
                "1 if the latest client ORS is a reliable change (5 points) or more below the "
                "intake, else 0 (missing with fewer than two)", monotone=1),
    # What the therapist noticed in sessions.
    # Counts of signs are free: a client seen more often has more notes, so more signs; the
    # share of noted sessions is the one that rises with strain alone.
    FeatureSpec("signs_sessions_28d", OBSERVED_STRAIN,
                "sessions in the last 28 days with a sign of strain noted by the therapist "
                "(missing without any note)"),
    FeatureSpec("sign_share_90d", OBSERVED_STRAIN,
                "of the sessions the therapist noted in the last 90 days, the share with a sign "
                "of strain (missing without a note in them)", monotone=1),
    FeatureSpec("sign_groups_28d", OBSERVED_STRAIN,
                "of the five recognised signs of strain, how many the therapist noted in the "
                "last 28 days (missing without any note)"),
    FeatureSpec("ruptures_90d", OBSERVED_STRAIN,
                "sessions in the last 90 days with a rupture noted by the therapist "
                "(missing without any note)"),
    FeatureSpec("ruptures_unrepaired_90d", OBSERVED_STRAIN,
                "of those, ruptures with no repair step recorded on their note or a later one "
                "(missing without any note)", monotone=1),
    # How the alliance is measured: context, not a cause.
    FeatureSpec("days_since_srs", MEASUREMENT,
                "calendar days since the latest client SRS (missing if none)"),
    FeatureSpec("days_since_wai", MEASUREMENT,
                "calendar days since the latest WAI-SR by either rater (missing if none)"),
    FeatureSpec("attended_since_srs_90d", MEASUREMENT,
                "sessions attended in the last 90 days on a day after the latest client SRS "
                "(all of them when there is none)"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
CATEGORIES: dict[str, tuple[str, ...]] = {"program": contract.PROGRAMS}
BY_NAME: dict[str, FeatureSpec] = {f.name: f for f in FEATURES}

# Columns that identify a row and route it; never model inputs.
META_COLUMNS = ("episode_id", "client_id", "clinic_id", "case_manager_id")
