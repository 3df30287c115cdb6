"""HSTU: faithfulness to generative-recommenders' research HSTU (an independent re-statement
of its padded forward pass below: the reference's width ``n``, its Toeplitz position bias and
time buckets against the next item's time), pointwise attention, causality, the time buckets
on hand-computed timestamps, the shared behavioural tests, persistence and fine-tuning."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models import registry
from recsys_pipeline.models.hstu import (
    HSTU,
    HSTUNet,
    HSTUParams,
    _Lookup,
    _RelativeBias,
    bias_index,
    time_buckets,
)
from recsys_pipeline.training.sequences import PAD
from tests.models.behaviour import NextItemModelBehaviour, successor_sessions

SMALL = {"maxlen": 6, "hidden_units": 8, "dqk": 4, "dv": 4, "num_heads": 2, "output_slots": 3}


def _random_net(params: HSTUParams, n_items: int = 30, seed: int = 0) -> HSTUNet:
    """A network with every parameter random and large, so that a wrong formula shows."""
    torch.manual_seed(seed)
    net = HSTUNet(n_items, params)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return net.eval()


def _reference_forward(net: HSTUNet, ids: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """generative-recommenders' HSTU re-stated at its padded width: ``ids [B, n]`` 1-based
    ids, 0 = padding on the right; ``ts [B, n]`` with the time of the item after the last
    one at index ``length`` (its ``movielens_seq_features_from_row``). Returns ``[B, n, D]``."""
    b, n = ids.shape
    d = net.item_emb.embedding_dim
    assert n == net.n
    x = net.item_emb.weight[ids] * d**0.5 + net.pos_emb.weight[torch.arange(n)]
    x = x * (ids != 0).unsqueeze(-1).float()
    mask = 1.0 - torch.triu(torch.ones(n, n), diagonal=1)
    ext = torch.cat([ts, ts[:, n - 1 : n]], dim=1)
    for layer in net.layers:
        h, dqk, dv = layer.heads, layer.dqk, layer.dv
        normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(
            x.var(-1, unbiased=False, keepdim=True) + 1e-6
        )
        u, v, q, k = torch.split(
            F.silu(normed @ layer.uvqk), [h * dv, h * dv, h * dqk, h * dqk], -1
        )
        # Toeplitz: the reference's pad / repeat / reshape trick
        w = layer.bias.pos_w
        t = F.pad(w[: 2 * n - 1], [0, n]).repeat(n)[..., :-n].reshape(1, n, 3 * n - 2)
        r = (2 * n - 1) // 2
        buckets = torch.clamp(
            (
                torch.log(
                    torch.abs(ext[:, 1:].unsqueeze(2) - ext[:, :-1].unsqueeze(1)).clamp(min=1)
                )
                / 0.301
            ).long(),
            min=0,
            max=128,
        )
        rab = t[:, :, r:-r] + layer.bias.ts_w[buckets.view(-1)].view(b, n, n)
        qk = torch.einsum("bnhd,bmhd->bhnm", q.view(b, n, h, dqk), k.view(b, n, h, dqk))
        qk = F.silu(qk + rab.unsqueeze(1)) / n * mask
        a = torch.einsum("bhnm,bmhd->bnhd", qk, v.view(b, n, h, dv)).reshape(b, n, h * dv)
        a = (a - a.mean(-1, keepdim=True)) / torch.sqrt(
            a.var(-1, unbiased=False, keepdim=True) + 1e-6
        )
        x = (u * a) @ layer.out.weight.T + layer.out.bias + x
    return x / torch.linalg.norm(x, dim=-1, keepdim=True).clamp(min=1e-6)


def test_forward_equals_the_reference_at_real_positions() -> None:
    params = HSTUParams(**SMALL)
    net = _random_net(params)
    lengths = [6, 3, 1]
    items = torch.full((3, 6), PAD)
    times = torch.zeros(3, 6, dtype=torch.long)
    query = torch.zeros(3, 6, dtype=torch.long)
    rng = np.random.default_rng(0)
    ids = torch.zeros(3, net.n, dtype=torch.long)
    ts = torch.zeros(3, net.n, dtype=torch.long)
    for row, length in enumerate(lengths):
        seq = torch.as_tensor(rng.integers(0, 30, length))
        stamps = torch.as_tensor(np.sort(rng.integers(0, 10**6, length + 1)))
        items[row, :length] = seq
        times[row, :length] = stamps[:-1]
        query[row, :length] = stamps[1:]  # the next event's time; the last: the target's
        ids[row, :length] = seq + 1
        ts[row, : length + 1] = stamps
    ours = net(items, times, query)
    reference = _reference_forward(net, ids, ts)
    for row, length in enumerate(lengths):
        torch.testing.assert_close(
            ours[row, :length], reference[row, :length], atol=2e-5, rtol=1e-4
        )
        assert torch.all(ours[row, length:] == 0)


def test_time_buckets_on_hand_computed_gaps() -> None:
    dt = torch.tensor([0, 1, -1, 2, 5, 60, -3600, 86400, 10**12])
    expected = [0, 0, 0, int(math.log(2) / 0.301), int(math.log(5) / 0.301),
                int(math.log(60) / 0.301), int(math.log(3600) / 0.301),
                int(math.log(86400) / 0.301), min(128, int(math.log(1e12) / 0.301))]  # fmt: skip
    assert time_buckets(dt).tolist() == expected
    assert expected[3:] == [2, 5, 13, 27, 37, 91]


def test_attention_is_pointwise_silu_over_n_without_softmax() -> None:
    """Doubling every value doubles the attention output (no softmax renormalisation), and
    the weights are SiLU(qk + rab) / n: with q = k = 0 a key's weight is SiLU(rab) / n."""
    params = HSTUParams(**SMALL, num_blocks=1)
    net = _random_net(params)
    layer = net.layers[0]
    x = torch.randn(2, 5, 8)
    causal = torch.ones(5, 5).tril()
    with torch.no_grad():
        layer.uvqk[:, 16:] = 0.0  # q and k columns (after u, v: 2 heads x 4 each): qk = 0
    times = torch.arange(10).view(2, 5) * 100
    query = times + 50
    buckets = time_buckets(query.unsqueeze(2) - times.unsqueeze(1))
    rel = torch.arange(5).unsqueeze(0) - torch.arange(5).unsqueeze(1) + net.n - 1  # j - i
    bias = layer.bias.pos_w[rel] + layer.bias.ts_w[buckets]  # [2, 5, 5], stated by hand
    torch.testing.assert_close(layer.bias(bias_index(5, net.n, buckets), True), bias)
    weights = F.silu(bias) / net.n * causal  # [2, 5, 5]
    normed = F.layer_norm(x, (8,), eps=1e-6)
    u, v = torch.split(F.silu(normed @ layer.uvqk[:, :16]), [8, 8], -1)
    attended = torch.einsum("bnm,bmhd->bnhd", weights, v.view(2, 5, 2, 4)).reshape(2, 5, 8)
    expected = layer.out(u * F.layer_norm(attended, (8,), eps=1e-6)) + x
    index = bias_index(5, net.n, buckets)
    torch.testing.assert_close(layer(x, causal / net.n, index, True), expected)


