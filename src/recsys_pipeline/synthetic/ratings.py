"""Synthetic MovieLens-like ratings for hermetic tests and speed benchmarks (no Kedro).

:func:`generate_ratings` draws a ratings frame with a learnable structure, vectorised in numpy
(an ML-20m-sized set, 20M ratings of 138k users on 27k items, takes seconds);
:func:`write_ratings` writes it in the layout of a MovieLens variant (``u.data``, ``ratings.dat``
or ``ratings.csv``, optionally gzipped), to be read back by
:func:`recsys_pipeline.datasets.movielens.read_ratings`.

Model: every item belongs to one of ``n_topics`` topics and has a Zipf popularity (a random
permutation of ranks); every user has a favourite topic. A user's ratings are drawn, without
repeats, with probability ``topic_affinity`` among the items of the favourite topic and otherwise
among all items, both proportionally to popularity. Ratings of favourite-topic items are higher
on average. Users' rating counts are log-normal (clipped to ``[min_user_ratings,
n_items // 2]``), so some users have fewer than 20 ratings. Each user is active over a random
window of the time span; rating times are uniform in it (integer seconds, ties possible).
"""

from __future__ import annotations

import gzip
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys_pipeline.preprocessing.ncf import first_new

logger = logging.getLogger(__name__)

#: File name per MovieLens variant.
FILES = {
    "ml-100k": "u.data",
    "ml-1m": "ratings.dat",
    "ml-20m": "ratings.csv",
    "ml-25m": "ratings.csv",
}


@dataclass(frozen=True)
class RatingsConfig:
    """Size and shape of a synthetic rating set.

    Attributes:
        n_users: users (ids 1..n_users, every one has ratings).
        n_items: items (ids 1..n_items; unpopular ones may get no rating).
        n_ratings: ratings in total (exact unless the clipping bounds make it impossible).
        n_topics: latent topics of items and users.
        topic_affinity: probability that a rating is drawn from the user's favourite topic.
        zipf_exponent: item popularity is proportional to ``rank ** -zipf_exponent``.
        min_user_ratings: the least ratings of a user (below 20 so that the NCF filter acts).
        activity_sigma: sigma of the log-normal user activity.
        start: first possible timestamp (epoch seconds; default 1997-09-20).
        span_days: length of the time span.
        seed: numpy seed; the same config gives the same ratings.
    """

    n_users: int = 1_000
    n_items: int = 500
    n_ratings: int = 50_000
    n_topics: int = 8
    topic_affinity: float = 0.8
    zipf_exponent: float = 0.9
    min_user_ratings: int = 5
    activity_sigma: float = 1.0
    start: int = 874_724_710
    span_days: int = 1_000
    seed: int = 0


