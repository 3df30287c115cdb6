"""Ranking of next-item targets shared by the step and the batched evaluation paths: the
target's rank among all items from chunked scores (tie modes of
:mod:`~recsys_pipeline.evaluation.metrics`), with a session's earlier items optionally left out
(``exclude_seen``)."""

from __future__ import annotations

import numpy as np
import torch

from recsys_pipeline.evaluation.metrics import count_higher_equal, rank_from_counts
from recsys_pipeline.models.base import NextItemModel

__all__ = [
    "batch_ranks",
    "score_checked",
    "seen_before",
]


def score_checked(
    model: NextItemModel, query: object, start: int, stop: int, n_rows: int
) -> torch.Tensor:
    """``model.score(query, start, stop)``, checked to be ``[n_rows, stop - start]``.

    Raises:
        ValueError: the model returned another shape.
    """
    scores = model.score(query, start, stop)
    if scores.dim() != 2 or scores.shape[0] != n_rows or scores.shape[1] != stop - start:
        raise ValueError(
            f"model.score returned shape {tuple(scores.shape)}, expected [{n_rows}, {stop - start}]"
        )
    return scores


def batch_ranks(
    model: NextItemModel,
    query: object,
    n_rows: int,
    rows: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int,
    mode: str,
    uniform: torch.Tensor | None,
    seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ranks ``[Bt]`` of ``targets [Bt]`` for the rows ``rows [Bt]`` (``None``: all rows).

    ``seen [Bt, L]`` (long, ``-1`` padded, distinct per row, never the target): items left out
    of the ranking (``exclude_seen``).
    """
    n_items = model.n_items
    need_equal = mode != "standard"

    def scores_of(start: int, stop: int) -> torch.Tensor:
        s = score_checked(model, query, start, stop, n_rows)
        return s if rows is None else s[rows]

    if chunk >= n_items:
        s = scores_of(0, n_items)
        t_scores = s.gather(1, targets.unsqueeze(1)).squeeze(1)
        n_higher, n_equal = count_higher_equal(s, t_scores, targets, need_equal)
        if seen is not None:
            _subtract_seen(s, t_scores, seen, 0, n_items, n_higher, n_equal)
    else:
        bounds = [(a, min(a + chunk, n_items)) for a in range(0, n_items, chunk)]
        t_scores = None
        s = None
        for a, b in bounds:  # pass 1: the target scores
            s = scores_of(a, b)
            if t_scores is None:
                t_scores = torch.empty(targets.shape[0], dtype=s.dtype, device=s.device)
            inside = torch.nonzero((targets >= a) & (targets < b), as_tuple=True)[0]
            if inside.numel():
                t_scores[inside] = s[inside, targets[inside] - a]
        n_higher = torch.zeros(targets.shape[0], dtype=torch.int64, device=targets.device)
        n_equal = torch.zeros_like(n_higher)
        for j in range(len(bounds) - 1, -1, -1):  # pass 2: counts (the last chunk is reused)
            a, b = bounds[j]
            if j < len(bounds) - 1:
                s = scores_of(a, b)
            cols = torch.where((targets >= a) & (targets < b), targets - a, -1)
            h, e = count_higher_equal(s, t_scores, cols, need_equal)
            n_higher += h
            n_equal += e
            if seen is not None:
                _subtract_seen(s, t_scores, seen, a, b, n_higher, n_equal)
    ranks = rank_from_counts(n_higher, n_equal, mode, uniform)
    nan = torch.isnan(t_scores)
    if bool(nan.any()):
        ranks = torch.where(nan, torch.full_like(ranks, float(n_items)), ranks)
    return ranks


def _subtract_seen(
    scores: torch.Tensor,
    target_scores: torch.Tensor,
    seen: torch.Tensor,
    start: int,
    stop: int,
    n_higher: torch.Tensor,
    n_equal: torch.Tensor,
) -> None:
    """Remove the chunk's seen items (``scores [Bt, stop - start]``) from the counts, in place."""
    inside = (seen >= start) & (seen < stop)  # [Bt, L]
    if not bool(inside.any()):
        return
    vals = scores.gather(1, (seen - start).clamp(0, stop - start - 1))
    t = target_scores.to(vals.dtype).unsqueeze(1)
    n_higher -= ((vals > t) & inside).sum(dim=1)
    n_equal -= ((vals == t) & inside).sum(dim=1)


def seen_before(
    items: np.ndarray, pos_in_session: np.ndarray, tpos: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Items of the session before each target, for ``exclude_seen``.

    Args:
        items: ``[E]`` item indices.
        pos_in_session: ``[E]`` position of every event in its test session.
        tpos: ``[Bt]`` target positions.

    Returns:
        ``(seen [Bt, L], repeat [Bt])``: distinct earlier items of the target's session other
        than the target (``-1`` padded), and whether the target itself occurred earlier.
    """
    n_prev = pos_in_session[tpos]  # [Bt]
    width = int(n_prev.max())
    offs = np.arange(width)
    positions = (tpos - n_prev)[:, None] + offs  # [Bt, L]
    valid = offs < n_prev[:, None]
    seen = np.where(valid, items[np.minimum(positions, len(items) - 1)], -1)
    target = items[tpos][:, None]
    repeat = (seen == target).any(axis=1)
    seen = np.where(seen == target, -1, seen)
    seen.sort(axis=1)
    dup = np.zeros_like(valid)
    dup[:, 1:] = seen[:, 1:] == seen[:, :-1]
    return np.where(dup, -1, seen), repeat
