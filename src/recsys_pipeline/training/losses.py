"""Losses shared by the models.

The GRU4Rec family (Hidasi & Karatzoglou, CIKM 2018; definitions of the official
implementation): cross-entropy (with logQ correction), ``xe_logit``, BPR-max, TOP1-max, TOP1 and
BPR. Every one takes a score matrix ``[B, N]`` whose column ``i`` (i < B) holds the target of row
``i`` (the other columns are negatives: the other rows' targets, then the samples), sums the
per-row losses and divides by ``batch_size`` (the nominal mini-batch size, also when the last
mini-batches of an epoch are smaller), as the reference does. Cross-entropy and BPR-max are
single autograd nodes with hand-written backward passes (:class:`CrossEntropyFunction`,
:class:`BPRMaxFunction`), which GRU4Rec's fused training step also calls in their grouped form.

The losses of the transformer models (SASRec, BERT4Rec, XLNet-MLM, HSTU) take one query
embedding or one row of logits per supervised position (padded batches ``[B, L, ...]`` are
flattened or gathered to ``[N, ...]`` by the caller):

- :func:`full_softmax_cross_entropy`: softmax over the whole catalogue, optional label
  smoothing (SASRec+ / BERT4Rec / XLNet-MLM);
- :func:`sampled_softmax_loss`: softmax over the positive and sampled and/or in-batch negatives,
  temperature, logQ correction, accidental hits masked (HSTU, gSASRec-style SASRec);
- :func:`bce_negative_loss`: binary cross-entropy of the positive against ``k`` negatives per
  position (the original SASRec).

Their negatives come from the vectorised samplers :func:`uniform_negatives`,
:func:`popularity_negatives` (both return the ids and ``log_q``, the log of each id's sampling
probability, for the logQ correction) and :func:`uniform_negatives_excluding` (uniform over the
items a user has not interacted with, as the SASRec original draws them). The samplers draw on
the device of their ``generator`` (or ``device``), with no host round-trip per id.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from recsys_pipeline.training.sampler import sampling_distribution

logger = logging.getLogger(__name__)

__all__ = [
    "IGNORE_INDEX",
    "BPRMaxFunction",
    "CrossEntropyFunction",
    "bce_negative_loss",
    "bpr_loss",
    "bpr_max_loss",
    "cross_entropy_loss",
    "full_softmax_cross_entropy",
    "l2_normalize",
    "logq_correction",
    "popularity_negatives",
    "sampled_softmax_loss",
    "GatheredLogits",
    "table_logits",
    "top1_loss",
    "top1_max_loss",
    "uniform_negatives",
    "uniform_negatives_excluding",
    "xe_logit_loss",
]

IGNORE_INDEX = -1


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / max(|x|, eps)`` over the last dimension (generative-recommenders' L2
    normalisation of queries and item embeddings: cosine scores)."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


"""Target of a position without a target (padding, unmasked positions) in
:func:`full_softmax_cross_entropy`."""


def logq_correction(
    log_support: torch.Tensor,
    targets: torch.Tensor,
    samples: torch.Tensor | None,
    logq: float,
    sample_alpha: float,
) -> torch.Tensor:
    """What cross-entropy subtracts from the score columns, ``[B + S]``:
    ``logq * log(support)`` for the target columns, ``logq * sample_alpha * log(support)`` for
    the sampled ones."""
    correction = log_support.index_select(0, targets)
    if samples is not None:
        sampled = log_support.index_select(0, samples) * sample_alpha
        correction = torch.cat([correction, sampled])
    return correction * logq


def cross_entropy_loss(
    scores: torch.Tensor, batch_size: int, correction: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax over each row (once), ``-log(p_target + 1e-24)``; ``correction [N]`` (logQ) is
    subtracted from the columns first.

    One autograd node with a hand-written backward (see :class:`CrossEntropyFunction`)."""
    if correction is not None:
        scores = scores - correction
    return CrossEntropyFunction.apply(scores, None, None) / batch_size


