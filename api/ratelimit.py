"""Per-key request limits in fixed one-minute windows, counted where every worker sees them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: int
    retry_after: int  # seconds until the window resets


class Counter(Protocol):
    def hit(self, key: str, window_seconds: int) -> int:
        """Count one request for ``key`` in the current window; returns the count so far."""


class MemoryCounter:
    """One process only: for the dev server and tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def hit(self, key: str, window_seconds: int) -> int:
        with self._lock:
            window = int(self._clock() // window_seconds)
            # Forget older windows so the dict stays small.
            for stale in [k for k in self._counts if not k.endswith(f":{window}")]:
                del self._counts[stale]
            slot = f"{key}:{window}"
            self._counts[slot] = self._counts.get(slot, 0) + 1
            return self._counts[slot]


class RedisCounter:
    """Shared by every gunicorn worker (and every host) through Redis INCR."""

    # INCR and, for a new window, its expiry: one command and one reply per request
    # (a MULTI/INCR/EXPIRE/EXEC pipeline sends four and parses four).
    _HIT = ("local n = redis.call('INCR', KEYS[1]) "
            "if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n")

    def __init__(self, url: str, clock: Callable[[], float] = time.time) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._hit = self._redis.register_script(self._HIT)
        self._clock = clock

    def hit(self, key: str, window_seconds: int) -> int:
        window = int(self._clock() // window_seconds)
        return int(self._hit(keys=[f"retention:rl:{key}:{window}"], args=[window_seconds * 2]))


class RateLimiter:
    """``limit`` requests per key per window."""

    def __init__(self, counter: Counter, limit: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.counter = counter
        self.limit = limit
        self._clock = clock

    def check(self, key: str) -> Verdict:
        count = self.counter.hit(key, WINDOW_SECONDS)
        retry = WINDOW_SECONDS - int(self._clock()) % WINDOW_SECONDS
        return Verdict(count <= self.limit, max(0, self.limit - count), retry)


def build_limiter(storage_url: str, limit: int) -> RateLimiter:
    """The limiter for a storage URL: ``memory://`` or ``redis://...``."""
    if storage_url.startswith("memory://"):
        return RateLimiter(MemoryCounter(), limit)
    if storage_url.startswith(("redis://", "rediss://", "unix://")):
        return RateLimiter(RedisCounter(storage_url), limit)
    raise ValueError(f"api_rate_limit_storage must be memory:// or redis://..., "
                     f"got {storage_url.split(':', 1)[0]}://")
