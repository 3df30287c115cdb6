"""SASRec: faithfulness to the original TensorFlow code (an independent re-statement of its
forward pass below), the flaws of popular ports, the shared behavioural tests, training
options, persistence and fine-tuning."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models import registry
from recsys_pipeline.models import sasrec as sasrec_module
from recsys_pipeline.models.base import EncoderStepAdapter, SequenceEncoder
from recsys_pipeline.models.sasrec import SASRec, SASRecNet, SASRecParams
from recsys_pipeline.models.sequence_model import _sequences as session_data
from recsys_pipeline.training.sequences import PAD, SequenceBatch
from tests.models.behaviour import NextItemModelBehaviour, successor_sessions


def _random_net(params: SASRecParams, n_items: int = 40, seed: int = 0) -> SASRecNet:
    """A network with every parameter random (layer-norm gains and biases too), so that a
    misplaced normalisation or a missing scale changes the output."""
    torch.manual_seed(seed)
    net = SASRecNet(n_items, params)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.add_(torch.randn_like(p) * 0.3)
        net.item_emb.weight[0].zero_()
    return net.eval()


def _layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-8) * norm.weight + norm.bias


def _tf_forward(net: SASRecNet, items: np.ndarray, norm_first: bool = True) -> torch.Tensor:
    """kang205/SASRec's forward pass, re-stated from its TensorFlow code with explicit loops:
    ``items [B, maxlen]`` 1-based ids, 0 = padding on the left; returns ``[B, maxlen, D]``."""
    seq_ids = torch.as_tensor(items, dtype=torch.long)
    b, n = seq_ids.shape
    d = net.item_emb.embedding_dim
    seq = net.item_emb.weight[seq_ids] * d**0.5 + net.pos_emb.weight[torch.arange(n)]
    mask = (seq_ids != 0).float().unsqueeze(-1)
    seq = seq * mask
    big = -(2.0**32) + 1
    for block in net.blocks:
        heads = block.attn.heads
        queries = _layer_norm(seq, block.attn_norm) if norm_first else seq
        q = queries @ block.attn.q.weight.T + block.attn.q.bias
        k = seq @ block.attn.k.weight.T + block.attn.k.bias  # keys: the raw input
        v = seq @ block.attn.v.weight.T + block.attn.v.bias
        outs = []
        for h in range(heads):
            part = slice(h * d // heads, (h + 1) * d // heads)
            w = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(d // heads)
            key_mask = torch.sign(seq.sum(-1).abs()).unsqueeze(1).expand_as(w)
            w = torch.where(key_mask == 0, torch.full_like(w, big), w)
            causal = torch.ones(n, n).tril().expand_as(w)
            w = torch.where(causal == 0, torch.full_like(w, big), w)
            w = torch.softmax(w, -1)
            outs.append(w @ v[..., part])
        attended = torch.cat(outs, -1) + queries  # residual from the (normalised) query
        if norm_first:
            h = _layer_norm(attended, block.ffn_norm)
            f = F.relu(h @ block.ffn.inner.weight.T + block.ffn.inner.bias)
            seq = (f @ block.ffn.outer.weight.T + block.ffn.outer.bias + h) * mask
        else:  # post-LN
            h = _layer_norm(attended, block.attn_norm)
            f = F.relu(h @ block.ffn.inner.weight.T + block.ffn.inner.bias)
            seq = _layer_norm(
                f @ block.ffn.outer.weight.T + block.ffn.outer.bias + h, block.ffn_norm
            )
            seq = seq * mask
    return _layer_norm(seq, net.last_norm)


def _left_padded(rows: list[list[int]], width: int) -> np.ndarray:
    """0-based item indices, left padded with PAD to ``width``."""
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, width - len(row) :] = row
    return out


ROWS = [[3, 7, 1, 22, 5, 9], [11, 2], [4, 4, 30, 8, 8, 19, 0, 2], [17]]


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
def test_forward_is_the_tensorflow_one(norm_first: bool, heads: int) -> None:
    params = SASRecParams(maxlen=8, hidden_units=12, num_blocks=2, num_heads=heads,
                          norm_first=norm_first, device="cpu")  # fmt: skip
    net = _random_net(params)
    items = _left_padded(ROWS, 8)
    with torch.no_grad():
        ours = net(torch.as_tensor(items))
        reference = _tf_forward(net, items + 1, norm_first)
    real = torch.as_tensor(items >= 0)
    torch.testing.assert_close(ours[real], reference[real], atol=1e-5, rtol=1e-5)
    assert torch.all(ours[~real] == 0)  # padding outputs are zero


def test_a_port_flaw_is_detected_by_the_reference() -> None:
    """The re-stated forward is sharp: keys normalised like the query (a pre-LN port), or the
    item embedding left unscaled, give other outputs."""
    params = SASRecParams(maxlen=8, hidden_units=12, num_blocks=1, device="cpu")
    net = _random_net(params)
    items = _left_padded(ROWS, 8)
    with torch.no_grad():
        ours = net(torch.as_tensor(items))
        block = net.blocks[0]
        original = block.attn.forward
        block.attn.forward = lambda q, k, allowed: original(q, block.attn_norm(k), allowed)
        all_normalised = net(torch.as_tensor(items))
        block.attn.forward = original
        net.item_emb.weight.mul_(1 / math.sqrt(12))  # as if the sqrt(d) scaling were missing
        unscaled_reference = _tf_forward(net, items + 1)
    real = torch.as_tensor(items >= 0)
    assert not torch.allclose(ours[real], all_normalised[real], atol=1e-3)
    assert not torch.allclose(ours[real], unscaled_reference[real], atol=1e-3)


def _torch_attention(block: Any, d: int) -> torch.nn.MultiheadAttention:
    """``torch.nn.MultiheadAttention`` (the ports' building block) holding ``block``'s Q/K/V
    and output weights, in eval mode."""
    mha = torch.nn.MultiheadAttention(d, block.attn.heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([block.attn.q.weight, block.attn.k.weight,
                                            block.attn.v.weight]))  # fmt: skip
        mha.in_proj_bias.copy_(torch.cat([block.attn.q.bias, block.attn.k.bias,
                                          block.attn.v.bias]))  # fmt: skip
        mha.out_proj.weight.copy_(block.attn.out.weight)
        mha.out_proj.bias.copy_(block.attn.out.bias)
    return mha.eval()


def _pmixer_forward(net: SASRecNet, items: np.ndarray) -> torch.Tensor:
    """pmixer/SASRec.pytorch's forward (commit 9f6a02b), re-stated with its own building block
    ``torch.nn.MultiheadAttention`` under a causal mask only: ``items [B, maxlen]`` 1-based,
    0 = padding on the left; the K/V/output weights are ours, so equal outputs mean the same
    network. The padding rows are never zeroed: they start at zero (item row 0, position 0)
    and every layer computes them. Returns ``[B, maxlen, D]``."""
    seq_ids = torch.as_tensor(items, dtype=torch.long)
    b, n = seq_ids.shape
    d = net.item_emb.embedding_dim
    keep = (seq_ids != 0).float().unsqueeze(-1)
    seqs = net.item_emb.weight[seq_ids] * d**0.5 + net.pos_emb.weight[torch.arange(n)] * keep
    causal = ~torch.ones(n, n, dtype=torch.bool).tril()
    for block in net.blocks:
        mha = _torch_attention(block, d)
        q = block.attn_norm(seqs)
        attended, _ = mha(q, seqs, seqs, attn_mask=causal, need_weights=False)
        h = block.ffn_norm(q + attended)
        seqs = h + block.ffn.outer(F.relu(block.ffn.inner(h)))
    return net.last_norm(seqs)


@pytest.mark.parametrize("heads", [1, 2])
def test_pmixer_variant_is_the_ports_forward(heads: int) -> None:
    """``attend_padding`` + ``out_projection`` compute the port's network (rows padded to
    ``maxlen``, the padding computed, attended and attending), whatever width the batch is
    cut to; the default does not."""
    params = SASRecParams(maxlen=10, hidden_units=12, num_heads=heads, attend_padding=True,
                          out_projection=True, device="cpu")  # fmt: skip
    net = _random_net(params)
    with torch.no_grad():
        reference = _pmixer_forward(net, _left_padded(ROWS, 10) + 1)
        for width in (8, 10):
            items = _left_padded(ROWS, width)
            ours = net(torch.as_tensor(items))
            real = torch.as_tensor(items >= 0)
            torch.testing.assert_close(
                ours[real], reference[:, 10 - width :][real], atol=1e-5, rtol=1e-5
            )
        net.port_padding = False
        items = _left_padded(ROWS, 10)
        masked = net(torch.as_tensor(items))
    real = torch.as_tensor(items >= 0)
    assert not torch.allclose(masked[real], reference[real], atol=1e-3)


def _gr_forward(net: SASRecNet, items: np.ndarray) -> torch.Tensor:
    """generative-recommenders' SASRec (``research/modeling/sequential/sasrec.py``, 2e81fab),
    re-stated with its building blocks: ``items [B, N]`` 1-based ids **right** padded with 0,
    positions ``0 .. N-1`` from the row start, ``nn.MultiheadAttention`` under a causal mask
    only, ``F.layer_norm`` without weights (eps 1e-8), the padding computed and zeroed after
    every block, no final LayerNorm, the output L2-normalised. Returns ``[B, N, D]``."""
    seq_ids = torch.as_tensor(items, dtype=torch.long)
    b, n = seq_ids.shape
    d = net.item_emb.embedding_dim
    valid = (seq_ids != 0).float().unsqueeze(-1)
    x = (net.item_emb.weight[seq_ids] * d**0.5 + net.pos_emb.weight[torch.arange(n)]) * valid
    causal = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)
    for block in net.blocks:
        mha = _torch_attention(block, d)
        q = F.layer_norm(x, (d,), eps=1e-8)
        attended, _ = mha(q, x, x, attn_mask=causal, need_weights=False)
        h = F.layer_norm(q + attended, (d,), eps=1e-8)
        x = (block.ffn.outer(F.relu(block.ffn.inner(h))) + h) * valid
    return F.normalize(x, dim=-1, eps=1e-6) * valid


GR_SETTING = dict(out_projection=True, norm_affine=False, final_norm=False,
                  positions="from_start", init="gr", l2_norm=True)  # fmt: skip


@pytest.mark.parametrize("heads", [1, 2])
def test_generative_recommenders_variant_is_their_forward(heads: int) -> None:
    """generative-recommenders' SASRec setting (``conf/generative_recommenders``) computes
    their network whatever the batch width; each of its four differences from the original
    (output projection, plain layer norms, no final LayerNorm, positions from the start)
    changes the output."""
    params = SASRecParams(maxlen=10, hidden_units=12, num_heads=heads, device="cpu", **GR_SETTING)
    net = _random_net(params)
    right = np.zeros((len(ROWS), 10), dtype=np.int64)
    for r, row in enumerate(ROWS):
        right[r, : len(row)] = np.asarray(row) + 1
    with torch.no_grad():
        reference = _gr_forward(net, right)
        for width in (8, 10):
            items = _left_padded(ROWS, width)
            ours = SASRecNet.forward(net, torch.as_tensor(items))
            ours = F.normalize(ours, dim=-1, eps=1e-6)
            for r, row in enumerate(ROWS):
                torch.testing.assert_close(ours[r, width - len(row) :], reference[r, : len(row)],
                                           atol=1e-5, rtol=1e-5)  # fmt: skip
        items = torch.as_tensor(_left_padded(ROWS, 10))
        real = items >= 0
        for change in ({"out_projection": False}, {"norm_affine": True}, {"final_norm": True},
                       {"positions": "from_end"}):  # fmt: skip
            other = _random_net(SASRecParams(maxlen=10, hidden_units=12, num_heads=heads,
                                             device="cpu", **(GR_SETTING | change)))  # fmt: skip
            out = F.normalize(other(items), dim=-1, eps=1e-6)
            gr = F.normalize(net(items), dim=-1, eps=1e-6)
            assert not torch.allclose(out[real], gr[real], atol=1e-3), change


def test_pmixer_init_is_the_ports() -> None:
    """``init="pmixer"``: xavier_normal over the port's shapes (Q/K/V stacked [3D, D]: a std
    sqrt(2) below the TF Glorot kernels), zero attention biases, default feed-forward biases
    U(+-1/sqrt(D)), zero padding row; ``"tf"``: Glorot-uniform, zero biases."""
    d, n_items = 64, 3000
    stds = {}
    for init in ("tf", "pmixer"):
        torch.manual_seed(0)
        net = SASRecNet(n_items, SASRecParams(hidden_units=d, num_blocks=2, init=init,
                                               out_projection=True, device="cpu"))  # fmt: skip
        block = net.blocks[0]
        stds[init] = float(torch.cat([block.attn.q.weight, block.attn.k.weight]).detach().std())
        assert torch.count_nonzero(net.item_emb.weight[0]) == 0
        assert torch.count_nonzero(block.attn.q.bias) == 0
        ffn_bias = block.ffn.inner.bias
        if init == "tf":
            assert torch.count_nonzero(ffn_bias) == 0
        else:
            assert bool((ffn_bias.abs() <= 1 / math.sqrt(d)).all())
            assert float(ffn_bias.abs().mean()) > 0.25 / math.sqrt(d)
            table_std = float(net.item_emb.weight[1:].std())
            assert table_std == pytest.approx(math.sqrt(2 / (n_items + 1 + d)), rel=0.05)
    assert stds["tf"] == pytest.approx(math.sqrt(2 / (2 * d)), rel=0.05)
    assert stds["pmixer"] == pytest.approx(math.sqrt(2 / (4 * d)), rel=0.05)
    with pytest.raises(ValueError, match="init must be one of"):
        SASRecParams(init="kaiming")


def test_gr_init_is_theirs() -> None:
    """``init="gr"``: pmixer's blocks, the item table truncated normal (std 0.02) and the
    position table truncated normal (std 1/sqrt(D)), both cut at two standard deviations."""
    d, n_items = 64, 3000
    torch.manual_seed(0)
    net = SASRecNet(n_items, SASRecParams(hidden_units=d, init="gr", device="cpu", **{
        k: v for k, v in GR_SETTING.items() if k != "init"}))  # fmt: skip
    items, positions = net.item_emb.weight[1:].detach(), net.pos_emb.weight.detach()
    assert torch.count_nonzero(net.item_emb.weight[0]) == 0
    for table, std in ((items, 0.02), (positions, d**-0.5)):
        assert float(table.abs().max()) <= 2 * std
        # a normal cut at 2 std has std 0.880 std
        assert float(table.std()) == pytest.approx(0.880 * std, rel=0.05)
    block = net.blocks[0]
    qk = torch.cat([block.attn.q.weight, block.attn.k.weight]).detach()
    assert float(qk.std()) == pytest.approx(math.sqrt(2 / (4 * d)), rel=0.05)
    assert not any(isinstance(m, torch.nn.LayerNorm) and m.elementwise_affine
                   for m in net.modules())  # fmt: skip
    assert isinstance(net.last_norm, torch.nn.Identity)


def test_causal_a_future_item_never_changes_a_past_output() -> None:
    net = _random_net(SASRecParams(maxlen=8, hidden_units=12, num_heads=2, device="cpu"))
    base = torch.as_tensor(_left_padded([[3, 7, 1, 22, 5, 9, 14, 2]], 8))
    with torch.no_grad():
        out = net(base)
        for t in range(7):
            changed = base.clone()
            changed[0, t + 1 :] = torch.randint(0, 40, (7 - t,))
            again = net(changed)
            torch.testing.assert_close(again[0, : t + 1], out[0, : t + 1])
            assert not torch.allclose(again[0, t + 1 :], out[0, t + 1 :])


def test_padding_is_never_attended_nor_attends() -> None:
    """A row's outputs do not depend on how much padding the batch adds (pmixer's port lets
    real positions attend the padding through the key/value biases) nor on what the other
    rows hold; positions count from the last item."""
    net = _random_net(SASRecParams(maxlen=10, hidden_units=12, device="cpu"))
    row = [5, 9, 13, 2]
    with torch.no_grad():
        alone = net(torch.as_tensor(_left_padded([row], 4)))
        padded = net(torch.as_tensor(_left_padded([row, [1] * 10], 10)))
    torch.testing.assert_close(padded[0, -4:], alone[0])
    assert torch.all(padded[0, :-4] == 0)


def _sequences(n_users: int, n_items: int, seed: int) -> pl.DataFrame:
    """Users with random item sequences (lengths 3..12), columns UserId, ItemId, Time."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 13, n_users)
    users = np.repeat(np.arange(n_users), lengths)
    items = rng.integers(0, n_items, lengths.sum()) + 100
    return pl.DataFrame({"UserId": users, "ItemId": items, "Time": np.arange(len(items))})