def test_the_bias_lookup_backward_is_the_gradient() -> None:
    """The fused (position, time bucket) lookup's scatter-add backward is the true gradient
    of the table (finite differences, float64), pairs sharing a cell included; through the
    table of sums, both bias vectors get their gradient."""
    buckets = torch.tensor([[[0, 3, 3, 128], [1, 1, 0, 2], [5, 5, 5, 5], [0, 0, 0, 0]]] * 2)
    index = bias_index(4, 4, buckets)  # [2, 4, 4] into a [7, 129] table
    table = torch.randn(7, 129, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Lookup.apply, (table, index))
    bias = _RelativeBias(4, use_time=True)
    upstream = torch.randn(2, 4, 4)
    ours = torch.autograd.grad(bias(index, True), (bias.pos_w, bias.ts_w), upstream)
    rel = torch.arange(4).unsqueeze(0) - torch.arange(4).unsqueeze(1) + 3
    plain = bias.pos_w[rel] + bias.ts_w[buckets]
    for a, b in zip(ours, torch.autograd.grad(plain, (bias.pos_w, bias.ts_w), upstream),
                    strict=True):  # fmt: skip
        torch.testing.assert_close(a, b)


def test_division_by_the_padded_width_or_the_true_length() -> None:
    padded = _random_net(HSTUParams(**SMALL, num_blocks=1))
    length = _random_net(HSTUParams(**SMALL, num_blocks=1, attention_norm="length"))
    length.load_state_dict(padded.state_dict())
    items = torch.tensor([[1, 2, 3]])
    assert padded.n == 6 + 3
    a, b = padded(items), length(items)
    assert not torch.allclose(a, b)
    # with n = 1 both are the same network (position 0 attends one item)
    one = _random_net(HSTUParams(**dict(SMALL, maxlen=1, output_slots=0), num_blocks=1))
    one_length = _random_net(
        HSTUParams(**dict(SMALL, maxlen=1, output_slots=0), num_blocks=1, attention_norm="length")
    )
    one_length.load_state_dict(one.state_dict())
    torch.testing.assert_close(one(items[:, :1]), one_length(items[:, :1]))


