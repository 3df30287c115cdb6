"""Two non-neural baselines implementing :class:`~recsys_pipeline.models.base.NextItemModel`.

* :class:`MostPopular`: the score of item ``j`` is its training support (number of training
  events), whatever the session.
* :class:`LastItemCooccurrence`: the score of item ``j`` after last item ``i`` is the number of
  times ``j`` directly followed ``i`` inside a training session (time order). The counts are kept
  sparse (CSR: ``indptr [n_items + 1]``, ``indices [nnz]``, ``counts [nnz]``). With
  ``tie_break=True`` (default) ties between equal counts are broken by popularity: the score is
  ``count + r / (n_r + 1)`` where ``r`` is the dense rank of the item's training support
  (``0`` = least supported, ``n_r`` distinct support values). The fractional part is below 1, so
  it never overrides a count difference (``floor(score) == count``), and items never seen after
  ``i`` are ranked by popularity. Items with equal count *and* equal support still tie (the
  evaluation's tie mode decides). The dtype is float32 when this representation is exact
  (``(max_count + 1) * (n_r + 1) < 2**23``), float64 otherwise.

Both are stateless: the query of ``step`` is the current item ``[B]`` itself, the state is ``None``.
Items are indexed ``0 .. n_items - 1`` in ascending order of their raw id (``item_ids``).
Both can be saved to / loaded from one ``.npz`` file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import torch

logger = logging.getLogger(__name__)

__all__ = ["LastItemCooccurrence", "MostPopular"]


def _index_training(
    train: pl.DataFrame, session_key: str, item_key: str, time_key: str
) -> tuple[np.ndarray, pl.DataFrame]:
    """Item vocabulary (sorted unique raw ids) and the training events with their index ``_idx``,
    sorted by session then time (row order breaks ties)."""
    for col in (session_key, item_key, time_key):
        if col not in train.columns:
            raise ValueError(f"training frame has no column {col!r} (columns: {train.columns})")
    if train.height == 0:
        raise ValueError("empty training frame")
    vocab = train.select(pl.col(item_key).unique().sort()).to_series()
    mapping = pl.DataFrame({item_key: vocab, "_idx": np.arange(len(vocab), dtype=np.int64)})
    events = (
        train.select(session_key, item_key, time_key)
        .with_row_index("_row")
        .join(mapping, on=item_key, how="left")
        .sort([session_key, time_key, "_row"])
    )
    return vocab.to_numpy(), events


def _savable_ids(item_ids: np.ndarray) -> np.ndarray:
    """``item_ids`` in a dtype ``np.savez`` stores without pickling (object -> unicode)."""
    return np.asarray(item_ids.tolist(), dtype=str) if item_ids.dtype == object else item_ids


class _StatelessModel:
    """State handling shared by the stateless baselines: state is ``None``, query = items."""

    item_ids: np.ndarray
    _device: torch.device

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary."""
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        """Where ``step``/``score`` compute."""
        return self._device

    def initial_state(self, batch_size: int) -> None:
        """No state."""
        return None

    def reset_state(self, state: Any, finished: torch.Tensor) -> None:
        """No state."""
        return None

    def keep_state(self, state: Any, keep: torch.Tensor) -> None:
        """No state."""
        return None

    def step(self, items: torch.Tensor, state: Any) -> tuple[torch.Tensor, None]:
        """Query = the current items ``[B]`` (long); no state."""
        return items.to(device=self._device, dtype=torch.long), None


