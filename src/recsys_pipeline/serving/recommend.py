"""Top-k next-item recommendations from any :class:`~recsys_pipeline.models.base.NextItemModel`.

Shared by the pipelines, the CLI and serving. ``recommend(model, session_items, k)`` feeds each
session's items (raw ids) through ``model.step`` and returns the ``k`` best items (raw ids) for
the next event, with their scores, in descending score order.

Behaviour:

* ``session_items`` is one session (a sequence of raw ids) or many (a sequence of sequences; a 2-D
  array counts as many). For one session the result arrays are ``[k]``, for many ``[S, k]``.
* Items the model does not know are skipped. A session with no known item raises ``ValueError``
  naming the session (its position in the input).
* All items are scored (nothing excluded) unless ``exclude_seen=True``, which removes the items of
  the session itself. If fewer than ``k`` items remain, the last entries are excluded items with
  score ``-inf``. ``k`` is capped at ``model.n_items``.
* Items are scored ``item_chunk`` at a time (default: chunks of about ``2**25 / B`` items), keeping
  a running top-k, so no ``[B, n_items]`` matrix is needed for a large catalog.
* Sessions are batched: sorted by length, ``batch_size`` at a time, right-aligned so that they all
  end on the same step; a session shorter than the batch's longest starts later, its slot being
  reset (``model.reset_state``) on its first item. Equal scores come in ascending item index
  order (deterministic).
* An encoder (:class:`~recsys_pipeline.models.base.SequenceEncoder`, e.g. SASRec) is queried in
  one forward pass per batch: the last ``maxlen`` known items of every session, padded on the
  model's side (``encode(last_only=True)``; a masked model gets its mask slot appended, as in
  the last-item evaluation). The queries equal those of the step path
  (:class:`~recsys_pipeline.models.base.EncoderStepAdapter`, which re-encodes the window after
  every item) without its O(length x window) cost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
import torch

from recsys_pipeline.models.base import (
    NextItemModel,
    RecommendResult,
    SequenceEncoder,
)
from recsys_pipeline.training.sequences import last_item_inputs
from recsys_pipeline.training.session_iterator import SessionData

logger = logging.getLogger(__name__)

__all__ = ["RecommendResult", "recommend"]

_SCORE_BUDGET = 2**25  # score elements per chunk when item_chunk is None


def _is_sequence(x: Any) -> bool:
    return isinstance(x, (list, tuple, np.ndarray, pl.Series))


def _as_sessions(session_items: Any) -> tuple[list[Sequence[Any]], bool]:
    """``(sessions, single)``: one session becomes a list of one."""
    if isinstance(session_items, np.ndarray) and session_items.ndim == 2:
        return [list(row) for row in session_items], False
    if not _is_sequence(session_items):
        raise TypeError(
            f"session_items must be a sequence of raw ids or of sessions, got {type(session_items)}"
        )
    items = list(session_items)
    if not items:  # no session at all: an empty result, [0, k]
        return [], False
    if all(_is_sequence(s) for s in items):
        return [list(s) for s in items], False
    if any(_is_sequence(s) for s in items):
        raise TypeError("session_items mixes raw ids and sessions")
    return [items], True


def _to_indices(model: NextItemModel, sessions: list[Sequence[Any]]) -> list[np.ndarray]:
    """Known item indices of every session (unknown raw ids skipped, order kept)."""
    lengths = [len(s) for s in sessions]
    flat = [x for s in sessions for x in s]
    frame = pl.DataFrame(
        {
            "_session": np.repeat(np.arange(len(sessions), dtype=np.int64), lengths),
            "_item": pl.Series(flat, strict=False) if flat else pl.Series([], dtype=pl.Int64),
        }
    )
    item_ids = np.asarray(model.item_ids)
    raw = pl.Series("_item", item_ids.tolist() if item_ids.dtype == object else item_ids)
    if raw.dtype != frame.schema["_item"]:
        raw = raw.cast(frame.schema["_item"], strict=False)
    mapping = pl.DataFrame({"_item": raw, "_idx": np.arange(len(item_ids), dtype=np.int64)})
    known = frame.join(mapping.drop_nulls("_item"), on="_item", how="inner", maintain_order="left")
    idx = known["_idx"].to_numpy()
    counts = np.bincount(known["_session"].to_numpy(), minlength=len(sessions))
    out = np.split(idx, np.cumsum(counts)[:-1])
    for i, s in enumerate(out):
        if len(s) == 0:
            shown = list(sessions[i])[:5]
            raise ValueError(
                f"session {i} has no item known to the model (items: {shown}"
                f"{'...' if len(sessions[i]) > 5 else ''})"
            )
    n_unknown = len(flat) - len(idx)
    if n_unknown:
        logger.debug("recommend: skipped %d unknown items", n_unknown)
    return out


def _feed(model: NextItemModel, batch: list[np.ndarray]) -> Any:
    """Step the sessions of ``batch`` right-aligned; return the query after their last items."""
    device = model.device
    n_rows = len(batch)
    lengths = np.array([len(s) for s in batch])
    n_steps = int(lengths.max())
    first_step = n_steps - lengths  # [B]
    padded = np.zeros((n_rows, n_steps), dtype=np.int64)
    for r, s in enumerate(batch):
        padded[r, first_step[r] :] = s
    padded_t = torch.from_numpy(padded).to(device)
    state = model.initial_state(n_rows)
    query = None
    for t in range(n_steps):
        starting = first_step == t
        if t > 0 and starting.any():
            state = model.reset_state(state, torch.from_numpy(starting).to(device))
        query, state = model.step(padded_t[:, t], state)
    return query


def _encode(model: SequenceEncoder, batch: list[np.ndarray]) -> torch.Tensor:
    """Queries ``[B, D]`` of an encoder after the last item of every session of ``batch``."""
    lengths = np.array([len(s) for s in batch], dtype=np.int64)
    data = SessionData(
        items=np.concatenate(batch).astype(np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        first_time=np.zeros(len(batch), dtype=np.int64),
        item_ids=np.asarray(model.item_ids),
    )
    rows = last_item_inputs(
        data,
        model.maxlen or int(lengths.max()) + 1,
        model.padding,
        # a masked model's inference rows: ``inference_mask`` where it differs from its
        # evaluation rows (XLNet-MLM: evaluated in place, queried with a mask appended)
        mask=getattr(model, "inference_mask", getattr(model, "last_item_mask", "none")),
        device=model.device,
    )
    return model.encode(rows, last_only=True)


def _chunk_top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``scores [B, C]`` with ties broken by ascending column: ``(values, cols)``
    ``[B, k]``, descending. NaN scores count as ``-inf``."""
    s = torch.nan_to_num(scores, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
    kth = torch.topk(s, k, dim=1).values[:, -1:]  # [B, 1]
    above = s > kth
    tied = s == kth
    need = k - above.sum(dim=1, keepdim=True)  # tied columns to take, lowest first
    chosen = above | (tied & (torch.cumsum(tied, dim=1) <= need))
    cols = torch.nonzero(chosen)[:, 1].view(s.shape[0], k)  # ascending columns per row
    values = s.gather(1, cols)
    order = torch.sort(values, dim=1, descending=True, stable=True).indices
    return values.gather(1, order), cols.gather(1, order)


def _top_k(
    model: NextItemModel,
    query: Any,
    n_rows: int,
    k: int,
    chunk: int,
    seen: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-``k`` over item chunks: ``(scores [B, k], indices [B, k])``.

    ``seen [B, L]`` (long, ``-1`` padded): items set to ``-inf`` before ranking.
    """
    n_items = model.n_items
    best_v: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for a in range(0, n_items, chunk):
        b = min(a + chunk, n_items)
        s = model.score(query, a, b)
        if s.shape != (n_rows, b - a):
            raise ValueError(f"model.score returned {tuple(s.shape)}, expected {(n_rows, b - a)}")
        if seen is not None:
            inside = (seen >= a) & (seen < b)
            if bool(inside.any()):
                rows, pos = torch.nonzero(inside, as_tuple=True)
                s = s.clone()  # score() may return a view of the model's own tensors
                s[rows, seen[rows, pos] - a] = float("-inf")
        v, i = _chunk_top_k(s, min(k, b - a))
        i = i + a
        if best_v is None:
            best_v, best_i = v, i
        else:  # earlier chunks hold lower indices: a stable sort keeps them first among ties
            v = torch.cat([best_v, v.to(best_v.dtype)], dim=1)
            i = torch.cat([best_i, i], dim=1)
            order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
            best_v, best_i = v.gather(1, order), i.gather(1, order)
    assert best_v is not None and best_i is not None
    return best_v, best_i


def recommend(
    model: NextItemModel,
    session_items: Sequence[Any] | Sequence[Sequence[Any]] | np.ndarray,
    k: int = 20,
    exclude_seen: bool = False,
    batch_size: int = 512,
    item_chunk: int | None = None,
) -> RecommendResult:
    """Top-``k`` next items for one session or many (see the module docstring).

    Args:
        model: any :class:`~recsys_pipeline.models.base.NextItemModel`, or an encoder without a
            step path (:class:`~recsys_pipeline.models.base.SequenceEncoder`), queried in one
            forward pass per batch (module docstring).
        session_items: raw item ids of one session (``[L]``) or of many sessions (``[S][L_s]``);
            an empty sequence is no session (an empty ``[0, k]`` result).
        k: number of recommendations (capped at ``model.n_items``).
        exclude_seen: remove the session's own items from its recommendations.
        batch_size: sessions stepped in parallel.
        item_chunk: items scored at a time (``None``: about ``2**25 / batch`` items).

    Returns:
        :class:`RecommendResult` with ``items`` (raw ids ``model.item_ids[indices]``), ``scores``
        and ``indices``, ``[k]`` for one session or ``[S, k]`` for many.

    Raises:
        ValueError: a session has no item known to the model, or ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    batched = not hasattr(model, "step") and isinstance(model, SequenceEncoder)
    sessions, single = _as_sessions(session_items)
    n_items = int(model.n_items)
    k = min(int(k), n_items)
    if not sessions:
        empty = np.zeros((0, k), dtype=np.int64)
        return RecommendResult(model.item_ids[empty], np.zeros((0, k)), empty, exclude_seen)
    indices = _to_indices(model, sessions)
    order = np.argsort([-len(s) for s in indices], kind="stable")
    out_v: list[np.ndarray] = [np.empty(0)] * len(sessions)
    out_i: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(sessions)
    device = model.device
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            for b0 in range(0, len(order), batch_size):
                rows = order[b0 : b0 + batch_size]
                batch = [indices[r] for r in rows]
                n_rows = len(batch)
                chunk = item_chunk or max(1, min(n_items, _SCORE_BUDGET // n_rows))
                query = _encode(model, batch) if batched else _feed(model, batch)
                seen = None
                if exclude_seen:
                    width = max(len(s) for s in batch)
                    seen_np = np.full((n_rows, width), -1, dtype=np.int64)
                    for r, s in enumerate(batch):
                        seen_np[r, : len(s)] = s
                    seen = torch.from_numpy(seen_np).to(device)
                v, i = _top_k(model, query, n_rows, k, chunk, seen)
                v_np, i_np = v.cpu().numpy(), i.cpu().numpy()
                for j, r in enumerate(rows):
                    out_v[r], out_i[r] = v_np[j], i_np[j]
    finally:
        if was_training:
            model.train()
    idx = np.stack(out_i)
    scores = np.stack(out_v)
    items = np.asarray(model.item_ids)[idx]
    if single:
        return RecommendResult(items[0], scores[0], idx[0], exclude_seen)
    return RecommendResult(items, scores, idx, exclude_seen)