def test_causal_a_later_item_never_changes_an_earlier_output() -> None:
    net = _random_net(HSTUParams(**SMALL))
    items = torch.tensor([[3, 4, 5, 6, 7]])
    times = torch.tensor([[10, 20, 30, 40, 50]])
    query = torch.tensor([[20, 30, 40, 50, 60]])
    base = net(items, times, query)
    changed = net(torch.tensor([[3, 4, 5, 9, 8]]), times, query)
    torch.testing.assert_close(base[0, :3], changed[0, :3])
    assert not torch.allclose(base[0, 3], changed[0, 3])


def test_the_query_time_changes_the_last_output_through_the_time_bias() -> None:
    net = _random_net(HSTUParams(**SMALL))
    items = torch.tensor([[3, 4, 5]])
    times = torch.tensor([[0, 100, 10_000]])
    soon = net(items, times, torch.tensor([[100, 10_000, 10_010]]))
    later = net(items, times, torch.tensor([[100, 10_000, 10**7]]))
    torch.testing.assert_close(soon[0, :2], later[0, :2])
    assert not torch.allclose(soon[0, 2], later[0, 2])
    positional = _random_net(HSTUParams(**SMALL, relative_bias="position"))
    torch.testing.assert_close(
        positional(items, times, torch.tensor([[100, 10_000, 10_010]])),
        positional(items, times, torch.tensor([[100, 10_000, 10**7]])),
    )


def test_outputs_and_scores_are_cosines() -> None:
    model = HSTU(HSTUParams(**SMALL, num_epochs=1, device="cpu"))
    model.fit(successor_sessions(20, 50, seed=1), progress=False)
    out = model._network()(torch.tensor([[1, 2, 3, PAD]]))
    norms = torch.linalg.norm(out[0, :3], dim=-1)
    torch.testing.assert_close(norms, torch.ones(3))
    scores = model.score(out[0, :3])
    assert scores.abs().max() <= 1.0 + 1e-5


