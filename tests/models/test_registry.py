"""The model registry and the saved-folder contract: ``model.json``, legacy folders, and a tiny
model registered here that goes through train -> evaluate -> save/load -> serve with the shared
parts only (sequence batcher, loss, epoch loop, evaluation, training template, pyfunc)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch
from torch import nn

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.models import registry
from recsys_pipeline.models.base import (
    EncoderStepAdapter,
    ModelParams,
    Recommender,
    RecommendResult,
    SequenceEncoder,
    read_model_json,
    saved_params,
    write_model_json,
)
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.models.neumf import NeuMF, NeuMFParams
from recsys_pipeline.models.persistence import read_ids, write_ids
from recsys_pipeline.training.loop import LoopConfig, train_epochs
from recsys_pipeline.training.losses import full_softmax_cross_entropy
from recsys_pipeline.training.sequences import SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import sessions_from_frame
from tests.models.behaviour import successor_sessions
from tests.pipelines import conftest as pipelines_conftest

# ---------------------------------------------------------------------------- the tiny model


@dataclass
class TinyParams(ModelParams):
    """A causal bag-of-items encoder: the query at position t is the mean of the embeddings of
    the last ``maxlen`` items up to t; scores are dot products with the same table."""

    model_name: ClassVar[str] = "Tiny"

    dim: int = 16
    maxlen: int = 4
    batch_size: int = 64
    lr: float = 0.05
    n_epochs: int = 3
    seed: int = 0
    device: str = "cpu"


class TinyNet(nn.Module):
    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(n_items + 1, dim, padding_idx=0)  # row 0: PAD (-1) + 1

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` item indices (PAD = -1, left padded) -> queries ``[B, L, D]``."""
        x = self.emb(items + 1)  # [B, L, D], padding rows are zero
        valid = (items >= 0).float().unsqueeze(-1)
        return x.cumsum(1) / valid.cumsum(1).clamp_min(1.0)

    def score(self, query: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return query @ self.emb.weight[1 + start : 1 + stop].T


class Tiny(Recommender):
    kind: ClassVar[str] = "tiny_test_model"
    task: ClassVar[str] = "next_item"
    params_class: ClassVar[type[ModelParams]] = TinyParams
    padding: ClassVar[str] = "left"
    uses_times: ClassVar[bool] = False
    prefix_consistent: ClassVar[bool] = False  # a window of maxlen: a prefix is not a row

    def __init__(self, params: TinyParams | None = None) -> None:
        self.params = params or TinyParams()
        self.item_ids = np.empty(0, dtype=np.int64)
        self.net: TinyNet | None = None
        self.history: list[Any] = []

    @property
    def maxlen(self) -> int:
        return self.params.maxlen

    @property
    def device(self) -> torch.device:
        return torch.device(self.params.device)

    def fit(self, train: pl.DataFrame, valid: pl.DataFrame | None = None, **kwargs: Any) -> Self:
        data = sessions_from_frame(train)
        self.item_ids = data.item_ids
        torch.manual_seed(self.params.seed)
        self.net = TinyNet(data.n_items, self.params.dim)
        return self._train(data)

    def _train(self, data: Any) -> Self:
        p = self.params
        batcher = SequenceBatcher(
            data, batch_size=p.batch_size, maxlen=p.maxlen, padding="left", seed=p.seed
        )
        optimizer = torch.optim.Adam(self.net.parameters(), lr=p.lr)

        def loss_fn(batch: SequenceBatch) -> tuple[torch.Tensor, int]:
            queries = self.net(batch.items)
            logits = self.net.score(queries, 0, self.n_items)
            return full_softmax_cross_entropy(logits, batch.targets), batch.n_targets

        result = train_epochs(
            self.net,
            optimizer,
            batcher.epoch,
            loss_fn,
            config=LoopConfig(n_epochs=p.n_epochs, progress=False, desc="tiny"),
            device=self.device,
        )
        self.history = result.history
        return self

    def fine_tune(self, new_train: pl.DataFrame, **kwargs: Any) -> Self:
        known = new_train.filter(pl.col("ItemId").is_in(self.item_ids.tolist()))
        return self._train(sessions_from_frame(known, item_ids=self.item_ids))

    @torch.no_grad()
    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        assert batch.padding == "left"
        queries = self.net(batch.items.to(self.device))
        return queries[:, -1] if last_only else queries

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.net.score(query, start, self.n_items if stop is None else stop)

    def recommend(self, inputs: Any, k: int = 20, **kwargs: Any) -> RecommendResult:
        from recsys_pipeline.serving.recommend import recommend

        return recommend(self, inputs, k=k, **kwargs)

    def save(self, path: str | Path, *, optimizer: bool = True) -> Path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), directory / "weights.pt")
        write_model_json(directory, self)
        write_ids(directory / "item_ids.json", self.item_ids)
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> Self:
        directory = Path(path)
        model = cls(TinyParams.from_dict(saved_params(directory, cls.kind)))
        model.item_ids = read_ids(directory / "item_ids.json")
        model.net = TinyNet(len(model.item_ids), model.params.dim)
        state = torch.load(directory / "weights.pt", weights_only=True)
        model.net.load_state_dict(state)
        return model


