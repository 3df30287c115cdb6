"""User-based evaluation of user-item models (NeuMF and the user baselines): sampled and full ranking.

A *user model* (:class:`UserModel`) scores items for users given by dense indices: ``score_all``
gives ``[U, n_items]`` for a chunk of users, ``score`` the scores of given candidates. Raw ids are
mapped through ``model.user_ids`` / ``model.item_ids``; test rows whose user or item the model
does not know are dropped (counted in ``n_dropped``).

Two metric families (``shared/spec/evaluation.md``), both with the tie modes of
:data:`~recsys_pipeline.evaluation.metrics.TIE_MODES` and the rank helpers of
:mod:`recsys_pipeline.evaluation.metrics`:

* :func:`sampled_ranking` (legacy NCF protocol, reported only under its own name): every test row
  is ranked among itself and the user's ``n`` sampled negatives (``n + 1`` candidates);
  ``sampled{n}_hr@k`` = share with rank ``<= k``, ``sampled{n}_ndcg@k`` = mean of
  ``1 / log2(rank + 1)`` for rank ``<= k``. Negatives the model does not know are scored ``-inf``
  (they never beat the target) and counted in ``n_unknown_negatives``.
* :func:`full_ranking`: every test row is ranked against all ``n_items`` training items except the
  items in the user's ``exclude`` frames (normally the user's training interactions; for the NCF
  leave-one-out split evaluate *test* with ``exclude=[train, valid]``, since the validation item
  is a known interaction too, and *valid* with ``exclude=[train]``). The target itself is never
  excluded, even when it also occurs in ``exclude`` (a repeat purchase in a time split).
  ``recall@k``, ``mrr@k``, ``ndcg@k`` at any cut-offs, averaged over test rows; users are scored in
  chunks of ``user_chunk``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import polars as pl
import torch

from recsys_pipeline.evaluation.metrics import (
    MetricAccumulator,
    check_mode,
    count_higher_equal,
    rank_from_counts,
)
from recsys_pipeline.training.interactions import _lookup
from recsys_pipeline.training.progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = [
    "UserModel",
    "UserRankingResult",
    "candidate_ranks",
    "full_ranking",
    "sampled_metric_names",
    "sampled_ranking",
]


@runtime_checkable
class UserModel(Protocol):
    """What user-based evaluation and ``recommend`` need from a user-item model."""

    #: raw user id of every user index ``[n_users]`` (ascending)
    user_ids: np.ndarray
    #: raw item id of every item index ``[n_items]`` (ascending)
    item_ids: np.ndarray

    @property
    def n_items(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores ``[U, n_items]`` of every item for ``users [U]`` (long user indices)."""
        ...

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores ``[U, C]`` of the candidates ``items [U, C]`` for ``users [U]``."""
        ...


class UserRankingResult(dict[str, float]):
    """Metric name -> value, with ``mode``, ``cutoffs``, ``kind`` (``"sampled"`` / ``"full"``),
    ``excluded`` (full ranking: whether known items were left out) and ``ranks`` (``[T]`` or
    ``None``)."""

    mode: str
    cutoffs: tuple[int, ...]
    kind: str
    excluded: bool
    ranks: np.ndarray | None

    def label(self) -> str:
        """E.g. ``"full ranking (user-based, known items excluded), mode=standard"``."""
        if self.kind == "sampled":
            return f"sampled ranking (legacy NCF protocol), mode={self.mode}"
        excl = ", known items excluded" if self.excluded else ""
        return f"full ranking (user-based{excl}), mode={self.mode}"


def candidate_ranks(
    scores: torch.Tensor, mode: str = "standard", uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """Rank ``[B]`` (float64, 1 = best) of column 0 (the target) among the ``C`` candidates of
    every row of ``scores [B, C]`` (the legacy sampled protocols: target + ``C - 1`` negatives).

    A ``-inf`` candidate (e.g. a negative the model does not know) never beats the target; a
    target whose own score is NaN gets the worst rank ``C``. ``uniform [B]``: the per-row
    numbers of ``mode="tiebreaking"``.
    """
    target_cols = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    h, e = count_higher_equal(scores, scores[:, 0], target_cols, mode != "standard")
    ranks = rank_from_counts(h, e, mode, uniform)
    nan = torch.isnan(scores[:, 0])
    if bool(nan.any()):
        ranks = torch.where(nan, torch.full_like(ranks, float(scores.shape[1])), ranks)
    return ranks


def sampled_metric_names(
    metrics: dict[str, float], n_negatives: int, mrr: bool = False
) -> dict[str, float]:
    """The legacy sampled protocol's own metric names (``shared/spec/evaluation.md``): from a
    :class:`~recsys_pipeline.evaluation.metrics.MetricAccumulator` result, ``recall@k`` ->
    ``sampled{n}_hr@k``, ``ndcg@k`` -> ``sampled{n}_ndcg@k`` and, with ``mrr``, ``mrr@k`` ->
    ``sampled{n}_mrr@k`` (dropped otherwise), so they can never pass for full-ranking ones."""
    renamed = {"recall": "hr", "ndcg": "ndcg"} | ({"mrr": "mrr"} if mrr else {})
    out = {}
    for name, value in metrics.items():
        metric, k = name.split("@")
        if metric in renamed:
            out[f"sampled{n_negatives}_{renamed[metric]}@{k}"] = value
    return out


def _uniforms(mode: str, n: int, seed: int) -> np.ndarray | None:
    return np.random.default_rng(seed).random(n) if mode == "tiebreaking" else None


def _finish(
    result: UserRankingResult, mode: str, cutoffs: Sequence[int], kind: str, t0: float
) -> UserRankingResult:
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    result["users_per_s"] = result["n_users"] / seconds if seconds > 0 else math.nan
    result.mode, result.cutoffs, result.kind = mode, tuple(int(k) for k in cutoffs), kind
    return result


@torch.no_grad()
def sampled_ranking(
    model: UserModel,
    test: pl.DataFrame,
    negatives: pl.DataFrame,
    cutoffs: Sequence[int] = (10,),
    mode: str = "standard",
    seed: int = 0,
    batch_size: int = 4096,
    user_key: str = "UserId",
    item_key: str = "ItemId",
    return_ranks: bool = False,
) -> UserRankingResult:
    """Legacy sampled ranking: each test row against its user's ``n`` negatives.

    Args:
        model: a :class:`UserModel`.
        test: one row per test interaction (``user_key``, ``item_key``).
        negatives: long format, the same number ``n`` of rows for every test user.
        cutoffs: the ``k`` of ``sampled{n}_hr@k`` and ``sampled{n}_ndcg@k``.
        mode: tie mode (ties between the target and a negative).
        seed: seeds the per-row uniforms of ``tiebreaking``.
        batch_size: test rows scored at once (``[B, n + 1]`` scores).

    Returns:
        ``{"sampled{n}_hr@k", "sampled{n}_ndcg@k", "n_users", "n_dropped",
        "n_unknown_negatives", "seconds", "users_per_s"}``.
    """
    check_mode(mode)
    t0 = time.perf_counter()
    users = _lookup(model.user_ids, test[user_key].to_numpy())
    items = _lookup(model.item_ids, test[item_key].to_numpy())
    keep = (users >= 0) & (items >= 0)
    n_dropped = int((~keep).sum())
    users, items = users[keep], items[keep]
    raw_users = test[user_key].to_numpy()[keep]

    neg = negatives.select(user_key, item_key).sort(user_key, maintain_order=True)
    counts = neg.group_by(user_key).len()
    n_neg = int(counts["len"].max()) if counts.height else 0
    if counts.height and int(counts["len"].min()) != n_neg:
        raise ValueError("every test user needs the same number of negatives")
    neg_users = neg[user_key].to_numpy()
    neg_items = _lookup(model.item_ids, neg[item_key].to_numpy()).reshape(-1, max(n_neg, 1))
    neg_user_ids = neg_users[::n_neg] if n_neg else neg_users
    row = _lookup(neg_user_ids, raw_users)
    if (row < 0).any():
        raise ValueError(f"{int((row < 0).sum())} test user(s) have no negatives")
    cand = np.concatenate([items[:, None], neg_items[row]], axis=1)  # [T, n + 1]
    unknown = cand < 0
    n_unknown = int(unknown.sum())
    if n_unknown:
        logger.warning("%d sampled negatives unknown to the model: scored -inf", n_unknown)

    device = model.device
    acc = MetricAccumulator(cutoffs, device=device)
    uniform_all = _uniforms(mode, len(users), seed)
    all_ranks = []
    for a in range(0, len(users), batch_size):
        b = min(a + batch_size, len(users))
        u = torch.from_numpy(users[a:b]).to(device)
        c = torch.from_numpy(np.maximum(cand[a:b], 0)).to(device)
        s = model.score(u, c).float()
        s = s.masked_fill(torch.from_numpy(unknown[a:b]).to(device), -math.inf)
        uni = torch.from_numpy(uniform_all[a:b]) if uniform_all is not None else None
        ranks = candidate_ranks(s, mode, uni)
        acc.update(ranks)
        if return_ranks:
            all_ranks.append(ranks.cpu().numpy())
    result = UserRankingResult(sampled_metric_names(acc.result(), n_neg))
    result["n_users"] = float(len(users))
    result["n_dropped"] = float(n_dropped)
    result["n_unknown_negatives"] = float(n_unknown)
    result.excluded = False
    result.ranks = np.concatenate(all_ranks) if return_ranks and all_ranks else None
    return _finish(result, mode, cutoffs, "sampled", t0)


def _exclusion_csr(
    model: UserModel,
    frames: Sequence[pl.DataFrame],
    user_key: str,
    item_key: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Known items per user index as CSR ``(indptr [n_users + 1], items [K])``."""
    n_users = len(model.user_ids)
    us, its = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for frame in frames:
        u = _lookup(model.user_ids, frame[user_key].to_numpy())
        i = _lookup(model.item_ids, frame[item_key].to_numpy())
        ok = (u >= 0) & (i >= 0)
        us.append(u[ok])
        its.append(i[ok])
    u, i = np.concatenate(us), np.concatenate(its)
    order = np.argsort(u, kind="stable")
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=n_users), out=indptr[1:])
    return indptr, i[order]


