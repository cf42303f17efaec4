"""What the synthetic clinic simulates, and its units of time.

Timestamps are integer minutes since 1970-01-01 (naive clinic time) until the
frames are built; days are integer days since the same epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class SynthConfig:
    """What to simulate.

    ``end`` is the snapshot day: nothing was booked, updated or administered on
    or after it, and every row scheduled on or after it is still 'scheduled'.
    """

    end: date
    n_clients: int = 600
    n_clinics: int = 3
    history_days: int = 540
    seed: int = 7
    # Standing individual sessions per week on top of each program's own (0: as
    # published). Benchmarks use it to reach a caseload's volume of appointments:
    # about 20 per episode at 0, about 80 at 3.
    extra_sessions_per_week: int = 0
    # Planned episode lengths are multiplied by this (1: as published); longer episodes
    # make a larger open caseload for the same number of clients.
    episode_length_scale: float = 1.0
    # Share of clinics that use PCOMS (an ORS at the start of sessions), and share whose
    # therapists note signs, ruptures and repairs after sessions; ``round(share *
    # n_clinics)`` clinics, drawn from a stream apart from the rest of the simulation.
    pcoms_share: float = 2 / 3
    notes_share: float = 2 / 3
    # Share of clients also rated on the TAS (totals, by client and therapist).
    tas_share: float = 0.1

    def __post_init__(self) -> None:
        if self.n_clients < 1 or self.n_clinics < 1:
            raise ValueError("n_clients and n_clinics must be positive")
        if self.history_days < 30:
            raise ValueError("history_days must be at least 30")
        if not 0 <= self.extra_sessions_per_week <= 4:
            raise ValueError("extra_sessions_per_week must be between 0 and 4")
        if not 0.25 <= self.episode_length_scale <= 10:
            raise ValueError("episode_length_scale must be between 0.25 and 10")
        if not all(0 <= s <= 1 for s in (self.pcoms_share, self.notes_share, self.tas_share)):
            raise ValueError("pcoms_share, notes_share and tas_share must be between 0 and 1")


DAY = 1440
EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def day_number(d: date) -> int:
    return d.toordinal() - EPOCH_ORDINAL


def weekday_of(day: int) -> int:
    """Monday=0; 1970-01-01 was a Thursday."""
    return (day + 3) % 7
