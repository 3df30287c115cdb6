"""NeuMF / GMF / MLP: parameters, learning on a latent-factor dataset, save/load, pretraining."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation.user_baselines import UserCooccurrence, UserPopularity
from recsys_pipeline.evaluation.user_ranking import full_ranking, sampled_ranking
from recsys_pipeline.models.neumf import NeuMF, NeuMFNetwork, NeuMFParams

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_ncf_data(
    n_users: int = 120, n_items: int = 160, per_user: int = 14, n_neg: int = 100, seed: int = 0
) -> dict[str, pl.DataFrame]:
    """Latent-factor interactions split as NCF: last event per user -> test, one before -> valid,
    ``n_neg`` negatives per user among the items the user never interacted with."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n_users, 4))
    v = rng.normal(size=(n_items, 4))
    logits = 2.0 * u @ v.T + 0.3 * rng.normal(size=(n_users, n_items))
    rows, negs = [], []
    for user in range(n_users):
        p = np.exp(logits[user] - logits[user].max())
        items = rng.choice(n_items, per_user, replace=False, p=p / p.sum())
        rows += [(user + 1000, int(i) + 5000, t) for t, i in enumerate(items)]
        unrated = np.setdiff1d(np.arange(n_items), items)
        negs += [(user + 1000, int(i) + 5000) for i in rng.choice(unrated, n_neg, replace=False)]
    frame = pl.DataFrame(rows, schema=["UserId", "ItemId", "Time"], orient="row")
    rank = pl.col("Time").rank("ordinal", descending=True).over("UserId")
    negatives = pl.DataFrame(negs, schema=["UserId", "ItemId"], orient="row")
    return {
        "train": frame.filter(rank > 2),
        "valid": frame.filter(rank == 2),
        "test": frame.filter(rank == 1),
        "valid_negatives": negatives,
        "test_negatives": negatives,
    }


SMALL = (
    "factors=8,layers=16/16/8,dropout=0.0,batch_size=256,n_epochs=12,learning_rate=0.01,device=cpu"
)


@pytest.fixture(scope="module")
def data() -> dict[str, pl.DataFrame]:
    return make_ncf_data()


@pytest.fixture(scope="module")
def trained(data: dict[str, pl.DataFrame]) -> NeuMF:
    params = NeuMFParams.from_string(SMALL)
    return NeuMF(params).fit(data["train"], data["valid"], data["valid_negatives"], progress=False)


def test_params_from_string_and_errors() -> None:
    p = NeuMFParams.from_string("model=gmf,factors=16,layers=32/16,threshold=0.9")
    assert (p.model, p.factors, p.layers, p.threshold) == ("gmf", 16, [32, 16], 0.9)
    assert NeuMFParams.from_string(p.to_string()) == p
    assert NeuMFParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="valid names: model, factors"):
        NeuMFParams.from_dict({"factor": 3})
    with pytest.raises(ValueError, match="model must be one of"):
        NeuMFParams(model="ncf")
    with pytest.raises(ValueError, match="first even"):
        NeuMFParams(layers=[15, 8])


def test_defaults_are_the_reference_ones() -> None:
    p = NeuMFParams()
    assert (p.factors, p.layers, p.dropout, p.negative_samples) == (64, [256, 256, 128, 64], 0.5, 4)
    assert (p.learning_rate, p.beta1, p.beta2, p.eps) == (0.0045, 0.25, 0.5, 1e-8)


def test_init_statistics() -> None:
    net = NeuMFNetwork(500, 400, NeuMFParams(factors=64))
    net.reset_parameters(torch.Generator().manual_seed(0))
    assert abs(net.mf_user.weight.std().item() - 0.01) < 1e-3
    w = net.mlp[0].weight  # Glorot uniform: bound sqrt(6 / (fan_in + fan_out))
    assert w.abs().max().item() <= np.sqrt(6 / (256 + 256)) + 1e-6
    assert net.final.bias.item() == 0.0


@pytest.mark.parametrize("kind", ["neumf", "gmf", "mlp"])
def test_score_all_matches_pairwise_score(kind: str, data: dict[str, pl.DataFrame]) -> None:
    model = NeuMF(NeuMFParams.from_string(SMALL), model=kind, n_epochs=1, dropout=0.5)
    model.fit(data["train"], progress=False)
    users = torch.tensor([0, 3, 7])
    full = model.score_all(users)
    assert full.shape == (3, model.n_items)
    items = torch.arange(model.n_items).unsqueeze(0).expand(3, -1)
    torch.testing.assert_close(full, model.score(users, items), rtol=1e-5, atol=1e-5)


