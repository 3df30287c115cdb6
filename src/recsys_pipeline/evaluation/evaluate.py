"""Full-ranking next-item evaluation shared by every next-item model (``NextItemModel``).

Protocol (``shared/spec/evaluation.md`` (next to the checkout)):

1. Raw ``ItemId`` values of the test frame are mapped to model indices through ``model.item_ids``.
   Test events whose item the model does not know are removed, which *bridges* the session: in
   ``a -> unknown -> b`` the pair ``a -> b`` is evaluated. Sessions left with fewer than 2 events
   give no target and are dropped.
2. Events are ordered by ``(SessionId, Time)`` (the frame's row order breaks equal times). Every
   event after the first of a session is a *target*, predicted from the session prefix before it.
3. Session-parallel iteration: ``batch_size`` slots each run one session; a slot whose session
   ends is refilled with the next session and its state reset (``model.reset_state``); when no
   session is left the batch shrinks (``model.keep_state``). Any number of test sessions works.
4. Every target is ranked against **all** ``model.n_items`` items; nothing is excluded (not the
   input item, not earlier items of the session) unless ``exclude_seen=True`` (labelled
   option). ``item_chunk=N`` scores ``N`` items at a time and accumulates per-row counts of
   higher / equal scores, so only ``[B, N]`` scores are held; the ranks are identical to
   unchunked ones as long as the model's score of an item does not depend on the slice it is
   computed in (exactly true for the baselines; a matmul-based model may differ in the last bit
   between slice shapes). Chunked scoring costs about two scoring passes per step (the target
   scores are gathered in a first pass), unchunked one.
5. Ranks use the tie ``mode`` (:data:`~recsys_pipeline.evaluation.metrics.TIE_MODES`) and give
   Recall@k, MRR@k and NDCG@k for every cut-off, averaged over targets.

Sequence-aware mode (``user_column`` and/or ``warmup`` given): each *user* is one stream.

* The user's ``warmup`` events (normally the user's training events; unknown items removed) are
  fed first, in ``Time`` order (row order breaks ties), without being scored: they only build the
  state. Warmup rows of users without test events are ignored. No time filter is applied: pass
  events that precede the test period.
* Then the user's test sessions follow in order of their first event's ``Time`` (then
  ``SessionId``), and the state is **not** reset between them.
* The targets are exactly those of the session-based mode (every event after the first of a test
  session with at least 2 known events), so both modes are scored on the same targets and are
  comparable. The first event of a test session is an input, not a target, even though a state
  precedes it. Test sessions with a single known event are not scored but are still fed (they
  update the state for the user's later sessions).
* Users without warmup events start from ``model.initial_state``; the state is reset only when a
  slot moves to a new user.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys_pipeline.evaluation.batched import run_batched
from recsys_pipeline.evaluation.metrics import MetricAccumulator, check_mode
from recsys_pipeline.evaluation.ranking import batch_ranks, seen_before
from recsys_pipeline.models.base import NextItemModel
from recsys_pipeline.training.progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = [
    "EvalStreams",
    "EvaluationResult",
    "NoTargetsError",
    "evaluate",
    "item_index_map",
    "prepare_streams",
]


class EvaluationResult(dict[str, float]):
    """``dict`` of metric name -> float (``"recall@20"``, ``"mrr@20"``, ``"ndcg@20"``, ...,
    ``"n_targets"``, ``"n_sessions"``, ``"seconds"``, ``"targets_per_s"``) with labels attached.

    Attributes:
        mode: the tie mode the ranks were computed with (part of every reported result).
        cutoffs: the cut-offs.
        sequence_aware: whether the state continued over user histories.
        exclude_seen: whether the session's earlier items were left out of the ranking.
        ranks: ``[n_targets]`` float64 rank of every target, in the order of
            :attr:`EvalStreams.target_positions` (streams in order, events in time order), or
            ``None`` unless ``return_ranks=True``.
    """

    mode: str
    cutoffs: tuple[int, ...]
    sequence_aware: bool
    exclude_seen: bool
    ranks: np.ndarray | None

    def label(self) -> str:
        """A short label such as ``"full ranking, mode=standard, session-based"``."""
        kind = "sequence-aware" if self.sequence_aware else "session-based"
        seen = ", exclude_seen" if self.exclude_seen else ""
        return f"full ranking, mode={self.mode}, {kind}{seen}"


@dataclass
class EvalStreams:
    """Test data laid out for session-parallel evaluation.

    Attributes:
        items: ``[E]`` int64 item index of every event, streams stored contiguously.
        is_target: ``[E]`` bool, whether event ``e`` is a target (predicted from ``e - 1``).
        pos_in_session: ``[E]`` int64 position of the event inside its test session (0 for the
            first event and for warmup events); ``is_target == (pos_in_session > 0)``.
        starts: ``[S]`` int64 first event of every stream.
        ends: ``[S]`` int64 one past the last event of every stream (every stream ends on a target).
        n_sessions: test sessions contributing at least one target.
        n_dropped_events: test events removed because the model does not know their item.
    """

    items: np.ndarray
    is_target: np.ndarray
    pos_in_session: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    n_sessions: int
    n_dropped_events: int

    @property
    def n_targets(self) -> int:
        """Number of targets."""
        return int(self.is_target.sum())

    @property
    def target_positions(self) -> np.ndarray:
        """``[n_targets]`` event positions of the targets, ascending."""
        return np.flatnonzero(self.is_target)


def item_index_map(item_ids: np.ndarray, dtype: pl.DataType, item_key: str) -> pl.DataFrame:
    """Frame ``{item_key: raw id (cast to dtype), "_idx": model index}``."""
    values = item_ids.tolist() if item_ids.dtype == object else item_ids
    raw = pl.Series(item_key, values)
    if raw.dtype != dtype:
        raw = raw.cast(dtype, strict=False)
    mapping = pl.DataFrame({item_key: raw, "_idx": np.arange(len(item_ids), dtype=np.int64)})
    mapping = mapping.drop_nulls(item_key)
    if mapping[item_key].n_unique() != mapping.height:
        raise ValueError("model.item_ids holds duplicate raw ids")
    return mapping


def _known(frame: pl.DataFrame, mapping: pl.DataFrame, item_key: str) -> pl.DataFrame:
    """Rows of ``frame`` whose item the model knows, with their index ``_idx`` (row order kept)."""
    return frame.join(mapping, on=item_key, how="inner", maintain_order="left")


def _streams_from_sorted(
    idx: np.ndarray, stream_id: np.ndarray, pos_in_session: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Trim every stream after its last target, drop streams without a target.

    Args:
        idx: ``[E]`` item indices, sorted so that streams are contiguous.
        stream_id: ``[E]`` consecutive stream numbers ``0 .. S-1`` (non-decreasing).
        pos_in_session: ``[E]`` position inside the test session (targets: ``> 0``).

    Returns:
        ``(items, is_target, pos_in_session, starts, ends)`` of the kept streams.
    """
    is_target = pos_in_session > 0
    n_streams = int(stream_id[-1]) + 1 if len(stream_id) else 0
    pos = np.arange(len(idx), dtype=np.int64)
    last = np.full(n_streams, -1, dtype=np.int64)
    np.maximum.at(last, stream_id[is_target], pos[is_target])
    keep = pos <= last[stream_id]
    items, tgt, sid = idx[keep], is_target[keep], stream_id[keep]
    lengths = np.bincount(sid, minlength=n_streams)
    lengths = lengths[lengths > 0].astype(np.int64)
    ends = np.cumsum(lengths)
    pos = pos_in_session[keep].astype(np.int64)
    return items.astype(np.int64), tgt.astype(bool), pos, ends - lengths, ends


