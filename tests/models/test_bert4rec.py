"""BERT4Rec: the forward pass against an independent re-statement of the original's BERT code,
the known port flaws (loss on unmasked positions, untied output, no mask at test time, the
prediction seeing its own target, attended padding), the shared behavioural tests, persistence
and fine-tuning with item growth."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models import registry
from recsys_pipeline.models.bert4rec import BERT4Rec, BERT4RecNet, BERT4RecParams
from recsys_pipeline.training.optim import warmup_linear_decay
from recsys_pipeline.training.sequences import PAD, SequenceBatch
from tests.models.behaviour import (
    NextItemModelBehaviour,
    assert_same_outputs_and_gradients,
    successor_sessions,
)

SMALL = dict(maxlen=8, hidden_units=12, num_blocks=2, num_heads=2, inner_size=20, device="cpu")


def _random_net(params: BERT4RecParams, n_items: int = 40, seed: int = 0) -> BERT4RecNet:
    """Every parameter random (norm gains and biases too): a misplaced norm shows."""
    torch.manual_seed(seed)
    net = BERT4RecNet(n_items, params)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        net.item_emb.weight[0].zero_()
    return net.eval()


def _ln(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-12) * norm.weight + norm.bias


def _gelu(x: torch.Tensor) -> torch.Tensor:  # BERT's TF gelu (tanh approximation)
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _bert_forward(net: BERT4RecNet, ids: np.ndarray, mask: np.ndarray) -> torch.Tensor:
    """Google BERT's ``BertModel`` + BERT4Rec's ``get_masked_lm_output`` transform, re-stated
    with explicit per-head loops: ``ids [B, L]`` 0-based items, -1 padding on the right,
    ``mask`` True where [MASK] is. Returns the transformed outputs ``[B, L, D]`` (the
    encoder's outputs where the net has no transform: ``head="plain"``)."""
    items = torch.as_tensor(ids)
    is_mask = torch.as_tensor(mask)
    b, n = items.shape
    d = net.item_emb.embedding_dim
    x = net.item_emb.weight[(items + 1).clamp(min=0)]
    x = torch.where(is_mask.unsqueeze(-1), net.mask_emb, x) + net.pos_emb.weight[:n]
    x = _ln(x, net.emb_norm)
    input_mask = ((items >= 0) | is_mask).float()  # [B, L]
    adder = (1.0 - input_mask[:, None, :]) * -10000.0  # BERT's attention mask
    for layer in net.encoder.layers:
        attn = layer.self_attn
        w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        q, k, v = x @ w_q.T + b_q, x @ w_k.T + b_k, x @ w_v.T + b_v
        heads, size = attn.num_heads, d // attn.num_heads
        outs = []
        for h in range(heads):
            part = slice(h * size, (h + 1) * size)
            scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(size) + adder
            outs.append(torch.softmax(scores, -1) @ v[..., part])
        context = torch.cat(outs, -1) @ attn.out_proj.weight.T + attn.out_proj.bias
        x = _ln(context + x, layer.norm1)
        inner = _gelu(x @ layer.linear1.weight.T + layer.linear1.bias)
        x = _ln(inner @ layer.linear2.weight.T + layer.linear2.bias + x, layer.norm2)
    if net.transform is None or net.transform_norm is None:
        return x
    return _ln(_gelu(x @ net.transform.weight.T + net.transform.bias), net.transform_norm)


def _right_padded(rows: list[list[int]], width: int) -> np.ndarray:
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return out


ROWS = [[3, 7, 1, 22, 5, 9], [11, 2], [4, 4, 30, 8, 8, 19, 0, 2], [17]]


def test_forward_is_berts() -> None:
    net = _random_net(BERT4RecParams(**SMALL))
    items = _right_padded(ROWS, 8)
    mask = np.zeros_like(items, dtype=bool)
    mask[0, 2] = mask[0, 5] = mask[2, 7] = mask[3, 0] = True
    with torch.no_grad():
        ours = net(torch.as_tensor(items), torch.as_tensor(mask))
        reference = _bert_forward(net, items, mask)
    real = torch.as_tensor(items >= 0)
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=1e-5)


