"""GRU4Rec: parameters, network semantics, training step against a dense-autograd reference,
state handling, dropout, persistence, determinism, NaN guard, and the shared NextItemModel
behaviour (learning a deterministic successor sequence). The losses themselves are tested in
tests/training/test_losses.py."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from recsys_pipeline.models import gru4rec as G
from recsys_pipeline.models.base import NextItemModel
from recsys_pipeline.models.gru4rec import (
    GRU4Rec,
    GRU4RecNetwork,
    GRU4RecParams,
    GRULayer,
    make_activation,
)
from recsys_pipeline.training.optim import IndexedAdagradM
from recsys_pipeline.training.session_iterator import SessionBatch
from tests.models.behaviour import NextItemModelBehaviour, successor_sessions

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------------------------- parameters


def test_reference_defaults() -> None:
    p = GRU4RecParams()
    official = {
        "layers": [100], "loss": "cross-entropy", "batch_size": 64, "dropout_p_embed": 0.0,
        "dropout_p_hidden": 0.0, "learning_rate": 0.05, "momentum": 0.0, "sample_alpha": 0.5,
        "n_sample": 2048, "embedding": 0, "constrained_embedding": True, "n_epochs": 10,
        "bpreg": 1.0, "elu_param": 0.5, "logq": 0.0, "adapt": "adagrad", "lmbd": 0.0,
        "grad_cap": 0.0, "sigma": 0.0, "init_as_normal": False, "train_random_order": False,
        "time_sort": True, "hidden_act": "tanh",
    }  # fmt: skip
    for name, value in official.items():
        assert getattr(p, name) == value, name
    assert p.device == "auto" and p.final_act == "auto"


def test_from_string_types_values_like_run_py() -> None:
    p = GRU4RecParams.from_string(
        "layers=512/256,loss=bpr-max,constrained_embedding=False,embedding=64,"
        "learning_rate=0.05,n_sample=0,time_sort=0,momentum=0.4,batch_size=128,elu_param=1"
    )
    assert p.layers == [512, 256] and p.loss == "bpr-max" and p.constrained_embedding is False
    assert p.embedding == 64 and p.n_sample == 0 and p.time_sort is False
    assert isinstance(p.learning_rate, float) and p.batch_size == 128
    assert p.resolved_final_act == "elu-1" and p.embedding_mode == "separate"
    assert GRU4RecParams.from_string("layers=100").layers == [100]
    assert GRU4RecParams.from_string("layers=64,embedding=layersize").embedding == 64
    assert GRU4RecParams.from_string(p.to_string()) == p


def test_from_string_rejects_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown GRU4Rec parameter\(s\) \['hiden_act'\]"):
        GRU4RecParams.from_string("layers=100,hiden_act=tanh")
    with pytest.raises(ValueError, match="valid names: layers, loss"):
        GRU4RecParams.from_string("lr=0.1")
    with pytest.raises(ValueError, match="batch_size"):
        GRU4RecParams.from_string("batch_size=abc")
    with pytest.raises(ValueError, match="time_sort"):
        GRU4RecParams.from_string("time_sort=yes")
    with pytest.raises(ValueError, match="name=value"):
        GRU4RecParams.from_string("layers")
    with pytest.raises(ValueError, match="loss must be one of"):
        GRU4RecParams.from_string("loss=hinge")
    with pytest.raises(ValueError, match="drop probability"):
        GRU4RecParams(dropout_p_hidden=1.0)
    with pytest.raises(ValueError, match="final_act=softmax"):
        GRU4RecParams(loss="cross-entropy", final_act="linear")
    with pytest.raises(ValueError, match="unknown activation"):
        GRU4RecParams(loss="bpr-max", final_act="elu")


def test_from_dict_accepts_yaml_values() -> None:
    p = GRU4RecParams.from_dict({"layers": 512, "momentum": "0.4", "time_sort": True})
    assert p.layers == [512] and p.momentum == 0.4 and p.time_sort is True
    assert GRU4RecParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="unknown"):
        GRU4RecParams.from_dict({"layer": [1]})


@pytest.mark.parametrize(
    ("loss", "extra", "expected"),
    [
        ("bpr-max", {}, "elu-0.5"),
        ("bpr-max", {"elu_param": 0.0}, "linear"),
        ("bpr-max", {"final_act": "tanh"}, "tanh"),
        ("cross-entropy", {}, "softmax"),
        ("xe_logit", {}, "softmax_logit"),
        ("top1", {}, "linear"),
    ],
)
def test_final_activation_resolution(loss: str, extra: dict, expected: str) -> None:
    assert GRU4RecParams(loss=loss, **extra).resolved_final_act == expected


# ---------------------------------------------------------------------------------- network


def test_gru_layer_matches_torch_gru_cell_semantics() -> None:
    """Our gate layout (candidate, reset, update; reset after the hidden matmul) is nn.GRUCell's,
    which the official port uses, with the update gate's sign flipped."""
    torch.manual_seed(0)
    n_in, size = 3, 4
    cell = nn.GRUCell(n_in, size)
    with torch.no_grad():
        cell.bias_hh[2 * size :] = 0.0  # we carry one bias, on the input side
    layer = GRULayer(n_in, size, make_activation("tanh"))
    w_ir, w_iz, w_in = cell.weight_ih.detach().chunk(3)
    w_hr, w_hz, w_hn = cell.weight_hh.detach().chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.detach().chunk(3)
    b_hr, b_hz, _ = cell.bias_hh.detach().chunk(3)
    with torch.no_grad():
        layer.Wx.copy_(torch.cat([w_in.T, w_ir.T, -w_iz.T], dim=1))
        layer.Wh.copy_(torch.cat([w_hn.T, w_hr.T, -w_hz.T], dim=1))
        layer.Bh.copy_(torch.cat([b_in, b_ir + b_hr, -(b_iz + b_hz)]))
    x, h = torch.randn(5, n_in), torch.randn(5, size)
    ours = layer.cell(torch.addmm(layer.Bh, x, layer.Wx), h)
    torch.testing.assert_close(ours, cell(x, h))