class MostPopular(_StatelessModel):
    """Scores every item by its training support, whatever the session.

    Args:
        item_ids: ``[n_items]`` raw ids.
        support: ``[n_items]`` number of training events of every item.
        device: where to score.
    """

    def __init__(
        self, item_ids: np.ndarray, support: np.ndarray, device: str | torch.device = "cpu"
    ) -> None:
        if len(item_ids) != len(support):
            raise ValueError("item_ids and support differ in length")
        self.item_ids = np.asarray(item_ids)
        self.support = np.asarray(support, dtype=np.int64)
        self._device = torch.device(device)
        dtype = torch.float32 if self.support.max(initial=0) < 2**24 else torch.float64
        self._scores = torch.as_tensor(self.support, dtype=dtype, device=self._device)

    @classmethod
    def fit(
        cls,
        train: pl.DataFrame,
        session_key: str = "SessionId",
        item_key: str = "ItemId",
        time_key: str = "Time",
        device: str | torch.device = "cpu",
    ) -> Self:
        """Count the training events per item of ``train`` (columns SessionId, ItemId, Time)."""
        item_ids, events = _index_training(train, session_key, item_key, time_key)
        support = np.bincount(events["_idx"].to_numpy(), minlength=len(item_ids))
        logger.debug("MostPopular: %d items from %d events", len(item_ids), train.height)
        return cls(item_ids, support, device)

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Support of items ``start .. stop-1`` for every row: ``[B, stop - start]`` (a broadcast
        view; clone before writing into it)."""
        stop = self.n_items if stop is None else stop
        return self._scores[start:stop].unsqueeze(0).expand(query.shape[0], -1)

    def save(self, path: str | Path) -> None:
        """Write the model to one ``.npz`` file."""
        with open(path, "wb") as fh:  # a file handle: numpy would append ".npz" to a bare name
            np.savez(
                fh, kind="MostPopular", item_ids=_savable_ids(self.item_ids), support=self.support
            )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Self:
        """Read a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            if str(f["kind"]) != "MostPopular":
                raise ValueError(f"{path} holds a {f['kind']}, not a MostPopular")
            return cls(f["item_ids"], f["support"], device)

    def __repr__(self) -> str:
        return f"MostPopular(n_items={self.n_items})"


