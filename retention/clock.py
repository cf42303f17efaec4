"""The service's one reading of the wall clock, and clocks a test can set.

Entry points build a ``SystemClock`` and pass it down; tests pass a
``FixedClock``, so nothing a test checks depends on the day it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Protocol


def utcnow() -> datetime:
    """Naive UTC time: both SQLite and PostgreSQL store it without surprises."""
    return datetime.now(UTC).replace(tzinfo=None)


class Clock(Protocol):
    """What time it is for the service: naive UTC now, and the clinic's today."""

    def now(self) -> datetime: ...

    def today(self) -> date: ...


@dataclass(frozen=True)
class SystemClock:
    """The machine's clock: UTC for records, the local date for as-of defaults."""

    def now(self) -> datetime:
        return utcnow()

    def today(self) -> date:
        return date.today()


@dataclass(frozen=True)
class FixedClock:
    """A clock stopped at ``at`` (naive UTC); its today is that day."""

    at: datetime

    def now(self) -> datetime:
        return self.at

    def today(self) -> date:
        return self.at.date()


@dataclass
class MovableClock:
    """A clock a test moves by hand (``clock.at += timedelta(...)``): timeouts, expiry."""

    at: datetime

    def now(self) -> datetime:
        return self.at

    def today(self) -> date:
        return self.at.date()