@pytest.mark.parametrize(
    "act", ["tanh", "linear", "relu", "leaky-0.1", "elu-0.5", "selu-1.05-1.67"]
)
def test_fused_gru_gates_gradcheck(act: str) -> None:
    torch.manual_seed(1)
    gx = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    gh = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    activation = make_activation(act)
    assert torch.autograd.gradcheck(
        lambda a, b, c: G._GRUGates.apply(a, b, c, activation), (gx, gh, h)
    )


@pytest.mark.parametrize(
    ("mode", "kwargs"),
    [
        ("shared", {}),
        ("separate", {"constrained_embedding": False, "embedding": 8}),
        ("none", {"constrained_embedding": False}),
    ],
)
def test_embedding_modes_and_initialisation(mode: str, kwargs: dict) -> None:
    n_items, size = 50, 20
    params = GRU4RecParams(layers=[size, 10], **kwargs)
    net = GRU4RecNetwork(n_items, params)
    net.reset_parameters(generator=torch.Generator().manual_seed(0))
    assert net.mode == mode
    n_in = {"shared": 10, "separate": 8, "none": n_items}[mode]
    assert tuple(net.gru[0].Wx.shape) == (n_in, 3 * size)
    assert tuple(net.gru[1].Wx.shape) == (size, 30)
    assert hasattr(net, "E") == (mode == "separate")
    for w, bound in [
        (net.gru[0].Wx, math.sqrt(6 / (n_in + size))),  # per gate block [n_in, H]
        (net.gru[0].Wh, math.sqrt(6 / (size + size))),
        (net.Wy, math.sqrt(6 / (n_items + 10))),
    ]:
        top = float(w.detach().abs().max())
        assert 0.8 * bound < top <= bound
    assert not net.By.detach().any() and not net.gru[0].Bh.detach().any()
    net.reset_parameters(sigma=0.01)
    assert float(net.gru[1].Wh.detach().abs().max()) <= 0.01
    net.reset_parameters(sigma=0.05, init_as_normal=True)
    assert float(net.Wy.detach().std()) == pytest.approx(0.05, rel=0.2)


