"""Ranks of targets among all items, with explicit tie handling, and the ranking metrics.

Ranks are computed from two counts per target, so that they can be accumulated over item chunks
(no ``[B, n_items]`` matrix needs to be held at once):

* ``n_higher [B]``: items (other than the target) whose score is strictly higher than the target's,
* ``n_equal [B]``: items *other than the target itself* whose score equals the target's.

Tie modes (``TIE_MODES``), with ``h = n_higher`` and ``e = n_equal``:

==============  ==============================================================================
``standard``      ``1 + h`` (optimistic: the target wins every tie)
``conservative``  ``1 + h + e`` (pessimistic: every tie counts against the model)
``median``        ``1 + h + e / 2``: the mean of the optimistic and the pessimistic rank (can be
                  fractional). The official GRU4Rec_PyTorch_Official ``evaluation.py`` tries this
                  but its ``median`` branch calls ``.dim(axis=0)`` instead of ``.sum(dim=0)`` and
                  therefore fails; this is the intended formula.
``tiebreaking``   ``1 + h + floor(u * (e + 1))`` with ``u ~ U[0, 1)``: the target takes a uniformly
                  random place among its ``e + 1`` tied items. This is exactly what breaking ties by
                  a random perturbation of the scores does (the Theano GRU4Rec's approach), but
                  without the perturbation reordering nearly-equal, non-tied scores. ``u`` is drawn
                  from a seeded generator per target, so the result is deterministic under a seed.
==============  ==============================================================================

NaN scores: a NaN candidate score is neither higher than nor equal to the target's; a target whose
own score is NaN gets the worst rank ``n_items``.

Metrics for a cut-off ``k`` (all averaged over targets): ``recall@k`` = share of targets with
``rank <= k``; ``mrr@k`` = mean of ``1 / rank`` if ``rank <= k`` else 0; ``ndcg@k`` = mean of
``1 / log2(rank + 1)`` if ``rank <= k`` else 0 (one relevant item, so the ideal DCG is 1).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)

TIE_MODES: tuple[str, ...] = ("standard", "conservative", "median", "tiebreaking")

__all__ = [
    "TIE_MODES",
    "MetricAccumulator",
    "count_higher_equal",
    "metric_names",
    "metrics_from_ranks",
    "rank_from_counts",
    "rank_of_targets",
]


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of :data:`TIE_MODES`."""
    if mode not in TIE_MODES:
        raise ValueError(f"unknown tie mode {mode!r}; expected one of {TIE_MODES}")