def prepare_streams(
    item_ids: np.ndarray,
    test: pl.DataFrame,
    warmup: pl.DataFrame | None = None,
    user_column: str | None = None,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
) -> EvalStreams:
    """Filter, order and lay out the test events (see the module docstring for the protocol).

    Args:
        item_ids: ``[n_items]`` raw id of every model item index.
        test: test events (``session_key``, ``item_key``, ``time_key``; plus ``user_column`` in the
            sequence-aware mode).
        warmup: events fed before a user's test events in the sequence-aware mode.
        user_column: user column; ``None`` for session-based evaluation.
    """
    for col in (session_key, item_key, time_key) + ((user_column,) if user_column else ()):
        if col not in test.columns:
            raise ValueError(f"test frame has no column {col!r} (columns: {test.columns})")
    mapping = item_index_map(np.asarray(item_ids), test.schema[item_key], item_key)
    cols = [session_key, item_key, time_key] + ([user_column] if user_column else [])
    df = test.select(cols).with_row_index("_row")
    known = _known(df, mapping, item_key)
    n_dropped = test.height - known.height
    if user_column is None:
        known = known.sort([session_key, time_key, "_row"])
        session = known.select(pl.col(session_key).rle_id()).to_series().to_numpy()
        items, tgt, pos, starts, ends = _streams_from_sorted(
            known["_idx"].to_numpy(), session.astype(np.int64), _position_in_run(session)
        )
        n_sessions = len(starts)
    else:
        known = known.with_columns(
            pl.col(time_key).min().over(session_key).alias("_session_start")
        ).sort([user_column, "_session_start", session_key, time_key, "_row"])
        session = known.select(pl.col(session_key).rle_id()).to_series().to_numpy()
        pos_in_session = _position_in_run(session)
        test_part = known.select(user_column, "_idx").with_columns(
            pl.Series("_pos", pos_in_session, dtype=pl.Int64)
        )
        n_sessions = int(np.unique(session[pos_in_session > 0]).size)
        if warmup is not None:
            for col in (user_column, item_key, time_key):
                if col not in warmup.columns:
                    raise ValueError(f"warmup frame has no column {col!r}")
            w = warmup.select(user_column, item_key, time_key).with_row_index("_row")
            w = w.join(test_part.select(user_column).unique(), on=user_column, how="semi")
            w_mapping = item_index_map(np.asarray(item_ids), w.schema[item_key], item_key)
            w = _known(w, w_mapping, item_key)
            w = w.sort([user_column, time_key, "_row"]).select(
                pl.col(user_column).cast(test_part.schema[user_column]),
                "_idx",
                pl.lit(0, dtype=pl.Int64).alias("_pos"),
            )
            both = pl.concat(
                [
                    w.with_columns(pl.lit(0).alias("_part")),
                    test_part.with_columns(pl.lit(1).alias("_part")),
                ]
            )
            test_part = both.sort([user_column, "_part"], maintain_order=True).drop("_part")
        user = test_part.select(pl.col(user_column).rle_id()).to_series().to_numpy()
        items, tgt, pos, starts, ends = _streams_from_sorted(
            test_part["_idx"].to_numpy(), user.astype(np.int64), test_part["_pos"].to_numpy()
        )
    return EvalStreams(items, tgt, pos, starts, ends, n_sessions, n_dropped)