def test_bce_negatives_are_outside_the_users_training_items(monkeypatch) -> None:
    """The original draws each negative among the items the user never interacted with; a
    plain uniform draw (pmixer's ``random_neq`` aside, several ports) hits them often here:
    users hold up to 12 of 15 items."""
    train = _sequences(60, 15, seed=3)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = sasrec_module.uniform_negatives_excluding

    def spy(n_items, shape, user_items, generator=None, *, users=None, **kwargs):
        ids = original(n_items, shape, user_items, generator, users=users, **kwargs)
        seen.append((users.clone(), ids.clone()))
        return ids

    monkeypatch.setattr(sasrec_module, "uniform_negatives_excluding", spy)
    model = SASRec(SASRecParams(maxlen=6, hidden_units=8, num_epochs=2, batch_size=16,
                                device="cpu")).fit(train, progress=False)  # fmt: skip
    users = {u: set(g["ItemId"].to_list()) for (u,), g in train.group_by("UserId")}
    index = {int(raw): i for i, raw in enumerate(model.item_ids)}
    sequence_user = sorted(users)  # sequences are ordered by user id
    checked = 0
    for rows, ids in seen:
        for r, negatives in zip(rows.tolist(), ids.tolist(), strict=True):
            own = {index[i] for i in users[sequence_user[r]]}
            assert not own & set(negatives)
            checked += len(negatives)
    assert checked > 500