class LastItemCooccurrence(_StatelessModel):
    """Scores item ``j`` by how often it directly followed the last item in training sessions.

    Args:
        item_ids: ``[n_items]`` raw ids.
        indptr: ``[n_items + 1]`` CSR row pointers (row = previous item).
        indices: ``[nnz]`` CSR columns (next item), ascending within a row.
        counts: ``[nnz]`` number of ``previous -> next`` transitions.
        support: ``[n_items]`` training events per item (for the popularity tie-break).
        tie_break: add ``support rank / (n_support_levels + 1)`` to the counts (module docstring).
        device: where to score.
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        indptr: np.ndarray,
        indices: np.ndarray,
        counts: np.ndarray,
        support: np.ndarray,
        tie_break: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        n = len(item_ids)
        if len(indptr) != n + 1 or len(support) != n or len(indices) != len(counts):
            raise ValueError("inconsistent CSR arrays")
        self.item_ids = np.asarray(item_ids)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.support = np.asarray(support, dtype=np.int64)
        self.tie_break = bool(tie_break)
        self._device = torch.device(device)
        max_count = int(self.counts.max(initial=0))
        if tie_break:
            levels, rank = np.unique(self.support, return_inverse=True)  # dense support rank
            n_levels = len(levels)
            base = rank.reshape(-1) / (n_levels + 1)
        else:
            n_levels, base = 0, np.zeros(n)
        exact32 = (max_count + 1) * (n_levels + 1) < 2**23
        self.dtype = torch.float32 if exact32 else torch.float64
        dev = self._device
        self._base = torch.as_tensor(base, dtype=self.dtype, device=dev)  # [n_items]
        self._base_np = self._base.cpu().numpy()
        self._counts_np = self.counts.astype(self._base_np.dtype)
        self._indptr = torch.as_tensor(self.indptr, device=dev)
        self._indices = torch.as_tensor(self.indices, device=dev)
        self._counts = torch.as_tensor(self.counts, dtype=self.dtype, device=dev)

    @classmethod
    def fit(
        cls,
        train: pl.DataFrame,
        session_key: str = "SessionId",
        item_key: str = "ItemId",
        time_key: str = "Time",
        tie_break: bool = True,
        device: str | torch.device = "cpu",
    ) -> Self:
        """Count the direct transitions ``i -> j`` inside the sessions of ``train`` (time order)."""
        item_ids, events = _index_training(train, session_key, item_key, time_key)
        n = len(item_ids)
        idx = events["_idx"].to_numpy().astype(np.int64)
        session = events.select(pl.col(session_key).rle_id()).to_series().to_numpy()
        same = session[1:] == session[:-1]
        prev, nxt = idx[:-1][same], idx[1:][same]
        keys, counts = np.unique(prev * n + nxt, return_counts=True)  # sorted: CSR order
        rows, cols = keys // n, keys % n
        indptr = np.zeros(n + 1, dtype=np.int64)
        indptr[1:] = np.cumsum(np.bincount(rows, minlength=n))
        support = np.bincount(idx, minlength=n)
        logger.debug(
            "LastItemCooccurrence: %d items, %d transitions, %d distinct pairs",
            n,
            len(prev),
            len(keys),
        )
        return cls(item_ids, indptr, cols, counts, support, tie_break, device)

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[B, stop - start]`` of items ``start .. stop-1`` after the last items
        ``query [B]``: transition counts (+ the popularity tie-break)."""
        stop = self.n_items if stop is None else stop
        if self._device.type == "cpu":
            # numpy: many small torch ops are slow on a busy CPU (thread-pool hand-offs), and numpy
            # fills the dense matrix faster
            return torch.from_numpy(self._score_numpy(query.cpu().numpy(), start, stop))
        return self._score_torch(query, start, stop)

    def _score_torch(self, query: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """:meth:`score` with torch ops on ``self.device`` (used off the CPU)."""
        q = query.to(device=self._device, dtype=torch.long)
        n_rows = q.shape[0]
        out = self._base[start:stop].unsqueeze(0).repeat(n_rows, 1)
        lo = self._indptr[q]
        lengths = self._indptr[q + 1] - lo
        total = int(lengths.sum())
        if total:
            row = torch.repeat_interleave(torch.arange(n_rows, device=self._device), lengths)
            first = torch.cumsum(lengths, 0) - lengths
            nz = lo[row] + torch.arange(total, device=self._device) - first[row]
            col = self._indices[nz]
            if stop - start < self.n_items:
                inside = (col >= start) & (col < stop)
                row, col, nz = row[inside], col[inside], nz[inside]
            out.index_put_((row, col - start), self._counts[nz], accumulate=True)
        return out

    def _score_numpy(self, q: np.ndarray, start: int, stop: int) -> np.ndarray:
        """:meth:`score` on the CPU: ``q [B]`` -> ``[B, stop - start]``."""
        q = q.astype(np.int64, copy=False)
        n_rows = len(q)
        base = self._base_np[start:stop]
        out = np.broadcast_to(base, (n_rows, len(base))).copy()
        lo = self.indptr[q]
        lengths = self.indptr[q + 1] - lo
        total = int(lengths.sum())
        if total:
            row = np.repeat(np.arange(n_rows), lengths)
            nz = np.arange(total) + np.repeat(lo - (np.cumsum(lengths) - lengths), lengths)
            col = self.indices[nz]
            if stop - start < self.n_items:
                inside = (col >= start) & (col < stop)
                row, col, nz = row[inside], col[inside], nz[inside]
            out[row, col - start] += self._counts_np[nz]  # (row, col) pairs are unique
        return out

    def save(self, path: str | Path) -> None:
        """Write the model to one ``.npz`` file."""
        with open(path, "wb") as fh:  # a file handle: numpy would append ".npz" to a bare name
            np.savez(
                fh,
                kind="LastItemCooccurrence",
                item_ids=_savable_ids(self.item_ids),
                indptr=self.indptr,
                indices=self.indices,
                counts=self.counts,
                support=self.support,
                tie_break=self.tie_break,
            )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Self:
        """Read a model written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            if str(f["kind"]) != "LastItemCooccurrence":
                raise ValueError(f"{path} holds a {f['kind']}, not a LastItemCooccurrence")
            return cls(
                f["item_ids"],
                f["indptr"],
                f["indices"],
                f["counts"],
                f["support"],
                bool(f["tie_break"]),
                device,
            )

    def __repr__(self) -> str:
        return f"LastItemCooccurrence(n_items={self.n_items}, nnz={len(self.counts)})"