def test_dropout_p_is_a_drop_probability() -> None:
    x = torch.ones(400, 500)
    y = G._dropout(x, 0.8, torch.Generator().manual_seed(0))
    assert float((y == 0).float().mean()) == pytest.approx(0.8, abs=0.01)
    assert torch.allclose(y[y != 0], torch.tensor(5.0))  # survivors scaled by 1/(1-p)
    params = GRU4RecParams(layers=[300], dropout_p_hidden=0.8, dropout_p_embed=0.5)
    net = GRU4RecNetwork(10, params)
    net.reset_parameters(generator=torch.Generator().manual_seed(0))
    items = torch.arange(10).repeat(20)
    x_in = net.Wy[items].detach()
    gen = torch.Generator().manual_seed(1)
    out, _ = net.hidden_step(x_in, net.initial_state(200), training=True, generator=gen)
    assert float((out == 0).float().mean()) == pytest.approx(0.8, abs=0.02)
    out_eval, _ = net.hidden_step(x_in, net.initial_state(200), training=False)
    assert float((out_eval == 0).float().mean()) < 0.01


# -------------------------------------------------------------------- training step vs reference


class _FixedSampler:
    def __init__(self, samples: torch.Tensor) -> None:
        self.samples = samples

    def next(self) -> torch.Tensor:
        return self.samples