def count_higher_equal(
    scores: torch.Tensor,
    target_scores: torch.Tensor,
    target_cols: torch.Tensor | None = None,
    need_equal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Count, per row, the candidates scoring strictly higher / equal to the row's target.

    Args:
        scores: ``[B, C]`` candidate scores (one item chunk or all items).
        target_scores: ``[B]`` score of each row's target.
        target_cols: ``[B]`` long, column of the row's target inside ``scores`` or ``-1`` when the
            target is not in this chunk. The target's own column is excluded from both counts
            (so a target never ties with itself, whatever the arithmetic). ``None``: no row's
            target lies in ``scores``.
        need_equal: ``False`` skips the equality count (returned as zeros): enough for the
            ``standard`` mode and about a third faster.

    Returns:
        ``(n_higher [B], n_equal [B])`` as int64.
    """
    t = target_scores.to(scores.dtype).unsqueeze(1)
    if scores.device.type == "cpu" and scores.dtype in _NUMPY_FLOATS:
        # numpy's row-wise count of a comparison is several times faster than torch's bool sum
        # on the CPU; .numpy() shares the memory (also of broadcast views)
        s_np, t_np = scores.detach().numpy(), t.detach().numpy()
        n_higher = torch.from_numpy(np.count_nonzero(s_np > t_np, axis=1).astype(np.int64))
        if need_equal:
            n_equal = torch.from_numpy(np.count_nonzero(s_np == t_np, axis=1).astype(np.int64))
    else:
        n_higher = (scores > t).sum(dim=1, dtype=torch.int64)
        if need_equal:
            n_equal = (scores == t).sum(dim=1, dtype=torch.int64)
    if not need_equal:
        n_equal = torch.zeros_like(n_higher)
    if target_cols is not None:
        inside = target_cols >= 0
        if bool(inside.any()):
            rows = torch.nonzero(inside, as_tuple=True)[0]
            own = scores[rows, target_cols[rows]]  # the target's own column: excluded
            t_rows = t[rows, 0]
            n_higher[rows] -= (own > t_rows).to(torch.int64)
            if need_equal:
                n_equal[rows] -= (own == t_rows).to(torch.int64)
    return n_higher, n_equal


def rank_from_counts(
    n_higher: torch.Tensor,
    n_equal: torch.Tensor,
    mode: str = "standard",
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank ``[B]`` (float64, 1 = best) of each target from its tie counts.

    Args:
        n_higher: ``[B]`` items scoring strictly higher than the target.
        n_equal: ``[B]`` items other than the target with exactly the target's score.
        mode: one of :data:`TIE_MODES` (see the module docstring for the formulas).
        uniform: ``[B]`` numbers in ``[0, 1)``, required by ``tiebreaking`` (one per target).
    """
    check_mode(mode)
    h = n_higher.to(torch.float64)
    e = n_equal.to(torch.float64)
    if mode == "standard":
        return h + 1.0
    if mode == "conservative":
        return h + e + 1.0
    if mode == "median":
        return h + 1.0 + 0.5 * e
    if uniform is None:
        raise ValueError("tie mode 'tiebreaking' needs one uniform number per target")
    u = uniform.to(device=h.device, dtype=torch.float64)
    offset = torch.minimum(torch.floor(u * (e + 1.0)), e)
    return h + 1.0 + offset


def rank_of_targets(
    scores: torch.Tensor,
    targets: torch.Tensor,
    mode: str = "standard",
    generator: torch.Generator | None = None,
    uniform: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rank ``[B]`` (float64) of ``targets [B]`` (long item indices) given ``scores [B, n_items]``.

    A convenience for a full score matrix; :func:`recsys_pipeline.evaluation.evaluate` uses the
    chunked :func:`count_higher_equal` + :func:`rank_from_counts` instead. For ``tiebreaking``
    pass either ``uniform [B]`` or a seeded ``generator`` (on the CPU) to draw it.
    """
    check_mode(mode)
    targets = targets.to(device=scores.device, dtype=torch.long)
    target_scores = scores.gather(1, targets.unsqueeze(1)).squeeze(1)
    n_higher, n_equal = count_higher_equal(scores, target_scores, targets)
    if mode == "tiebreaking" and uniform is None:
        uniform = torch.rand(targets.shape[0], generator=generator, dtype=torch.float64)
    ranks = rank_from_counts(n_higher, n_equal, mode, uniform)
    nan = torch.isnan(target_scores)
    if bool(nan.any()):
        ranks = torch.where(nan, torch.full_like(ranks, float(scores.shape[1])), ranks)
    return ranks


def metric_names(cutoffs: Iterable[int]) -> list[str]:
    """``["recall@k", "mrr@k", "ndcg@k"]`` for every cut-off, in cut-off order."""
    return [f"{m}@{k}" for k in cutoffs for m in ("recall", "mrr", "ndcg")]


class MetricAccumulator:
    """Sums of Recall/MRR/NDCG over batches of ranks; :meth:`result` gives the means.

    Kept on the ranks' device as float64 so that no per-batch host synchronisation is needed.
    """

    def __init__(self, cutoffs: Sequence[int], device: torch.device | str = "cpu") -> None:
        cut = [int(k) for k in cutoffs]
        if not cut or any(k < 1 for k in cut):
            raise ValueError(f"cut-offs must be positive integers, got {cutoffs!r}")
        self.cutoffs: list[int] = cut
        self._k = torch.tensor(cut, dtype=torch.float64, device=device)
        self._sums = torch.zeros(3, len(cut), dtype=torch.float64, device=device)
        self.n = 0

    def update(self, ranks: torch.Tensor) -> None:
        """Add the ranks ``[B]`` (float, 1 = best) of ``B`` targets."""
        if ranks.numel() == 0:
            return
        r = ranks.to(device=self._k.device, dtype=torch.float64).unsqueeze(1)  # [B, 1]
        hit = (r <= self._k).to(torch.float64)  # [B, K]
        self._sums[0] += hit.sum(0)
        self._sums[1] += (hit / r).sum(0)
        self._sums[2] += (hit / torch.log2(r + 1.0)).sum(0)
        self.n += int(ranks.numel())

    def result(self) -> dict[str, float]:
        """``{"recall@k": ..., "mrr@k": ..., "ndcg@k": ...}`` averaged over all targets so far.

        With no target at all every metric is ``nan``.
        """
        means = (self._sums / self.n).cpu().tolist() if self.n else None
        out: dict[str, float] = {}
        for j, k in enumerate(self.cutoffs):
            for i, name in enumerate(("recall", "mrr", "ndcg")):
                out[f"{name}@{k}"] = float(means[i][j]) if means is not None else math.nan
        return out


def metrics_from_ranks(ranks: torch.Tensor, cutoffs: Sequence[int] = (1, 5, 10, 20)) -> dict:
    """Recall@k, MRR@k and NDCG@k (means over the ``ranks [N]``) for every cut-off ``k``."""
    acc = MetricAccumulator(cutoffs, device=ranks.device)
    acc.update(ranks)
    return acc.result()