@torch.no_grad()
def full_ranking(
    model: UserModel,
    test: pl.DataFrame,
    exclude: pl.DataFrame | Sequence[pl.DataFrame] | None = None,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "standard",
    seed: int = 0,
    user_chunk: int = 256,
    user_key: str = "UserId",
    item_key: str = "ItemId",
    progress: bool = True,
    return_ranks: bool = False,
) -> UserRankingResult:
    """Rank every test row against all items, leaving out the user's ``exclude`` items.

    Args:
        model: a :class:`UserModel`.
        test: test interactions (``user_key``, ``item_key``), any number of rows per user.
        exclude: frames of known interactions (e.g. ``train``, or ``[train, valid]``) whose items
            are left out of the user's ranking; ``None``: nothing excluded.
        cutoffs: the ``k`` of ``recall@k``, ``mrr@k``, ``ndcg@k``.
        mode: tie mode.
        seed: seeds the per-row uniforms of ``tiebreaking`` (one per kept test row, in the order
            of the rows sorted by user index).
        user_chunk: users scored at once (``[U, n_items]`` scores).
        return_ranks: attach the ``[T]`` ranks (rows sorted by user index, stable).

    Returns:
        ``{"recall@k", "mrr@k", "ndcg@k", "n_targets", "n_users", "n_dropped", "seconds",
        "users_per_s"}``.
    """
    check_mode(mode)
    if user_chunk < 1:
        raise ValueError(f"user_chunk must be positive, got {user_chunk}")
    t0 = time.perf_counter()
    users = _lookup(model.user_ids, test[user_key].to_numpy())
    items = _lookup(model.item_ids, test[item_key].to_numpy())
    keep = (users >= 0) & (items >= 0)
    n_dropped = int((~keep).sum())
    order = np.argsort(users[keep], kind="stable")
    users, items = users[keep][order], items[keep][order]
    frames = [] if exclude is None else [exclude] if isinstance(exclude, pl.DataFrame) else exclude
    test_users = test[user_key].unique()
    frames = [f.filter(pl.col(user_key).is_in(test_users.implode())) for f in frames]
    indptr, known = _exclusion_csr(model, list(frames), user_key, item_key)

    device = model.device
    n_items = int(model.n_items)
    uniq, first = np.unique(users, return_index=True)
    bounds = np.append(first, len(users))
    acc = MetricAccumulator(cutoffs, device=device)
    uniform_all = _uniforms(mode, len(users), seed)
    all_ranks = []
    bar = progress_bar(len(uniq), "full ranking", "users", enabled=progress)
    try:
        for a in range(0, len(uniq), user_chunk):
            b = min(a + user_chunk, len(uniq))
            chunk_users = uniq[a:b]
            lo, hi = bounds[a], bounds[b]
            row = np.repeat(np.arange(b - a), np.diff(bounds[a : b + 1]))  # [T] chunk row
            targets = torch.from_numpy(items[lo:hi]).to(device)
            scores = model.score_all(torch.from_numpy(chunk_users).to(device)).float()
            s = scores[torch.from_numpy(row).to(device)]  # [T, n_items]
            # known items of each row's user -> -inf (never higher than, never tied with a target)
            starts, stops = indptr[chunk_users], indptr[chunk_users + 1]
            lens = stops - starts
            if lens.sum():
                k_row = np.repeat(np.arange(b - a), lens)
                k_item = known[np.concatenate([np.arange(x, y) for x, y in zip(starts, stops)])]
                mask = torch.zeros(b - a, n_items, dtype=torch.bool, device=device)
                mask[torch.from_numpy(k_row).to(device), torch.from_numpy(k_item).to(device)] = True
                m = mask[torch.from_numpy(row).to(device)]
                m[torch.arange(len(row), device=device), targets] = False  # the target stays
                s = s.masked_fill(m, -math.inf)
            t_scores = s.gather(1, targets.unsqueeze(1)).squeeze(1)
            h, e = count_higher_equal(s, t_scores, targets, mode != "standard")
            uni = torch.from_numpy(uniform_all[lo:hi]) if uniform_all is not None else None
            ranks = rank_from_counts(h, e, mode, uni)
            nan = torch.isnan(t_scores)
            if bool(nan.any()):
                ranks = torch.where(nan, torch.full_like(ranks, float(n_items)), ranks)
            acc.update(ranks)
            if return_ranks:
                all_ranks.append(ranks.cpu().numpy())
            bar.update(b - a)
    finally:
        bar.close()
    result = UserRankingResult(acc.result())
    result["n_targets"] = float(len(users))
    result["n_users"] = float(len(uniq))
    result["n_dropped"] = float(n_dropped)
    result.excluded = bool(frames)
    result.ranks = np.concatenate(all_ranks) if return_ranks and all_ranks else None
    _finish(result, mode, cutoffs, "full", t0)
    k = max(result.cutoffs)
    logger.info(
        "%s: recall@%d=%.4f ndcg@%d=%.4f (%s), %.0f users/s",
        type(model).__name__,
        k,
        result[f"recall@{k}"],
        k,
        result[f"ndcg@{k}"],
        result.label(),
        result["users_per_s"],
    )
    return result
