"""The batched path of the next-item evaluation: whole padded sequences through
:meth:`~recsys_pipeline.models.base.SequenceEncoder.encode`, one forward pass per batch of rows.

The targets, their order and the ranking are those of the step path (``evaluate.py``); only the
way the queries are computed differs. Every target gets exactly the context the step path
(:class:`~recsys_pipeline.models.base.EncoderStepAdapter`) gives it: the stream's events before
it, at most the last ``model.maxlen``:

* a *head row* per stream holds its first ``min(maxlen, n - 1)`` input events; the query at its
  position ``j`` predicts event ``j + 1`` (every target among the first ``maxlen + 1`` events);
* a target further on (event ``e > maxlen``) gets a *tail row* of its own: the ``maxlen`` events
  before it, query at the last position.

Without a ``maxlen`` (an RNN) every stream is one head row. A model whose query at a position
depends on more than the items up to it and their positions from the sequence start
(``model.prefix_consistent`` False: e.g. positions counted from the end, as the SASRec reference
does with its left padding) gets a tail row for every target instead: each target is then
encoded exactly as the step path encodes it (``encode(last_only=True)``: a masked model such as
BERT4Rec appends its mask there), at the cost of one row per target. Rows are sorted by length and cut
into batches of at most ``batch_size`` rows and ``token_budget`` padded positions, so padding
stays small; a batch is padded on the side the model asks for (``model.padding``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from recsys_pipeline.evaluation.metrics import MetricAccumulator
from recsys_pipeline.evaluation.ranking import batch_ranks, seen_before
from recsys_pipeline.models.base import SequenceEncoder
from recsys_pipeline.training.progress import progress_bar
from recsys_pipeline.training.sequences import PAD, SequenceBatch

__all__ = ["encoder_rows", "run_batched"]

_TOKEN_BUDGET = 2**16  # padded positions per forward pass


def encoder_rows(
    starts: np.ndarray,
    ends: np.ndarray,
    is_target: np.ndarray,
    maxlen: int | None,
    prefix_consistent: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows of the batched path: ``(row_start [R], row_length [R], is_tail [R])``, the
    event positions of each row's inputs (module docstring). A row's input ``j`` is event
    ``row_start + j``; its query predicts event ``row_start + j + 1``, a target iff
    ``is_target`` there (for a tail row only its last position counts)."""
    n_inputs = ends - starts - 1  # every stream ends on a target
    if maxlen is None and prefix_consistent:
        return starts.copy(), n_inputs, np.zeros(len(starts), dtype=bool)
    stream_of = np.repeat(np.arange(len(starts)), ends - starts)
    stream_start = starts[stream_of]
    pos = np.arange(len(is_target)) - stream_start
    if prefix_consistent:  # head rows + tail rows for targets beyond maxlen
        head_starts, head_len = starts, np.minimum(n_inputs, maxlen)
        tail = np.flatnonzero(is_target & (pos > maxlen))
    else:  # one row per target
        head_starts = head_len = np.zeros(0, dtype=np.int64)
        tail = np.flatnonzero(is_target)
    tail_start = (
        tail - pos[tail] if maxlen is None else np.maximum(stream_start[tail], tail - maxlen)
    )
    row_start = np.concatenate([head_starts, tail_start])
    row_length = np.concatenate([head_len, tail - tail_start])
    is_tail = np.arange(len(row_start)) >= len(head_starts)
    return row_start.astype(np.int64), row_length.astype(np.int64), is_tail