def test_learns_and_beats_popularity(trained: NeuMF, data: dict[str, pl.DataFrame]) -> None:
    losses = [h["loss"] for h in trained.history]
    assert losses[-1] < losses[0]
    assert "sampled100_hr@10" in trained.history[-1]
    pop = UserPopularity().fit(data["train"])
    args = (data["test"], data["test_negatives"])
    s_model = sampled_ranking(trained, *args)["sampled100_hr@10"]
    s_pop = sampled_ranking(pop, *args)["sampled100_hr@10"]
    exclude = [data["train"], data["valid"]]
    f_model = full_ranking(trained, data["test"], exclude, progress=False)["recall@10"]
    f_pop = full_ranking(pop, data["test"], exclude, progress=False)["recall@10"]
    assert s_model > s_pop + 0.05, (s_model, s_pop)
    assert f_model > f_pop + 0.03, (f_model, f_pop)
    cooc = UserCooccurrence().fit(data["train"])
    assert full_ranking(cooc, data["test"], exclude, progress=False)["recall@10"] > 0


def test_deterministic_under_seed(data: dict[str, pl.DataFrame]) -> None:
    params = NeuMFParams.from_string(SMALL + ",n_epochs=2,dropout=0.3,negative_mode=exact")
    a = NeuMF(params).fit(data["train"], progress=False)
    b = NeuMF(params).fit(data["train"], progress=False)
    users = torch.arange(5)
    assert torch.equal(a.score_all(users), b.score_all(users))


def test_grad_accumulation_runs(data: dict[str, pl.DataFrame]) -> None:
    model = NeuMF(NeuMFParams.from_string(SMALL), n_epochs=2, grad_accumulation=3)
    model.fit(data["train"], progress=False)
    assert model.history[1]["loss"] < model.history[0]["loss"]


def test_early_stop_at_threshold(data: dict[str, pl.DataFrame]) -> None:
    model = NeuMF(NeuMFParams.from_string(SMALL), threshold=0.0)
    model.fit(data["train"], data["valid"], data["valid_negatives"], progress=False)
    assert len(model.history) == 1


def test_nan_loss_raises(data: dict[str, pl.DataFrame]) -> None:
    model = NeuMF(NeuMFParams.from_string(SMALL), learning_rate=1e30, n_epochs=3)
    with pytest.raises(FloatingPointError, match="non-finite"):
        model.fit(data["train"], progress=False)
    assert model.net is None


def test_save_load_round_trip(trained: NeuMF, tmp_path) -> None:
    trained.save(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"weights.pt", "model.json", "user_ids.json", "item_ids.json", "history.json"} <= names
    loaded = NeuMF.load(tmp_path / "m")
    users = torch.arange(10)
    assert torch.equal(loaded.score_all(users), trained.score_all(users))
    np.testing.assert_array_equal(loaded.item_ids, trained.item_ids)
    assert loaded.history == trained.history
    ids, _ = loaded.recommend(trained.user_ids[:3], k=5)
    assert ids.shape == (3, 5)


def test_recommend_excludes_training_items(trained: NeuMF, data: dict[str, pl.DataFrame]) -> None:
    users = trained.user_ids[:4]
    ids, scores = trained.recommend(users, k=20)
    assert np.all(np.diff(scores, axis=1) <= 0)
    train = data["train"]
    for user, row in zip(users, ids):
        seen = set(train.filter(pl.col("UserId") == user)["ItemId"].to_list())
        assert not seen & set(row.tolist())
    with pytest.raises(ValueError, match="not in the training data"):
        trained.recommend([123456789])


def test_pretraining_uses_submodel_weights(data: dict[str, pl.DataFrame]) -> None:
    base = NeuMFParams.from_string(SMALL + ",n_epochs=1")
    gmf = NeuMF(base, model="gmf").fit(data["train"], progress=False)
    mlp = NeuMF(base, model="mlp").fit(data["train"], progress=False)
    # check the initialisation itself: train 1 epoch with a tiny learning rate
    neumf = NeuMF(base, learning_rate=1e-12).fit(
        data["train"], pretrained=(gmf, mlp), progress=False
    )
    net, g, m = neumf.net, gmf.net, mlp.net
    torch.testing.assert_close(net.mf_user.weight, g.mf_user.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(net.mlp_item.weight, m.mlp_item.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(net.mlp[1].weight, m.mlp[1].weight, atol=1e-6, rtol=0)
    f = base.factors
    torch.testing.assert_close(net.final.weight[:, :f], 0.5 * g.final.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(net.final.weight[:, f:], 0.5 * m.final.weight, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="needs model=neumf"):
        NeuMF(base).fit(data["train"], pretrained=(mlp, gmf), progress=False)
