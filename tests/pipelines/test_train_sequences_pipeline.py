"""The training template on a user-sequence dataset (leave-one-out, last-item protocol):
synthetic sequences -> preprocess_sequences -> train (SASRec, BERT4Rec, XLNet-MLM and GRU4Rec through
the same template) -> metrics under every protocol, model, report, top-k."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tests.pipelines.conftest import catalog, run

SMALL = {
    "synthetic_sequences": {"n_users": 300, "n_items": 300},
    "sequence_evaluation": {
        "protocols": ["full", "full_with_history", "sampled", "generative_recommenders"]
    },
    "sasrec": {"synthetic_seq": {"num_epochs": 2, "maxlen": 10, "hidden_units": 16}},
    "bert4rec": {"synthetic_seq": {"num_epochs": 2, "maxlen": 10, "hidden_units": 16}},
    "xlnet_mlm": {"synthetic_seq": {"num_epochs": 2, "maxlen": 10, "d_model": 16, "n_head": 2}},
    "hstu": {"synthetic_seq": {"num_epochs": 2, "maxlen": 10, "hidden_units": 16}},
    "gru4rec": {
        "synthetic_seq": {"layers": [16], "n_epochs": 1, "n_sample": 16, "batch_size": 16}
    },  # fmt: skip
}


@pytest.fixture
def prepared(project: Path) -> Path:
    session = {"runtime_params": SMALL}
    run(project, "synthetic", node_names=["synthetic.generate_sequences_raw"], session=session)
    run(project, "preprocess_sequences", namespaces=["synthetic_seq"], session=session)
    return project


def test_every_next_item_model_on_a_sequence_dataset(prepared: Path):
    run(prepared, "train", namespaces=["synthetic_seq"], session={"runtime_params": SMALL})
    cat = catalog(prepared)
    test = cat.load("synthetic_seq.loo_test")
    train = cat.load("synthetic_seq.loo_train")
    for kind in ("sasrec", "bert4rec", "xlnet_mlm", "hstu", "gru4rec"):
        metrics = cat.load(f"synthetic_seq.{kind}.metrics")
        assert set(metrics) == {kind, "most_popular", "last_item_cooccurrence"}
        for values in metrics.values():
            for label in ("full_hist_excluded", "full_hist_included", "legacy"):
                # every evaluated user is one target (unless its test item is unknown to the
                # model); users too short to split never are
                scored, unknown = values[f"{label}.n_targets"], values[f"{label}.n_unknown_targets"]
                assert scored + unknown == test.height and scored > 0.9 * test.height
            assert (
                0 <= values["full_hist_excluded.ndcg@10"] <= values["full_hist_excluded.recall@10"]
            )
            assert "legacy.sampled100_hr@10" in values
            # generative-recommenders' protocol: window exclusion, capped ranks
            assert values["gr.n_targets"] == values["full_hist_excluded.n_targets"]
            assert 0 <= values["gr.ndcg@10"] <= values["gr.hr@10"] <= values["gr.hr@20"]
            assert values["gr.mrr"] >= values["gr.mrr_exact"] > 0
        model = cat.load(f"synthetic_seq.{kind}.model")
        assert model.kind == kind
        assert set(model.item_ids.tolist()) == set(train["ItemId"].to_list())
        history = cat.load(f"synthetic_seq.{kind}.history")
        assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
        top = cat.load(f"synthetic_seq.{kind}.recommendations")
        assert top["SessionId"].n_unique() == train["UserId"].n_unique()
        assert top.group_by("SessionId").len()["len"].unique().to_list() == [20]
    # the cooccurrence baseline on a first-order Markov chain beats popularity
    base = cat.load("synthetic_seq.sasrec.metrics")
    assert (
        base["last_item_cooccurrence"]["full_hist_excluded.recall@10"]
        > base["most_popular"]["full_hist_excluded.recall@10"]
    )


def test_early_stopping_uses_the_validation_items(prepared: Path):
    params = {**SMALL, "sasrec": {"synthetic_seq": {**SMALL["sasrec"]["synthetic_seq"],
                                                    "num_epochs": 3, "patience": 1}}}  # fmt: skip
    run(prepared, "train", namespaces=["synthetic_seq.sasrec"], session={"runtime_params": params})
    history = catalog(prepared).load("synthetic_seq.sasrec.history")
    assert all("valid_metric" in h for h in history)
    assert pl.Series([h["valid_metric"] for h in history]).is_between(0, 1).all()


SMALL_FIXED = {
    "sasrec": {"maxlen": 10, "hidden_units": 16},
    "bert4rec": {"maxlen": 10, "hidden_units": 16, "inner_size": 32},
    "xlnet_mlm": {"maxlen": 10, "d_model": 16, "item_dim": 16, "n_head": 2},
    "hstu": {"maxlen": 10, "hidden_units": 16, "dqk": 8, "dv": 8, "n_negatives": 16},
}


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec", "xlnet_mlm", "hstu"])
def test_tune_a_sequence_model_on_a_sequence_dataset(prepared: Path, kind: str):
    """``tune.model=<kind>`` with its search space on leave-one-out splits: trials scored with
    the last-item protocol on the validation items (every epoch, history excluded), the best
    configuration retrained and evaluated on the test items under every protocol, next to the
    baselines."""
    from kedro.framework.session import KedroSession

    from recsys_pipeline.pipelines.preprocess_sequences.pipeline import SPLITS

    train, valid, test = SPLITS
    tune = {
        "dataset": "synthetic_seq",
        "model": kind,
        "space": str(Path(__file__).resolve().parents[2] / f"conf/base/paramspaces/{kind}.json"),
        "splits": {"train": train, "valid": valid, "full": train, "test": test},
        "n_trials": 2,
        "fixed": {"num_epochs": 2, "device": "cpu", **SMALL_FIXED[kind]},
        "metric": "ndcg",
        "cutoff": 10,
        "pruner": "none",
        "num_threads": 1,
        "sampler_seed": 1,
        "study_name": f"{kind}-{prepared.name}",
    }
    runtime = {**SMALL, "tune": tune}
    run(prepared, "tune", session={"runtime_params": runtime})
    with KedroSession.create(project_path=prepared, runtime_params=runtime) as session:
        cat = session.load_context().catalog
    best = cat.load("tune.best_params")
    assert best["model"] == kind and best["trials"] == {"COMPLETE": 2}
    assert best["metric"] == "ndcg@10" and 0 < best["value"] <= 1
    assert cat.load("tune.trials")["epochs_reported"].to_list() == [2, 2]
    metrics = cat.load("tune.metrics")
    assert set(metrics) == {kind, "most_popular", "last_item_cooccurrence"}
    assert "full_hist_excluded.ndcg@10" in metrics[kind]
    model = cat.load("tune.model")
    assert model.kind == kind and model.params.lr == best["params"]["lr"]


def test_generative_recommenders_environment(project: Path):
    """``--env generative_recommenders``: their SASRec configuration for ``ml1m`` (on top of
    conf/base, deep-merged), ``holdout: test`` and the ``gr.*`` protocol; the same setting on
    the synthetic data trains on every item but the last and reports ``gr.*`` metrics; early
    stopping without validation items is a clear error."""
    from kedro.framework.session import KedroSession

    from recsys_pipeline.models.registry import create_model, resolve_params
    from recsys_pipeline.pipelines.preprocess_sequences.pipeline import SPLITS

    env = "generative_recommenders"
    with KedroSession.create(project_path=project, env=env) as session:
        params = session.load_context().params
    assert params["preprocess_sequences"]["ml1m"]["holdout"] == "test"
    assert params["preprocess_sequences"]["ml1m"]["format"] == "movielens"  # base kept
    assert params["preprocess_sequences"]["ml1m"]["catalog"] == "movies.dat"
    assert params["sequence_evaluation"]["protocols"][0] == "generative_recommenders"
    gr = resolve_params(params["sasrec"], "ml1m")
    model = create_model("sasrec", {k: v for k, v in gr.items() if k != "num_threads"})
    p = model.params
    assert (p.maxlen, p.hidden_units, p.num_blocks, p.num_heads, p.dropout_rate) == (
        200, 50, 2, 1, 0.2)  # fmt: skip
    assert (p.loss, p.n_negatives, p.temperature, p.l2_norm) == ("sampled_softmax", 128, 0.05, True)
    assert (p.out_projection, p.norm_affine, p.final_norm, p.positions, p.init) == (
        True, False, False, "from_start", "gr")  # fmt: skip
    assert model.prefix_consistent

    setting = {k: gr[k] for k in ("loss", "l2_norm", "out_projection", "norm_affine",
                                  "final_norm", "positions", "init", "temperature")}  # fmt: skip
    # an item catalogue with 5 ids nobody interacted with (as movies.dat's never-rated movies)
    small = {**SMALL, "preprocess_sequences": {"synthetic_seq": {"holdout": "test",
                                                                 "catalog": "items.txt"}},
             "sasrec": {"synthetic_seq": {**SMALL["sasrec"]["synthetic_seq"], **setting,
                                          "n_negatives": 16}}}  # fmt: skip
    session = {"env": env, "runtime_params": small}
    run(project, "synthetic", node_names=["synthetic.generate_sequences_raw"], session=session)
    raw = project / "data/01_raw/synthetic_seq"
    pairs = (raw / "sequences.txt").read_text().splitlines()
    seen = sorted({int(line.split()[1]) for line in pairs})
    catalogue = [*seen, *range(max(seen) + 1, max(seen) + 6)]
    (raw / "items.txt").write_text("".join(f"{i}\n" for i in catalogue))
    run(project, "preprocess_sequences", namespaces=["synthetic_seq"], session=session)
    run(project, "train", namespaces=["synthetic_seq.sasrec"], session=session)
    with KedroSession.create(project_path=project, env=env) as s:
        cat = s.load_context().catalog
    sequences = cat.load("synthetic_seq.sequences")
    train, valid, test = (cat.load(f"synthetic_seq.{n}") for n in SPLITS)
    assert valid.height == 0 and train.height + test.height == sequences.height
    assert cat.load("synthetic_seq.seq_validation_report")["holdout"] == "test"
    metrics = cat.load("synthetic_seq.sasrec.metrics")["sasrec"]
    # every test item is in the catalogue: none unknown, all ranked against the 5 unseen ids too
    assert metrics["gr.n_targets"] == test.height and metrics["gr.n_unknown_targets"] == 0
    assert 0 < metrics["gr.ndcg@10"] <= metrics["gr.hr@10"]
    trained = cat.load("synthetic_seq.sasrec.model")
    assert trained.params.positions == "from_start"
    assert trained.item_ids.tolist() == catalogue
    assert cat.load("synthetic_seq.items").get_column("ItemId").to_list() == catalogue
    stopping = {**small, "sasrec": {"synthetic_seq": {**small["sasrec"]["synthetic_seq"],
                                                      "patience": 1}}}  # fmt: skip
    with pytest.raises(Exception, match="needs validation items"):
        run(project, "train", namespaces=["synthetic_seq.sasrec"],
            session={"env": env, "runtime_params": stopping})  # fmt: skip


def test_item_catalogue_reaches_the_models_that_take_one():
    """The train node gives the dataset's item catalogue to ``fit(item_ids=...)``; GRU4Rec,
    whose item table is its training items, refuses a catalogue with other items and trains
    as before on one that holds exactly its training items."""
    from recsys_pipeline.pipelines.train.sequence_nodes import train_sequence_model

    train = pl.DataFrame({"UserId": [1, 1, 1, 2, 2, 2], "ItemId": [5, 6, 7, 6, 7, 8],
                          "Time": [0, 1, 2, 0, 1, 2]})  # fmt: skip
    valid = train.clear()
    catalogue = pl.DataFrame({"ItemId": [5, 6, 7, 8, 9, 10]})
    block = {"defaults": {**SMALL["sasrec"]["synthetic_seq"], "num_epochs": 1}}
    model, _, _ = train_sequence_model(train, valid, catalogue, block, kind="sasrec", dataset="d")
    assert model.item_ids.tolist() == [5, 6, 7, 8, 9, 10]
    gru = {"defaults": SMALL["gru4rec"]["synthetic_seq"]}
    with pytest.raises(ValueError, match=r"gru4rec on d: the item catalogue holds 2 item\(s\) "
                       r"that never occur in the training data \(first: \[9, 10\]\)"):  # fmt: skip
        train_sequence_model(train, valid, catalogue, gru, kind="gru4rec", dataset="d")
    model, _, _ = train_sequence_model(
        train, valid, catalogue.head(4), gru, kind="gru4rec", dataset="d"
    )
    assert model.item_ids.tolist() == [5, 6, 7, 8]
