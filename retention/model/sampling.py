"""A training sample of clients, stratified by clinic, for a network too large to train on.

Training reads the clients' whole histories and builds a snapshot per date, so its
memory grows with the network. With ``[evaluation] training_sample_clients`` set, a
training reads only that many clients' rows: every clinic gives its share (largest
remainders, so the total is exact), and within a clinic the clients are drawn by a
seeded hash of their id, so the same copy and seed draw the same sample and a client
stays in it from one training to the next. Whole clients are sampled, never single
snapshots: a client's snapshots are correlated, and the evaluation must not see a
client that training saw at another date.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def stratified_clients(clients: pd.DataFrame, n: int, seed: int) -> list[str] | None:
    """``n`` client ids of ``clients`` (``client_id``, ``clinic_id``), each clinic's share
    of them by its size; None when ``n`` is 0 or covers every client (train on all)."""
    if n <= 0 or n >= len(clients):
        return None
    sizes = clients.groupby("clinic_id", sort=True)["client_id"].size()
    exact = sizes.to_numpy() * n / len(clients)
    quota = np.floor(exact).astype(int)
    # Largest remainders take the clients the floors left over (ties: clinic order).
    left = n - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:left]] += 1
    wanted = dict(zip(sizes.index, quota, strict=True))
    ranked = clients.assign(key=[_draw(seed, str(c)) for c in clients["client_id"]])
    ranked = ranked.sort_values(["clinic_id", "key", "client_id"])
    position = ranked.groupby("clinic_id").cumcount()
    chosen = ranked[position.to_numpy() < ranked["clinic_id"].map(wanted).to_numpy()]
    return sorted(str(c) for c in chosen["client_id"])


def _draw(seed: int, client_id: str) -> str:
    """A client's place in its clinic's draw: a hash of the seed and its id."""
    return hashlib.sha256(f"{seed}:{client_id}".encode()).hexdigest()