class CrossEntropyFunction(torch.autograd.Function):
    """Sum over rows of ``-log(p_t + eps)``, ``p = softmax(row)``, target of row ``i`` in column
    ``i``. With ``q = softmax(row)`` and ``k = p_t / (p_t + eps)`` the gradient is
    ``d/d s_j = k * (q_j - [j == t])``: one pass over the saved exponentials instead of the
    half a dozen full-size nodes of the autograd formulation.

    Grouped form (``target``, ``count`` given, as in :class:`BPRMaxFunction`): column ``u`` stands for
    ``count[u]`` identical loss columns and ``target[i]`` holds row ``i``'s target; the softmax
    mass of column ``u`` is ``count[u] * q_u`` and its gradient ``k * (count[u] q_u - [u == t])``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, scores: torch.Tensor, target: torch.Tensor | None, count: torch.Tensor | None
    ) -> torch.Tensor:
        if target is None:
            exp = torch.sub(scores, scores.amax(dim=1, keepdim=True)).exp_()
            total = exp.sum(dim=1)
            p_target = exp.diagonal() / total
        else:
            logits = torch.add(scores, torch.log(count.to(scores.dtype)))  # log 0 = -inf
            top = logits.amax(dim=1, keepdim=True)
            exp = logits.sub_(top).exp_()  # count * exp(s - max)
            total = exp.sum(dim=1)
            rows = torch.arange(len(target), device=scores.device)
            p_target = torch.exp(scores[rows, target] - top.squeeze(1)) / total
        ctx.save_for_backward(exp, total, p_target, target)
        return -torch.log(p_target + 1e-24).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        exp, total, p_target, target = ctx.saved_tensors
        coef = grad * p_target / (p_target + 1e-24)  # [B]
        out = exp * (coef / total).unsqueeze(1)  # k * q (times the count)
        if target is None:
            out.diagonal().sub_(coef)
        else:
            out[torch.arange(len(target), device=out.device), target] -= coef
        return out, None, None


def xe_logit_loss(
    scores: torch.Tensor, batch_size: int, correction: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy on logits (Theano ``xe_logit``): ``logsumexp(row) - score_target``."""
    if correction is not None:
        scores = scores - correction
    return (torch.logsumexp(scores, dim=1) - scores.diagonal()).sum() / batch_size


def _softmax_negatives(scores: torch.Tensor) -> torch.Tensor:
    """Softmax of each row over its negatives only: the target column gets weight 0."""
    masked = scores.clone()
    masked.diagonal().fill_(-math.inf)  # the target of row i is column i
    return torch.softmax(masked, dim=1)


def bpr_max_loss(scores: torch.Tensor, batch_size: int, bpreg: float) -> torch.Tensor:
    """BPR-max on (final-activated) scores ``r``, softmax weights ``s`` over the negatives only::

    -log(sum_j s_j * sigmoid(r_t - r_j) + 1e-24) + bpreg * sum_j s_j * r_j ** 2

    One autograd node with a hand-written backward (see :class:`BPRMaxFunction`): the loss is the
    hottest element-wise part of a bpr-max step.
    """
    return BPRMaxFunction.apply(scores, bpreg, None, None) / batch_size