def _user_counts(config: RatingsConfig, rng: np.random.Generator) -> np.ndarray:
    """Log-normal rating counts per user, clipped, adjusted to sum to ``n_ratings`` if possible."""
    low = min(config.min_user_ratings, config.n_items // 2)
    high = max(config.n_items // 2, low)
    weights = rng.lognormal(0.0, config.activity_sigma, size=config.n_users)
    counts = np.clip(np.floor(weights / weights.sum() * config.n_ratings), low, high).astype(
        np.int64
    )
    for _ in range(20):  # spread the rounding/clipping difference over users with slack
        diff = config.n_ratings - int(counts.sum())
        if diff == 0:
            break
        slack = np.flatnonzero(counts < high) if diff > 0 else np.flatnonzero(counts > low)
        if slack.size == 0:
            break
        picks = rng.choice(slack, size=abs(diff), replace=True)
        counts += np.sign(diff) * np.bincount(picks, minlength=counts.size)
        counts = np.clip(counts, low, high)
    return counts


def _draw_from(
    cum: np.ndarray, members: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` items of ``members`` (with replacement) with the probabilities of cumsum ``cum``."""
    idx = np.searchsorted(cum, rng.random(n) * cum[-1], side="right")
    return members[np.minimum(idx, members.size - 1)]


def generate_ratings(config: RatingsConfig) -> pl.DataFrame:
    """Draw a synthetic rating set (see the module docstring for the model).

    Returns:
        ``UserId`` Int64 (1..n_users), ``ItemId`` Int64 (1..n_items), ``Rating`` Float64
        (1..5, whole stars), ``Time`` Int64 (epoch seconds); no repeated (UserId, ItemId); sorted
        by (UserId, Time).
    """
    rng = np.random.default_rng(config.seed)
    n_items, n_topics = config.n_items, max(1, min(config.n_topics, config.n_items))
    popularity = np.arange(1, n_items + 1, dtype=np.float64) ** -config.zipf_exponent
    popularity = popularity[rng.permutation(n_items)]
    item_topic = rng.integers(0, n_topics, size=n_items)
    all_items = np.arange(n_items, dtype=np.int64)
    all_cum = np.cumsum(popularity)
    topic_items = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    topic_cum = [np.cumsum(popularity[m]) for m in topic_items]
    user_topic = rng.integers(0, n_topics, size=config.n_users)
    need = _user_counts(config, rng)

    chunks: list[np.ndarray] = []  # distinct keys user * n_items + item, per round
    for round_ in range(30):
        pending = np.flatnonzero(need)
        if pending.size == 0:
            break
        owner = np.repeat(pending, need[pending] + (need[pending] // 4 if round_ else 0))
        if round_ < 4:
            in_topic = rng.random(owner.size) < config.topic_affinity
        else:  # late rounds fill heavy users of small topics from all items, uniformly
            in_topic = np.zeros(owner.size, dtype=bool)
        items = np.empty(owner.size, dtype=np.int64)
        out = ~in_topic
        items[out] = (
            _draw_from(all_cum, all_items, int(out.sum()), rng)
            if round_ < 4
            else rng.integers(0, n_items, size=int(out.sum()))
        )
        topics = user_topic[owner]
        for t in range(n_topics):
            sel = in_topic & (topics == t)
            if sel.any() and topic_items[t].size:
                items[sel] = _draw_from(topic_cum[t], topic_items[t], int(sel.sum()), rng)
            elif sel.any():
                items[sel] = _draw_from(all_cum, all_items, int(sel.sum()), rng)
        keys = owner * n_items + items
        excluded = np.empty(0, dtype=np.int64)
        if chunks:  # earlier rounds' ratings of the pending users
            is_pending = np.zeros(config.n_users, dtype=bool)
            is_pending[pending] = True
            excluded = np.sort(np.concatenate([c[is_pending[c // n_items]] for c in chunks]))
        keys = keys[first_new(keys, excluded, config.n_users * n_items)]
        owner = keys // n_items
        new_group = np.ones(owner.size, dtype=bool)
        new_group[1:] = owner[1:] != owner[:-1]
        starts = np.flatnonzero(new_group)
        rank = np.arange(owner.size) - starts[np.cumsum(new_group) - 1]
        keys = keys[rank < need[owner]]
        need -= np.bincount(keys // n_items, minlength=config.n_users)
        chunks.append(keys)
    if need.any():
        logger.warning("synthetic ratings: %d ratings could not be placed", int(need.sum()))
    taken = np.concatenate(chunks)

    users = taken // n_items
    items = taken % n_items
    fav = item_topic[items] == user_topic[users]
    stars = np.clip(np.rint(3.0 + 1.0 * fav + rng.normal(0.0, 0.9, size=taken.size)), 1, 5)
    span = config.span_days * 86_400
    n_users = config.n_users
    begin = rng.integers(0, span, size=n_users)
    length = np.minimum(rng.exponential(span / 6, size=n_users).astype(np.int64) + 3_600, span)
    begin = np.minimum(begin, span - length)
    times = config.start + begin[users] + (rng.random(taken.size) * length[users]).astype(np.int64)
    df = pl.DataFrame(
        {
            "UserId": users + 1,
            "ItemId": items + 1,
            "Rating": stars.astype(np.float64),
            "Time": times.astype(np.int64),
        },
        schema={"UserId": pl.Int64, "ItemId": pl.Int64, "Rating": pl.Float64, "Time": pl.Int64},
    )
    return df.sort(["UserId", "Time"], maintain_order=True)


def write_ratings(
    variant: str,
    directory: str | Path,
    config: RatingsConfig | None = None,
    *,
    ratings: pl.DataFrame | None = None,
    gzipped: bool = False,
) -> Path:
    """Write synthetic (or given) ratings in a MovieLens variant's layout; returns the file path.

    Args:
        variant: ``ml-100k`` (``u.data``: tab-separated, no header, whole-star ratings),
            ``ml-1m`` (``ratings.dat``: ``::``-separated, no header), ``ml-20m`` / ``ml-25m``
            (``ratings.csv``: header ``userId,movieId,rating,timestamp``, ratings like ``4.0``).
        directory: target folder (created).
        config: what :func:`generate_ratings` draws, when ``ratings`` is None.
        ratings: a ratings frame (``UserId``, ``ItemId``, ``Rating``, ``Time``) to write instead.
        gzipped: also gzip the file (``<name>.gz``; the plain file is removed).
    """
    if variant not in FILES:
        raise ValueError(f"unknown MovieLens variant {variant!r}; known: {sorted(FILES)}")
    if ratings is None:
        ratings = generate_ratings(config or RatingsConfig())
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILES[variant]
    if variant in ("ml-20m", "ml-25m"):
        ratings.select(
            pl.col("UserId").alias("userId"),
            pl.col("ItemId").alias("movieId"),
            pl.col("Rating").round(1).alias("rating"),
            pl.col("Time").alias("timestamp"),
        ).write_csv(path, float_precision=1)
    else:
        separator = "\t" if variant == "ml-100k" else "::"
        line = pl.concat_str(
            [
                pl.col("UserId").cast(pl.String),
                pl.col("ItemId").cast(pl.String),
                pl.col("Rating").round(0).cast(pl.Int64).cast(pl.String),
                pl.col("Time").cast(pl.String),
            ],
            separator=separator,
        )
        ratings.select(line.alias("line")).write_csv(
            path, include_header=False, quote_style="never"
        )
    if gzipped:
        gz = path.with_name(path.name + ".gz")
        with open(path, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, length=16 << 20)
        path.unlink()
        path = gz
    logger.info("wrote %d synthetic %s ratings to %s", ratings.height, variant, path)
    return path
