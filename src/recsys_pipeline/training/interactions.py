"""User-item interaction data for pointwise (NCF-style) training: index maps, a device-resident
positive set, a bulk negative sampler and the epoch batcher.

* :class:`UserItemData` maps raw ``UserId`` / ``ItemId`` values to dense indices (ascending raw
  ids) and holds the positive pairs ``users [N]``, ``items [N]`` (duplicates removed).
* :class:`PositiveSet` caches every positive pair on the training device as sorted int64 keys
  ``user * n_items + item``; membership of ``M`` pairs is one ``torch.searchsorted``.
* :func:`sample_negatives` draws negatives for ``M`` users in one call on the device:
  ``approximate`` (uniform over all items, may return one of the user's positives, as NVIDIA's
  NCF example does) or ``exact`` (hits are redrawn, vectorised, until none is left).
* :func:`epoch_samples` builds a whole epoch at once, as the NCF reference does: every positive
  (label 1) plus ``negative_samples`` negatives per positive (label 0), shuffled with a seeded
  device generator, optionally cut into the equal shard of one data-parallel rank;
  :func:`iterate_batches` slices it into mini-batches.

Indices are stored as int32 (the epoch tensors of ML-20m hold ~10**8 samples) and widened per
mini-batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "NEGATIVE_MODES",
    "EpochSamples",
    "PositiveSet",
    "UserItemData",
    "epoch_samples",
    "iterate_batches",
    "sample_negatives",
]

NEGATIVE_MODES = ("approximate", "exact")
_MAX_REDRAWS = 1000


@dataclass
class UserItemData:
    """Deduplicated positive pairs with their index maps.

    Attributes:
        user_ids: ``[n_users]`` raw id of every user index (ascending).
        item_ids: ``[n_items]`` raw id of every item index (ascending).
        users: ``[N]`` int64 user index of every positive pair (sorted by user, then item).
        items: ``[N]`` int64 item index of every positive pair.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_positives(self) -> int:
        return len(self.users)

    @classmethod
    def from_frame(
        cls, frame: pl.DataFrame, user_key: str = "UserId", item_key: str = "ItemId"
    ) -> UserItemData:
        """Vocabularies and positive pairs of an interaction frame (one row per interaction)."""
        for col in (user_key, item_key):
            if col not in frame.columns:
                raise ValueError(f"frame has no column {col!r} (columns: {frame.columns})")
        if frame.height == 0:
            raise ValueError("empty interaction frame")
        user_ids = frame[user_key].unique().sort().to_numpy()
        item_ids = frame[item_key].unique().sort().to_numpy()
        pairs = frame.select(user_key, item_key).unique()
        users = np.searchsorted(user_ids, pairs[user_key].to_numpy()).astype(np.int64)
        items = np.searchsorted(item_ids, pairs[item_key].to_numpy()).astype(np.int64)
        order = np.lexsort((items, users))
        return cls(user_ids, item_ids, users[order], items[order])

    def index_pairs(
        self, frame: pl.DataFrame, user_key: str = "UserId", item_key: str = "ItemId"
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(users [M], items [M])`` indices of ``frame``'s rows, ``-1`` where unknown."""
        return (
            _lookup(self.user_ids, frame[user_key].to_numpy()),
            _lookup(self.item_ids, frame[item_key].to_numpy()),
        )

    def csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Positives per user as CSR: ``(indptr [n_users + 1], indices [N])``."""
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.users, minlength=self.n_users), out=indptr[1:])
        return indptr, self.items.copy()


def _lookup(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of every value in ``vocab`` (``-1`` where absent). ``vocab`` is sorted unless a
    fine-tuned model appended new ids after old ones; then an argsort maps the positions back."""
    vocab = np.asarray(vocab)
    values = np.asarray(values)
    if len(vocab) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    order = None
    if len(vocab) > 1 and not bool((vocab[1:] >= vocab[:-1]).all()):
        order = np.argsort(vocab, kind="stable")
        vocab = vocab[order]
    pos = np.searchsorted(vocab, values).clip(0, len(vocab) - 1)
    found = pos if order is None else order[pos]
    return np.where(vocab[pos] == values, found, -1).astype(np.int64)


class PositiveSet:
    """All positive ``(user, item)`` pairs on ``device`` as sorted int64 keys ``[N]``.

    Args:
        users: ``[N]`` user indices.
        items: ``[N]`` item indices.
        n_items: item vocabulary size (the key stride).
    """

    def __init__(
        self, users: np.ndarray, items: np.ndarray, n_items: int, device: torch.device
    ) -> None:
        keys = np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))
        self.keys = torch.from_numpy(keys).to(device)
        self.n_items = int(n_items)

    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Bool ``[M]``: whether ``(users[m], items[m])`` is a positive."""
        if self.keys.numel() == 0:
            return torch.zeros(users.shape, dtype=torch.bool, device=users.device)
        query = users.long() * self.n_items + items.long()
        pos = torch.searchsorted(self.keys, query).clamp_(max=self.keys.numel() - 1)
        return self.keys[pos] == query


def sample_negatives(
    users: torch.Tensor,
    n_items: int,
    mode: str = "approximate",
    positives: PositiveSet | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One uniformly drawn negative item ``[M]`` (int64) for every user of ``users [M]``.

    ``exact`` redraws the items that are positives of their user (needs ``positives``) until
    none is left; a user with every item positive would loop forever, so
    :func:`epoch_samples` checks this up front and this function stops after 1000 rounds.
    """
    if mode not in NEGATIVE_MODES:
        raise ValueError(f"unknown negative sampling mode {mode!r}; expected {NEGATIVE_MODES}")
    device = users.device
    items = torch.randint(n_items, users.shape, generator=generator, device=device)
    if mode == "approximate":
        return items
    if positives is None:
        raise ValueError("mode='exact' needs the PositiveSet of the training data")
    hits = torch.nonzero(positives.contains(users, items), as_tuple=True)[0]
    for _ in range(_MAX_REDRAWS):
        if hits.numel() == 0:
            return items
        redraw = torch.randint(n_items, hits.shape, generator=generator, device=device)
        items[hits] = redraw
        still = positives.contains(users[hits], redraw)
        hits = hits[still]
    raise RuntimeError(
        f"{hits.numel()} negatives still hit a positive after {_MAX_REDRAWS} redraws"
    )


