"""NeuMF.fine_tune: user/item table growth, optimizer state carried or reset, save/load."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.models.neumf import NeuMF, NeuMFParams

pytestmark = pytest.mark.usefixtures("single_torch_thread")


N_USERS, N_ITEMS, N_OLD_USERS, N_OLD_ITEMS = 110, 130, 80, 95
SMALL = (
    "factors=8,layers=16/16/8,dropout=0.0,batch_size=256,n_epochs=8,learning_rate=0.01,device=cpu"
)


def make_data(seed: int = 0, per_user: int = 16) -> dict[str, pl.DataFrame]:
    """Latent-factor interactions. ``old``: old users x old items; ``new``: every other
    interaction (new users and/or new items) except the last 2 of each new user (``test``)."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(N_USERS, 4)), rng.normal(size=(N_ITEMS, 4))
    logits = 2.5 * u @ v.T
    rows = []
    for user in range(N_USERS):
        p = np.exp(logits[user] - logits[user].max())
        items = rng.choice(N_ITEMS, per_user, replace=False, p=p / p.sum())
        rows += [(user + 1000, int(i) + 5000, t) for t, i in enumerate(items)]
    frame = pl.DataFrame(rows, schema=["UserId", "ItemId", "Time"], orient="row")
    old_user = pl.col("UserId") < 1000 + N_OLD_USERS
    old_item = pl.col("ItemId") < 5000 + N_OLD_ITEMS
    last = pl.col("Time").rank("ordinal", descending=True).over("UserId") <= 2
    return {
        "old": frame.filter(old_user & old_item),
        "new": frame.filter(~(old_user & old_item) & (old_user | ~last)),
        "test": frame.filter(~old_user & last),
    }


@pytest.fixture(scope="module")
def data() -> dict[str, pl.DataFrame]:
    return make_data()


@pytest.fixture(scope="module")
def base(data: dict[str, pl.DataFrame]) -> NeuMF:
    return NeuMF(NeuMFParams.from_string(SMALL)).fit(data["old"], progress=False)


def _state(model: NeuMF) -> dict[str, torch.Tensor]:
    assert model.net is not None
    return {k: v.clone() for k, v in model.net.state_dict().items()}


def _recall(model: NeuMF, test: pl.DataFrame, k: int = 10) -> float:
    users = test["UserId"].unique().sort().to_numpy()
    ids, _ = model.recommend(users, k=k)
    hits = 0
    for user, row in zip(users, ids):
        held = set(test.filter(pl.col("UserId") == user)["ItemId"].to_list())
        hits += len(held & set(row.tolist()))
    return hits / test.height


def test_growth_keeps_old_rows_and_scores(base: NeuMF, data: dict[str, pl.DataFrame]) -> None:
    model = copy.deepcopy(base)
    before = _state(model)
    old_users = torch.arange(base.n_users)
    scores = model.score_all(old_users)
    pair_items = torch.randint(0, base.n_items, (base.n_users, 7), generator=torch.Generator().manual_seed(0))  # fmt: skip
    pair_scores = model.score(old_users, pair_items)
    opt_before = model.optimizer_state_dict()

    model.fine_tune(data["new"], n_epochs=0, progress=False)  # grow only
    new_users = np.setdiff1d(data["new"]["UserId"].unique().to_numpy(), base.user_ids)
    new_items = np.setdiff1d(data["new"]["ItemId"].unique().to_numpy(), base.item_ids)
    np.testing.assert_array_equal(model.user_ids, np.concatenate([base.user_ids, new_users]))
    np.testing.assert_array_equal(model.item_ids, np.concatenate([base.item_ids, new_items]))
    after = _state(model)
    for name, old in before.items():
        assert torch.equal(after[name][: old.shape[0]], old), name
    assert after["mf_user.weight"].shape[0] == model.n_users == N_USERS
    assert after["mlp_item.weight"].shape[0] == model.n_items == len(base.item_ids) + len(new_items)
    assert torch.equal(model.score_all(old_users)[:, : base.n_items], scores)
    assert torch.equal(model.score(old_users, pair_items), pair_scores)

    # optimizer state: old moments kept, zero rows for the new users/items, step counts kept
    opt_after = model.optimizer_state_dict()
    assert set(opt_after) == set(opt_before)
    for key, old in opt_before.items():
        new = opt_after[key]
        if key.startswith("step."):
            assert torch.equal(new, old)
            continue
        assert torch.equal(new[: old.shape[0]], old), key
        assert not new[old.shape[0] :].any(), key
    assert opt_after["exp_avg.mf_item.weight"].shape[0] == model.n_items

    # training items: the union of old and new positives
    seen = pl.concat([data["old"], data["new"]]).select("UserId", "ItemId").unique()
    for user in (base.user_ids[0], new_users[0]):
        row = int(np.flatnonzero(model.user_ids == user)[0])
        got = model.item_ids[model.train_indices[model.train_indptr[row] : model.train_indptr[row + 1]]]  # fmt: skip
        expect = seen.filter(pl.col("UserId") == user)["ItemId"].to_numpy()
        assert sorted(got.tolist()) == sorted(expect.tolist())
    assert model.fine_tune_rounds[0]["n_new_users"] == N_USERS - base.n_users


