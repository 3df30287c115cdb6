"""Rating-data protocols on polars frames (no Kedro): the NCF leave-last-out split with sampled
negatives (legacy, only to compare with NCF numbers) and the recommended global time split.

Input: a *ratings frame* with ``UserId`` Int64, ``ItemId`` Int64, ``Time`` Int64 (epoch seconds)
and optionally ``Rating``. Every rating counts as an implicit positive. Outputs are polars frames
with raw ids: splits ``UserId``, ``ItemId``, ``Time`` sorted by (UserId, Time, ItemId); negatives
``UserId``, ``ItemId`` sorted by UserId (draw order within a user).

NCF protocol (He et al., WWW 2017; ``shared/spec/evaluation.md``, "Sampled ranking"): keep users
with ``>= min_user_ratings`` ratings; per user, sort by (Time, ItemId): the last interaction is
``test``, the second-to-last ``valid``, the rest ``train``; per user ``n_negatives`` items the
user never rated (over the whole filtered data) are drawn uniformly, without replacement, once for
test and once, independently, for valid (model selection must use valid, never test). Items are
all items of the filtered data. This split leaks the future into training (a user's test item
can be older than other users' training items): use it only under its own name.

Global time split (the recommended protocol): two cut times ``cut_valid <= cut_test``;
``time_train`` = Time < cut_valid, ``time_valid`` = cut_valid <= Time < cut_test, ``time_test`` =
Time >= cut_test. By default the cuts are the times that put the last ``test_fraction`` of all
ratings in test and the ``valid_fraction`` before them in valid (ties at a cut go to the later
split, so the fractions are approximate). It runs on all ratings, without the NCF user filter
(counting a user's ratings over the whole period would use the future). Users and items absent
from ``time_train`` stay in ``time_valid``/``time_test``: the evaluation drops unknown ones.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys_pipeline.preprocessing.protocol import ITEM, TIME, sort_rows

logger = logging.getLogger(__name__)

USER = "UserId"
SPLIT_COLUMNS = (USER, ITEM, TIME)
NEGATIVE_COLUMNS = (USER, ITEM)
#: Extra draws per needed negative on top of the expected rejections (bulk rejection sampling).
_OVERSAMPLE = 1.2


@dataclass(frozen=True)
class NCFConfig:
    """Parameters of both protocols (``conf/base/parameters_preprocess_movielens.yml``).

    Attributes:
        min_user_ratings: NCF keeps users with at least this many ratings (>= 3: one train, one
            valid and one test row per user).
        n_negatives: sampled negatives per user, for test and for valid.
        seed: seed of the negative sampling (test and valid use independent streams of it).
        test_fraction: share of all ratings after the test cut (time split), when ``cut_test`` is
            None.
        valid_fraction: share of all ratings between the two cuts, when ``cut_valid`` is None.
        cut_test: fixed test cut (epoch seconds) or None.
        cut_valid: fixed valid cut (epoch seconds) or None.
    """

    min_user_ratings: int = 20
    n_negatives: int = 100
    seed: int = 42
    test_fraction: float = 0.1
    valid_fraction: float = 0.1
    cut_test: int | None = None
    cut_valid: int | None = None

    def __post_init__(self) -> None:
        """Reject parameters the protocols cannot honour."""
        if self.min_user_ratings < 3:
            raise ValueError(
                f"min_user_ratings={self.min_user_ratings}: leave-last-out needs >= 3 ratings "
                "per user (train, valid, test)"
            )
        if self.n_negatives < 1:
            raise ValueError(f"n_negatives={self.n_negatives} must be >= 1")
        if not (0 < self.test_fraction < 1 and 0 <= self.valid_fraction < 1):
            raise ValueError("test_fraction must be in (0, 1) and valid_fraction in [0, 1)")
        if self.test_fraction + self.valid_fraction >= 1:
            raise ValueError("test_fraction + valid_fraction must be < 1")


@dataclass
class NCFSplit:
    """The NCF leave-last-out split: frames as described in the module docstring."""

    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    valid_negatives: pl.DataFrame
    test_negatives: pl.DataFrame


def deduplicate_ratings(ratings: pl.DataFrame) -> pl.DataFrame:
    """Keep each (UserId, ItemId) pair once, at its earliest time (MovieLens has none twice).

    Returns ``UserId``, ``ItemId``, ``Time`` and any other columns of ``ratings`` (e.g.
    ``Rating``), sorted by (UserId, Time, ItemId).
    """
    columns = [*SPLIT_COLUMNS, *(c for c in ratings.columns if c not in SPLIT_COLUMNS)]
    out = sort_rows(ratings.select(columns), USER, TIME, ITEM)
    dedup = out.unique(subset=[USER, ITEM], keep="first", maintain_order=True)
    if dedup.height < out.height:
        logger.warning(
            "dropped %d repeated (UserId, ItemId) ratings (kept the earliest)",
            out.height - dedup.height,
        )
    return dedup


def filter_min_user_ratings(ratings: pl.DataFrame, min_user_ratings: int) -> pl.DataFrame:
    """Rows of users with at least ``min_user_ratings`` ratings (row order kept)."""
    counts = ratings.group_by(USER).len()
    keep = counts.filter(pl.col("len") >= min_user_ratings).select(USER)
    out = ratings.join(keep, on=USER, how="semi", maintain_order="left")
    logger.info(
        "users with >= %d ratings: %d of %d (%d of %d ratings)",
        min_user_ratings,
        keep.height,
        counts.height,
        out.height,
        ratings.height,
    )
    return out


def leave_last_out(
    ratings: pl.DataFrame,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Per user, sorted by (Time, ItemId): last row -> test, second-to-last -> valid, rest -> train.

    Args:
        ratings: ``UserId``, ``ItemId``, ``Time``; every user with at least 3 rows.

    Returns:
        ``(train, valid, test)``, each ``UserId``, ``ItemId``, ``Time`` sorted by
        (UserId, Time, ItemId); valid and test have one row per user.
    """
    ordered = sort_rows(ratings.select(SPLIT_COLUMNS), USER, TIME, ITEM)
    users = ordered.get_column(USER).to_numpy()
    n = users.size
    last = np.ones(n, dtype=bool)
    last[:-1] = users[:-1] != users[1:]
    second = np.zeros(n, dtype=bool)
    second[:-1] = last[1:] & ~last[:-1]
    short = int(last.sum() - second.sum())
    if short:
        raise ValueError(f"leave_last_out: {short} user(s) have a single rating; filter first")
    train_mask = ~(last | second)
    return (
        ordered.filter(pl.Series(train_mask)),
        ordered.filter(pl.Series(second)),
        ordered.filter(pl.Series(last)),
    )