@dataclass
class EpochSamples:
    """One epoch's (shard of) shuffled training samples, on the training device.

    Attributes:
        users: ``[S]`` int32 user indices.
        items: ``[S]`` int32 item indices.
        labels: ``[S]`` bool, True for positives.
    """

    users: torch.Tensor
    items: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])


def epoch_samples(
    users: torch.Tensor,
    items: torch.Tensor,
    n_items: int,
    negative_samples: int,
    mode: str = "approximate",
    positives: PositiveSet | None = None,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> EpochSamples:
    """Every positive plus ``negative_samples`` negatives per positive, shuffled.

    Args:
        users: ``[N]`` user indices of the positives (on the training device).
        items: ``[N]`` item indices of the positives.
        n_items: item vocabulary size.
        negative_samples: negatives per positive (the negatives take the positive's user).
        mode: ``approximate`` or ``exact`` (see :func:`sample_negatives`).
        positives: the training positives (``exact`` mode).
        generator: device generator; every rank of a data-parallel job must pass one seeded
            alike, so that all ranks draw the same epoch and keep disjoint shards of it.
        rank: this process's rank; it keeps the samples ``rank * S .. (rank + 1) * S - 1`` of the
            shuffled epoch, ``S = total // world_size`` (the remainder is dropped so that every
            rank runs the same number of steps).
        world_size: number of data-parallel processes.

    Returns:
        :class:`EpochSamples` of length ``S = N * (1 + negative_samples) // world_size``.
    """
    if negative_samples < 0:
        raise ValueError(f"negative_samples must be >= 0, got {negative_samples}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0 .. {world_size - 1}")
    n_pos = int(users.shape[0])
    neg_users = users.repeat(negative_samples)  # [N * k]
    neg_items = sample_negatives(neg_users, n_items, mode, positives, generator)
    all_users = torch.cat([users, neg_users])
    all_items = torch.cat([items, neg_items])
    total = all_users.shape[0]
    perm = torch.randperm(total, generator=generator, device=users.device)
    shard = total // world_size
    perm = perm[rank * shard : (rank + 1) * shard]
    return EpochSamples(
        users=all_users[perm].to(torch.int32),
        items=all_items[perm].to(torch.int32),
        labels=perm < n_pos,
    )


def iterate_batches(
    samples: EpochSamples, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Mini-batches ``(users [B] int64, items [B] int64, labels [B] float32)`` in order; the last
    one may be smaller."""
    for start in range(0, len(samples), batch_size):
        stop = start + batch_size
        yield (
            samples.users[start:stop].long(),
            samples.items[start:stop].long(),
            samples.labels[start:stop].float(),
        )


def check_exact_possible(data: UserItemData) -> None:
    """Raise ``ValueError`` when a user has every item positive (no exact negative exists)."""
    counts = np.bincount(data.users, minlength=data.n_users)
    full = np.flatnonzero(counts >= data.n_items)
    if len(full):
        raise ValueError(
            f"{len(full)} user(s) interacted with every item (e.g. user index {full[0]}): "
            "no exact negative exists; use negative_mode='approximate'"
        )
