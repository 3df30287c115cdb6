"""Seeded synthetic user sequences (SASRec-style data) and writers of their raw formats (no Kedro).

:func:`generate_sequences` draws a sequence frame (``UserId``, ``ItemId``, ``Time`` epoch
seconds) with a learnable first-order structure, vectorised over users in numpy (2,000 users take
a few milliseconds). :func:`write_pairs`, :func:`write_lines` and :func:`write_movielens` write it
in the layouts that :func:`recsys_pipeline.datasets.sequences.read_sequences` reads (``pairs``,
``lines``, MovieLens ``u.data`` / ``ratings.dat``), plain or gzipped by the file name's ``.gz``.

Model:

- items ``1..n_items`` have a Zipf popularity ``pop ∝ rank ** -zipf_exponent`` over a seeded
  permutation of ranks;
- a sparse first-order Markov chain: each item has ``n_successors`` distinct successors (never
  itself, drawn by a flattened popularity); the first item of a user is drawn from ``pop``, every
  next item with probability ``p_follow`` uniformly among the previous item's successors, else
  from ``pop`` (noise, which also makes repeats);
- user lengths are log-normal (heavy-tailed) around ``mean_length``, clipped to
  ``[min_length, max_length]``; the first ``n_short_users`` users get 1 or 2 events instead (the
  leave-one-out split leaves them wholly in train);
- times: each user starts at a uniform second in ``[start, start + span_days)``; gaps are
  log-normal (median about 15 minutes) and a fraction ``p_equal_time`` of them is 0 (equal
  times, in sequence order).
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

USER, ITEM, TIME = "UserId", "ItemId", "Time"


@dataclass(frozen=True)
class SequenceConfig:
    """Size and shape of a synthetic sequence set.

    Attributes:
        n_users: users (ids ``1..n_users``).
        n_items: items (ids ``1..n_items``; unpopular ones may never occur).
        mean_length: mean of a user's sequence length (before clipping).
        length_sigma: sigma of the log-normal length (larger: heavier tail).
        min_length: the least length of an ordinary user.
        max_length: the largest length.
        n_short_users: users with 1 or 2 events (the first ones by id).
        n_successors: successors per item in the Markov chain.
        p_follow: probability that the next item follows the chain (else popularity noise).
        zipf_exponent: popularity exponent.
        p_equal_time: fraction of consecutive events of a user in the same second.
        start: first possible timestamp (epoch seconds; default 2000-01-01).
        span_days: range of the users' start times.
        seed: numpy seed; the same config gives the same data.
    """

    n_users: int = 2_000
    n_items: int = 500
    mean_length: float = 12.0
    length_sigma: float = 0.8
    min_length: int = 3
    max_length: int = 200
    n_short_users: int = 20
    n_successors: int = 4
    p_follow: float = 0.7
    zipf_exponent: float = 1.0
    p_equal_time: float = 0.05
    start: int = 946_684_800
    span_days: int = 365
    seed: int = 0

    def __post_init__(self) -> None:
        """Reject sizes the model cannot draw."""
        if self.n_items < self.n_successors + 1 or self.n_successors < 1:
            raise ValueError("need 1 <= n_successors < n_items")
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError("need 1 <= min_length <= max_length")
        if not 0 <= self.n_short_users <= self.n_users:
            raise ValueError("need 0 <= n_short_users <= n_users")
        if not 0.0 <= self.p_follow <= 1.0 or not 0.0 <= self.p_equal_time <= 1.0:
            raise ValueError("p_follow and p_equal_time are probabilities")


@dataclass(frozen=True)
class MarkovChain:
    """The ground truth: ``successors [n_items, n_successors]`` and ``popularity [n_items]``.

    Row ``i`` of ``successors`` holds the item ids (1-based) following item ``i + 1``;
    ``popularity[i]`` is the probability of item ``i + 1`` under the noise component.
    """

    successors: np.ndarray
    popularity: np.ndarray


def markov_chain(config: SequenceConfig) -> MarkovChain:
    """The seeded chain of ``config`` (the same the generator uses)."""
    rng = np.random.default_rng([config.seed, 1])
    ranks = rng.permutation(config.n_items) + 1
    pop = ranks.astype(np.float64) ** -config.zipf_exponent
    pop /= pop.sum()
    flat = np.sqrt(pop)
    successors = np.empty((config.n_items, config.n_successors), dtype=np.int64)
    for i in range(config.n_items):
        weights = flat.copy()
        weights[i] = 0.0
        successors[i] = rng.choice(
            config.n_items, config.n_successors, replace=False, p=weights / weights.sum()
        )
    return MarkovChain(successors + 1, pop)


def _lengths(config: SequenceConfig, rng: np.random.Generator) -> np.ndarray:
    """Per-user lengths ``[n_users]``: log-normal, clipped; the first users short."""
    sigma = config.length_sigma
    mu = np.log(config.mean_length) - sigma**2 / 2
    lengths = np.clip(
        np.round(rng.lognormal(mu, sigma, config.n_users)), config.min_length, config.max_length
    ).astype(np.int64)
    lengths[: config.n_short_users] = rng.integers(1, 3, config.n_short_users)
    return lengths


def generate_sequences(config: SequenceConfig | None = None) -> pl.DataFrame:
    """Draw the sequences of ``config``.

    Returns:
        ``UserId``, ``ItemId``, ``Time`` (Int64; epoch seconds, non-decreasing per user), sorted by
        user and sequence position.
    """
    config = config or SequenceConfig()
    chain = markov_chain(config)
    rng = np.random.default_rng([config.seed, 2])
    lengths = _lengths(config, rng)
    steps = int(lengths.max())
    items = np.zeros((config.n_users, steps), dtype=np.int64)  # [U, T], 1-based ids
    items[:, 0] = rng.choice(config.n_items, config.n_users, p=chain.popularity) + 1
    for t in range(1, steps):
        follow = rng.random(config.n_users) < config.p_follow
        pick = rng.integers(0, config.n_successors, config.n_users)
        chained = chain.successors[items[:, t - 1] - 1, pick]
        noise = rng.choice(config.n_items, config.n_users, p=chain.popularity) + 1
        items[:, t] = np.where(follow, chained, noise)
    gaps = np.round(rng.lognormal(np.log(900.0), 1.5, (config.n_users, steps))).astype(np.int64)
    gaps[rng.random((config.n_users, steps)) < config.p_equal_time] = 0
    gaps[:, 0] = config.start + rng.integers(0, config.span_days * 86_400, config.n_users)
    times = np.cumsum(gaps, axis=1)  # [U, T]
    mask = np.arange(steps)[None, :] < lengths[:, None]
    users = np.broadcast_to(np.arange(1, config.n_users + 1)[:, None], mask.shape)
    frame = pl.DataFrame(
        {USER: users[mask], ITEM: items[mask], TIME: times[mask]},
        schema={USER: pl.Int64, ITEM: pl.Int64, TIME: pl.Int64},
    )
    logger.info(
        "generated %d events of %d users over %d items",
        frame.height,
        config.n_users,
        frame.get_column(ITEM).n_unique(),
    )
    return frame


def _open(path: Path) -> IO[str]:
    """A text handle writing ``path`` (gzipped when it ends in ``.gz``); creates the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return (
        gzip.open(path, "wt", newline="") if path.suffix == ".gz" else open(path, "w", newline="")
    )


