"""Session-parallel mini-batches (GRU4Rec, Hidasi et al. 2016) and the session arrays they use.

``batch_size`` sessions are processed side by side, one *slot* each. Every step feeds the current
event of every active slot (``inputs [B]``) and asks for the next event of the same session
(``targets [B]``). When a slot's session has no target left, the slot takes the next session in
the given order and its hidden state must be zeroed (``reset``); when no session is left the slot
is removed and the batch shrinks (``keep``). There is no padding and nothing is truncated: every
event after the first of every session (with at least two events) is a target exactly once per
epoch, so an epoch yields ``n_events - n_sessions`` targets (sessions with one event give none).

The whole epoch is planned up front with NumPy (positions of every step's inputs) and moved to
the training device in chunks of steps, so the training loop only slices tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import polars as pl
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EpochPlan",
    "SessionBatch",
    "SessionData",
    "SessionParallelIterator",
    "event_seconds",
    "plan_epoch",
    "sessions_from_frame",
]


@dataclass(frozen=True)
class SessionData:
    """Events grouped by session, each session in time order.

    Attributes:
        items: item index of every event, ``[N]`` int64, sessions stored contiguously.
        offsets: ``[S + 1]`` int64; session ``s`` is ``items[offsets[s]:offsets[s + 1]]``.
        first_time: time of the first event of every session, ``[S]`` (for ``time_sort``).
        item_ids: raw item id of every item index, ``[n_items]``.
        times: time of every event in whole seconds, ``[N]`` int64, aligned with ``items``; ``None``
            when unknown (see :func:`sessions_from_frame`). Sequence models that use time (HSTU)
            read it; session-parallel training ignores it.
    """

    items: np.ndarray
    offsets: np.ndarray
    first_time: np.ndarray
    item_ids: np.ndarray
    times: np.ndarray | None = None

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_targets(self) -> int:
        """Events after the first of each session: the targets of one epoch."""
        return self.n_events - self.n_sessions

    def support(self) -> np.ndarray:
        """Number of events of every item, ``[n_items]`` int64."""
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64)

    def session_order(self, time_sort: bool = True) -> np.ndarray:
        """Session indices ``[S]``: by first event time (oldest first, stable) or as stored."""
        if time_sort:
            return np.argsort(self.first_time, kind="stable")
        return np.arange(self.n_sessions)


def sessions_from_frame(
    frame: pl.DataFrame,
    *,
    item_ids: np.ndarray | None = None,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    with_times: bool | None = None,
) -> SessionData:
    """Group the events of ``frame`` by session (sorted by session, then time, then row order).

    Args:
        frame: one row per event with the three key columns.
        item_ids: the item vocabulary; ``None`` builds it from ``frame`` (ascending raw ids).
            Events of items outside a given vocabulary are dropped (the session is bridged).
        with_times: fill :attr:`SessionData.times` (int64 seconds): ``None`` (default) whenever
            the time column is numeric (taken as seconds, fractions dropped) or temporal
            (Datetime: seconds since the epoch; Date: its midnight) and has no nulls; ``True``
            requires it (``ValueError`` otherwise); ``False`` never fills it.
    """
    missing = [c for c in (session_key, item_key, time_key) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column(s) {missing} (columns: {frame.columns})")
    events = (
        frame.select(session_key, item_key, time_key)
        .with_row_index("_row")
        .sort([session_key, time_key, "_row"])
    )
    if item_ids is None:
        vocab = events.get_column(item_key).unique().sort()
        item_ids = vocab.to_numpy()
    else:
        vocab = pl.Series(item_key, item_ids)
    index = events.get_column(item_key).replace_strict(
        vocab, pl.int_range(len(vocab), dtype=pl.Int64, eager=True), default=None
    )
    known = index.is_not_null()
    if not known.all():
        logger.info("dropping %d events of items outside the vocabulary", (~known).sum())
        events, index = events.filter(known), index.filter(known)
    items = index.to_numpy().astype(np.int64, copy=False)
    sessions = events.get_column(session_key).to_numpy()
    starts = np.flatnonzero(np.r_[True, sessions[1:] != sessions[:-1]]) if len(items) else []
    offsets = np.r_[starts, len(items)].astype(np.int64)
    time_column = events.get_column(time_key)
    times = time_column.to_physical().to_numpy()
    seconds = None if with_times is False else event_seconds(time_column)
    if seconds is None and with_times:
        raise ValueError(
            f"with_times=True but column {time_key!r} ({time_column.dtype}) is not numeric or "
            "temporal, or has nulls"
        )
    return SessionData(
        items=items,
        offsets=offsets,
        first_time=times[offsets[:-1]],
        item_ids=np.asarray(item_ids),
        times=seconds,
    )


def event_seconds(column: pl.Series) -> np.ndarray | None:
    """``column`` as whole seconds ``[N]`` int64, or ``None`` if it has no such reading."""
    if column.null_count():
        return None
    if column.dtype in (pl.Datetime, pl.Date):
        column = column.dt.epoch("s")
    elif column.dtype.is_float():
        if column.is_nan().any():
            return None
        column = column.floor()
    elif not column.dtype.is_integer():
        return None
    return column.cast(pl.Int64).to_numpy()


class SessionBatch(NamedTuple):
    """One step of session-parallel training.

    Before feeding ``inputs``, the state of the previous step (``B_prev`` slots) is first zeroed
    where ``reset`` is True, then reduced to the slots ``keep``; both are ``None`` when nothing
    changes (at the first step of an epoch the state is simply all zeros).

    Attributes:
        inputs: item index of the current event of every slot, ``[B]`` long.
        targets: item index of the next event of every slot, ``[B]`` long.
        reset: ``[B_prev]`` bool, slots where a new session starts, or ``None``.
        keep: ``[B]`` long indices into the ``B_prev`` slots that continue, or ``None``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    reset: torch.Tensor | None
    keep: torch.Tensor | None