def test_initialisation_as_the_reference() -> None:
    torch.manual_seed(0)
    net = HSTUNet(5000, HSTUParams(hidden_units=50, maxlen=200))
    item = net.item_emb.weight
    assert abs(item.std().item() - 0.02 * 0.88) < 0.002  # normal cut at 2 std: std 0.88 sigma
    assert item.abs().max().item() <= 0.04 + 1e-6
    assert net.pos_emb.weight.shape == (211, 50)
    assert abs(net.pos_emb.weight.std().item() - math.sqrt(2 / (211 + 50))) < 0.01
    layer = net.layers[0]
    assert layer.uvqk.shape == (50, 200) and abs(layer.uvqk.std().item() - 0.02) < 0.002
    assert layer.bias.pos_w.shape == (2 * 211 - 1,) and layer.bias.ts_w.shape == (129,)


class TestHSTUBehaviour(NextItemModelBehaviour):
    min_recall_at_1 = 0.9
    batch_tolerance = 1e-6

    def make_model(self, train: pl.DataFrame) -> HSTU:
        params = HSTUParams(maxlen=10, hidden_units=16, dqk=16, dv=16, num_epochs=40,
                            batch_size=32, n_negatives=16, dropout_rate=0.1,
                            linear_dropout_rate=0.1, device="cpu", seed=3)  # fmt: skip
        return HSTU(params).fit(train, progress=False)


def test_registry_save_load_and_fine_tune_with_growth(tmp_path) -> None:
    train = successor_sessions(20, 60, seed=1)
    model = registry.create_model("hstu", dict(SMALL, num_epochs=1, device="cpu"))
    model.fit(train, progress=False)
    model.save(tmp_path / "m")
    loaded = registry.load_model(tmp_path / "m")
    assert isinstance(loaded, HSTU)
    for a, b in zip(
        model._network().state_dict().values(), loaded._network().state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    more = successor_sessions(25, 30, seed=5, first_session_id=10**5, t0=10**6)
    loaded.fine_tune(more, n_epochs=1, optimizer_state="reset", progress=False)
    assert loaded.n_items == 25


def test_evaluation_reads_the_target_time_only_when_asked() -> None:
    data = successor_sessions(20, 80, seed=1).with_columns(pl.col("Time") * 3600)
    model = HSTU(HSTUParams(**SMALL, num_epochs=2, device="cpu")).fit(data, progress=False)
    with torch.no_grad():  # large time biases, so that one bucket more or less shows
        for layer in model._network().layers:
            layer.bias.ts_w.normal_(0.0, 5.0, generator=torch.Generator().manual_seed(0))
    last = data.group_by("SessionId").agg(pl.all().last())
    inputs = data.join(last.select("SessionId", "Time"), on=["SessionId", "Time"], how="anti")
    kwargs = {"user_key": "SessionId", "targets": last, "progress": False}
    target = evaluate_last_item(model, inputs, query_time="target", **kwargs)
    leak_free = evaluate_last_item(model, inputs, **kwargs)
    assert target["n_targets"] == leak_free["n_targets"] > 0
    assert target["ndcg@10"] != leak_free["ndcg@10"]


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="relative_bias must be one of"):
        HSTUParams(relative_bias="rotary")
    with pytest.raises(ValueError, match="attention_norm"):
        HSTUParams(attention_norm="softmax")


def test_an_item_universe_gives_rows_to_ids_never_in_training() -> None:
    """``fit(item_ids=...)``: the catalogue's ids all get rows (the reference's table holds
    every movie id), so a never-seen id is a candidate; events outside it are dropped."""
    train = successor_sessions(20, 60, seed=1)
    seen = sorted(set(train["ItemId"].to_list()))
    universe = np.asarray([*seen, 1, 2, 99_999])
    model = HSTU(HSTUParams(**SMALL, num_epochs=1, device="cpu"))
    model.fit(train, item_ids=universe, progress=False)
    assert model.n_items == len(seen) + 3
    assert {1, 2, 99_999} <= set(model.item_ids.tolist())
    assert model.support[np.searchsorted(model.item_ids, [1, 2, 99_999])].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="as a frame"):
        model.fit(model.prepare_training_data(train), item_ids=universe, progress=False)