project = pipelines_conftest.project  # the scratch Kedro project fixture


@pytest.fixture
def tiny_registered():
    registry.register(Tiny)
    yield Tiny
    registry._REGISTERED.pop(Tiny.kind, None)


# ---------------------------------------------------------------------------------- registry


def test_builtin_kinds_and_tasks():
    assert {"gru4rec", "neumf"} <= set(registry.kinds())
    assert "gru4rec" in registry.kinds("next_item") and "neumf" not in registry.kinds("next_item")
    assert registry.model_class("gru4rec") is GRU4Rec and registry.model_class("neumf") is NeuMF
    with pytest.raises(ValueError, match="unknown model 'sasrec2'; known models: .*gru4rec"):
        registry.model_class("sasrec2")


def test_register_checks_the_contract(tiny_registered):
    assert registry.model_class(Tiny.kind) is Tiny
    assert Tiny.kind in registry.kinds("next_item")
    registry.register(Tiny)  # the same class again: fine

    class Other(Tiny):
        pass

    with pytest.raises(ValueError, match="already registered"):
        registry.register(Other)
    with pytest.raises(TypeError, match="not a Recommender"):
        registry.register(dict)  # type: ignore[arg-type]

    class BadTask(Tiny):
        kind = "bad_task_model"
        task = "ranking"

    with pytest.raises(ValueError, match="task must be one of"):
        registry.register(BadTask)


def test_create_model_from_mapping_string_and_params():
    a = registry.create_model("gru4rec", {"layers": [8], "loss": "bpr-max"})
    b = registry.create_model("gru4rec", "layers=8,loss=bpr-max")
    c = registry.create_model("gru4rec", GRU4RecParams(layers=[8], loss="bpr-max"))
    assert a.params == b.params == c.params
    assert registry.create_model("neumf").params == NeuMFParams()


def test_resolve_params_defaults_then_dataset_and_flat_blocks_rejected():
    block = {"defaults": {"layers": [8], "n_epochs": 2}, "digi": {"n_epochs": 5}}
    assert registry.resolve_params(block, "digi") == {"layers": [8], "n_epochs": 5}
    assert registry.resolve_params(block, "other") == {"layers": [8], "n_epochs": 2}
    assert registry.resolve_params({"digi": {"n_epochs": 1}}, "digi") == {"n_epochs": 1}
    with pytest.raises(ValueError, match=r"\['factors'\] must go under 'defaults'"):
        registry.resolve_params({"factors": 8, "defaults": {}}, "movielens")


def test_params_base_class_round_trips():
    p = GRU4RecParams.from_string("layers=64/32,loss=bpr-max,embedding=layersize")
    assert p.embedding == 64 and GRU4RecParams.from_string(p.to_string()) == p
    assert GRU4RecParams.from_dict(p.to_dict()) == p
    assert "model_name" not in GRU4RecParams.field_names()
    with pytest.raises(ValueError, match="unknown NeuMF parameter"):
        NeuMFParams.from_dict({"colour": 1})
    assert p.study_tag() == "bpr-max-shared"


# -------------------------------------------------------------------------- saved folders


def _sessions(seed: int = 1) -> pl.DataFrame:
    return successor_sessions(40, 300, seed, min_len=2, max_len=8)


def test_model_json_is_written_and_read(tmp_path: Path):
    model = GRU4Rec(GRU4RecParams(layers=[8], n_epochs=1, n_sample=8, device="cpu"))
    folder = model.fit(_sessions(), progress=False).save(tmp_path / "m")
    record = json.loads((folder / "model.json").read_text())
    assert record["kind"] == "gru4rec" and record["task"] == "next_item"
    assert record["format_version"] == 1 and record["params"]["layers"] == [8]
    assert not (folder / "params.json").exists()
    assert registry.detect_kind(folder) == "gru4rec"
    loaded = registry.load_model(folder)
    assert isinstance(loaded, GRU4Rec) and loaded.params == model.params
    with pytest.raises(ValueError, match="a 'gru4rec' model, not 'neumf'"):
        NeuMF.load(folder)