def test_rows_grouped_by_length_give_the_one_call_gradients() -> None:
    """The encoder runs once per group of similar-length rows (``encode_by_width``): every
    gradient is the one of a single call over the whole padded batch."""
    net = _random_net(BERT4RecParams(**SMALL))
    items = torch.as_tensor(_right_padded(ROWS, 8))
    mask = torch.zeros_like(items, dtype=torch.bool)
    mask[0, 2] = mask[2, 7] = mask[3, 0] = True
    real = (items >= 0) | mask
    grouped = net(items, mask)
    x = torch.where(mask.unsqueeze(-1), net.mask_emb, net.item_emb((items + 1).clamp(min=0)))
    x = net.emb_norm(x + net.pos_emb.weight[:8])
    h = net.encoder(x, src_key_padding_mask=~real)
    one_call = net.transform_norm(torch.nn.functional.gelu(net.transform(h), approximate="tanh"))
    assert_same_outputs_and_gradients(net, grouped, one_call, real)


def test_the_restatement_is_sharp() -> None:
    """Pre-LN instead of post-LN, or the exact erf GELU, give other outputs."""
    net = _random_net(BERT4RecParams(**SMALL))
    items = _right_padded(ROWS, 8)
    mask = np.zeros_like(items, dtype=bool)
    with torch.no_grad():
        reference = _bert_forward(net, items, mask)
        for layer in net.encoder.layers:
            layer.norm_first = True
        pre_ln = net(torch.as_tensor(items), torch.as_tensor(mask))
    real = torch.as_tensor(items >= 0)
    assert not torch.allclose(pre_ln[real], reference[real], atol=1e-3)


def test_bidirectional_and_padding_never_attended() -> None:
    """An earlier position's output depends on a later item (bidirectional), and a row's
    outputs do not depend on how much padding the batch adds."""
    net = _random_net(BERT4RecParams(**SMALL))
    row = [5, 9, 13, 2]
    no_mask = torch.zeros(1, 4, dtype=torch.bool)
    with torch.no_grad():
        base = net(torch.as_tensor([row]), no_mask)
        changed = net(torch.as_tensor([[5, 9, 13, 30]]), no_mask)
        wide = net(torch.as_tensor(_right_padded([row, [1] * 8], 8)),
                   torch.zeros(2, 8, dtype=torch.bool))  # fmt: skip
    assert not torch.allclose(base[0, 0], changed[0, 0], atol=1e-4)
    torch.testing.assert_close(wide[0, :4], base[0])


def test_output_is_tied_with_a_bias() -> None:
    net = _random_net(BERT4RecParams(**SMALL))
    h = torch.randn(3, 12)
    expected = h @ net.item_emb.weight[1:].T + net.out_bias
    torch.testing.assert_close(net.logits(h), expected)
    with torch.no_grad():
        net.item_emb.weight[5].add_(1.0)  # item index 4's row: its score moves, others stay
    moved = net.logits(h)
    assert not torch.allclose(moved[:, 4], expected[:, 4])
    torch.testing.assert_close(moved[:, :4], expected[:, :4])


def test_plain_head_is_the_encoder_output_dotted_with_the_tied_table() -> None:
    """``head="plain"`` (Klenitskiy & Vasilev's BERT4Rec): no transform, no output bias; the
    encoder is the same BERT."""
    net = _random_net(BERT4RecParams(**SMALL, head="plain"))
    assert net.transform is None and net.out_bias is None
    names = {name for name, _ in net.named_parameters()}
    assert "out_bias" not in names and not any(n.startswith("transform") for n in names)
    items = _right_padded(ROWS, 8)
    mask = np.zeros_like(items, dtype=bool)
    mask[0, 5] = mask[3, 0] = True
    with torch.no_grad():
        ours = net(torch.as_tensor(items), torch.as_tensor(mask))
        reference = _bert_forward(net, items, mask)
    real = torch.as_tensor(items >= 0)
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=1e-5)
    h = torch.randn(3, 12)
    torch.testing.assert_close(net.logits(h), h @ net.item_emb.weight[1:].T)
    torch.testing.assert_close(net.logits(h, 4, 9), h @ net.item_emb.weight[5:10].T)


