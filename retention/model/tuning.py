"""The booster's tree shape and number of rounds, chosen by rolling-origin validation.

A clinic's data, not a constant, decides how deep the trees go and how long boosting
runs. On the training slice only, the last dates are cut into consecutive validation
blocks; for each block (an *origin*), every shape in ``GRID`` is trained on the
snapshots whose outcome window ended before the origin and stopped early on the block
(LightGBM's AUROC, ``EARLY_STOPPING_ROUNDS`` patience). The shape with the best mean
AUROC on the blocks' still-engaged clients (all clients if a block has no engaged
outcome of both kinds) wins; ties go to the earlier, simpler entry. The number of
rounds is the mean of that shape's early-stopping points. Deterministic given the
rows, the grid and the seed. With too little history for any block, the defaults are
used and the metadata says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from retention.model.booster import DEFAULT_SHAPE, NUM_BOOST_ROUND, dataset, lgb_params, to_matrix

# A small documented grid rather than a search: a clinic's few thousand outcomes cannot
# tell finer settings apart, and every entry costs a fit per block. From shallow trees
# with large leaves (few outcomes, strong regularity) to deeper ones (many outcomes).
GRID: tuple[dict[str, Any], ...] = (
    DEFAULT_SHAPE,
    {"num_leaves": 7, "min_data_in_leaf": 100},
    {"num_leaves": 31, "min_data_in_leaf": 40},
    {"num_leaves": 15, "min_data_in_leaf": 150},
)
MAX_ROUNDS = 1000
MIN_ROUNDS = 50
EARLY_STOPPING_ROUNDS = 50
BLOCKS = 2
BLOCK_SHARE = 0.15  # of the training slice's snapshot dates, per validation block
MIN_TRAIN_DATES = 4


@dataclass(frozen=True)
class Tuning:
    """The chosen shape and rounds, and the validation behind the choice."""

    shape: dict[str, Any]
    num_boost_round: int
    blocks: list[dict[str, Any]] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validation_blocks(
    rows: pd.DataFrame, horizon_days: int, blocks: int = BLOCKS, share: float = BLOCK_SHARE,
) -> list[tuple[np.ndarray, np.ndarray, dict[str, Any]]]:
    """(train mask, validation mask, description) per origin, oldest first.

    Each block's training rows end a full horizon before the block starts: their
    outcomes were known at the origin, as they will be when the model is used.
    """
    dates = sorted(rows["as_of"].dt.date.unique())
    size = max(2, round(len(dates) * share))
    as_of = rows["as_of"].dt.date.to_numpy()
    y = rows["label"].to_numpy()
    out = []
    for k in range(blocks, 0, -1):
        block = dates[len(dates) - k * size: len(dates) - (k - 1) * size]
        if len(block) < 2:
            continue
        train_dates = [d for d in dates if d <= block[0] - timedelta(days=horizon_days)]
        if len(train_dates) < MIN_TRAIN_DATES:
            continue
        train = as_of <= train_dates[-1]
        valid = (as_of >= block[0]) & (as_of <= block[-1])
        if len(np.unique(y[train])) < 2 or len(np.unique(y[valid])) < 2:
            continue
        out.append((train, valid, {
            "origin": block[0].isoformat(), "until": block[-1].isoformat(),
            "train_until": train_dates[-1].isoformat(),
            "train_rows": int(train.sum()), "valid_rows": int(valid.sum()),
        }))
    return out


def tune(
    rows: pd.DataFrame, *, horizon_days: int, seed: int, engaged: np.ndarray,
    grid: tuple[dict[str, Any], ...] = GRID,
) -> Tuning:
    """Choose the tree shape and rounds on ``rows`` (the training slice) alone.

    ``engaged`` marks the rows of still-engaged clients, whose ranking is judged.
    """
    blocks = validation_blocks(rows, horizon_days)
    if not blocks:
        return Tuning(dict(grid[0]), NUM_BOOST_ROUND,
                      note="too little history for a validation block: defaults used")
    x = to_matrix(rows)
    y = rows["label"].to_numpy()
    use_engaged = all(len(np.unique(y[valid & engaged])) == 2 for _, valid, _ in blocks)
    trials: list[dict[str, Any]] = []
    for shape in grid:
        aurocs, rounds = [], []
        for train, valid, _ in blocks:
            booster = _early_stopped(x[train], y[train], x[valid], y[valid], seed, shape)
            judged = valid & engaged if use_engaged else valid
            score = booster.predict(x[judged], raw_score=True,
                                    num_iteration=booster.best_iteration)
            aurocs.append(float(roc_auc_score(y[judged], score)))
            rounds.append(int(booster.best_iteration or MAX_ROUNDS))
        trials.append({"shape": dict(shape), "auroc": aurocs, "mean_auroc": float(np.mean(aurocs)),
                       "best_iteration": rounds})
    best = max(range(len(trials)), key=lambda i: (round(trials[i]["mean_auroc"], 4), -i))
    chosen = trials[best]
    return Tuning(
        dict(chosen["shape"]),
        max(MIN_ROUNDS, round(float(np.mean(chosen["best_iteration"])))),
        [b for _, _, b in blocks], trials,
        note="judged on still-engaged clients" if use_engaged
        else "judged on all clients (a block had no engaged outcome of both kinds)",
    )


def _early_stopped(x_train: pd.DataFrame, y_train: np.ndarray, x_valid: pd.DataFrame,
                   y_valid: np.ndarray, seed: int, shape: dict[str, Any]) -> lgb.Booster:
    train = dataset(x_train, y_train)
    valid = lgb.Dataset(x_valid, label=y_valid, reference=train)
    params = {**lgb_params(seed, shape), "metric": "auc"}
    return lgb.train(params, train, num_boost_round=MAX_ROUNDS, valid_sets=[valid],
                     callbacks=[lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False)])