class BPRMaxFunction(torch.autograd.Function):
    """Sum over rows of the BPR-max loss of ``r [B, C]``.

    Plain form (``target`` and ``count`` None): ``C = N`` columns, the target of row ``i`` in
    column ``i``, every other column a negative. Grouped form: the ``N`` loss columns are given
    as ``C`` distinct columns, column ``u`` standing for ``count[u]`` identical loss columns
    (duplicated samples, targets also drawn as samples), ``target[i]`` holding row ``i``'s
    target; for row ``i`` every occurrence but the target's own is a negative, so the softmax
    over the negatives is ``softmax(r + log(multiplicity))`` with multiplicity ``count[u]``,
    ``count[target[i]] - 1`` at the target (0 -> weight 0). Sums over the loss columns become
    sums over ``C`` columns weighted by it, which is the same loss and gradient (summed per
    distinct column) without materialising ``[B, N]``.

    With ``w`` the softmax over the negatives, ``sg_j = sigmoid(r_t - r_j)``,
    ``A = sum_j w_j sg_j`` and ``Q = sum_j w_j r_j^2``, the row loss is
    ``-log(A + eps) + bpreg * Q`` and (softmax rule: ``d sum_k w_k f_k / d r_j = w_j (f_j - F)``;
    ``sg_j - sg_j (1 - sg_j) = sg_j^2``)::

        d/d r_j = -1/(A + eps) * w_j * (sg_j^2 - A) + bpreg * w_j * (r_j^2 + 2 r_j - Q)
        d/d r_t = -1/(A + eps) * sum_j w_j sg_j (1 - sg_j) = -1/(A + eps) * (A - sum_j w_j sg_j^2)

    (the target's own occurrence; in the grouped form its other occurrences add the first line).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        scores: torch.Tensor,
        bpreg: float,
        target: torch.Tensor | None,
        count: torch.Tensor | None,
    ) -> torch.Tensor:
        if target is None:
            own = scores.diagonal()  # the target's own column: row i, column i
            masked = scores.clone()
            masked.diagonal().fill_(-math.inf)
        else:
            rows = torch.arange(len(target), device=scores.device)
            own = scores[rows, target]
            log_count = torch.log(count.to(scores.dtype))  # log 0 = -inf: no weight
            masked = torch.add(scores, log_count)
            masked[rows, target] = own + torch.log(count[target].to(scores.dtype) - 1.0)
        weights = torch.softmax(masked, dim=1)  # over the negatives (with multiplicity)
        sig = torch.sub(own.unsqueeze(1), scores, out=masked).sigmoid_()
        ranking = torch.linalg.vecdot(weights, sig)  # A [B]
        regulariser = torch.linalg.vecdot(weights * scores, scores)  # Q [B]
        ctx.save_for_backward(scores, weights, sig, ranking, regulariser, target)
        ctx.bpreg = bpreg
        return (bpreg * regulariser - torch.log(ranking + 1e-24)).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        scores, weights, sig, ranking, regulariser, target = ctx.saved_tensors
        bpreg = ctx.bpreg
        inv = -1.0 / (ranking + 1e-24)  # [B]
        out = sig * sig  # sg^2
        slope = ranking - torch.linalg.vecdot(weights, out)  # sum_j w_j sg_j (1 - sg_j)
        out.sub_(ranking.unsqueeze(1)).mul_(inv.unsqueeze(1))  # inv (sg^2 - A)
        if bpreg:
            reg = torch.add(scores, 2.0).mul_(scores).sub_(regulariser.unsqueeze(1))
            out.add_(reg, alpha=bpreg)  # + bpreg (r^2 + 2 r - Q)
        out.mul_(weights)
        if target is None:
            out.diagonal().add_(inv * slope)  # the target column (its weight is 0 above)
        else:
            rows = torch.arange(len(target), device=out.device)
            out[rows, target] += inv * slope
        return out.mul_(grad), None, None, None


def top1_max_loss(scores: torch.Tensor, batch_size: int) -> torch.Tensor:
    """TOP1-max: ``sum_j s_j * (sigmoid(r_j - r_t) + sigmoid(r_j ** 2))``, ``s`` over negatives."""
    weights = _softmax_negatives(scores)
    target = scores.diagonal().unsqueeze(1)
    terms = torch.sigmoid(scores - target) + torch.sigmoid(scores.square())
    return (weights * terms).sum() / batch_size


def top1_loss(scores: torch.Tensor, batch_size: int) -> torch.Tensor:
    """TOP1 (Theano definition): ``mean_j(sigmoid(r_j - r_t) + sigmoid(r_j ** 2))
    - sigmoid(r_t ** 2) / N`` per row (the mean runs over all ``N`` columns)."""
    target = scores.diagonal()
    terms = torch.sigmoid(scores - target.unsqueeze(1)) + torch.sigmoid(scores.square())
    per_row = terms.mean(dim=1) - torch.sigmoid(target.square()) / scores.shape[1]
    return per_row.sum() / batch_size


def bpr_loss(scores: torch.Tensor, batch_size: int) -> torch.Tensor:
    """BPR (Theano definition): ``mean_j -log(sigmoid(r_t - r_j))`` per row, all ``N`` columns."""
    target = scores.diagonal().unsqueeze(1)
    return -F.logsigmoid(target - scores).mean(dim=1).sum() / batch_size


# ------------------------------------------------------------------ losses of the encoder models
_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def full_softmax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy of a softmax over every class (item): a thin wrapper of
    :func:`torch.nn.functional.cross_entropy`.

    Label smoothing is torch's: the target distribution is ``(1 - eps) * one_hot(target) +
    eps / C`` spread over **all** ``C`` classes, the target included, i.e. the loss is
    ``(1 - eps) * -log p_target + eps * mean_c(-log p_c)``. Transformers4Rec uses torch's
    ``CrossEntropyLoss(label_smoothing=...)`` too, so its settings carry over unchanged. Leave
    classes that may never be predicted (padding, the mask token) out of ``logits`` (slice them
    off) instead of setting them to ``-inf``: with ``eps > 0`` a ``-inf`` column makes the loss
    infinite.

    Args:
        logits: ``[N, C]`` (or ``[..., C]``, e.g. ``[B, L, C]``) scores of every class.
        targets: ``[N]`` (or ``[...]``, the shape of ``logits`` without its last dimension)
            class per row in ``[0, C)``; :data:`IGNORE_INDEX` (-1) marks rows without a target
            (padding, unmasked positions), which add nothing to the loss nor to the mean.
        label_smoothing: ``eps`` in ``[0, 1]``.
        reduction: ``"mean"`` over the rows with a target (NaN when there is none, as in torch),
            ``"sum"``, or ``"none"`` (shape of ``targets``, 0 at ignored rows).

    Returns:
        The loss: a scalar, or the per-row losses for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} + [C]"
        )
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )
    return loss.view(targets.shape) if reduction == "none" else loss


def sampled_softmax_loss(
    query: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor | None = None,
    *,
    pos_ids: torch.Tensor,
    neg_ids: torch.Tensor | None = None,
    temperature: float = 1.0,
    pos_log_q: torch.Tensor | None = None,
    neg_log_q: torch.Tensor | None = None,
    in_batch: bool = False,
    reduction: str = "mean",
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax cross-entropy of each row's positive against sampled and/or in-batch negatives.

    Row ``i``'s candidates are its positive, then (``in_batch``) the positives of all rows, then
    the given negatives (shared ``[K]`` or per row ``[N, K]``). Each logit is
    ``dot(query, emb) / temperature - log_q``; a negative whose id equals the row's positive
    (an accidental hit, e.g. a sampled copy of the positive or another row's identical
    positive; row ``i``'s own in-batch column too) gets logit ``-inf`` and so no weight. The
    loss of the row is ``-log_softmax(logits)[positive]``. As in generative-recommenders'
    ``SampledSoftmaxLoss`` (dot / temperature, accidental hits masked, mean over rows), which
    has no logQ correction and masks with ``-5e4`` instead of ``-inf``.

    **logQ correction** (Bengio & Senecal 2008; Yi et al., RecSys 2019): a sampled softmax
    estimates the normaliser of the full softmax ``sum_j exp(z_j)``, ``z = dot / temperature``,
    from candidates drawn with probability ``q``; the importance-weighted estimate
    ``sum_k exp(z_k) / q_k = sum_k exp(z_k - log q_k)`` is what the corrected logits give. So
    ``log_q`` is subtracted **after** dividing by the temperature: the model's distribution is
    the softmax of the tempered logits, and the sampling correction does not depend on it (before
    the division it would become ``log_q / temperature``: with HSTU's temperature 0.05, 20 times
    too strong). Pass ``pos_log_q`` too (the probability of the positive under the same
    sampler; for in-batch negatives, that of drawing the item as some row's positive, e.g.
    ``popularity_negatives``' ``log_q`` with ``alpha=1``): the positive column is corrected like
    every other column (as TensorFlow's ``sampled_softmax_loss`` does), so a constant ``log_q``
    (uniform sampling) changes nothing. ``log_q`` must be finite (an id that cannot be drawn
    has no finite correction).

    Args:
        query: ``[N, D]`` query per supervised position.
        pos_emb: ``[N, D]`` embedding of each row's positive.
        neg_emb: ``[K, D]`` negatives shared by all rows, ``[N, K, D]`` negatives per row, or
            None (then ``in_batch`` must be True).
        pos_ids: ``[N]`` positive ids (accidental-hit masking).
        neg_ids: ``[K]`` or ``[N, K]`` ids of ``neg_emb`` (required with it).
        temperature: logits are divided by it (> 0).
        pos_log_q: ``[N]`` log sampling probability of each positive, or None (no correction).
        neg_log_q: ``[K]`` or ``[N, K]`` log sampling probability of each negative, or None.
        in_batch: also use the other rows' positives as negatives.
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (``[N]``).
        table: ``[I, D]`` item embeddings that ``neg_ids`` index (instead of ``neg_emb``): the
            negatives' logits are :func:`table_logits` (the same values, computed without an
            ``[N, K, D]`` copy).

    Returns:
        The loss: a scalar, or ``[N]`` for ``reduction="none"``.
    """
    _check_reduction(reduction)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query.ndim != 2 or pos_emb.shape != query.shape:
        raise ValueError(
            f"query {tuple(query.shape)} and pos_emb {tuple(pos_emb.shape)} must both be [N, D]"
        )
    if table is not None:
        if neg_emb is not None or neg_ids is None:
            raise ValueError("table goes with neg_ids and without neg_emb")
    elif neg_emb is None and not in_batch:
        raise ValueError("no negatives: give neg_emb (or table) or set in_batch=True")
    elif (neg_emb is None) != (neg_ids is None):
        raise ValueError("neg_emb and neg_ids go together")
    n = query.shape[0]
    pos_logits = torch.linalg.vecdot(query, pos_emb) / temperature  # [N]
    if pos_log_q is not None:
        pos_logits = pos_logits - pos_log_q
    columns = [pos_logits.unsqueeze(1)]
    if in_batch:
        batch = (query @ pos_emb.T) / temperature  # [N, N]: column j = row j's positive
        if pos_log_q is not None:
            batch = batch - pos_log_q
        # row i's own positive (the diagonal) is column 0 already; equal ids are accidental hits
        batch = batch.masked_fill(pos_ids.unsqueeze(1) == pos_ids.unsqueeze(0), -math.inf)
        columns.append(batch)
    if table is not None and neg_ids is not None:
        neg = table_logits(query, table, neg_ids) / temperature  # [N, K]
        if neg_log_q is not None:
            neg = neg - neg_log_q
        columns.append(neg.masked_fill(neg_ids == pos_ids.unsqueeze(1), -math.inf))
    elif neg_emb is not None and neg_ids is not None:
        if neg_emb.ndim == 2:  # [K, D], shared
            neg = query @ neg_emb.T
        elif neg_emb.ndim == 3 and neg_emb.shape[0] == n:  # [N, K, D], per row
            neg = torch.bmm(neg_emb, query.unsqueeze(2)).squeeze(2)
        else:
            raise ValueError(f"neg_emb must be [K, D] or [N, K, D], got {tuple(neg_emb.shape)}")
        if neg_ids.shape != neg_emb.shape[:-1]:
            raise ValueError(f"neg_ids {tuple(neg_ids.shape)} must match neg_emb's [K] / [N, K]")
        neg = neg / temperature  # [N, K]
        if neg_log_q is not None:
            neg = neg - neg_log_q
        neg = neg.masked_fill(neg_ids == pos_ids.unsqueeze(1), -math.inf)
        columns.append(neg)
    logits = torch.cat(columns, dim=1)  # positive in column 0
    target = torch.zeros(n, dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, reduction=reduction)


