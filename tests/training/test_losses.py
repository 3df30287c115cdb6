"""Shared losses and negative samplers (training/losses.py).

The GRU4Rec family on hand-computed examples (moved here from tests/models/test_gru4rec.py),
and the losses of the encoder models against naive per-row reference formulas: full-softmax
cross-entropy (ignored rows, label smoothing), sampled softmax (shared / per-row / in-batch
negatives, temperature, logQ, accidental hits), BCE with k negatives (masks, extreme logits);
the samplers' ranges, distributions (chi-square), log_q and the exclusion of users' items.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from recsys_pipeline.training import losses as losses_module
from recsys_pipeline.training.losses import (
    IGNORE_INDEX,
    GatheredLogits,
    bce_negative_loss,
    bpr_loss,
    bpr_max_loss,
    cross_entropy_loss,
    full_softmax_cross_entropy,
    logq_correction,
    popularity_negatives,
    sampled_softmax_loss,
    table_logits,
    top1_loss,
    top1_max_loss,
    uniform_negatives,
    uniform_negatives_excluding,
    xe_logit_loss,
)
from recsys_pipeline.training.sampler import sampling_distribution

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- hand-made losses
# Row i's target is column i; here B = 2 rows, N = 4 columns (2 targets + 2 samples).
R = [[1.0, 0.5, -0.5, 2.0], [0.2, -1.0, 0.3, 0.0]]
SCORES = torch.tensor(R, dtype=torch.float64)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def negatives(i: int) -> list[int]:
    return [j for j in range(len(R[i])) if j != i]


def ref_cross_entropy(rows: list[list[float]], batch_size: int) -> float:
    return sum(-math.log(math.exp(r[i]) / sum(map(math.exp, r))) for i, r in enumerate(rows)) / (
        batch_size
    )


def ref_bpr_max(rows: list[list[float]], batch_size: int, bpreg: float) -> float:
    total = 0.0
    for i, r in enumerate(rows):
        neg = [j for j in range(len(r)) if j != i]
        z = sum(math.exp(r[j]) for j in neg)
        s = {j: math.exp(r[j]) / z for j in neg}
        total += -math.log(sum(s[j] * sig(r[i] - r[j]) for j in neg) + 1e-24)
        total += bpreg * sum(s[j] * r[j] ** 2 for j in neg)
    return total / batch_size


def test_cross_entropy_tiny_literal() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]: loss = -ln(1/4) = ln 4
    scores = torch.tensor([[0.0, math.log(3.0)]])
    assert float(cross_entropy_loss(scores, 1)) == pytest.approx(math.log(4.0), rel=1e-6)


def test_cross_entropy_softmax_once_summed_over_rows() -> None:
    assert float(cross_entropy_loss(SCORES, 2)) == pytest.approx(ref_cross_entropy(R, 2))
    # sum, not mean: divided by the nominal batch size even when fewer rows are present
    assert float(cross_entropy_loss(SCORES, 8)) == pytest.approx(ref_cross_entropy(R, 8))
    doubled = torch.cat([SCORES, SCORES])  # (the target columns stay the first two)
    assert float(cross_entropy_loss(SCORES[:1], 2)) == pytest.approx(
        -math.log(math.exp(1.0) / sum(map(math.exp, R[0]))) / 2
    )
    assert doubled.shape == (4, 4)


def test_xe_logit_equals_cross_entropy() -> None:
    assert float(xe_logit_loss(SCORES, 2)) == pytest.approx(ref_cross_entropy(R, 2))


def test_logq_correction_adjusts_the_right_columns() -> None:
    log_support = torch.log(torch.tensor([10.0, 100.0, 5.0, 1000.0], dtype=torch.float64))
    targets, samples = torch.tensor([0, 1]), torch.tensor([2, 3])
    corr = logq_correction(log_support, targets, samples, logq=1.0, sample_alpha=0.5)
    expected = [math.log(10), math.log(100), 0.5 * math.log(5), 0.5 * math.log(1000)]
    np.testing.assert_allclose(corr.numpy(), expected)
    corr2 = logq_correction(log_support, targets, samples, logq=0.7, sample_alpha=0.5)
    np.testing.assert_allclose(corr2.numpy(), np.array(expected) * 0.7)
    shifted = [[r[j] - expected[j] for j in range(4)] for r in R]
    assert float(cross_entropy_loss(SCORES, 2, corr)) == pytest.approx(
        ref_cross_entropy(shifted, 2)
    )
    assert float(xe_logit_loss(SCORES, 2, corr)) == pytest.approx(ref_cross_entropy(shifted, 2))


def test_bpr_max_literal_excludes_target_from_softmax() -> None:
    # row [t=2, 0, ln 3]: negatives' softmax = [1/4, 3/4] (the target's e^2 is NOT included)
    scores = torch.tensor([[2.0, 0.0, math.log(3.0)]], dtype=torch.float64)
    expected = -math.log(0.25 * sig(2.0) + 0.75 * sig(2.0 - math.log(3.0)))
    expected += 1.0 * (0.25 * 0.0 + 0.75 * math.log(3.0) ** 2)
    assert float(bpr_max_loss(scores, 1, bpreg=1.0)) == pytest.approx(expected)
    # a softmax including the positive would give another value
    z = math.exp(2.0) + 1.0 + 3.0
    wrong = -math.log((math.exp(2) * 0.5 + 1.0 * sig(2.0) + 3.0 * sig(2 - math.log(3))) / z)
    assert float(bpr_max_loss(scores, 1, bpreg=0.0)) != pytest.approx(wrong)


def test_bpr_max_sum_regulariser_and_batch_size() -> None:
    assert float(bpr_max_loss(SCORES, 2, bpreg=1.5)) == pytest.approx(ref_bpr_max(R, 2, 1.5))
    assert float(bpr_max_loss(SCORES, 5, bpreg=1.5)) == pytest.approx(ref_bpr_max(R, 5, 1.5))
    # the regulariser is there and is exactly bpreg * sum_j s_j r_j^2 (summed over rows)
    reg = float(bpr_max_loss(SCORES, 2, bpreg=1.0)) - float(bpr_max_loss(SCORES, 2, bpreg=0.0))
    assert reg == pytest.approx(ref_bpr_max(R, 2, 1.0) - ref_bpr_max(R, 2, 0.0))
    assert reg > 0


def test_top1_max_hand_computed() -> None:
    expected = 0.0
    for i, r in enumerate(R):
        neg = negatives(i)
        z = sum(math.exp(r[j]) for j in neg)
        expected += sum(math.exp(r[j]) / z * (sig(r[j] - r[i]) + sig(r[j] ** 2)) for j in neg)
    assert float(top1_max_loss(SCORES, 2)) == pytest.approx(expected / 2)


def test_top1_hand_computed_theano_definition() -> None:
    expected = 0.0
    for i, r in enumerate(R):
        n = len(r)
        expected += sum(sig(r[j] - r[i]) + sig(r[j] ** 2) for j in range(n)) / n
        expected -= sig(r[i] ** 2) / n
    assert float(top1_loss(SCORES, 2)) == pytest.approx(expected / 2)


def test_bpr_hand_computed_theano_definition() -> None:
    expected = sum(
        sum(-math.log(sig(r[i] - r[j])) for j in range(len(r))) / len(r) for i, r in enumerate(R)
    )
    assert float(bpr_loss(SCORES, 2)) == pytest.approx(expected / 2)


def test_losses_have_finite_gradients_at_extreme_scores() -> None:
    scores = torch.tensor([[80.0, -80.0, 50.0], [-60.0, 90.0, 0.0]], requires_grad=True)
    for fn in (
        lambda s: cross_entropy_loss(s, 2),
        lambda s: xe_logit_loss(s, 2),
        lambda s: bpr_max_loss(F.elu(s, alpha=1.0), 2, 1.0),  # GRU4Rec's elu-1 final activation
        lambda s: top1_max_loss(s, 2),
        lambda s: bpr_loss(s, 2),
    ):
        scores.grad = None
        loss = fn(scores)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(scores.grad).all()


@pytest.mark.parametrize("bpreg", [0.0, 1.3])
def test_bpr_max_gradient_matches_autograd_of_the_formula(bpreg: float) -> None:
    torch.manual_seed(2)
    scores = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: bpr_max_loss(s, 3, bpreg), (scores,))
    # and against plain autograd of the reference's formulation (mask multiply)
    hm = 1.0 - torch.eye(4, 9, dtype=torch.float64)
    e = torch.exp(scores * hm - (scores * hm).max(dim=1, keepdim=True).values) * hm
    s = e / e.sum(dim=1, keepdim=True)
    t = torch.diag(scores).unsqueeze(1)
    ref = torch.sum(
        -torch.log(torch.sum(torch.sigmoid(t - scores) * s, dim=1) + 1e-24)
        + bpreg * torch.sum(scores**2 * s, dim=1)
    )
    (g_ref,) = torch.autograd.grad(ref / 3, scores)
    (g_ours,) = torch.autograd.grad(bpr_max_loss(scores, 3, bpreg), scores)
    torch.testing.assert_close(g_ours, g_ref)


def test_cross_entropy_gradient_matches_autograd_of_the_formula() -> None:
    torch.manual_seed(3)
    scores = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: cross_entropy_loss(s, 5), (scores,))
    ref = -torch.log_softmax(scores, dim=1).diagonal().sum() / 5
    (g_ref,) = torch.autograd.grad(ref, scores)
    (g_ours,) = torch.autograd.grad(cross_entropy_loss(scores, 5), scores)
    torch.testing.assert_close(g_ours, g_ref)


# ------------------------------------------------------------------ full-softmax cross-entropy


def naive_full_ce(logits: list[list[float]], targets: list[int], eps: float = 0.0) -> list[float]:
    out = []
    for row, t in zip(logits, targets, strict=True):
        z = sum(math.exp(x) for x in row)
        nll = [-math.log(math.exp(x) / z) for x in row]
        out.append((1 - eps) * nll[t] + eps * sum(nll) / len(row))
    return out


def test_full_softmax_hand_computed_and_ignored_rows() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0], [5.0, -5.0]], dtype=torch.float64)
    targets = torch.tensor([1, IGNORE_INDEX, 0])
    # row 0: -ln(3/4); row 2: -ln(e^5 / (e^5 + e^-5)); row 1 ignored: mean over 2 rows
    expected = [-math.log(0.75), math.log1p(math.exp(-10.0))]
    assert float(full_softmax_cross_entropy(logits, targets)) == pytest.approx(sum(expected) / 2)
    per_row = full_softmax_cross_entropy(logits, targets, reduction="none")
    np.testing.assert_allclose(per_row.numpy(), [expected[0], 0.0, expected[1]], rtol=1e-12)
    assert float(full_softmax_cross_entropy(logits, targets, reduction="sum")) == pytest.approx(
        sum(expected)
    )


def test_full_softmax_label_smoothing_spreads_over_all_classes() -> None:
    rows = [[0.3, -1.2, 2.0, 0.5], [1.0, 0.0, -0.5, 0.2], [0.0, 0.0, 0.0, 4.0]]
    targets = [2, 0, 1]
    logits = torch.tensor(rows, dtype=torch.float64)
    ours = full_softmax_cross_entropy(
        logits, torch.tensor(targets), label_smoothing=0.6, reduction="none"
    )
    np.testing.assert_allclose(ours.numpy(), naive_full_ce(rows, targets, 0.6), rtol=1e-12)
    # eps/C on every class, the target included: uniform logits give exactly log C
    flat = torch.zeros(1, 4, dtype=torch.float64)
    loss = full_softmax_cross_entropy(flat, torch.tensor([3]), label_smoothing=0.6)
    assert float(loss) == pytest.approx(math.log(4.0))
    # documented caveat: a -inf column is fine without smoothing, infinite with it
    masked = logits.clone()
    masked[:, 3] = -math.inf
    assert torch.isfinite(full_softmax_cross_entropy(masked, torch.tensor(targets)))
    assert torch.isinf(
        full_softmax_cross_entropy(masked, torch.tensor(targets), label_smoothing=0.1)
    )


def test_full_softmax_batched_shape_and_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[4, IGNORE_INDEX, 0], [IGNORE_INDEX, 2, 2]])
    loss = full_softmax_cross_entropy(logits, targets, label_smoothing=0.1)
    valid = targets != IGNORE_INDEX
    rows = logits.detach()[valid].tolist()
    assert float(loss.detach()) == pytest.approx(
        np.mean(naive_full_ce(rows, targets[valid].tolist(), 0.1))
    )
    assert full_softmax_cross_entropy(logits, targets, reduction="none").shape == (2, 3)
    (grad,) = torch.autograd.grad(loss, logits)
    # d/dz of the mean: (softmax - smoothed one-hot) / n_valid, 0 on ignored rows
    smooth = torch.full((2, 3, 5), 0.1 / 5, dtype=torch.float64)
    smooth[valid] += 0.9 * F.one_hot(targets[valid], 5)
    expected = (torch.softmax(logits.detach(), -1) - smooth) / int(valid.sum())
    expected[~valid] = 0.0
    torch.testing.assert_close(grad, expected)
    with pytest.raises(ValueError, match="targets"):
        full_softmax_cross_entropy(logits, targets[:, :2])
    with pytest.raises(ValueError, match="reduction"):
        full_softmax_cross_entropy(logits, targets, reduction="avg")


# ------------------------------------------------------------------------------ sampled softmax


def naive_sampled_softmax(
    query: torch.Tensor,
    pos_emb: torch.Tensor,
    pos_ids: list[int],
    negs: list[list[tuple[int, torch.Tensor, float]]],
    temperature: float,
    pos_log_q: list[float],
) -> list[float]:
    """Per row: candidates (id, emb, log_q), logits dot/t - log_q, hits on the positive dropped."""
    out = []
    for i in range(len(query)):
        pos = float(query[i] @ pos_emb[i]) / temperature - pos_log_q[i]
        logits = [pos] + [
            float(query[i] @ emb) / temperature - lq for j, emb, lq in negs[i] if j != pos_ids[i]
        ]
        out.append(-pos + math.log(sum(math.exp(x) for x in logits)))
    return out


def _sampled_case(n: int = 5, k: int = 4, d: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "query": torch.randn(n, d, generator=g, dtype=torch.float64),
        "pos_emb": torch.randn(n, d, generator=g, dtype=torch.float64),
        "pos_ids": torch.tensor([3, 7, 3, 1, 9])[:n],  # rows 0 and 2 share their positive
        "shared_emb": torch.randn(k, d, generator=g, dtype=torch.float64),
        "shared_ids": torch.tensor([7, 2, 3, 5])[:k],  # 7 and 3 are accidental hits for some rows
        "row_emb": torch.randn(n, k, d, generator=g, dtype=torch.float64),
        "row_ids": torch.randint(0, 10, (n, k), generator=g),
        "pos_lq": torch.log(torch.rand(n, generator=g, dtype=torch.float64)),
        "neg_lq": torch.log(torch.rand(k, generator=g, dtype=torch.float64)),
        "row_lq": torch.log(torch.rand(n, k, generator=g, dtype=torch.float64)),
    }


def test_sampled_softmax_hand_computed() -> None:
    query = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pos = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    neg = torch.tensor([[1.0, 5.0], [0.0, 1.0]], dtype=torch.float64)
    # temperature 0.5: logits 4 (positive), 2, 0
    loss = sampled_softmax_loss(
        query, pos, neg, pos_ids=torch.tensor([0]), neg_ids=torch.tensor([1, 2]), temperature=0.5
    )
    assert float(loss) == pytest.approx(-math.log(math.exp(4) / (math.exp(4) + math.exp(2) + 1)))
    # logQ after the temperature: log_q = [ln 2 (pos), ln 4, ln 1] -> 4 - ln 2, 2 - ln 4, 0
    loss_q = sampled_softmax_loss(
        query,
        pos,
        neg,
        pos_ids=torch.tensor([0]),
        neg_ids=torch.tensor([1, 2]),
        temperature=0.5,
        pos_log_q=torch.tensor([math.log(2.0)], dtype=torch.float64),
        neg_log_q=torch.tensor([math.log(4.0), 0.0], dtype=torch.float64),
    )
    a, b, c = math.exp(4) / 2, math.exp(2) / 4, 1.0
    assert float(loss_q) == pytest.approx(-math.log(a / (a + b + c)))
    # (subtracting log_q before the temperature, (dot - log_q) / t, would give another value)
    a2, b2 = math.exp((2 - math.log(2)) / 0.5), math.exp((1 - math.log(4)) / 0.5)
    assert float(loss_q) != pytest.approx(-math.log(a2 / (a2 + b2 + 1.0)))


@pytest.mark.parametrize("form", ["shared", "per-row"])
@pytest.mark.parametrize("with_logq", [False, True])
def test_sampled_softmax_matches_naive_reference(form: str, with_logq: bool) -> None:
    c = _sampled_case()
    n = len(c["query"])
    emb, ids, lq = (
        (c["shared_emb"], c["shared_ids"], c["neg_lq"])
        if form == "shared"
        else (c["row_emb"], c["row_ids"], c["row_lq"])
    )
    kwargs = {
        "pos_ids": c["pos_ids"],
        "neg_ids": ids,
        "temperature": 0.2,
        "pos_log_q": c["pos_lq"] if with_logq else None,
        "neg_log_q": lq if with_logq else None,
    }
    ours = sampled_softmax_loss(c["query"], c["pos_emb"], emb, reduction="none", **kwargs)
    ids_rows = ids.expand(n, -1)
    emb_rows = emb.expand(n, -1, -1)
    lq_rows = lq.expand(n, -1) if with_logq else torch.zeros(n, ids.shape[-1])
    negs = [
        [(int(ids_rows[i, j]), emb_rows[i, j], float(lq_rows[i, j])) for j in range(ids.shape[-1])]
        for i in range(n)
    ]
    pos_lq = c["pos_lq"].tolist() if with_logq else [0.0] * n
    expected = naive_sampled_softmax(
        c["query"], c["pos_emb"], c["pos_ids"].tolist(), negs, 0.2, pos_lq
    )
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-10)
    assert form == "per-row" or int((ids_rows == c["pos_ids"][:, None]).sum()) > 0  # hits present
    mean = sampled_softmax_loss(c["query"], c["pos_emb"], emb, **kwargs)
    assert float(mean) == pytest.approx(np.mean(expected), rel=1e-10)


@pytest.mark.parametrize("with_sampled", [False, True])
def test_sampled_softmax_in_batch_negatives(with_sampled: bool) -> None:
    c = _sampled_case()
    n = len(c["query"])
    ours = sampled_softmax_loss(
        c["query"],
        c["pos_emb"],
        c["shared_emb"] if with_sampled else None,
        pos_ids=c["pos_ids"],
        neg_ids=c["shared_ids"] if with_sampled else None,
        temperature=0.5,
        pos_log_q=c["pos_lq"],
        neg_log_q=c["neg_lq"] if with_sampled else None,
        in_batch=True,
        reduction="sum",
    )
    negs = []
    for _ in range(n):
        row = [
            (int(c["pos_ids"][j]), c["pos_emb"][j], float(c["pos_lq"][j])) for j in range(n)
        ]  # row i's own positive has its id: dropped like every accidental hit
        if with_sampled:
            row += [
                (int(c["shared_ids"][j]), c["shared_emb"][j], float(c["neg_lq"][j]))
                for j in range(len(c["shared_ids"]))
            ]
        negs.append(row)
    expected = naive_sampled_softmax(
        c["query"], c["pos_emb"], c["pos_ids"].tolist(), negs, 0.5, c["pos_lq"].tolist()
    )
    assert float(ours) == pytest.approx(sum(expected), rel=1e-10)


def test_sampled_softmax_accidental_hits_have_no_weight_and_no_gradient() -> None:
    c = _sampled_case()
    neg = c["shared_emb"].clone().requires_grad_(True)
    loss = sampled_softmax_loss(
        c["query"], c["pos_emb"], neg, pos_ids=c["pos_ids"], neg_ids=c["shared_ids"]
    )
    (grad,) = torch.autograd.grad(loss, neg)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    # d loss / d neg_j = sum_i p_ij q_i / N over the rows i for which j is not a hit (p = 0 there)
    logits = torch.cat(
        [torch.linalg.vecdot(c["query"], c["pos_emb"]).unsqueeze(1), c["query"] @ neg.detach().T],
        dim=1,
    )
    hits = c["shared_ids"] == c["pos_ids"].unsqueeze(1)  # [N, K]
    logits[:, 1:] = logits[:, 1:].masked_fill(hits, -math.inf)
    p = torch.softmax(logits, dim=1)[:, 1:]  # [N, K]
    torch.testing.assert_close(grad, p.T @ c["query"] / len(c["query"]))
    assert hits[:, 0].any() and (p[hits] == 0).all()  # id 7 is row 1's positive: no weight
    # an all-hit negative set leaves only the positive: loss 0
    only_hits = sampled_softmax_loss(
        c["query"][:1],
        c["pos_emb"][:1],
        c["shared_emb"][:2],
        pos_ids=torch.tensor([4]),
        neg_ids=torch.tensor([4, 4]),
    )
    assert float(only_hits) == 0.0


def test_sampled_softmax_over_the_whole_catalogue_with_uniform_logq_is_full_softmax() -> None:
    g = torch.Generator().manual_seed(1)
    n, c, d = 6, 11, 4
    query = torch.randn(n, d, generator=g, dtype=torch.float64)
    items = torch.randn(c, d, generator=g, dtype=torch.float64)
    targets = torch.randint(0, c, (n,), generator=g)
    full_rows = full_softmax_cross_entropy(query @ items.T / 0.3, targets, reduction="none")
    full = full_rows.mean()
    log_q = torch.full((c,), -math.log(c), dtype=torch.float64)
    sampled = sampled_softmax_loss(
        query,
        items[targets],
        items,
        pos_ids=targets,
        neg_ids=torch.arange(c),
        temperature=0.3,
        pos_log_q=log_q[targets],
        neg_log_q=log_q,
    )
    torch.testing.assert_close(sampled, full)
    # correcting only the negatives weighs them C times against the positive:
    # -log(p_t / (p_t + C (1 - p_t)))
    skewed = sampled_softmax_loss(
        query,
        items[targets],
        items,
        pos_ids=targets,
        neg_ids=torch.arange(c),
        temperature=0.3,
        neg_log_q=log_q,
    )
    p_t = torch.exp(-full_rows)
    torch.testing.assert_close(skewed, (full_rows + torch.log(p_t + c * (1 - p_t))).mean())


def test_sampled_softmax_argument_errors() -> None:
    q = torch.zeros(2, 3)
    ids = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="no negatives"):
        sampled_softmax_loss(q, q, pos_ids=ids)
    with pytest.raises(ValueError, match="go together"):
        sampled_softmax_loss(q, q, torch.zeros(4, 3), pos_ids=ids)
    with pytest.raises(ValueError, match="temperature"):
        sampled_softmax_loss(q, q, pos_ids=ids, in_batch=True, temperature=0.0)
    with pytest.raises(ValueError, match="neg_ids"):
        sampled_softmax_loss(q, q, torch.zeros(4, 3), pos_ids=ids, neg_ids=torch.zeros(3))
    with pytest.raises(ValueError, match="neg_emb"):
        sampled_softmax_loss(q, q, torch.zeros(3, 4, 3), pos_ids=ids, neg_ids=torch.zeros(3, 4))


# ----------------------------------------------------------------------------- BCE negatives


def naive_bce(pos: list[float], neg: list[list[float]], mask: list[bool]) -> float:
    terms = [
        -math.log(sig(p)) - sum(math.log(1 - sig(x)) for x in ns)
        for p, ns, m in zip(pos, neg, mask, strict=True)
        if m
    ]
    return sum(terms) / len(terms)


def test_bce_negative_hand_computed() -> None:
    # logits 0: each term is log 2; one negative: 2 log 2 per position
    zero = torch.zeros(3)
    assert float(bce_negative_loss(zero, zero)) == pytest.approx(2 * math.log(2.0))
    # k = 3 negatives: sum over k, not mean -> 4 log 2
    assert float(bce_negative_loss(zero, torch.zeros(3, 3))) == pytest.approx(4 * math.log(2.0))
    pos, neg = torch.tensor([math.log(3.0)]), torch.tensor([[-math.log(3.0)]])
    # sigmoid(ln 3) = 3/4 and 1 - sigmoid(-ln 3) = 3/4
    assert float(bce_negative_loss(pos, neg)) == pytest.approx(-2 * math.log(0.75))


def test_bce_negative_mask_matches_original_and_port() -> None:
    g = torch.Generator().manual_seed(0)
    pos = torch.randn(2, 5, generator=g, dtype=torch.float64)
    neg = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    ours = bce_negative_loss(pos, neg, mask)
    expected = naive_bce(
        pos.flatten().tolist(), neg.reshape(10, 3).tolist(), mask.flatten().tolist()
    )
    assert float(ours) == pytest.approx(expected, rel=1e-12)
    # one negative: the same as pmixer's BCEWithLogitsLoss means over the gathered positions
    one = neg[..., 0]
    port = F.binary_cross_entropy_with_logits(
        pos[mask], torch.ones(int(mask.sum()), dtype=torch.float64)
    ) + F.binary_cross_entropy_with_logits(
        one[mask], torch.zeros(int(mask.sum()), dtype=torch.float64)
    )
    assert float(bce_negative_loss(pos, one, mask)) == pytest.approx(float(port), rel=1e-12)
    # masked positions change nothing and get no gradient, whatever their logits
    pos2 = pos.clone()
    pos2[0, :2] = 1e4
    pos2.requires_grad_(True)
    loss2 = bce_negative_loss(pos2, neg, mask)
    assert float(loss2) == pytest.approx(expected, rel=1e-12)
    (grad,) = torch.autograd.grad(loss2, pos2)
    assert (grad[0, :2] == 0).all() and (grad[mask] != 0).all()
    # no unmasked position: 0, not NaN
    assert float(bce_negative_loss(pos, neg, torch.zeros_like(mask))) == 0.0


def test_bce_negative_extreme_logits_are_finite() -> None:
    pos = torch.tensor([-100.0, 200.0], requires_grad=True)
    neg = torch.tensor([[150.0], [-300.0]], requires_grad=True)
    loss = bce_negative_loss(pos, neg)
    loss.backward()
    # row 0: -log sigmoid(-100) ~ 100, -log(1 - sigmoid(150)) ~ 150; row 1: ~0
    assert float(loss) == pytest.approx((100.0 + 150.0) / 2, rel=1e-6)
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert float(pos.grad[0]) == pytest.approx(-0.5) and float(neg.grad[0, 0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="neg_logits"):
        bce_negative_loss(torch.zeros(3), torch.zeros(4, 2))


# ------------------------------------------------------------------------------------ samplers


@pytest.mark.parametrize("device", DEVICES)
def test_uniform_negatives_range_logq_and_seed(device: str) -> None:
    gen = torch.Generator(device).manual_seed(0)
    ids, log_q = uniform_negatives(7, (400, 50), gen, offset=1)
    assert ids.shape == log_q.shape == (400, 50) and ids.device.type == device
    assert ids.dtype == torch.long and log_q.dtype == torch.get_default_dtype()
    assert int(ids.min()) == 1 and int(ids.max()) == 7  # [offset, offset + n_items)
    assert torch.all(log_q == -math.log(7))
    counts = torch.bincount(ids.flatten().cpu(), minlength=8)[1:].numpy()
    assert stats.chisquare(counts).pvalue > 1e-3
    again, _ = uniform_negatives(7, (400, 50), torch.Generator(device).manual_seed(0), offset=1)
    assert torch.equal(ids, again)
    one, _ = uniform_negatives(3, 5, device=device)
    assert one.shape == (5,)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_popularity_negatives_follow_support_power(device: str, alpha: float) -> None:
    support = np.array([0, 5, 20, 100, 400, 0, 3, 50, 0])  # zero support at both ends too
    gen = torch.Generator(device).manual_seed(1)
    ids, log_q = popularity_negatives(support, alpha, (100, 1000), gen)
    assert ids.shape == log_q.shape == (100, 1000) and ids.device.type == device
    counts = np.bincount(ids.flatten().cpu().numpy(), minlength=len(support))
    assert counts[[0, 5, 8]].sum() == 0  # never an item without support
    expected = np.where(support > 0, support.astype(float) ** alpha, 0.0)
    expected /= expected.sum()
    nz = support > 0
    assert stats.chisquare(counts[nz], expected[nz] * ids.numel()).pvalue > 1e-3
    torch.testing.assert_close(
        log_q.cpu(), torch.log(torch.as_tensor(expected))[ids.cpu()].to(log_q.dtype)
    )
    # a tensor support on the device gives the same draws as the array
    same, _ = popularity_negatives(
        torch.as_tensor(support, device=device),
        alpha,
        (100, 1000),
        torch.Generator(device).manual_seed(1),
    )
    assert torch.equal(ids, same)


def test_sampling_distribution_keeps_tensor_device_and_values() -> None:
    support = np.array([1, 0, 4])
    from_array = sampling_distribution(support, 0.5)
    from_tensor = sampling_distribution(torch.as_tensor(support), 0.5)
    assert torch.equal(from_array, from_tensor) and from_array.dtype == torch.float64
    np.testing.assert_allclose(from_array.numpy(), [1 / 3, 0.0, 2 / 3])


def _padded(histories: list[list[int]], pad: int = -1) -> torch.Tensor:
    width = max(map(len, histories))
    return torch.tensor([h + [pad] * (width - len(h)) for h in histories])


def _csr(histories: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    indptr = torch.tensor(np.r_[0, np.cumsum([len(h) for h in histories])])
    return indptr, torch.tensor([i for h in histories for i in h], dtype=torch.long)


HISTORIES = [[3, 1, 3, 0], [], [9, 8, 7, 6, 5, 4, 3, 2, 1], [5], [8, 6, 4, 2, 0]]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_tries", [10, 0])
def test_excluding_never_returns_history_and_is_uniform_on_the_rest(
    device: str, max_tries: int
) -> None:
    histories = HISTORIES[:4]  # row 2 leaves only item 0: its draws are all 0
    gen = torch.Generator(device).manual_seed(0)
    ids = uniform_negatives_excluding(
        10, (4, 3000), _padded(histories).to(device), gen, max_tries=max_tries
    )
    assert ids.shape == (4, 3000) and ids.device.type == device
    ids = ids.cpu()
    for row, history in zip(ids, histories, strict=True):
        allowed = sorted(set(range(10)) - set(history))
        counts = np.bincount(row.numpy(), minlength=10)
        assert counts[list(set(history))].sum() == 0
        if len(allowed) > 1:
            assert stats.chisquare(counts[allowed]).pvalue > 1e-3
    assert torch.all(ids[2] == 0)


def test_excluding_redraws_only_the_hits() -> None:
    histories = [[0, 1, 2], [5, 6], [9]]
    first, _ = uniform_negatives(10, (3, 50), torch.Generator().manual_seed(4))
    ids = uniform_negatives_excluding(
        10, (3, 50), _padded(histories), torch.Generator().manual_seed(4)
    )
    for b, history in enumerate(histories):
        clean = ~torch.isin(first[b], torch.tensor(history))
        assert torch.equal(ids[b][clean], first[b][clean])  # first draws kept where no hit
        assert not torch.isin(ids[b], torch.tensor(history)).any()
    assert int(torch.isin(first[0], torch.tensor(histories[0])).sum()) > 0  # something redrawn


def test_excluding_csr_and_users_equal_padded() -> None:
    users = torch.tensor([2, 0, 2, 4, 1])
    padded = _padded(HISTORIES)
    csr = uniform_negatives_excluding(
        10, (5, 2, 7), _csr(HISTORIES), torch.Generator().manual_seed(3), users=users
    )
    dense = uniform_negatives_excluding(
        10, (5, 2, 7), padded, torch.Generator().manual_seed(3), users=users
    )
    gathered = uniform_negatives_excluding(
        10, (5, 2, 7), padded[users], torch.Generator().manual_seed(3)
    )
    assert torch.equal(csr, dense) and torch.equal(dense, gathered) and csr.shape == (5, 2, 7)
    for b, u in enumerate(users.tolist()):
        assert not torch.isin(csr[b], torch.tensor(HISTORIES[u] or [-5])).any()


def test_excluding_offset_padding_and_full_history(caplog: pytest.LogCaptureFixture) -> None:
    # ids 1..5 (0 = padding, ignored as out of range); row 1 has interacted with all five
    histories = torch.tensor([[2, 4, 0, 0, 0], [1, 2, 3, 4, 5]])
    with caplog.at_level(logging.WARNING, logger="recsys_pipeline.training.losses"):
        ids = uniform_negatives_excluding(
            5, (2, 400), histories, torch.Generator().manual_seed(0), offset=1, max_tries=2
        )
    assert set(ids[0].tolist()) == {1, 3, 5}
    assert set(ids[1].tolist()) <= {1, 2, 3, 4, 5}  # no complement: unrestricted, with a warning
    assert "interacted with all 5 items" in caplog.text
    with pytest.raises(ValueError, match="shape"):
        uniform_negatives_excluding(5, (3, 4), histories)
    empty = uniform_negatives_excluding(5, (2, 3), torch.zeros(2, 0, dtype=torch.long))
    assert empty.shape == (2, 3)


@pytest.mark.parametrize("n_items", [20, 200])  # <= K * D: one product and a gather; > : bmm
def test_table_logits_and_the_table_loss_equal_gathered_copies(n_items: int) -> None:
    """The negatives' logits from a table (either path) are those of gathered copies, and so
    is the loss and every gradient (HSTU's and SASRec's sampled softmax)."""
    gen = torch.Generator().manual_seed(3)
    n, k, d = 30, 4, 8
    weight = torch.randn(n_items, d, generator=gen, requires_grad=True)
    query = torch.randn(n, d, generator=gen, requires_grad=True)
    pos = torch.randint(0, n_items, (n,), generator=gen)
    neg = torch.randint(0, n_items, (n, k), generator=gen)
    neg[0, 0] = pos[0]  # an accidental hit, masked either way
    expected = torch.einsum("nd,nkd->nk", query, weight[neg])
    torch.testing.assert_close(table_logits(query, weight, neg), expected)
    shared = neg[0]
    torch.testing.assert_close(table_logits(query, weight, shared), query @ weight[shared].T)
    grads = []
    for use_table in (False, True):
        table = F.normalize(weight, dim=-1)
        extra = {"table": table} if use_table else {"neg_emb": table[neg]}
        loss = sampled_softmax_loss(
            query, table[pos], pos_ids=pos, neg_ids=neg, temperature=0.05, **extra
        )
        grads.append((loss.detach(), *torch.autograd.grad(loss, (weight, query))))
    for ours, gathered in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, gathered)
    with pytest.raises(ValueError, match="table goes with neg_ids"):
        sampled_softmax_loss(query, weight[pos], pos_ids=pos, table=weight)


@pytest.mark.parametrize("chunk", [2**18, 12])  # one chunk; chunks of 2 rows and a last one
@pytest.mark.parametrize("n_items", [6, 40])  # <= K * D: product + gather; > K * D: bmm
def test_gathered_logits_backward_is_the_gradient(n_items: int, chunk: int, monkeypatch) -> None:
    """The CPU backward of the negatives' logits (two weighted bag sums, no dense [N, I]
    gradient) is the true gradient (finite differences, float64), with ids drawn several times
    in one row and items never drawn; and equals autograd's dense one. The forward's product
    in row chunks gives the same logits."""
    monkeypatch.setattr(losses_module, "_CHUNK_LOGITS", chunk)
    gen = torch.Generator().manual_seed(5)
    n, k, d = 7, 5, 3
    query = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    table = torch.randn(n_items, d, generator=gen, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, min(n_items, 5), (n, k), generator=gen)  # repeats; rows 5.. undrawn
    ids[0] = 2  # one id five times in a row
    assert torch.autograd.gradcheck(GatheredLogits.apply, (query, table, ids))
    upstream = torch.randn(n, k, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(table_logits(query, table, ids), (query, table), upstream)
    dense = torch.autograd.grad((query @ table.T).gather(1, ids), (query, table), upstream)
    for a, b in zip(ours, dense, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.count_nonzero(ours[1][5:]) == 0
    with torch.no_grad():
        expected = (query @ table.T).gather(1, ids)
    torch.testing.assert_close(GatheredLogits.apply(query, table, ids), expected)