class TestSASRecBehaviour(NextItemModelBehaviour):
    min_recall_at_1 = 0.9
    batch_tolerance = 1e-6

    def make_model(self, train: pl.DataFrame) -> SASRec:
        torch.set_num_threads(1)
        params = SASRecParams(maxlen=8, hidden_units=32, num_epochs=25, lr=0.01,
                              dropout_rate=0.1, loss="ce", device="cpu")  # fmt: skip
        return SASRec(params).fit(train, progress=False)


@pytest.mark.parametrize("loss", ["bce", "ce", "sampled_softmax"])
def test_every_loss_learns_the_successor(loss: str) -> None:
    torch.set_num_threads(1)
    train = successor_sessions(30, 300, seed=1)
    test = successor_sessions(30, 60, seed=2, first_session_id=10**6)
    params = SASRecParams(maxlen=8, hidden_units=32, num_epochs=20, lr=0.01, dropout_rate=0.1,
                          loss=loss, n_negatives=8, device="cpu")  # fmt: skip
    model = SASRec(params).fit(train, progress=False)
    assert model.history[-1].loss < model.history[0].loss
    result = evaluate_last_item(model, test, user_key="SessionId", exclude_history=False)
    assert result["recall@5"] >= 0.9, (loss, dict(result))  # chance: 5 / 30