def pairs_frame(sequences: pl.DataFrame) -> pl.DataFrame:
    """The ``pairs`` layout as a frame: ``UserId``, ``ItemId`` in sequence order."""
    return sequences.select(USER, ITEM)


def write_pairs(sequences: pl.DataFrame, path: str | Path) -> Path:
    """``user item`` per line, space-separated, users contiguous, in sequence order."""
    path = Path(path)
    with _open(path) as handle:
        handle.write(pairs_frame(sequences).write_csv(separator=" ", include_header=False))
    return path


def write_lines(sequences: pl.DataFrame, path: str | Path) -> Path:
    """One line per user: ``user i1 i2 ...`` (space-separated, sequence order)."""
    path = Path(path)
    lines = (
        sequences.group_by(USER, maintain_order=True)
        .agg(pl.col(ITEM).cast(pl.String).str.join(" ").alias("items"))
        .select(pl.concat_str(pl.col(USER).cast(pl.String), "items", separator=" ").alias("line"))
    )
    with _open(path) as handle:
        handle.write("".join(f"{line}\n" for line in lines.get_column("line")))
    return path


def write_movielens(
    sequences: pl.DataFrame, path: str | Path, variant: str = "ml-100k", seed: int = 0
) -> Path:
    """MovieLens ratings (``ml-100k``: ``u.data`` tabs; ``ml-1m``: ``ratings.dat`` ``::``).

    Ratings are drawn uniformly from 1..5. Rows are ordered by time over all users (as in the
    published files, users interleave) with a stable sort, so a user's equal-time events stay in
    sequence order: a reader that breaks ties by line order gets the sequences back.
    """
    separators = {"ml-100k": "\t", "ml-1m": "::"}
    if variant not in separators:
        raise ValueError(f"variant must be one of {sorted(separators)}, got {variant!r}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    rows = sequences.with_columns(
        pl.Series("Rating", rng.integers(1, 6, sequences.height), dtype=pl.Int64)
    ).sort(TIME, maintain_order=True)
    text = rows.select(
        pl.concat_str(
            [pl.col(c).cast(pl.String) for c in (USER, ITEM, "Rating", TIME)],
            separator=separators[variant],
        )
    ).to_series()
    with _open(path) as handle:
        handle.write("".join(f"{line}\n" for line in text))
    return path