def _position_in_run(run_id: np.ndarray) -> np.ndarray:
    """``[E]`` position of every element inside its run of equal consecutive ``run_id`` values."""
    n = len(run_id)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.ones(n, dtype=bool)
    new[1:] = run_id[1:] != run_id[:-1]
    run_start = np.maximum.accumulate(np.where(new, np.arange(n), 0))
    return np.arange(n, dtype=np.int64) - run_start


class NoTargetsError(ValueError):
    """An evaluation with fewer targets than its minimum (no metric of nothing is reported)."""


def evaluate(
    model: NextItemModel,
    test: pl.DataFrame,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "standard",
    batch_size: int = 512,
    item_chunk: int | None = None,
    seed: int = 0,
    warmup: pl.DataFrame | None = None,
    user_column: str | None = None,
    session_key: str = "SessionId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    progress: bool = True,
    return_ranks: bool = False,
    exclude_seen: bool = False,
    path: str = "auto",
    min_targets: int = 1,
) -> EvaluationResult:
    """Full-ranking next-item evaluation of ``model`` on ``test`` (protocol: module docstring).

    Args:
        model: any :class:`~recsys_pipeline.models.base.NextItemModel`.
        test: test events with ``session_key``, ``item_key`` (raw ids) and ``time_key``.
        cutoffs: the ``k`` of Recall@k, MRR@k, NDCG@k.
        mode: tie mode, one of ``TIE_MODES``.
        batch_size: parallel sessions (streams) per step; the results do not depend on it.
        item_chunk: score this many items at a time (``None``: all items at once, ``[B, n_items]``).
        seed: seeds the per-target uniforms of ``mode="tiebreaking"`` (one per event position, so
            the result does not depend on ``batch_size`` or ``item_chunk``).
        warmup: sequence-aware mode: events (e.g. the training set) fed per user before the user's
            test events. Needs ``user_column`` (default ``"UserId"`` when ``warmup`` is given).
        user_column: sequence-aware mode: continue the state across a user's test sessions.
        progress: show a tqdm progress bar (targets/s).
        return_ranks: attach the ``[n_targets]`` ranks as ``result.ranks``.
        exclude_seen: leave the items that occurred earlier in the target's test session out of
            its ranking; a target that itself occurred earlier in the session (a repeat) then
            cannot be hit: its rank is ``inf`` (it counts as a miss in every metric). Not the
            protocol's default; labelled in ``result.exclude_seen`` and ``result.label()``.
        path: how the queries are computed: ``"step"`` (session-parallel, ``model.step``),
            ``"batched"`` (whole sequences through ``model.encode``, see
            :mod:`~recsys_pipeline.evaluation.batched`) or ``"auto"`` (the step path when the
            model has one, else batched). Both give the same targets and ranks.
        min_targets: fewer targets is a :class:`NoTargetsError` (metrics of nothing are not
            reported); 0 allows an empty evaluation (every metric ``nan``).

    Returns:
        :class:`EvaluationResult`: ``{"recall@k", "mrr@k", "ndcg@k"}`` for every cut-off plus
        ``"n_targets"``, ``"n_sessions"``, ``"seconds"`` (wall time, preparation included) and
        ``"targets_per_s"``; attributes ``mode``, ``cutoffs``, ``sequence_aware``, ``ranks``.
    """
    check_mode(mode)
    if path == "auto":
        path = "step" if hasattr(model, "step") else "batched"
    if path not in ("step", "batched"):
        raise ValueError(f"path must be 'auto', 'step' or 'batched', got {path!r}")
    if path == "batched" and not hasattr(model, "encode"):
        raise ValueError(f"{type(model).__name__} has no batched path (no encode method)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if item_chunk is not None and item_chunk < 1:
        raise ValueError(f"item_chunk must be positive or None, got {item_chunk}")
    if warmup is not None and user_column is None:
        user_column = "UserId"
    t0 = time.perf_counter()
    streams = prepare_streams(
        model.item_ids, test, warmup, user_column, session_key, item_key, time_key
    )
    n_targets = streams.n_targets
    if n_targets < min_targets:
        raise NoTargetsError(
            f"{n_targets} targets to evaluate (at least {min_targets} needed): the test data "
            f"has {test.height} events in {test.get_column(session_key).n_unique()} sessions; "
            f"{streams.n_dropped_events} events of items the model does not know "
            f"({int(model.n_items)} items) were dropped, and a target is a known event after "
            "another known event of its session"
        )
    n_items = int(model.n_items)
    device = model.device
    chunk = n_items if item_chunk is None else min(int(item_chunk), n_items)
    acc = MetricAccumulator(cutoffs, device=device)
    all_ranks = (
        torch.zeros(len(streams.items), dtype=torch.float64, device=device)
        if return_ranks
        else None
    )
    uniform_all = None
    if mode == "tiebreaking":
        rng = np.random.default_rng(seed)
        uniform_all = torch.from_numpy(rng.random(len(streams.items))).to(device)
    logger.debug(
        "Evaluating %s: %d targets in %d sessions (%d streams), %d items, %d unknown test events "
        "dropped, mode=%s, batch_size=%d, item_chunk=%s",
        type(model).__name__,
        n_targets,
        streams.n_sessions,
        len(streams.starts),
        n_items,
        streams.n_dropped_events,
        mode,
        batch_size,
        item_chunk,
    )

    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            loop = _run if path == "step" else run_batched
            loop(
                model,  # type: ignore[arg-type]
                streams,
                acc,
                chunk,
                mode,
                batch_size,
                uniform_all,
                all_ranks,
                progress,
                exclude_seen,
            )
    finally:
        if was_training:
            model.train()

    result = EvaluationResult(acc.result())
    seconds = time.perf_counter() - t0
    result["n_targets"] = float(n_targets)
    result["n_sessions"] = float(streams.n_sessions)
    result["seconds"] = seconds
    result["targets_per_s"] = n_targets / seconds if seconds > 0 else math.nan
    result.mode = mode
    result.cutoffs = tuple(int(k) for k in cutoffs)
    result.sequence_aware = user_column is not None
    result.exclude_seen = bool(exclude_seen)
    result.ranks = (
        all_ranks[torch.from_numpy(streams.target_positions).to(device)].cpu().numpy()
        if all_ranks is not None
        else None
    )
    k_max = max(result.cutoffs)
    logger.info(
        "%s: recall@%d=%.4f mrr@%d=%.4f (%s), %.0f targets/s",
        type(model).__name__,
        k_max,
        result[f"recall@{k_max}"],
        k_max,
        result[f"mrr@{k_max}"],
        result.label(),
        result["targets_per_s"],
    )
    return result


def _run(
    model: NextItemModel,
    streams: EvalStreams,
    acc: MetricAccumulator,
    chunk: int,
    mode: str,
    batch_size: int,
    uniform_all: torch.Tensor | None,
    all_ranks: torch.Tensor | None,
    progress: bool,
    exclude_seen: bool = False,
) -> None:
    """The session-parallel loop: step every slot, rank the targets, refill / shrink the slots."""
    starts, ends, is_target = streams.starts, streams.ends, streams.is_target
    n_streams = len(starts)
    if n_streams == 0:
        return
    device = model.device
    items_t = torch.from_numpy(streams.items).to(device)
    n_slots = min(batch_size, n_streams)
    slot_stream = np.arange(n_slots, dtype=np.int64)
    pos = starts[:n_slots].copy()
    next_stream = n_slots
    state = model.initial_state(n_slots)
    bar = progress_bar(streams.n_targets, "evaluate", "targets", enabled=progress)
    try:
        while len(pos):
            n_rows = len(pos)
            pos_t = torch.from_numpy(pos).to(device)
            query, state = model.step(items_t[pos_t], state)
            tpos = pos + 1
            has_t = is_target[tpos]
            n_t = int(has_t.sum())
            if n_t:
                if n_t == n_rows:
                    rows, tpos_t = None, pos_t + 1
                else:
                    sel = np.flatnonzero(has_t)
                    rows = torch.from_numpy(sel).to(device)
                    tpos_t = torch.from_numpy(tpos[sel]).to(device)
                uniform = uniform_all[tpos_t] if uniform_all is not None else None
                seen = repeat = None
                if exclude_seen:
                    tp_np = tpos if rows is None else tpos[sel]
                    seen_np, repeat_np = seen_before(streams.items, streams.pos_in_session, tp_np)
                    seen = torch.from_numpy(seen_np).to(device)
                    repeat = torch.from_numpy(repeat_np).to(device)
                ranks = batch_ranks(
                    model, query, n_rows, rows, items_t[tpos_t], chunk, mode, uniform, seen
                )
                if repeat is not None:
                    ranks = ranks.masked_fill(repeat, math.inf)
                acc.update(ranks)
                if all_ranks is not None:
                    all_ranks[tpos_t] = ranks
                bar.update(n_t)
            pos = tpos
            finished = np.flatnonzero(pos + 1 >= ends[slot_stream])
            if len(finished):
                n_new = min(len(finished), n_streams - next_stream)
                if n_new:
                    refill = finished[:n_new]
                    new = np.arange(next_stream, next_stream + n_new)
                    next_stream += n_new
                    slot_stream[refill] = new
                    pos[refill] = starts[new]
                    mask = np.zeros(n_rows, dtype=bool)
                    mask[refill] = True
                    state = model.reset_state(state, torch.from_numpy(mask).to(device))
                if n_new < len(finished):
                    keep_mask = np.ones(n_rows, dtype=bool)
                    keep_mask[finished[n_new:]] = False
                    keep = np.flatnonzero(keep_mask)
                    slot_stream, pos = slot_stream[keep], pos[keep]
                    if len(keep):
                        state = model.keep_state(state, torch.from_numpy(keep).to(device))
    finally:
        bar.close()