def test_popularity_negatives_with_logq_train() -> None:
    train = successor_sessions(30, 200, seed=1)
    params = SASRecParams(maxlen=8, hidden_units=16, num_epochs=3, lr=0.01, device="cpu",
                          loss="sampled_softmax", negatives="popularity", alpha=0.75,
                          logq=True, temperature=0.5, n_negatives=8)  # fmt: skip
    model = SASRec(params).fit(train, progress=False)
    losses = [h.loss for h in model.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_validation_early_stopping_and_best_epoch_restore() -> None:
    train = successor_sessions(30, 200, seed=1).rename({"SessionId": "UserId"})
    last = train.group_by("UserId").agg(pl.all().last())
    rest = train.join(last, on=["UserId", "ItemId", "Time"], how="anti")
    params = SASRecParams(maxlen=8, hidden_units=16, num_epochs=40, lr=0.05, patience=2,
                          dropout_rate=0.0, loss="ce", device="cpu")  # fmt: skip
    model = SASRec(params).fit(rest, valid=last, progress=False)
    metrics = [h.valid_metric for h in model.history]
    assert all(m is not None for m in metrics)
    assert model.best_epoch == int(np.argmax(metrics)) + 1
    assert len(model.history) < 40  # stopped early
    again = evaluate_last_item(model, rest.rename({"UserId": "SessionId"}),
                               targets=last.rename({"UserId": "SessionId"}), cutoffs=(10,),
                               user_key="SessionId")  # fmt: skip
    assert again["ndcg@10"] == pytest.approx(max(metrics))  # the best epoch's weights


def test_registry_save_load_recommend_and_fine_tune(tmp_path) -> None:
    train = successor_sessions(30, 200, seed=1)
    model = registry.create_model("sasrec", {"maxlen": 6, "hidden_units": 16, "num_epochs": 4,
                                             "lr": 0.01, "device": "cpu"})  # fmt: skip
    model.fit(train, progress=False)
    assert isinstance(model, SequenceEncoder)
    folder = model.save(tmp_path / "sasrec")
    loaded = registry.load_model(folder)
    assert isinstance(loaded, SASRec) and loaded.params == model.params
    sessions = [model.item_ids[:3].tolist(), model.item_ids[7:8].tolist()]
    np.testing.assert_array_equal(loaded.recommend(sessions, k=5).items,
                                  model.recommend(sessions, k=5).items)  # fmt: skip
    batch = SequenceBatch.from_numpy(_left_padded([[1, 2, 3], [4]], 3), np.array([3, 1]),
                                     np.full((2, 3), PAD), None, None, "left")  # fmt: skip
    torch.testing.assert_close(loaded.encode(batch, last_only=True),
                               model.encode(batch, last_only=True))  # fmt: skip
    # fine-tuning with two new items: the table grows, old rows keep their indices
    new = successor_sessions(30, 40, seed=5).with_columns(
        pl.when(pl.col("ItemId") == pl.col("ItemId").max())
        .then(99_001)
        .otherwise(pl.col("ItemId"))
        .alias("ItemId")
    )
    new = pl.concat([new, pl.DataFrame({"SessionId": [10**7] * 3, "ItemId": [99_002, 99_001,
                                        int(model.item_ids[0])], "Time": [1, 2, 3]})])  # fmt: skip
    before = loaded.net.item_emb.weight.detach().clone()
    loaded.fine_tune(new, n_epochs=2, progress=False)
    assert loaded.n_items == 32 and loaded.item_ids[-2:].tolist() == [99_001, 99_002]
    assert loaded.net.item_emb.weight.shape[0] == 33
    assert [h["epoch"] if isinstance(h, dict) else h.epoch for h in loaded.history] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert not torch.equal(loaded.net.item_emb.weight[:31].detach(), before)  # trained on
    assert torch.all(loaded.net.item_emb.weight[0] == 0)  # padding row stays zero
    top = loaded.recommend([[99_002, 99_001]], k=3)
    assert top.items.shape == (1, 3)


@pytest.mark.parametrize("positions", ["from_end", "from_start"])
def test_batched_ranks_equal_the_step_adapter(positions: str) -> None:
    """The batched last-item evaluation and the step path give the same ranks (positions from
    the end: every target is encoded with exactly its window; from the start: prefix
    consistent, one head row per sequence plus a row per target beyond ``maxlen``)."""
    train = successor_sessions(30, 150, seed=1)
    test = successor_sessions(30, 40, seed=2, first_session_id=10**6, max_len=14)
    model = SASRec(SASRecParams(maxlen=6, hidden_units=16, num_epochs=2, device="cpu",
                                positions=positions))  # fmt: skip
    assert model.prefix_consistent == (positions == "from_start")
    model.fit(train, progress=False)
    batched = evaluate_last_item(model, test, user_key="SessionId", return_ranks=True)
    step = evaluate_last_item(EncoderStepAdapter(model), test, user_key="SessionId",
                              return_ranks=True)  # fmt: skip
    assert batched.path == "batched" and step.path == "step"
    np.testing.assert_array_equal(batched.ranks, step.ranks)


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="divisible"):
        SASRecParams(hidden_units=50, num_heads=3)
    with pytest.raises(ValueError, match="loss must be one of"):
        SASRecParams(loss="bpr")
    with pytest.raises(ValueError, match="positions must be one of"):
        SASRecParams(positions="middle")
    with pytest.raises(ValueError, match="counts positions from the end"):
        SASRecParams(attend_padding=True, positions="from_start")
    with pytest.raises(ValueError, match="unknown|valid"):
        SASRecParams.from_dict({"hidden_size": 3})
    with pytest.raises(ValueError, match="row_order must be one of"):
        SASRecParams(row_order="twice")
    with pytest.raises(ValueError, match="takes no bucket"):
        SASRecParams(row_order="once", bucket=8)