def _legacy(folder: Path) -> None:
    """Turn a saved folder into the layout written before model.json (params.json)."""
    record = json.loads((folder / "model.json").read_text())
    (folder / "model.json").unlink()
    (folder / "params.json").write_text(json.dumps(record["params"], indent=2))


def test_folders_saved_before_model_json_still_load(tmp_path: Path):
    gru = GRU4Rec(GRU4RecParams(layers=[8], n_epochs=1, n_sample=8, device="cpu"))
    gru.fit(_sessions(), progress=False)
    g_folder = gru.save(tmp_path / "gru")
    _legacy(g_folder)
    assert read_model_json(g_folder) is None and registry.detect_kind(g_folder) == "gru4rec"
    loaded = registry.load_model(g_folder)
    q = torch.tensor([0, 1, 2])
    s1 = gru.score(gru.step(q, gru.initial_state(3))[0])
    s2 = loaded.score(loaded.step(q, loaded.initial_state(3))[0])
    assert torch.equal(s1, s2)

    ratings = _sessions().select(
        pl.col("SessionId").alias("UserId"), "ItemId", pl.col("Time").cast(pl.Int64)
    )
    neumf = NeuMF(NeuMFParams(factors=4, layers=[8, 4], n_epochs=1, batch_size=256, device="cpu"))
    n_folder = neumf.fit(ratings, progress=False).save(tmp_path / "neumf")
    _legacy(n_folder)
    assert registry.detect_kind(n_folder) == "neumf"
    users = neumf.user_ids[:3]
    assert np.array_equal(
        registry.load_model(n_folder).recommend(users).items, neumf.recommend(users).items
    )
    with pytest.raises(FileNotFoundError, match="not a saved model folder"):
        registry.detect_kind(tmp_path)


def test_bad_model_json_names_the_file(tmp_path: Path):
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model\.json: not valid JSON"):
        registry.load_model(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"params": {}}))
    with pytest.raises(ValueError, match="needs the keys 'kind' and 'params'"):
        registry.load_model(tmp_path)