def sample_negatives(
    positives: pl.DataFrame,
    items: np.ndarray,
    n_negatives: int,
    seed: int | np.random.SeedSequence,
) -> pl.DataFrame:
    """Per user of ``positives``, ``n_negatives`` distinct items of ``items`` the user never rated.

    Uniform without replacement over the user's unrated items: i.i.d. uniform draws in bulk; a
    draw is rejected when the user rated the item or drew it earlier, and the first
    ``n_negatives`` accepted draws are kept (the first distinct values of an i.i.d. uniform
    stream are a uniform sample without replacement); users left short draw again. Vectorised
    (sorts, no python loop over users): 138k users x 100 negatives take a few seconds.

    Args:
        positives: ``UserId``, ``ItemId``: every rating of every user (all splits).
        items: the item universe (1-d integer array; repeated values are ignored).
        n_negatives: negatives per user.
        seed: numpy seed; the same seed and inputs give the same sample.

    Returns:
        ``UserId``, ``ItemId`` (Int64), ``n_negatives`` rows per user, sorted by UserId and,
        within a user, in draw order (a uniformly random order).

    Raises:
        ValueError: a user rated so many items that fewer than ``n_negatives`` are left.
    """
    universe = np.unique(np.asarray(items, dtype=np.int64))
    n_items = universe.size
    user_ids = positives.get_column(USER).unique().sort().to_numpy().astype(np.int64)
    n_users = user_ids.size
    # dense (user index, item index) keys of the ratings, sorted and distinct
    dense = positives.lazy().select(
        pl.col(USER).replace_strict(user_ids, np.arange(n_users), return_dtype=pl.Int64),
        pl.col(ITEM).replace_strict(
            universe, np.arange(n_items), default=-1, return_dtype=pl.Int64
        ),
    )
    rated = (
        dense.filter(pl.col(ITEM) >= 0)
        .select(pl.col(USER) * n_items + pl.col(ITEM))
        .collect()
        .to_series()
        .to_numpy()
    )
    rated = np.sort(rated)
    if rated.size:
        rated = rated[np.concatenate([[True], rated[1:] != rated[:-1]])]
    n_rated = np.bincount(rated // n_items, minlength=n_users)
    free = n_items - n_rated
    if (free < n_negatives).any():
        bad = user_ids[free < n_negatives][:5].tolist()
        raise ValueError(
            f"{int((free < n_negatives).sum())} user(s) rated more than {n_items - n_negatives} "
            f"of the {n_items} items, so fewer than {n_negatives} negatives are left "
            f"(e.g. UserId {bad})"
        )
    rng = np.random.default_rng(seed)
    need = np.full(n_users, n_negatives, dtype=np.int64)
    chunks: list[np.ndarray] = []
    rounds = 0
    while need.any():
        rounds += 1
        pending = np.flatnonzero(need)
        excluded = rated
        if rounds > 1:  # only the pending users' rated and already drawn items matter now
            is_pending = np.zeros(n_users, dtype=bool)
            is_pending[pending] = True
            excluded = np.concatenate(
                [rated[is_pending[rated // n_items]]]
                + [np.sort(c[is_pending[c // n_items]]) for c in chunks]
            )
            excluded.sort()
        density = n_rated[pending] / n_items
        draws = np.ceil(need[pending] / np.maximum(1 - density, 1e-3) * _OVERSAMPLE)
        owner = np.repeat(pending, draws.astype(np.int64) + 8)
        keys = owner * n_items + rng.integers(0, n_items, size=owner.size)
        keys = keys[first_new(keys, excluded, n_users * n_items)]  # draw order kept
        owner = keys // n_items
        new_group = np.concatenate([[True], owner[1:] != owner[:-1]])
        starts = np.flatnonzero(new_group)
        rank = np.arange(owner.size) - starts[np.cumsum(new_group) - 1]
        keys = keys[rank < need[owner]]
        need -= np.bincount(keys // n_items, minlength=n_users)
        chunks.append(keys)
    taken = np.concatenate(chunks)
    if len(chunks) > 1:  # each chunk is grouped by user: a stable sort merges the runs in O(n)
        taken = taken[np.argsort(taken // n_items, kind="stable")]
    logger.debug("sampled %d negatives in %d round(s)", taken.size, rounds)
    return pl.DataFrame(
        {USER: user_ids[taken // n_items], ITEM: universe[taken % n_items]},
        schema={USER: pl.Int64, ITEM: pl.Int64},
    )


def first_new(keys: np.ndarray, excluded: np.ndarray, n_keys: int) -> np.ndarray:
    """Positions (ascending) of the draws in ``keys`` that are not in the sorted ``excluded``
    and are the first occurrence of their value.

    Sort-based: draw positions are packed into the low bits of the key when both fit in 63 bits
    (one ``np.sort``), else a stable argsort.
    """
    n = keys.size
    shift = max(int(n).bit_length(), 1)
    if int(n_keys).bit_length() + shift <= 63:
        packed = np.sort((keys << shift) | np.arange(n, dtype=np.int64))
        skeys = packed >> shift
        spos = packed & ((1 << shift) - 1)
    else:
        spos = np.argsort(keys, kind="stable")
        skeys = keys[spos]
    first = np.ones(n, dtype=bool)
    first[1:] = skeys[1:] != skeys[:-1]
    if excluded.size:
        pos = np.minimum(np.searchsorted(excluded, skeys), excluded.size - 1)
        first &= excluded[pos] != skeys
    mask = np.zeros(n, dtype=bool)
    mask[spos[first]] = True
    return np.flatnonzero(mask)


def ncf_split(ratings: pl.DataFrame, config: NCFConfig) -> NCFSplit:
    """The whole NCF protocol: dedupe, user filter, leave-last-out, test and valid negatives.

    Args:
        ratings: ``UserId``, ``ItemId``, ``Time`` (extra columns are ignored).
        config: ``min_user_ratings``, ``n_negatives``, ``seed``.

    Returns:
        An :class:`NCFSplit`; negatives are drawn from the items of the filtered data, test with
        ``SeedSequence(seed).spawn(2)[0]``, valid with ``[1]``.
    """
    kept = filter_min_user_ratings(deduplicate_ratings(ratings), config.min_user_ratings)
    if kept.height == 0:
        raise ValueError(f"no user has >= {config.min_user_ratings} ratings")
    train, valid, test = leave_last_out(kept)
    items = kept.get_column(ITEM).unique().to_numpy()
    test_seed, valid_seed = np.random.SeedSequence(config.seed).spawn(2)
    test_negatives = sample_negatives(kept, items, config.n_negatives, test_seed)
    valid_negatives = sample_negatives(kept, items, config.n_negatives, valid_seed)
    logger.info(
        "NCF split: %d users, %d items, train %d rows, %d negatives per user",
        test.height,
        items.size,
        train.height,
        config.n_negatives,
    )
    return NCFSplit(train, valid, test, valid_negatives, test_negatives)


def time_cuts(
    ratings: pl.DataFrame,
    test_fraction: float = 0.1,
    valid_fraction: float = 0.1,
    cut_test: int | None = None,
    cut_valid: int | None = None,
) -> dict[str, int]:
    """The cut times of the global time split (epoch seconds), given or from quantiles.

    ``cut_test`` is the Time of the rating at position ``ceil(n * (1 - test_fraction))`` in time
    order (so about the last ``test_fraction`` of the ratings are at or after it); ``cut_valid``
    likewise at ``ceil(n * (1 - test_fraction - valid_fraction))``.

    Returns:
        ``{"cut_valid": ..., "cut_test": ...}`` with ``cut_valid <= cut_test``.
    """
    times = np.sort(ratings.get_column(TIME).to_numpy())
    n = times.size
    if n == 0:
        raise ValueError("time_cuts: no ratings")

    def at(fraction: float) -> int:
        return int(times[min(math.ceil(n * (1 - fraction)), n - 1)])

    test = int(cut_test) if cut_test is not None else at(test_fraction)
    valid = int(cut_valid) if cut_valid is not None else at(test_fraction + valid_fraction)
    valid = min(valid, test) if cut_valid is None else valid
    if valid > test:
        raise ValueError(f"cut_valid={valid} is after cut_test={test}")
    return {"cut_valid": valid, "cut_test": test}


def time_split(
    ratings: pl.DataFrame, cut_valid: int, cut_test: int
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Global time split: ``(time_train, time_valid, time_test)``.

    Args:
        ratings: ``UserId``, ``ItemId``, ``Time`` (deduplicated; extra columns ignored).
        cut_valid: train is ``Time < cut_valid``.
        cut_test: valid is ``cut_valid <= Time < cut_test``, test ``Time >= cut_test``.

    Returns:
        Three frames ``UserId``, ``ItemId``, ``Time`` sorted by (UserId, Time, ItemId).
    """
    ordered = sort_rows(ratings.select(SPLIT_COLUMNS), USER, TIME, ITEM)
    t = pl.col(TIME)
    train = ordered.filter(t < cut_valid)
    valid = ordered.filter((t >= cut_valid) & (t < cut_test))
    test = ordered.filter(t >= cut_test)
    logger.info(
        "time split at cut_valid=%d, cut_test=%d: train %d, valid %d, test %d ratings",
        cut_valid,
        cut_test,
        train.height,
        valid.height,
        test.height,
    )
    return train, valid, test


def split_stats(df: pl.DataFrame) -> dict[str, int | None]:
    """Rows, users, items and time range (epoch seconds) of a split or negatives frame."""
    stats: dict[str, int | None] = {
        "rows": df.height,
        "users": df.get_column(USER).n_unique(),
        "items": df.get_column(ITEM).n_unique(),
    }
    if TIME in df.columns:
        stats["min_time"] = df.get_column(TIME).min() if df.height else None
        stats["max_time"] = df.get_column(TIME).max() if df.height else None
    return stats