def test_users_are_reshuffled_every_epoch_unless_the_ports_order_is_asked() -> None:
    """pmixer 9f6a02b's sampler shuffles the users once (its reshuffle test only runs at batch
    starts): every epoch then visits them in nearly the same order, and the port trains
    slower. Ours draws a new order every epoch; ``row_order="once"`` reproduces the port."""
    frame = pl.DataFrame(
        {"SessionId": np.repeat(np.arange(40), 3), "ItemId": np.arange(120) % 17,
         "Time": np.tile(np.arange(3), 40)}
    )  # fmt: skip
    orders = {}
    for row_order in ("epoch", "once"):
        model = SASRec(SASRecParams(maxlen=4, hidden_units=8, batch_size=16, seed=3,
                                    device="cpu", row_order=row_order))  # fmt: skip
        batcher = model._make_batcher(session_data(frame), seed=3)
        orders[row_order] = [
            [s for b in batcher.epoch(e) for s in b.sequence.tolist()] for e in (1, 2)
        ]
    first, second = orders["epoch"]
    assert sorted(first) == sorted(second) == list(range(40)) and first != second
    first, second = orders["once"]
    assert len(first) == len(second) == 48  # full batches, streamed on across epochs
    assert (first + second)[:80] == first[:40] * 2


def test_recommend_batched_equals_the_step_adapter() -> None:
    """``recommend`` queries an encoder in one forward pass per batch: same top-k as stepping
    every session through the window adapter (long sessions, unknown ids, exclude_seen)."""
    from recsys_pipeline.serving.recommend import recommend

    train = successor_sessions(30, 150, seed=1)
    model = SASRec(SASRecParams(maxlen=5, hidden_units=16, num_epochs=2, device="cpu"))
    model.fit(train, progress=False)
    ids = model.item_ids.tolist()
    sessions = [ids[:12], [ids[3]], [ids[4], 99_999, ids[9]], ids[10:13] * 3]
    for exclude in (False, True):
        batched = recommend(model, sessions, k=7, exclude_seen=exclude, batch_size=3)
        stepped = recommend(EncoderStepAdapter(model), sessions, k=7, exclude_seen=exclude)
        np.testing.assert_array_equal(batched.items, stepped.items)
        np.testing.assert_allclose(batched.scores, stepped.scores, rtol=1e-5, atol=1e-6)