def _batches(lengths: np.ndarray, batch_size: int, budget: int) -> list[np.ndarray]:
    """Row indices per batch: rows by length (longest first), at most ``batch_size`` rows and
    about ``budget`` padded positions per batch."""
    order = np.argsort(-lengths, kind="stable")
    out, i = [], 0
    while i < len(order):
        width = max(int(lengths[order[i]]), 1)
        n = max(1, min(batch_size, budget // width))
        out.append(order[i : i + n])
        i += n
    return out


def run_batched(
    model: SequenceEncoder,
    streams: Any,
    acc: MetricAccumulator,
    chunk: int,
    mode: str,
    batch_size: int,
    uniform_all: torch.Tensor | None,
    all_ranks: torch.Tensor | None,
    progress: bool,
    exclude_seen: bool = False,
) -> None:
    """Rank every target of ``streams`` (an :class:`~recsys_pipeline.evaluation.EvalStreams`:
    ``items [E]``, ``is_target [E]``, ``pos_in_session [E]``, ``starts/ends [S]``) with queries
    from ``model.encode``; updates ``acc`` (and ``all_ranks [E]`` at the targets). The same
    arguments as the step path's loop."""
    items, is_target, pos_in_session = streams.items, streams.is_target, streams.pos_in_session
    starts, ends = streams.starts, streams.ends
    if len(starts) == 0:
        return
    device = model.device
    consistent = bool(getattr(model, "prefix_consistent", True))
    row_start, row_len, row_tail = encoder_rows(starts, ends, is_target, model.maxlen, consistent)
    keep = row_len > 0
    row_start, row_len, row_tail = row_start[keep], row_len[keep], row_tail[keep]
    items_t = torch.from_numpy(items).to(device)
    left = model.padding == "left"
    bar = progress_bar(int(is_target.sum()), "evaluate", "targets", enabled=progress)
    try:
        for rows in _batches(row_len, batch_size, _TOKEN_BUDGET):
            lengths = row_len[rows]
            width = int(lengths.max())
            cols = np.arange(width)
            valid = cols[None, :] < lengths[:, None]  # right-padded layout [B, L]
            event = row_start[rows][:, None] + cols[None, :]  # input event of each position
            event = np.where(valid, event, 0)
            inputs = np.where(valid, items[event], PAD)
            # the query at input position j predicts event j + 1: a target? (tail rows: last only)
            nxt = np.where(valid, event + 1, 0)
            wanted = valid & is_target[nxt]
            is_tail = row_tail[rows]
            if is_tail.any():
                wanted[is_tail] &= cols[None, :] == (lengths[is_tail] - 1)[:, None]
            if left:  # move every row's real positions to the end
                shift = width - lengths
                src = (cols[None, :] - shift[:, None]) % width
                inputs = np.take_along_axis(inputs, src, axis=1)
                wanted = np.take_along_axis(wanted, src, axis=1)
                nxt = np.take_along_axis(nxt, src, axis=1)
                inputs = np.where(cols[None, :] >= shift[:, None], inputs, PAD)
                wanted &= cols[None, :] >= shift[:, None]
            batch = SequenceBatch(
                items=torch.from_numpy(inputs).to(device),
                lengths=torch.from_numpy(lengths).to(device),
                targets=torch.full((len(rows), width), PAD, dtype=torch.long, device=device),
                times=None,
                mask=None,
                padding="left" if left else "right",
            )
            r, c = np.nonzero(wanted)
            if len(r) == 0:
                continue
            tpos = nxt[r, c]
            if consistent:
                queries = model.encode(batch, last_only=False)  # [B, L, D]
                query = queries[torch.from_numpy(r).to(device), torch.from_numpy(c).to(device)]
            else:  # every row is a tail row: its last position is its only query
                query = model.encode(batch, last_only=True)[torch.from_numpy(r).to(device)]
            tpos_t = torch.from_numpy(tpos).to(device)
            uniform = uniform_all[tpos_t] if uniform_all is not None else None
            seen = repeat = None
            if exclude_seen:
                seen_np, repeat_np = seen_before(items, pos_in_session, tpos)
                seen = torch.from_numpy(seen_np).to(device)
                repeat = torch.from_numpy(repeat_np).to(device)
            ranks = batch_ranks(
                model, query, len(tpos), None, items_t[tpos_t], chunk, mode, uniform, seen
            )
            if repeat is not None:
                ranks = ranks.masked_fill(repeat, math.inf)
            acc.update(ranks)
            if all_ranks is not None:
                all_ranks[tpos_t] = ranks
            bar.update(len(tpos))
    finally:
        bar.close()