def test_new_rows_follow_the_reference_init(base: NeuMF) -> None:
    model = copy.deepcopy(base)
    model.grow(np.arange(1, 601), np.arange(1, 801), generator=torch.Generator().manual_seed(3))
    net = model.net
    assert net is not None
    for table, n_old in (
        (net.mf_user, base.n_users), (net.mlp_user, base.n_users),
        (net.mf_item, base.n_items), (net.mlp_item, base.n_items),
    ):  # fmt: skip
        rows = table.weight[n_old:].detach()
        assert abs(float(rows.mean())) < 0.001
        assert float(rows.std()) == pytest.approx(0.01, rel=0.05)
    assert net.mf_item.num_embeddings == net.n_items == base.n_items + 800
    with pytest.raises(ValueError, match="distinct and outside"):
        model.grow([base.user_ids[0]])


def test_fine_tune_learns_new_users_and_items(base: NeuMF, data: dict[str, pl.DataFrame]) -> None:
    grown = copy.deepcopy(base).fine_tune(data["new"], n_epochs=0, progress=False)
    tuned = copy.deepcopy(base).fine_tune(data["new"], n_epochs=10, progress=False)
    chance = 10 / tuned.n_items
    before, after = _recall(grown, data["test"]), _recall(tuned, data["test"])
    assert before < 2.5 * chance
    assert after > 3 * chance and after > before + 0.15
    # new items get recommended to users that like them
    ids, _ = tuned.recommend(tuned.user_ids[: base.n_users], k=10)
    assert np.isin(ids, tuned.item_ids[base.n_items :]).any()
    # history continues
    epochs = [int(r["epoch"]) for r in tuned.history]
    assert epochs == list(range(1, base.params.n_epochs + 11))


def test_carry_and_reset_differ_and_runs_are_deterministic(
    base: NeuMF, data: dict[str, pl.DataFrame]
) -> None:
    runs = {
        mode: [
            _state(
                copy.deepcopy(base).fine_tune(
                    data["new"], n_epochs=2, optimizer_state=mode, progress=False
                )
            )  # fmt: skip
            for _ in range(2)
        ]
        for mode in ("carry", "reset")
    }
    for mode in ("carry", "reset"):
        for name, value in runs[mode][0].items():
            assert torch.equal(value, runs[mode][1][name]), (mode, name)
    assert not torch.equal(runs["carry"][0]["final.weight"], runs["reset"][0]["final.weight"])
    # a whole new model under the same seed: the same result
    again = NeuMF(NeuMFParams.from_string(SMALL)).fit(data["old"], progress=False)
    again.fine_tune(data["new"], n_epochs=2, progress=False)
    for name, value in _state(again).items():
        assert torch.equal(value, runs["carry"][0][name]), name