def test_plain_head_trains_saves_and_grows(tmp_path) -> None:
    torch.set_num_threads(1)
    train = successor_sessions(20, 100, seed=1)
    params = _model(num_epochs=10, head="plain").params.to_dict()
    model = registry.create_model("bert4rec", params)
    model.fit(train, progress=False)
    assert model.history[-1].loss < model.history[0].loss
    loaded = registry.load_model(model.save(tmp_path / "m"))
    ids = model.item_ids[:3].tolist()
    np.testing.assert_allclose(model.recommend([ids], k=5).scores,
                               loaded.recommend([ids], k=5).scores, rtol=1e-5)  # fmt: skip
    new = successor_sessions(25, 40, seed=3, first_session_id=10**5)  # 5 new items
    n_before = loaded.n_items
    loaded.fine_tune(new, n_epochs=1, progress=False)
    assert loaded.n_items == n_before + 5 and loaded.net.out_bias is None


def test_loss_only_at_masked_positions() -> None:
    """Changing a label at an unselected position changes nothing; the loss is the mean CE of
    the selected positions' logits."""
    torch.manual_seed(0)
    model = BERT4Rec(BERT4RecParams(**SMALL, hidden_dropout=0.0, attention_dropout=0.0))
    model.net = _random_net(model.params)
    net = model.net
    items = torch.as_tensor(_right_padded(ROWS, 8))
    mask = torch.zeros_like(items, dtype=torch.bool)
    mask[0, 1] = mask[2, 4] = True
    targets = torch.full_like(items, PAD)
    targets[0, 1], targets[2, 4] = 7, 8
    batch = SequenceBatch(items=items, lengths=(items >= 0).sum(1), targets=targets, times=None,
                          mask=mask, padding="right")  # fmt: skip
    loss_fn = model._loss_function(net, torch.Generator(), (None, None), None)  # type: ignore[arg-type]
    loss, n = loss_fn(batch)
    h = net(items, mask)
    expected = torch.nn.functional.cross_entropy(
        net.logits(torch.stack([h[0, 1], h[2, 4]])), torch.tensor([7, 8])
    )
    assert n == 2
    torch.testing.assert_close(loss, expected)


def _model(**overrides) -> BERT4Rec:
    params = dict(maxlen=8, hidden_units=32, num_epochs=30, lr=0.005, hidden_dropout=0.1,
                  attention_dropout=0.1, mask_prob=0.3, mask_last_prob=0.3, batch_size=64,
                  warmup_steps=10, device="cpu")  # fmt: skip
    return BERT4Rec(BERT4RecParams(**(params | overrides)))