@dataclass(frozen=True)
class EpochPlan:
    """All steps of one epoch (NumPy, host memory).

    Attributes:
        inputs: item index of every step's inputs, concatenated, ``[T]`` int32/int64.
        targets: the matching targets, ``[T]``.
        step_offsets: ``[n_steps + 1]``; step ``t`` covers ``inputs[step_offsets[t]:...[t+1]]``.
        events: step -> (reset mask ``[B_prev]`` or None, keep indices ``[B]`` or None).
    """

    inputs: np.ndarray
    targets: np.ndarray
    step_offsets: np.ndarray
    events: dict[int, tuple[np.ndarray | None, np.ndarray | None]]

    @property
    def n_steps(self) -> int:
        return len(self.step_offsets) - 1

    @property
    def n_targets(self) -> int:
        return len(self.targets)

    @property
    def n_slots(self) -> int:
        """Size of the first mini-batch: ``min(batch_size, trainable sessions)``."""
        return int(self.step_offsets[1]) if self.n_steps else 0


def plan_epoch(
    items: np.ndarray, offsets: np.ndarray, order: np.ndarray, batch_size: int
) -> EpochPlan:
    """Plan the steps of one epoch over the sessions ``order`` (sessions with < 2 events skipped).

    Slots are refilled in slot order (the lowest finished slot takes the next session), as in the
    reference implementation, so the mini-batches are identical to its ones.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    offsets = np.asarray(offsets, dtype=np.int64)
    order = np.asarray(order, dtype=np.int64)
    order = order[(offsets[order + 1] - offsets[order]) >= 2]
    n_sessions = len(order)
    n_slots = min(batch_size, n_sessions)
    start = offsets[order[:n_slots]]  # position of each slot's current input event
    end = offsets[order[:n_slots] + 1]  # end (exclusive) of each slot's session
    next_session = n_slots
    position_blocks: list[np.ndarray] = []
    size_blocks: list[np.ndarray] = []
    events: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {}
    step = 0
    while len(start):
        n_steps = int((end - start).min()) - 1  # steps until the first slot runs out (>= 1)
        position_blocks.append((start[None, :] + np.arange(n_steps)[:, None]).ravel())
        size_blocks.append(np.full(n_steps, len(start), dtype=np.int64))
        step += n_steps
        start = start + n_steps
        finished = np.flatnonzero(end - start <= 1)
        n_new = min(len(finished), n_sessions - next_session)
        reset = keep = None
        if n_new:
            refill = finished[:n_new]
            new = order[next_session : next_session + n_new]
            next_session += n_new
            start[refill] = offsets[new]
            end[refill] = offsets[new + 1]
            reset = np.zeros(len(start), dtype=bool)
            reset[refill] = True
        if n_new < len(finished):
            keep_mask = np.ones(len(start), dtype=bool)
            keep_mask[finished[n_new:]] = False
            keep = np.flatnonzero(keep_mask)
            start, end = start[keep], end[keep]
        if len(start):
            events[step] = (reset, keep)
    positions = np.concatenate(position_blocks) if position_blocks else np.zeros(0, np.int64)
    index_dtype = np.int32 if len(items) and int(items.max()) < 2**31 - 1 else np.int64
    step_offsets = np.zeros(sum(len(s) for s in size_blocks) + 1, dtype=np.int64)
    if size_blocks:
        np.cumsum(np.concatenate(size_blocks), out=step_offsets[1:])
    return EpochPlan(
        inputs=items[positions].astype(index_dtype),
        targets=items[positions + 1].astype(index_dtype),
        step_offsets=step_offsets,
        events=events,
    )


class SessionParallelIterator:
    """Yields the :class:`SessionBatch` steps of an epoch on ``device``.

    Args:
        items: item index of every event ``[N]``, sessions contiguous and time-ordered.
        offsets: session boundaries ``[S + 1]``.
        batch_size: number of parallel slots.
        device: where the yielded tensors live.
        chunk_steps: steps moved to the device at once.

    ``iterator.epoch(order)`` plans and iterates one epoch (``order``: session indices in the
    order they enter the slots; default: as stored). A plan is cached and reused while the same
    order is passed again.
    """

    def __init__(
        self,
        items: np.ndarray,
        offsets: np.ndarray,
        batch_size: int,
        *,
        device: torch.device | str = "cpu",
        chunk_steps: int = 1024,
    ) -> None:
        self.items = np.asarray(items, dtype=np.int64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.chunk_steps = chunk_steps
        lengths = np.diff(self.offsets)
        self.n_targets = int((lengths[lengths >= 2] - 1).sum())
        self._cached: tuple[np.ndarray, EpochPlan] | None = None

    def plan(self, order: np.ndarray | None = None) -> EpochPlan:
        """The plan of an epoch over ``order`` (cached for a repeated order)."""
        if order is None:
            order = np.arange(len(self.offsets) - 1)
        if self._cached is not None and np.array_equal(self._cached[0], order):
            return self._cached[1]
        plan = plan_epoch(self.items, self.offsets, order, self.batch_size)
        self._cached = (np.array(order, copy=True), plan)
        return plan

    def epoch(self, order: np.ndarray | None = None) -> Iterator[SessionBatch]:
        """Iterate the steps of one epoch."""
        plan = self.plan(order)
        offsets = plan.step_offsets
        for chunk_start in range(0, plan.n_steps, self.chunk_steps):
            chunk_stop = min(chunk_start + self.chunk_steps, plan.n_steps)
            base, top = int(offsets[chunk_start]), int(offsets[chunk_stop])
            inputs = self._to_device(plan.inputs[base:top])
            targets = self._to_device(plan.targets[base:top])
            for step in range(chunk_start, chunk_stop):
                a, b = int(offsets[step]) - base, int(offsets[step + 1]) - base
                reset = keep = None
                event = plan.events.get(step)
                if event is not None:
                    reset = None if event[0] is None else self._to_device(event[0])
                    keep = None if event[1] is None else self._to_device(event[1])
                yield SessionBatch(inputs[a:b], targets[a:b], reset, keep)

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if tensor.dtype != torch.bool:
            tensor = tensor.long()
        return tensor.to(self.device, non_blocking=True)

    def n_steps(self, order: np.ndarray | None = None) -> int:
        """Number of steps (mini-batches) of an epoch over ``order``."""
        return self.plan(order).n_steps
