"""XLNet-MLM (Transformers4Rec style): the input block and head as the reference composes them,
the masking rules, evaluation masked in place vs inference appended (and their agreement on
the same input), padding never attended unless asked, padding never a candidate, tied output,
label smoothing on masked positions only; the shared behavioural tests, persistence and
fine-tuning with item growth."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models import registry
from recsys_pipeline.models.xlnet_mlm import XLNetMLM, XLNetMLMNet, XLNetMLMParams
from recsys_pipeline.training.sequences import PAD, SequenceBatch
from recsys_pipeline.training.session_iterator import sessions_from_frame
from tests.models.behaviour import (
    NextItemModelBehaviour,
    assert_same_outputs_and_gradients,
    successor_sessions,
)

SMALL = dict(maxlen=8, d_model=16, item_dim=24, n_layer=2, n_head=2, device="cpu")


def _net(attend_padding: bool = False, seed: int = 0) -> XLNetMLMNet:
    torch.manual_seed(seed)
    return XLNetMLMNet(40, XLNetMLMParams(**SMALL, attend_padding=attend_padding)).eval()


def _right_padded(rows: list[list[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for r, row in enumerate(rows):
        out[r, : len(row)] = torch.as_tensor(row)
    return out


def test_input_block_and_head_compose_as_the_reference() -> None:
    """embedding -> dropout -> LayerNorm -> Linear -> ReLU -> mask vector -> XLNet (inputs_embeds,
    padding masked) -> Linear back to the table width; scores = z . table (no bias, no padding
    row)."""
    net = _net()
    items = _right_padded([[3, 7, 1, 22], [11, 2]], 4)
    mask = torch.zeros_like(items, dtype=torch.bool)
    mask[0, 3] = True
    with torch.no_grad():
        ours = net(items, mask)
        x = net.item_emb.weight[(items + 1).clamp(min=0)]
        x = F.relu(F.linear(F.layer_norm(x, (24,), net.in_norm.weight, net.in_norm.bias),
                            net.project.weight, net.project.bias))  # fmt: skip
        x = torch.where(mask.unsqueeze(-1), net.mask_vector, x)
        h = net.xlnet(inputs_embeds=x, attention_mask=(items >= 0).float()).last_hidden_state
        expected = h @ net.out.weight.T + net.out.bias
        model = XLNetMLM(XLNetMLMParams(**SMALL))
        model.net = net
        scores = model.score(ours[0, 3:4])
    torch.testing.assert_close(ours[0], expected[0])
    torch.testing.assert_close(ours[1, :2], expected[1, :2])
    assert scores.shape == (1, 40)  # items only: the padding row is no candidate
    torch.testing.assert_close(scores, ours[0, 3:4] @ net.item_emb.weight[1:].T)


def test_rows_grouped_by_length_give_the_one_call_outputs_and_gradients() -> None:
    """The transformer runs once per group of similar-length rows, each cut to its width: the
    real positions' outputs and every gradient are those of one call over the whole padded
    batch (padding masked)."""
    net = _net()
    rows = [[3], [7, 1, 22], [5, 9, 13, 2, 8], list(range(1, 10)), list(range(2, 18)), [4, 6]]
    items = _right_padded(rows, 16)
    mask = torch.zeros_like(items, dtype=torch.bool)
    mask[2, 4] = True
    mask[3, 0] = True
    real = (items >= 0) | mask
    grouped = net(items, mask)
    x = F.relu(net.project(net.in_norm(net.item_emb((items + 1).clamp(min=0)))))
    x = torch.where(mask.unsqueeze(-1), net.mask_vector, x)
    h = net.xlnet(inputs_embeds=x, attention_mask=real.float()).last_hidden_state
    one_call = net.out(h)
    assert_same_outputs_and_gradients(net, grouped, one_call, real)


def test_padding_is_not_attended_unless_asked() -> None:
    row = [5, 9, 13, 2]
    for attend, invariant in ((False, True), (True, False)):
        net = _net(attend_padding=attend)
        no_mask = torch.zeros(1, 4, dtype=torch.bool)
        with torch.no_grad():
            alone = net(_right_padded([row], 4), no_mask)
            wide = net(_right_padded([row], 8), torch.zeros(1, 8, dtype=torch.bool))
        same = torch.allclose(alone[0], wide[0, :4], atol=1e-5)
        assert same == invariant, attend


def test_bidirectional_a_later_item_changes_an_earlier_output() -> None:
    net = _net()
    no_mask = torch.zeros(1, 4, dtype=torch.bool)
    with torch.no_grad():
        a = net(_right_padded([[5, 9, 13, 2]], 4), no_mask)
        b = net(_right_padded([[5, 9, 13, 30]], 4), no_mask)
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-5)


def test_masking_rules_at_least_one_never_all_no_single_item_rows() -> None:
    rows = [[1, 2], [3, 4, 5], [6], list(range(7, 27))]
    frame = pl.DataFrame(
        {"SessionId": [s for s, r in enumerate(rows) for _ in r],
         "ItemId": [i for r in rows for i in r],
         "Time": list(range(sum(map(len, rows))))}
    )  # fmt: skip
    data = sessions_from_frame(frame)
    model = XLNetMLM(XLNetMLMParams(**SMALL, mlm_probability=0.3, batch_size=8))
    batcher = model._make_batcher(data, seed=1)
    assert batcher.n_rows == 3  # the one-item session gives no row
    for epoch in range(1, 30):
        for batch in batcher.epoch(epoch):
            selected = (batch.targets != PAD).sum(1)
            assert torch.all(selected >= 1) and torch.all(selected < batch.lengths)
            assert torch.equal(batch.mask, batch.targets != PAD)  # every selected one masked
            assert batch.items.shape[1] <= 8  # the last maxlen items


def _model(**overrides) -> XLNetMLM:
    params = dict(maxlen=8, d_model=32, item_dim=48, n_layer=2, n_head=4, num_epochs=20,
                  lr=0.005, batch_size=64, device="cpu")  # fmt: skip
    return XLNetMLM(XLNetMLMParams(**(params | overrides)))


def test_evaluation_masks_in_place_and_agrees_with_recommend() -> None:
    """Evaluating ``[a, b, c, t]`` masks ``t`` in place; ``recommend([a, b, c])`` appends the
    mask after ``c``: the same input, the same scores. The target never shows: another target
    gets the rank of its own score under the same query."""
    torch.set_num_threads(1)
    model = _model(num_epochs=2).fit(successor_sessions(20, 100, seed=1), progress=False)
    ids = model.item_ids[[3, 5, 7]].tolist()
    result = model.recommend([ids], k=model.n_items)
    scores = dict(zip(result.items[0].tolist(), result.scores[0].tolist(), strict=True))
    for target in (model.item_ids[9], model.item_ids[12], ids[0]):
        frame = pl.DataFrame({"SessionId": [1] * 4, "ItemId": ids + [target], "Time": range(4)})
        r = evaluate_last_item(model, frame, user_key="SessionId", cutoffs=(50,),
                               exclude_history=False)  # fmt: skip
        rank = 1 + sum(v > scores[target] for v in scores.values())
        assert r["mrr@50"] == pytest.approx(1 / rank)
        assert r.mask == "last"


def test_loss_is_label_smoothed_ce_at_masked_positions_only() -> None:
    torch.manual_seed(0)
    model = XLNetMLM(XLNetMLMParams(**SMALL, label_smoothing=0.6, input_dropout=0.0))
    model.net = _net()
    items = _right_padded([[3, 7, 1, 22], [11, 2, 5]], 4)
    mask = torch.zeros_like(items, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = True
    targets = torch.full_like(items, PAD)
    targets[0, 1], targets[1, 2] = 7, 5
    batch = SequenceBatch(items=items, lengths=(items >= 0).sum(1), targets=targets, times=None,
                          mask=mask, padding="right")  # fmt: skip
    loss, n = model._loss_function(model.net, torch.Generator(), (None, None), None)(batch)  # type: ignore[arg-type]
    z = model.net(items, mask)
    logits = torch.stack([z[0, 1], z[1, 2]]) @ model.net.item_emb.weight[1:].T
    expected = F.cross_entropy(logits, torch.tensor([7, 5]), label_smoothing=0.6)
    assert n == 2
    torch.testing.assert_close(loss, expected)


class TestXLNetMLMBehaviour(NextItemModelBehaviour):
    min_recall_at_1 = 0.5
    batch_tolerance = 1e-5

    def make_model(self, train: pl.DataFrame) -> XLNetMLM:
        torch.set_num_threads(1)
        return _model().fit(train, progress=False)


def test_registry_save_load_and_fine_tune_with_growth(tmp_path) -> None:
    torch.set_num_threads(1)
    model = registry.create_model("xlnet_mlm", _model(num_epochs=2).params.to_dict())
    model.fit(successor_sessions(20, 100, seed=1), progress=False)
    loaded = registry.load_model(model.save(tmp_path / "m"))
    ids = model.item_ids[:3].tolist()
    a, b = model.recommend([ids], k=5), loaded.recommend([ids], k=5)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    n_before = loaded.n_items
    loaded.fine_tune(successor_sessions(25, 40, seed=3, first_session_id=10**5), n_epochs=1,
                     progress=False)  # fmt: skip
    assert loaded.n_items == n_before + 5
    assert loaded.optimizer_state_dict()["exp_avg.item_emb.weight"].shape[0] == n_before + 6


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="divisible.*mlm_probability"):
        XLNetMLMParams(d_model=30, n_head=8, mlm_probability=1.0)
