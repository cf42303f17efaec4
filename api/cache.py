"""Per-worker memory of what requests would otherwise read again; never the word on access.

A cached caller or publication is only a claim: the statement that writes a request's
audit record re-checks it (``access.key_still_valid``, ``scoped_reads.still_published``)
and writes nothing if it no longer holds, so a revoked key or a replaced list is noticed
by the very statement that would have let data out. Pages and freshness summaries
(drift included) are keyed by the publication they came from (as of, run id,
published at), which never changes once committed: they can go unused, never stale.
A caller is kept with its key's expiry, and is not used once that has passed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from itsdangerous import URLSafeSerializer

from retention.access.keys import Caller

V = TypeVar("V")

# A page of 50 is about 65 kB of JSON, one of 500 about 650 kB.
PAGE_BYTES_PER_WORKER = 64 * 1024 * 1024


class LRU(Generic[V]):
    """Least recently used entries go first once ``max_items`` or ``max_cost`` is passed."""

    def __init__(self, max_items: int, max_cost: int | None = None) -> None:
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()  # the dev server and gthread workers share one cache
        self._max_items = max_items
        self._max_cost = max_cost
        self._cost = 0

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
            return found[0]

    def put(self, key: Hashable, value: V, cost: int = 0) -> None:
        with self._lock:
            self._drop(key)
            self._entries[key] = (value, cost)
            self._cost += cost
            while self._entries and (len(self._entries) > self._max_items or (
                    self._max_cost is not None and self._cost > self._max_cost)):
                self._drop(next(iter(self._entries)))

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._cost = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: Hashable) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._cost -= old[1]


@dataclass(frozen=True)
class Page:
    """One page of the list as sent: the items' JSON, and the ids the audit records."""

    items_json: bytes
    client_ids: tuple[str, ...]
    next_cursor: str | None  # None on the last page


@dataclass
class ReadCache:
    """One per app, so one per gunicorn worker."""

    callers: LRU[Caller] = field(default_factory=lambda: LRU(1024))  # by token digest
    publications: LRU[dict[str, Any]] = field(default_factory=lambda: LRU(64))  # by as_of
    # by publication: what of its freshness is fixed (all but the age), drift included
    freshness: LRU[dict[str, Any]] = field(default_factory=lambda: LRU(64))
    pages: LRU[Page] = field(default_factory=lambda: LRU(4096, PAGE_BYTES_PER_WORKER))
    # Signs and checks the list's cursors, with the store's key (read once: it never changes).
    cursors: URLSafeSerializer | None = None