def table_logits(query: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``query [N, D]`` dotted with the rows ``ids`` of ``table [I, D]``: ids ``[K]`` shared by
    all rows or ``[N, K]`` per row -> ``[N, K]``.

    Per-row ids are computed one of two ways, the same values either way: with at most ``K * D``
    table rows, one matrix product with the whole table and a gather (``query @ table.T``,
    ``[N, I]``); with more, a gather of ``[N, K, D]`` rows and a batched product. Measured on
    one CPU thread, N = 19,000, K = 128, D = 50, forward and backward: 0.77 s against 1.0 s at
    I = 3,700 (and 3.7 s for gathering the rows of an embedding module and normalising each
    copy, as HSTU did before); 2.1 s against 1.0 s at I = 12,000. On the CPU the backward pass
    is :class:`GatheredLogits`' (two weighted bag sums instead of a dense ``[N, I]`` gradient
    and two products with it).
    """
    if ids.ndim == 1:
        return query @ table[ids].T
    rows, k = ids.shape
    if rows != query.shape[0]:
        raise ValueError(f"ids {tuple(ids.shape)} must be [K] or [N, K] with N = {query.shape[0]}")
    if (
        query.device.type == "cpu"
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
    ):
        return GatheredLogits.apply(query, table, ids)
    if table.shape[0] <= k * table.shape[1]:
        return (query @ table.T).gather(1, ids)
    return torch.bmm(table[ids], query.unsqueeze(2)).squeeze(2)


#: logits per row chunk of :class:`GatheredLogits`' product (1 MiB of float32)
_CHUNK_LOGITS = 2**18


class GatheredLogits(torch.autograd.Function):
    """``logits[n, k] = query[n] . table[ids[n, k]]`` (:func:`table_logits`, per-row ids) with
    a backward pass that never forms the ``[N, I]`` gradient: for an upstream gradient
    ``g [N, K]``

    * ``d query[n] = sum_k g[n, k] table[ids[n, k]]``: one ``embedding_bag`` over ``table``
      (bag ``n`` = the row's ids, weights ``g[n]``);
    * ``d table[i] = sum over (n, k) with ids[n, k] = i of g[n, k] query[n]``: the pairs sorted
      by id, one ``embedding_bag`` over ``query`` (bag ``i`` = the rows that drew ``i``).

    The autograd graph of the forward instead takes a dense ``[N, I]`` gradient (zero-filled,
    scatter-added) and two products with it: measured 0.87 s against 0.20 s for N = 13,000,
    I = 3,883, K = 128, D = 50 on one (shared) CPU thread. Same values up to float rounding
    (tests/training/test_losses.py). The forward pass computes the product in row chunks."""

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, table: torch.Tensor, ids: torch.Tensor) -> Any:
        ctx.save_for_backward(query, table, ids)
        n_items = table.shape[0]
        if n_items > ids.shape[1] * table.shape[1]:
            return torch.bmm(table[ids], query.unsqueeze(2)).squeeze(2)
        # the product with the whole table in row chunks of about 1 MiB of logits, each
        # gathered while in cache (one [N, I] product writes and re-reads N * I floats:
        # measured 0.61 s against 0.17-0.25 s for N = 13,000, I = 3,883 on one CPU thread)
        out = query.new_empty(ids.shape)
        step = max(1, _CHUNK_LOGITS // max(n_items, 1))
        columns = table.T.contiguous()
        for start in range(0, len(ids), step):
            part = slice(start, start + step)
            torch.gather(query[part] @ columns, 1, ids[part], out=out[part])
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        query, table, ids = ctx.saved_tensors
        grad = grad.to(table.dtype).contiguous()
        d_query = d_table = None
        if ctx.needs_input_grad[0]:
            d_query = F.embedding_bag(ids, table, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:
            flat = ids.reshape(-1)
            keys = flat.int() if table.shape[0] < 2**31 else flat  # int32 sorts 2x faster
            order = torch.sort(keys, stable=True).indices
            counts = torch.bincount(flat, minlength=table.shape[0])
            offsets = torch.cumsum(counts, 0) - counts
            rows = torch.div(order, ids.shape[1], rounding_mode="floor")
            d_table = F.embedding_bag(
                rows, query, offsets, per_sample_weights=grad.reshape(-1)[order], mode="sum"
            )
        return d_query, d_table, None


def bce_negative_loss(
    pos_logits: torch.Tensor, neg_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy of each positive against its ``k`` negatives (the original SASRec).

    Per position ``-log sigmoid(pos) - sum_k log(1 - sigmoid(neg_k))``, averaged over the
    positions of ``mask`` (Kang & McAuley's TensorFlow code: the sum over the non-padding
    positions divided by their number; pmixer's PyTorch port takes the mean of
    ``BCEWithLogitsLoss`` over the gathered positions for the positives plus the same for the
    negatives, which is the same for ``k = 1``). Computed with :func:`F.logsigmoid`
    (``log(1 - sigmoid(x)) = logsigmoid(-x)``), finite at any logit; the original adds
    ``1e-24`` inside the logs, which caps each term at about 55.3 and only differs below
    ``sigmoid = 1e-24`` (logits beyond +-55).

    Args:
        pos_logits: ``[N]`` (or ``[...]``, e.g. ``[B, L]``) logit of each position's positive.
        neg_logits: ``[N, k]`` (``[..., k]``) logits of its negatives, or ``[N]`` for ``k = 1``.
        mask: ``[N]`` (``[...]``) bool, True where the position has a target; None = all.

    Returns:
        Scalar loss; 0 (with a graph) when no position is unmasked.
    """
    if neg_logits.shape == pos_logits.shape:
        neg_logits = neg_logits.unsqueeze(-1)
    if neg_logits.shape[:-1] != pos_logits.shape:
        raise ValueError(
            f"neg_logits {tuple(neg_logits.shape)} must be pos_logits "
            f"{tuple(pos_logits.shape)} (+ [k])"
        )
    per_position = -F.logsigmoid(pos_logits) - F.logsigmoid(-neg_logits).sum(dim=-1)
    if mask is None:
        return per_position.mean()
    if mask.shape != pos_logits.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must match pos_logits")
    total = torch.where(mask, per_position, 0.0).sum()
    return total / mask.sum().clamp(min=1)


# ------------------------------------------------------------------------------ negative samplers
def _size(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def uniform_negatives(
    n_items: int,
    shape: int | Sequence[int],
    generator: torch.Generator | None = None,
    *,
    offset: int = 0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids drawn uniformly (with replacement) from ``[offset, offset + n_items)``.

    Args:
        n_items: number of ids to draw from.
        shape: shape of the draw, e.g. ``[K]`` (shared) or ``[N, K]`` (per row).
        generator: random generator; its device is where the ids are drawn.
        offset: first id (e.g. 1 when id 0 is padding).
        device: where to draw when there is no generator (default: the generator's, else CPU).

    Returns:
        ``ids`` (long, ``shape``) and ``log_q`` (default float dtype, ``shape``), every entry
        ``-log(n_items)``.
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    size, where = _size(shape), _device(generator, device)
    ids = torch.randint(offset, offset + n_items, size, generator=generator, device=where)
    return ids, torch.full(size, -math.log(n_items), device=where)


def popularity_negatives(
    support: np.ndarray | torch.Tensor,
    alpha: float,
    shape: int | Sequence[int],
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids drawn (with replacement) with probability ``support ** alpha / sum`` (items without
    support never), by inverse-CDF sampling on the device.

    The distribution is :func:`~recsys_pipeline.training.sampler.sampling_distribution`'s
    (GRU4Rec's ``sample_alpha``); it is recomputed at each call, ``O(n_items)``: pass
    ``support`` as a tensor on the sampling device to avoid a host-to-device copy per call.

    Args:
        support: ``[n_items]`` non-negative item counts; id ``i`` has ``support[i]``.
        alpha: exponent (0: uniform over the items with support, 1: popularity).
        shape: shape of the draw.
        generator: random generator; its device is where the ids are drawn.
        device: where to draw when there is no generator (default: the generator's, else CPU).

    Returns:
        ``ids`` (long, ``shape``) and ``log_q`` (default float dtype, ``shape``), the log of
        each drawn id's probability.
    """
    where = _device(generator, device)
    probs = sampling_distribution(support, alpha).to(where)  # float64 [n_items]
    cdf = torch.cumsum(probs, 0)
    # u in (0, total]: the first i with cdf[i] >= u has p_i > 0 and is in range without clamping
    uniform = torch.rand(_size(shape), generator=generator, device=where, dtype=torch.float64)
    ids = torch.searchsorted(cdf, (1.0 - uniform).mul_(cdf[-1]))
    return ids, probs.log()[ids].to(torch.get_default_dtype())


def _history_rows(
    user_items: torch.Tensor | tuple[torch.Tensor, torch.Tensor], users: torch.Tensor | None
) -> torch.Tensor:
    """The users' items as a padded ``[B, M]`` long matrix (padding -1)."""
    if isinstance(user_items, torch.Tensor):
        if user_items.ndim != 2:
            raise ValueError("a padded user_items must be [B, M] (or [U, M] with users)")
        rows = user_items if users is None else user_items[users]
        return rows.long()
    indptr, indices = user_items
    if users is None:
        users = torch.arange(len(indptr) - 1, device=indptr.device)
    start, lengths = indptr[users], indptr[users + 1] - indptr[users]
    width = int(lengths.max()) if len(users) else 0
    steps = torch.arange(width, device=indptr.device)
    valid = steps < lengths.unsqueeze(1)
    at = (start.unsqueeze(1) + steps).clamp_(max=max(len(indices) - 1, 0))
    if len(indices) == 0:
        return torch.full((len(users), 0), -1, dtype=torch.long, device=indptr.device)
    return torch.where(valid, indices[at].long(), -1)


def uniform_negatives_excluding(
    n_items: int,
    shape: int | Sequence[int],
    user_items: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    users: torch.Tensor | None = None,
    offset: int = 0,
    max_tries: int = 10,
) -> torch.Tensor:
    """Ids drawn uniformly from ``[offset, offset + n_items)`` minus each row's user's items.

    The SASRec original draws one negative per position this way (``random_neq``: redraw while
    the id is in the user's training items). Here all ids are drawn at once, then only the ids
    that hit the row's history are redrawn, for at most ``max_tries`` rounds (membership by a
    batched ``searchsorted`` in the sorted histories). **Fallback** for the ids still hitting
    after that (users who interacted with a large share of the catalogue): each is drawn
    exactly from the row's complement, as the ``r``-th id not in the history (``r`` uniform in
    ``[0, n_items - h)``, ``h`` distinct history ids), so the result is uniform over the
    complement in every case. A row whose history covers the whole range has no complement:
    its hits stay unrestricted uniform draws and a warning is logged.

    Args:
        n_items: number of ids to draw from.
        shape: ``[B, ...]`` shape of the draw, e.g. ``[B, L]`` (one negative per position) or
            ``[B, 100]`` (sampled evaluation); row ``b`` excludes the items of row ``b`` of
            the histories.
        user_items: the users' items, either a padded ``[B, M]`` (or ``[U, M]`` with
            ``users``) tensor, where values outside the id range (e.g. -1, or 0 as padding
            with ``offset=1``) are ignored, or CSR ``(indptr [U + 1], indices [nnz])``.
            Duplicates are allowed. Its device is where the ids are drawn.
        generator: random generator on that device.
        users: ``[B]`` row of ``user_items`` (user index) of each output row; None = rows in
            order (then ``B`` equals the number of rows of ``user_items``).
        offset: first id (e.g. 1 when id 0 is padding).
        max_tries: redraw rounds before the fallback (0: straight to the fallback).

    Returns:
        ``ids`` (long, ``shape``).
    """
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    size = _size(shape)
    history = _history_rows(user_items, users)  # [B, M]
    n_rows, width = history.shape
    if len(size) == 0 or size[0] != n_rows:
        raise ValueError(f"shape {size} must start with the number of history rows {n_rows}")
    device = history.device
    high = offset + n_items
    ids = torch.randint(offset, high, size, generator=generator, device=device)
    flat = ids.view(n_rows, -1)  # [B, X] view: writes go to ids
    if width == 0 or flat.shape[1] == 0:
        return ids
    ordered = history.sort(dim=1).values  # [B, M]

    def hits() -> torch.Tensor:
        at = torch.searchsorted(ordered, flat).clamp_(max=width - 1)
        return ordered.gather(1, at) == flat  # padding (out of range) never equals an id

    hit = hits()
    for _ in range(max_tries):
        n_hit = int(hit.sum())
        if n_hit == 0:
            return ids
        flat[hit] = torch.randint(offset, high, (n_hit,), generator=generator, device=device)
        hit = hits()
    rows, cols = hit.nonzero(as_tuple=True)
    if len(rows) == 0:
        return ids
    # distinct in-range history ids per row, sorted, local (0-based); the rest -> n_items
    inside = (ordered >= offset) & (ordered < high)
    repeated = torch.zeros_like(inside)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    local = torch.where(inside & ~repeated, ordered - offset, n_items).sort(dim=1).values
    distinct = (local < n_items).sum(dim=1)  # h [B]
    free = n_items - distinct  # ids not in the history [B]
    # the r-th free id v satisfies v = r + #{history ids <= v}; with a_j = s_j - j (free ids
    # below the j-th history id s_j, non-decreasing) that count is #{j : a_j <= r}
    steps = torch.arange(width, device=device)
    below = torch.where(local < n_items, local - steps, n_items)  # [B, M], non-decreasing
    full = free[rows] == 0
    if bool(full.any()):
        logger.warning(
            "%d user(s) interacted with all %d items: their negatives include their own items",
            int(torch.unique(rows[full]).numel()),
            n_items,
        )
        rows, cols = rows[~full], cols[~full]
    r = torch.rand(len(rows), generator=generator, device=device, dtype=torch.float64)
    r = (r * free[rows]).long().clamp_(max=free[rows] - 1)  # [H] in [0, free)
    count = torch.searchsorted(below[rows], r.unsqueeze(1), right=True).squeeze(1)
    flat[rows, cols] = r + count + offset
    return ids