def test_the_test_query_is_an_appended_mask_that_never_sees_its_target() -> None:
    """The evaluation's rows (mask appended after the input), ``recommend`` and the step path
    (a mask appended by ``encode``) give the same scores, and the held-out target is not in
    the input: replacing it leaves the scores unchanged."""
    torch.set_num_threads(1)
    train = successor_sessions(20, 100, seed=1)
    model = _model(num_epochs=2).fit(train, progress=False)
    ids = model.item_ids[[3, 5, 7, 1]].tolist()
    via_recommend = model.recommend([ids], k=5)
    query = model.encode(
        SequenceBatch(items=torch.as_tensor(model.item_index(np.asarray(ids)))[None],
                      lengths=torch.tensor([4]), targets=torch.full((1, 4), PAD), times=None,
                      mask=None, padding="right"),
        last_only=True,
    )  # fmt: skip
    step_top = torch.topk(model.score(query), 5).indices[0].numpy()
    np.testing.assert_array_equal(model.item_ids[step_top], via_recommend.items[0])
    scores = model.score(query)[0]
    for target in (ids[0], ids[2], model.item_ids[9]):
        frame = pl.DataFrame({"SessionId": [1] * 5, "ItemId": ids + [target], "Time": range(5)})
        result = evaluate_last_item(model, frame, user_key="SessionId", cutoffs=(50,),
                                    exclude_history=False)  # fmt: skip
        index = int(model.item_index(np.asarray([target]))[0])
        rank = 1 + int((scores > scores[index]).sum())
        assert result["mrr@50"] == pytest.approx(1 / rank)  # the same query for every target
    assert model.last_item_mask == "append"


class TestBERT4RecBehaviour(NextItemModelBehaviour):
    min_recall_at_1 = 0.5
    batch_tolerance = 1e-5

    def make_model(self, train: pl.DataFrame) -> BERT4Rec:
        torch.set_num_threads(1)
        return _model().fit(train, progress=False)


def test_learns_the_successor_under_the_last_item_protocol() -> None:
    torch.set_num_threads(1)
    train = successor_sessions(30, 300, seed=1)
    test = successor_sessions(30, 60, seed=2, first_session_id=10**6)
    model = _model().fit(train, progress=False)
    assert model.history[-1].loss < model.history[0].loss
    result = evaluate_last_item(model, test, user_key="SessionId", exclude_history=False)
    assert result["recall@5"] >= 0.9, dict(result)  # chance: 5 / 30


def test_registry_save_load_and_fine_tune_with_growth(tmp_path) -> None:
    torch.set_num_threads(1)
    train = successor_sessions(20, 100, seed=1)
    model = registry.create_model("bert4rec", {**_model(num_epochs=2).params.to_dict()})
    model.fit(train, progress=False)
    folder = model.save(tmp_path / "m")
    loaded = registry.load_model(folder)
    assert isinstance(loaded, BERT4Rec)
    ids = model.item_ids[:3].tolist()
    a, b = model.recommend([ids], k=5), loaded.recommend([ids], k=5)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    new = successor_sessions(25, 40, seed=3, first_session_id=10**5)  # 5 new items
    n_before = loaded.n_items
    loaded.fine_tune(new, n_epochs=1, progress=False)
    assert loaded.n_items == n_before + 5
    assert loaded.net.out_bias.shape[0] == loaded.n_items
    state = loaded.optimizer_state_dict()
    assert state["exp_avg.out_bias"].shape[0] == loaded.n_items


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="mask_prob.*replace"):
        BERT4RecParams(mask_prob=0.0, replace="90/5/5")
    with pytest.raises(ValueError, match="head must be one of"):
        BERT4RecParams(head="mlp")
    with pytest.raises(ValueError, match="adam_eps must be in"):
        BERT4RecParams(adam_eps=0.0)
    with pytest.raises(ValueError, match="mask_bounds=False needs mask_count='bernoulli'"):
        BERT4RecParams(mask_bounds=False, mask_count="fixed")


def test_unbounded_masks_train_and_a_batch_without_masks_adds_nothing() -> None:
    """``mask_bounds=False`` (Klenitskiy & Vasilev's draw) reaches the batcher, and a batch whose
    rows select nothing gives a zero loss with zero gradients instead of NaN."""
    model = _model(mask_bounds=False, mask_count="bernoulli", mask_prob=0.2, mask_last_prob=0.0)
    train = successor_sessions(30, 40, seed=1)
    batcher = model._make_batcher(model.prepare_training_data(train), seed=0)
    assert batcher.min_one == "never"
    counts = torch.cat([(b.targets != PAD).sum(1) for b in batcher.epoch(0)])
    assert int(counts.min()) == 0  # some rows train nothing, as in their code
    net = _random_net(model.params)
    loss_fn = model._loss_function(net, torch.Generator(), (None, None), None)  # type: ignore[arg-type]
    batch = next(iter(batcher.epoch(0)))
    empty = dataclasses.replace(batch, targets=torch.full_like(batch.targets, PAD))
    loss, n = loss_fn(empty)
    loss.backward()
    assert n == 0 and loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in net.parameters())
    model.fit(train, progress=False)
    assert np.isfinite(model.history[-1].loss) and model.history[-1].loss < model.history[0].loss