@pytest.mark.parametrize("kind", ["sasrec", "bert4rec", "xlnet_mlm", "hstu", "neumf"])
def test_damaged_folders_of_every_kind_name_the_file(kind: str, tmp_path: Path):
    """Each model kind: truncated weights, a missing shape parameter, weights that do not fit,
    a missing id file, a folder that is not there: one ModelFolderError naming the file."""
    import shutil

    from recsys_pipeline.models.persistence import ModelFolderError

    small = {
        "sasrec": {"maxlen": 8, "hidden_units": 8, "num_epochs": 1, "device": "cpu"},
        "bert4rec": {"maxlen": 8, "hidden_units": 8, "inner_size": 16, "num_epochs": 1,
                     "device": "cpu"},
        "xlnet_mlm": {"maxlen": 8, "d_model": 8, "item_dim": 8, "n_layer": 1, "n_head": 2,
                      "num_epochs": 1, "device": "cpu"},
        "hstu": {"maxlen": 8, "hidden_units": 8, "dqk": 4, "dv": 4, "n_negatives": 8,
                 "num_epochs": 1, "device": "cpu"},
        "neumf": {"factors": 4, "layers": [8, 4], "n_epochs": 1, "batch_size": 256,
                  "device": "cpu"},
    }[kind]  # fmt: skip
    model = registry.create_model(kind, small)
    data = _sessions()
    if kind == "neumf":
        data = data.select(pl.col("SessionId").alias("UserId"), "ItemId", pl.col("Time"))
    folder = model.fit(data, progress=False).save(tmp_path / "m")
    shape_key = model.params.shape_fields[0]
    cls = registry.model_class(kind)

    def damaged(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        return copy

    bad = damaged("truncated")
    (bad / "weights.pt").write_bytes((folder / "weights.pt").read_bytes()[:64])
    with pytest.raises(ModelFolderError, match=r"weights\.pt: truncated"):
        registry.load_model(bad)
    bad = damaged("no_shape")
    record = json.loads((folder / "model.json").read_text())
    record["params"].pop(shape_key)
    (bad / "model.json").write_text(json.dumps(record))
    with pytest.raises(ModelFolderError, match=f"missing the parameter\\(s\\) '{shape_key}'"):
        cls.load(bad)
    bad = damaged("other_shape")
    record = json.loads((folder / "model.json").read_text())
    width = {"neumf": "factors", "xlnet_mlm": "d_model"}.get(kind, "hidden_units")
    record["params"][width] = 12
    (bad / "model.json").write_text(json.dumps(record))
    with pytest.raises(ModelFolderError, match=r"weights\.pt: the weights do not fit"):
        cls.load(bad)
    bad = damaged("no_ids")
    (bad / "item_ids.json").unlink()
    with pytest.raises(ModelFolderError, match=r"item_ids\.json: missing"):
        cls.load(bad)
    with pytest.raises(ModelFolderError, match="does not exist"):
        cls.load(tmp_path / "nowhere")
    assert cls.load(folder).item_ids.tolist() == model.item_ids.tolist()


# ------------------------------------------------- a new model: one file + one registration


def test_tiny_model_trains_evaluates_saves_loads_and_recommends(tiny_registered, tmp_path):
    train, test = _sessions(1), _sessions(2).with_columns(pl.col("SessionId") + 10_000)
    model = registry.create_model(Tiny.kind, {"n_epochs": 4}).fit(train)
    assert isinstance(model, SequenceEncoder) and len(model.history) == 4
    assert model.history[-1].loss < model.history[0].loss
    result = evaluate(model, test, progress=False, return_ranks=True)  # batched path
    adapter = evaluate(EncoderStepAdapter(model), test, progress=False, return_ranks=True)
    np.testing.assert_array_equal(result.ranks, adapter.ranks)
    assert result["recall@20"] > 0.9  # the successor is always next: easy to learn
    folder = model.save(tmp_path / "tiny")
    loaded = registry.load_model(folder)
    assert isinstance(loaded, Tiny) and loaded.params == model.params
    again = evaluate(loaded, test, progress=False, return_ranks=True)
    np.testing.assert_array_equal(result.ranks, again.ranks)
    top = loaded.recommend([[4000 + 0, 4000 + 1]], k=3)
    assert top.items.shape == (1, 3)


def test_tiny_model_through_the_training_template_and_serving(tiny_registered, project):
    """train (Kedro template, namespace synthetic.<kind>) -> evaluate (with baselines) ->
    ModelDataset save/load -> MLflow pyfunc serving, with nothing model-specific outside this
    file."""
    import mlflow
    from kedro.framework.session import KedroSession
    from kedro.runner import SequentialRunner

    from recsys_pipeline.pipelines.train.pipeline import for_pair
    from recsys_pipeline.serving.pyfunc import RecommenderPyfunc, log_pyfunc_model
    from tests.pipelines.conftest import run
    from tests.pipelines.test_train_gru4rec_pipeline import TINY

    run(project, "synthetic", session={"runtime_params": TINY})
    run(project, "preprocess_synthetic", session={"runtime_params": TINY})
    with KedroSession.create(
        project_path=project, runtime_params={Tiny.kind: {"synthetic": {"n_epochs": 2}}}
    ) as session:
        catalog = session.load_context().catalog
        pipeline = for_pair(Tiny.kind, "synthetic")
        SequentialRunner().run(pipeline, catalog)
        metrics = catalog.load(f"synthetic.{Tiny.kind}.metrics")
        model = catalog.load(f"synthetic.{Tiny.kind}.model")
        history = catalog.load(f"synthetic.{Tiny.kind}.history")
    assert set(metrics) == {Tiny.kind, "most_popular", "last_item_cooccurrence"}
    assert metrics[Tiny.kind]["n_targets"] == metrics["most_popular"]["n_targets"] > 0
    assert isinstance(model, Tiny) and [h["epoch"] for h in history] == [1, 2]
    folder = next((project / "data/06_models/synthetic" / Tiny.kind).glob(f"*/{Tiny.kind}"))
    assert json.loads((folder / "model.json").read_text())["kind"] == Tiny.kind

    session_items = [model.item_ids[:3].tolist(), model.item_ids[5:6].tolist()]
    direct = model.recommend(session_items, k=5)
    served = RecommenderPyfunc().configure(model)
    out = served.predict(None, pd.DataFrame({"session": session_items}), params={"k": 5})
    assert out["items"].tolist() == direct.items.tolist()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    info = log_pyfunc_model(model, torch_threads=1, include_code=False)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    logged = pyfunc.predict(pd.DataFrame({"session": session_items}), params={"k": 5})
    assert logged["items"].tolist() == direct.items.tolist()


def test_model_dataclass_fields_are_the_parameters():
    assert dataclasses.fields(TinyParams)[0].name == "dim"
    assert TinyParams.from_string("dim=4,maxlen=2") == TinyParams(dim=4, maxlen=2)


def test_named_kinds_reads_a_list_or_names_joined_by_plus_or_spaces() -> None:
    assert registry.named_kinds("gru4rec+sasrec") == ["gru4rec", "sasrec"]
    assert registry.named_kinds("gru4rec sasrec + hstu") == ["gru4rec", "sasrec", "hstu"]
    assert registry.named_kinds("bert4rec") == ["bert4rec"]
    assert registry.named_kinds(("xlnet_mlm", "hstu")) == ["xlnet_mlm", "hstu"]