def _reference_step(
    net: GRU4RecNetwork,
    params: GRU4RecParams,
    state: list[torch.Tensor],
    batch: SessionBatch,
    samples: torch.Tensor,
    log_support: torch.Tensor,
    opt_state: dict,
) -> list[torch.Tensor]:
    """Dense autograd on the full tables + the reference's coalesced row-wise Adagrad."""
    if batch.reset is not None:
        state = [torch.where(batch.reset[:, None], 0.0, h) for h in state]
    if batch.keep is not None:
        state = [h[batch.keep] for h in state]
    for p in net.parameters():
        p.grad = None
    outputs = torch.cat([batch.targets, samples])
    if net.mode == "none":
        x = None
    else:
        x = (net.Wy if net.mode == "shared" else net.E)[batch.inputs]
    new_state = []
    for i, layer in enumerate(net.gru):
        size = layer.size
        gx = layer.Wx[batch.inputs] + layer.Bh if x is None else x @ layer.Wx + layer.Bh
        gh = state[i] @ layer.Wh
        r = torch.sigmoid(gx[:, size : 2 * size] + gh[:, size : 2 * size])
        z = torch.sigmoid(gx[:, 2 * size :] + gh[:, 2 * size :])
        c = torch.tanh(gx[:, :size] + r * gh[:, :size])
        x = (1 - z) * state[i] + z * c
        new_state.append(x)
    scores = x @ net.Wy[outputs].T + net.By[outputs]
    n = len(batch.inputs)
    if params.loss == "cross-entropy":
        corr = params.logq * torch.cat(
            [log_support[batch.targets], params.sample_alpha * log_support[samples]]
        )
        logp = torch.log_softmax(scores - corr, dim=1)
        loss = -logp[torch.arange(n), torch.arange(n)].sum() / params.batch_size
    else:  # bpr-max with ELU, written as the reference does (mask multiply)
        r_ = torch.nn.functional.elu(scores, params.elu_param)
        hm = 1.0 - torch.eye(*r_.shape)
        e = torch.exp(r_ * hm - (r_ * hm).max(dim=1, keepdim=True).values) * hm
        s = e / e.sum(dim=1, keepdim=True)
        t = torch.diag(r_).unsqueeze(1)
        loss = (
            torch.sum(
                -torch.log(torch.sum(torch.sigmoid(t - r_) * s, dim=1) + 1e-24)
                + params.bpreg * torch.sum(r_**2 * s, dim=1)
            )
            / params.batch_size
        )
    loss.backward()
    touched = {
        "Wy": torch.unique(torch.cat([batch.inputs, outputs]))
        if net.mode == "shared"
        else torch.unique(outputs),
        "By": torch.unique(outputs),
        "E": torch.unique(batch.inputs),
        "gru.0.Wx": torch.unique(batch.inputs),
    }
    lr, mom, eps = params.learning_rate, params.momentum, 1e-6
    with torch.no_grad():
        for name, p in net.named_parameters():
            rows = touched.get(name) if (name != "gru.0.Wx" or net.mode == "none") else None
            acc = opt_state.setdefault(name + ".acc", torch.zeros_like(p))
            vel = opt_state.setdefault(name + ".vel", torch.zeros_like(p))
            idx = rows if rows is not None else slice(None)
            g = p.grad[idx]
            acc[idx] += g * g
            vel[idx] = mom * vel[idx] - lr * g / torch.sqrt(acc[idx] + eps)
            p[idx] += vel[idx]
    return [h.detach() for h in new_state]


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"constrained_embedding": False, "embedding": 4}, {"constrained_embedding": False}],
    ids=["shared", "separate", "none"],
)
def test_train_step_matches_dense_autograd_reference(loss: str, kwargs: dict) -> None:
    n_items = 12
    params = GRU4RecParams(
        layers=[6, 5],
        loss=loss,
        batch_size=3,
        n_sample=4,
        momentum=0.3,
        learning_rate=0.1,
        logq=1.0 if loss == "cross-entropy" else 0.0,
        elu_param=0.5,
        bpreg=0.7,
        **kwargs,
    )
    net = GRU4RecNetwork(n_items, params)
    net.reset_parameters(generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.By.normal_(0, 0.1, generator=torch.Generator().manual_seed(5))
    ref = copy.deepcopy(net)
    samples = torch.tensor([2, 2, 7, 0])  # duplicates, and overlaps with targets and inputs
    log_support = torch.log(torch.arange(1, n_items + 1, dtype=torch.float32))
    opt = IndexedAdagradM(net.parameters(), lr=0.1, momentum=0.3)
    step = G._TrainStep(net, params, opt, _FixedSampler(samples), log_support, None)
    batches = [
        SessionBatch(torch.tensor([1, 2, 1]), torch.tensor([2, 5, 0]), None, None),
        SessionBatch(
            torch.tensor([2, 9, 0]),
            torch.tensor([3, 10, 1]),
            torch.tensor([False, True, False]),
            None,
        ),
        SessionBatch(torch.tensor([10, 1]), torch.tensor([11, 2]), None, torch.tensor([1, 2])),
    ]
    ref_state = ref.initial_state(3)
    opt_state: dict = {}
    for batch in batches:
        step(batch)
        ref_state = _reference_step(ref, params, ref_state, batch, samples, log_support, opt_state)
        for (name, ours), theirs in zip(net.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(
                ours, theirs, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}"
            )
        for ours, theirs in zip(step.state, ref_state, strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_train_step_zeroes_exactly_the_reset_slots_and_keeps_others() -> None:
    params = GRU4RecParams(layers=[4], batch_size=3, n_sample=2)
    net = GRU4RecNetwork(6, params)
    net.reset_parameters(generator=torch.Generator().manual_seed(0))
    opt = IndexedAdagradM(net.parameters(), lr=0.05)
    step = G._TrainStep(net, params, opt, _FixedSampler(torch.tensor([4, 5])), torch.zeros(6), None)
    seen: list[torch.Tensor] = []
    original = net.hidden_step

    def spy(x, state, **kw):
        seen.append(state[0].clone())
        return original(x, state, **kw)

    net.hidden_step = spy  # type: ignore[method-assign]
    step.state = [torch.arange(1, 13, dtype=torch.float32).view(3, 4)]
    step(SessionBatch(torch.tensor([0, 1, 2]), torch.tensor([1, 2, 3]),
                      torch.tensor([True, False, True]), None))  # fmt: skip
    assert torch.equal(seen[0][0], torch.zeros(4)) and torch.equal(seen[0][2], torch.zeros(4))
    assert torch.equal(seen[0][1], torch.arange(5, 9, dtype=torch.float32))
    after = step.state[0].clone()
    step(SessionBatch(torch.tensor([3, 1]), torch.tensor([4, 2]), None, torch.tensor([2, 0])))
    assert torch.equal(seen[1], after[[2, 0]])  # shrink keeps the slots, none zeroed


# --------------------------------------------------------------------------------- model level


def _tiny_frame(n_sessions: int = 120, seed: int = 3) -> pl.DataFrame:
    return successor_sessions(20, n_sessions, seed=seed)


def _tiny_params(**kwargs) -> GRU4RecParams:
    base = dict(layers=[16], batch_size=8, n_sample=10, n_epochs=1, device="cpu")
    return GRU4RecParams(**{**base, **kwargs})


def test_fit_runs_n_epochs_and_sees_every_target() -> None:
    train = _tiny_frame()
    model = GRU4Rec(_tiny_params(n_epochs=3)).fit(train, progress=False)
    n_targets = train.height - train["SessionId"].n_unique()
    assert [s.epoch for s in model.history] == [1, 2, 3]
    assert all(s.n_targets == n_targets for s in model.history)
    assert all(s.seconds > 0 and s.targets_per_s > 0 for s in model.history)


def test_state_protocol_reset_and_keep() -> None:
    model = GRU4Rec(_tiny_params(layers=[8, 6])).fit(_tiny_frame(40), progress=False)
    assert isinstance(model, NextItemModel)
    state = model.initial_state(3)
    assert [tuple(h.shape) for h in state] == [(3, 8), (3, 6)]
    _, state = model.step(torch.tensor([0, 1, 2]), state)
    reset = model.reset_state(state, torch.tensor([False, True, False]))
    for before, after in zip(state, reset, strict=True):
        assert torch.equal(after[1], torch.zeros_like(after[1]))
        assert torch.equal(after[[0, 2]], before[[0, 2]])
    kept = model.keep_state(state, torch.tensor([2, 0]))
    assert torch.equal(kept[1], state[1][[2, 0]])


def test_save_load_roundtrip_identical_scores(tmp_path) -> None:
    train = _tiny_frame().with_columns(pl.format("item-{}", pl.col("ItemId")).alias("ItemId"))
    model = GRU4Rec(_tiny_params(n_epochs=2)).fit(train, progress=False)
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "weights.pt",
        "model.json",
        "item_ids.json",
        "history.json",
        "optimizer.pt",
    }  # fmt: skip  (optimizer.pt: Adagrad state for fine-tuning, a state dict too)
    loaded = GRU4Rec.load(tmp_path / "m")
    assert loaded.params == model.params
    assert list(loaded.item_ids) == list(model.item_ids)
    assert [s.loss for s in loaded.history] == [s.loss for s in model.history]
    items = torch.tensor([0, 5, 7])
    q1, s1 = model.step(items, model.initial_state(3))
    q2, s2 = loaded.step(items, loaded.initial_state(3))
    assert torch.equal(model.score(q1), loaded.score(q2))
    np.testing.assert_array_equal(model.item_index(["item-4000", "nope"]), [0, -1])


def test_same_seed_same_weights_other_seed_differs() -> None:
    train = _tiny_frame()
    kw = dict(dropout_p_embed=0.2, dropout_p_hidden=0.3, momentum=0.2, train_random_order=True)
    a = GRU4Rec(_tiny_params(seed=7, **kw)).fit(train, progress=False)
    b = GRU4Rec(_tiny_params(seed=7, **kw)).fit(train, progress=False)
    c = GRU4Rec(_tiny_params(seed=8, **kw)).fit(train, progress=False)
    sa, sb, sc = (m.net.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_nan_loss_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_loss(scores: torch.Tensor, batch_size: int, correction=None) -> torch.Tensor:
        return scores.sum() * float("nan")

    monkeypatch.setattr(G, "cross_entropy_loss", nan_loss)
    model = GRU4Rec(_tiny_params())
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        model.fit(_tiny_frame(), progress=False)
    with pytest.raises(RuntimeError, match="not trained"):
        model.initial_state(1)


def test_untrained_model_and_empty_data_errors() -> None:
    with pytest.raises(RuntimeError, match="not trained"):
        GRU4Rec().initial_state(2)
    one_event_sessions = pl.DataFrame({"SessionId": [1, 2], "ItemId": [5, 6], "Time": [0, 1]})
    with pytest.raises(ValueError, match="no training targets"):
        GRU4Rec(_tiny_params()).fit(one_event_sessions, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": "cross-entropy", "logq": 1.0},
        {"loss": "bpr-max", "elu_param": 1.0, "momentum": 0.3},
        {"loss": "cross-entropy", "constrained_embedding": False},
        {"loss": "top1-max", "constrained_embedding": False, "embedding": 16},
    ],
    ids=["xe-logq", "bpr-max", "xe-none", "top1max-separate"],
)
def test_learns_deterministic_successor(kwargs: dict) -> None:
    n_items = 25
    train = successor_sessions(n_items, 300, seed=4)
    params = _tiny_params(layers=[32], batch_size=16, n_sample=16, n_epochs=4,
                          learning_rate=0.1, **kwargs)  # fmt: skip
    model = GRU4Rec(params).fit(train, progress=False)
    perm = np.random.default_rng(12345).permutation(n_items)
    raw = 4000 + perm  # raw id of sequence position i
    idx = torch.as_tensor(model.item_index(raw))
    query, _ = model.step(idx, model.initial_state(n_items))
    predicted = model.item_ids[model.score(query).argmax(dim=1).numpy()]
    accuracy = float(np.mean(predicted == np.roll(raw, -1)))
    assert accuracy >= 0.95, accuracy


class TestGRU4RecBehaviour(NextItemModelBehaviour):
    """The shared NextItemModel behaviour suite (evaluation, recommend, chunking, persistence)."""

    min_recall_at_1 = 0.9
    batch_tolerance = 1e-6

    def make_model(self, train: pl.DataFrame) -> NextItemModel:
        params = GRU4RecParams(
            layers=[32], batch_size=16, n_sample=16, n_epochs=4, learning_rate=0.1, device="cpu"
        )
        return GRU4Rec(params).fit(train, progress=False)


def test_params_replace_overrides() -> None:
    model = GRU4Rec(GRU4RecParams(layers=[8]), batch_size=5, device="cpu")
    assert model.params.batch_size == 5 and model.params.layers == [8]
    assert dataclasses.replace(model.params, loss="bpr-max").loss == "bpr-max"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_sample": 0, "loss": "bpr-max"},
        {"hidden_act": "elu-1", "layers": [12, 8], "grad_cap": 1.0, "lmbd": 1e-4},
        {"adapt": "sgd", "time_sort": False, "loss": "top1"},
        {"batch_size": 512, "loss": "bpr"},
    ],
    ids=["no-samples", "options", "sgd", "batch-larger-than-data"],
)
def test_fit_with_less_common_options(kwargs: dict) -> None:
    train = _tiny_frame(60)
    model = GRU4Rec(_tiny_params(**kwargs)).fit(train, progress=False)
    assert all(math.isfinite(s.loss) for s in model.history)
    query, _ = model.step(torch.tensor([0, 1]), model.initial_state(2))
    assert torch.isfinite(model.score(query)).all()