@pytest.mark.parametrize("eps", [1e-6, 1e-8])
def test_optimiser_is_berts_adamw_with_the_chosen_eps(eps: float) -> None:
    model = _model(adam_eps=eps, weight_decay=0.01)
    optimizer, _ = model._make_optimizer(_random_net(model.params), lr=1e-3, n_steps=10)
    decay, no_decay = optimizer.param_groups
    assert isinstance(optimizer, torch.optim.AdamW)
    assert decay["eps"] == no_decay["eps"] == eps and decay["betas"] == (0.9, 0.999)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 1 for p in no_decay["params"])  # LayerNorm gains and biases only


def test_warmup_then_linear_decay_as_bert() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear_decay(opt, warmup_steps=10, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.9) and lrs[99] == pytest.approx(0.01)


def test_constant_schedule_after_the_warmup() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_linear_decay(opt, warmup_steps=4, total_steps=None)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:5] == [0.0, 0.25, 0.5, 0.75, 1.0] and lrs[9] == 1.0


def test_length_buckets_cut_the_padding() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 40, size=200)
    frame = pl.DataFrame(
        {"SessionId": np.repeat(np.arange(200), lengths),
         "ItemId": rng.integers(0, 50, size=int(lengths.sum())),
         "Time": np.arange(int(lengths.sum()))}
    )  # fmt: skip
    data = BERT4Rec.prepare_training_data(frame)
    widths = {}
    for bucket in (0, 8):
        model = _model(maxlen=40, bucket=bucket, batch_size=16)
        widths[bucket] = sum(b.items.numel() for b in model._make_batcher(data, 1).epoch(1))
    assert widths[8] < 0.8 * widths[0]
    _model(maxlen=40, bucket=8, batch_size=16, num_epochs=1).fit(frame, progress=False)


def test_masking_rules_fixed_count_at_least_one_never_all_capped() -> None:
    """The original's counts: round(n * mask_prob) selected positions, at least one, never all
    of a row of 2+ items, at most max_predictions; every selected position gets [MASK]; a
    mask-last row selects only its last item."""
    rows = [[1, 2], [3, 4, 5], [6], list(range(7, 47))]
    frame = pl.DataFrame(
        {"SessionId": [s for s, r in enumerate(rows) for _ in r],
         "ItemId": [i for r in rows for i in r],
         "Time": list(range(sum(map(len, rows))))}
    )  # fmt: skip
    data = BERT4Rec.prepare_training_data(frame)
    model = _model(maxlen=50, mask_prob=0.6, max_predictions=10, mask_last_prob=0.2,
                   batch_size=8)  # fmt: skip
    batcher = model._make_batcher(data, seed=2)
    last_only = 0
    for epoch in range(1, 40):
        for batch in batcher.epoch(epoch):
            selected = batch.targets != PAD
            n = selected.sum(1)
            assert torch.equal(batch.mask, selected)  # replace="mask": all of them
            for r in range(len(n)):
                length = int(batch.lengths[r])
                if length == 1:
                    assert n[r] == 1  # the only item: at least one wins
                    continue
                assert 1 <= n[r] < length and n[r] <= 10
                if n[r] == 1 and selected[r, length - 1]:
                    last_only += 1
                elif length >= 3:
                    assert n[r] == min(10, max(1, round(length * 0.6))) or n[r] == length - 1
    assert last_only > 0