def test_an_interrupted_fit_resumes_to_the_same_weights(tmp_path) -> None:
    """Killed after epoch 2 (the checkpoint of epoch 2 written), a new ``fit`` with the same
    parameters and data continues at epoch 3 and ends with the weights of an uninterrupted run
    (dropout, order and BCE negatives included)."""
    train = successor_sessions(30, 120, seed=1)
    params = SASRecParams(maxlen=6, hidden_units=16, num_epochs=4, device="cpu", seed=3)

    class Killed(Exception):
        pass

    def kill_after_epoch_2(stats) -> None:
        if stats.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        SASRec(params).fit(
            train, checkpoint_dir=tmp_path, progress=False, callback=kill_after_epoch_2
        )
    assert (tmp_path / "checkpoint.pt").exists()
    resumed = SASRec(params).fit(train, checkpoint_dir=tmp_path, progress=False)
    straight = SASRec(params).fit(train, progress=False)
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    for (name, a), b in zip(
        resumed.net.state_dict().items(), straight.net.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert not (tmp_path / "checkpoint.pt").exists()  # removed after the finished run


@pytest.mark.parametrize("option", [{"bucket": 4}, {"cpu_bf16": True}])
def test_length_buckets_and_cpu_bf16_train(option: dict) -> None:
    """Rows sorted by length within chunks of batches, and bf16 autocast on the CPU (the shared
    loop's option, on CPUs that have it): both learn the successor."""
    torch.set_num_threads(1)
    train = successor_sessions(30, 300, seed=1)
    test = successor_sessions(30, 60, seed=2, first_session_id=10**6)
    params = SASRecParams(maxlen=8, hidden_units=32, num_epochs=20, lr=0.01, dropout_rate=0.1,
                          loss="ce", device="cpu", **option)  # fmt: skip
    model = SASRec(params).fit(train, progress=False)
    result = evaluate_last_item(model, test, user_key="SessionId", exclude_history=False)
    assert result["recall@5"] >= 0.9, (option, dict(result))


def test_l2_norm_gives_cosine_scores_and_still_learns() -> None:
    """generative-recommenders' SASRec setting: L2-normalised queries and items, sampled
    softmax at temperature 0.05."""
    train = successor_sessions(20, 300, seed=1)
    params = SASRecParams(maxlen=8, hidden_units=16, num_epochs=15, loss="sampled_softmax",
                          n_negatives=16, temperature=0.05, l2_norm=True, dropout_rate=0.1,
                          lr=0.005, device="cpu", seed=1)  # fmt: skip
    model = SASRec(params).fit(train, progress=False)
    test = successor_sessions(20, 60, seed=2, first_session_id=10**6, t0=10**7)
    result = evaluate_last_item(model, test, user_key="SessionId", cutoffs=(1,))
    assert result["recall@1"] > 0.8, result
    items = np.array([[1, 2, 3], [PAD, PAD, 4]])
    batch = SequenceBatch.from_numpy(items, np.array([3, 1]), np.full_like(items, PAD), None,
                                     None, "left")  # fmt: skip
    query = model.encode(batch, last_only=True)
    torch.testing.assert_close(torch.linalg.norm(query, dim=-1), torch.ones(2))
    table = F.normalize(model._network().item_table(), dim=-1)
    torch.testing.assert_close(model.score(table[:3]), table[:3] @ table.T)
