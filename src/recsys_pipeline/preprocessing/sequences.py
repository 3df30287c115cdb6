"""Leave-one-out split of user sequences (the SASRec / BERT4Rec protocol) on polars frames.

Input: a sequence frame (:mod:`recsys_pipeline.datasets.sequences`): ``UserId``, ``ItemId``,
``Time``, sorted by user and, within a user, in sequence order (the row order is the order; equal
``Time`` values are not re-sorted). Per user with at least ``min_items`` events: ``test`` = the
last event, ``valid`` = the second-to-last, ``train`` = the rest; users with fewer events stay
wholly in ``train`` (the SASRec reference's ``data_partition``: ``nfeedback < 3``). With
``holdout="test"`` (generative-recommenders' protocol: no validation item) ``valid`` is empty
and ``train`` keeps every event but the last. Every event lands in exactly one split and each
split keeps the input's row order. No Kedro here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

USER, ITEM, TIME = "UserId", "ItemId", "Time"
COLUMNS = (USER, ITEM, TIME)
#: The SASRec reference's threshold: users with fewer events are not evaluated.
DEFAULT_MIN_ITEMS = 3
#: ``valid_test``: the second-to-last event validates, the last tests; ``test``: the last only
HOLDOUTS = ("valid_test", "test")


@dataclass(frozen=True)
class LeaveOneOut:
    """The three splits (columns ``UserId``, ``ItemId``, ``Time``, input row order).

    Attributes:
        train: every event except the last two of each eligible user.
        valid: the second-to-last event of each eligible user (one row per eligible user).
        test: the last event of each eligible user (one row per eligible user).
    """

    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame


def leave_one_out(
    sequences: pl.DataFrame, min_items: int = DEFAULT_MIN_ITEMS, holdout: str = "valid_test"
) -> LeaveOneOut:
    """Split every user's sequence: last event -> test, second-to-last -> valid, rest -> train.

    Args:
        sequences: ``UserId``, ``ItemId``, ``Time``; a user's rows contiguous and in order.
        min_items: users with fewer events stay wholly in train (>= 2: valid and test need
            two events; 3 leaves every evaluated user at least one train event).
        holdout: ``"valid_test"`` (above) or ``"test"``: no valid event, the second-to-last
            stays in train (generative-recommenders' protocol).

    Returns:
        The :class:`LeaveOneOut` splits.

    Raises:
        ValueError: ``min_items < 2``, an unknown ``holdout`` or a required column is missing.
    """
    if holdout not in HOLDOUTS:
        raise ValueError(f"holdout must be one of {HOLDOUTS}, got {holdout!r}")
    if min_items < 2:
        raise ValueError(
            f"min_items must be >= 2 (valid and test take one event each), got {min_items}"
        )
    missing = [c for c in COLUMNS if c not in sequences.columns]
    if missing:
        raise ValueError(f"sequences lack column(s) {missing}; expected {list(COLUMNS)}")
    n_events = pl.len().over(USER)
    from_end = n_events - 1 - pl.int_range(pl.len()).over(USER)  # 0 = the user's last event
    role = (
        pl.when(n_events < min_items)
        .then(pl.lit("train"))
        .when(from_end == 0)
        .then(pl.lit("test"))
        .when((from_end == 1) & (holdout == "valid_test"))
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    tagged = sequences.select(*COLUMNS, role.alias("role"))
    parts = {
        name: tagged.filter(pl.col("role") == name).drop("role")
        for name in ("train", "valid", "test")
    }
    return LeaveOneOut(**parts)


def sequence_stats(sequences: pl.DataFrame, min_items: int = DEFAULT_MIN_ITEMS) -> dict[str, Any]:
    """Users, items, events, per-user length statistics and the users left wholly in train.

    Args:
        sequences: ``UserId``, ``ItemId``, ``Time``.
        min_items: the leave-one-out threshold.

    Returns:
        ``users``, ``items``, ``events``, ``users_train_only`` (fewer than ``min_items`` events),
        ``users_evaluated``, ``length`` (``mean``, ``median``, ``min``, ``max``).
    """
    lengths = sequences.group_by(USER).len().get_column("len")
    short = int((lengths < min_items).sum())
    return {
        "users": lengths.len(),
        "items": sequences.get_column(ITEM).n_unique(),
        "events": sequences.height,
        "users_train_only": short,
        "users_evaluated": lengths.len() - short,
        "length": {
            "mean": float(lengths.mean()) if lengths.len() else 0.0,
            "median": float(lengths.median()) if lengths.len() else 0.0,
            "min": int(lengths.min()) if lengths.len() else 0,
            "max": int(lengths.max()) if lengths.len() else 0,
        },
    }
