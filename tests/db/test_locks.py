"""Locks across processes: a waiter takes the lock once its holder lets go, not before."""

from __future__ import annotations

import threading
import time

from retention.db import locks
from retention.db.engines import store_engine


def test_a_waiter_takes_the_lock_when_its_holder_lets_go(store_url: str) -> None:
    engine = store_engine(store_url)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:  # another job's run, on a connection (or open file) of its own
        with locks.try_lock(engine, locks.ETL) as got:
            assert got
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(30)
    with locks.try_lock(engine, locks.ETL) as got:
        assert not got
    with locks.try_lock(engine, locks.NIGHTLY) as got:  # another name is another lock
        assert got
    def let_go() -> None:
        # A relative sleep, not threading.Timer: a timed condition wait never wakes
        # under libfaketime set in the past (the pinned-date runs of the suite).
        time.sleep(0.2)
        release.set()

    threading.Thread(target=let_go).start()
    with locks.try_lock(engine, locks.ETL, wait_seconds=30, poll_seconds=0.05) as got:
        assert got and release.is_set()
    thread.join(30)
    engine.dispose()