def test_save_load_round_trip_with_optimizer(
    base: NeuMF, data: dict[str, pl.DataFrame], tmp_path
) -> None:
    model = copy.deepcopy(base).fine_tune(data["new"], n_epochs=1, progress=False)
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "optimizer.pt").exists()
    assert (tmp_path / "m" / "fine_tune.json").exists()
    stored = torch.load(tmp_path / "m" / "optimizer.pt", weights_only=True)
    assert set(stored) == set(model.optimizer_state_dict())
    loaded = NeuMF.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.user_ids, model.user_ids)
    np.testing.assert_array_equal(loaded.train_indptr, model.train_indptr)
    assert loaded.fine_tune_rounds == model.fine_tune_rounds
    for key, value in model.optimizer_state_dict().items():
        assert torch.equal(loaded.optimizer_state_dict()[key], value), key
    # the next round: identical on both (round counter, optimizer state, history)
    more = make_data(seed=1).get("old").head(300)  # known users/items only
    for m in (model, loaded):
        m.fine_tune(more, n_epochs=2, learning_rate=0.005, progress=False)
    for name, value in _state(model).items():
        assert torch.equal(value, _state(loaded)[name]), name
    assert [r["epoch"] for r in loaded.history] == [r["epoch"] for r in model.history]
    assert loaded.fine_tune_rounds == model.fine_tune_rounds
    assert model.fine_tune_rounds[-1]["round"] == 2


def test_folder_without_optimizer_needs_reset(
    base: NeuMF, data: dict[str, pl.DataFrame], tmp_path
) -> None:
    base.save(tmp_path / "old", optimizer=False)
    assert not (tmp_path / "old" / "optimizer.pt").exists()
    loaded = NeuMF.load(tmp_path / "old")
    assert loaded.optimizer_state_dict() == {}
    with pytest.raises(RuntimeError, match="optimizer_state='reset'"):
        loaded.fine_tune(data["new"], progress=False)
    loaded.fine_tune(data["new"], n_epochs=2, optimizer_state="reset", progress=False)
    reference = copy.deepcopy(base)
    reference.fine_tune(data["new"], n_epochs=2, optimizer_state="reset", progress=False)
    for name, value in _state(reference).items():
        assert torch.equal(value, _state(loaded)[name]), name
    assert loaded.optimizer_state_dict()  # now it has one


def test_unsorted_vocabulary_and_errors(base: NeuMF, data: dict[str, pl.DataFrame]) -> None:
    model = copy.deepcopy(base)
    extra = pl.DataFrame({"UserId": [7, 7, 3], "ItemId": [5000, 42, 42], "Time": [0, 1, 0]})
    model.fine_tune(extra, n_epochs=1, progress=False)
    assert model.user_ids[-2:].tolist() == [3, 7] and model.item_ids[-1] == 42
    ids, _ = model.recommend([7, 3, base.user_ids[0]], k=model.n_items - 2)
    assert not {5000, 42} & set(ids[0].tolist())
    assert 42 not in ids[1].tolist()
    with pytest.raises(ValueError, match="optimizer_state"):
        model.fine_tune(extra, optimizer_state="keep")
    with pytest.raises(ValueError, match="empty"):
        model.fine_tune(extra.head(0))
    with pytest.raises(RuntimeError, match="not trained"):
        NeuMF(NeuMFParams.from_string(SMALL)).fine_tune(extra, optimizer_state="reset")


def test_evaluation_finds_ids_of_an_unsorted_grown_vocabulary():
    """After growth with smaller new ids the vocabulary is unsorted; the shared evaluation must
    still map every known id (not drop it)."""
    from recsys_pipeline.training.interactions import _lookup  # also user_ranking's

    vocab = np.array([10, 20, 30, 5, 15])  # old ids, then appended new ones
    values = np.array([5, 10, 15, 20, 30, 7])
    assert _lookup(vocab, values).tolist() == [3, 0, 4, 1, 2, -1]
