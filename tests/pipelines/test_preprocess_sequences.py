"""`kedro run --pipelines=preprocess_sequences` end to end on synthetic data (KedroSession),
the raw_dir override, failed runs that write nothing, and the catalog factories."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml

from recsys_pipeline.datasets import RawDataError
from recsys_pipeline.datasets.sequences import read_sequences
from recsys_pipeline.pipelines.preprocess_sequences.pipeline import DATASETS
from recsys_pipeline.preprocessing import sequences as S
from recsys_pipeline.synthetic.sequences import (
    SequenceConfig,
    generate_sequences,
    write_movielens,
)
from recsys_pipeline.validation import DataValidationError
from tests.pipelines.conftest import ROOT, catalog, run

SMALL = SequenceConfig(n_users=150, n_items=60, seed=7)
SPLITS = ("loo_train", "loo_valid", "loo_test")
OUTPUTS = ("sequences", *SPLITS, "items", "seq_raw_validation", "seq_validation_report", "seq_stats",
           "seq_validation_page")  # fmt: skip
NEW_PATTERNS = {f"{{dataset}}.{name}" for name in OUTPUTS}


def files(project: Path) -> set[Path]:
    return {p for p in (project / "data").rglob("*") if p.is_file()}


def test_end_to_end_synthetic_node_and_movielens(project: Path):
    # the synthetic pipeline's node writes the pairs file of synthetic_seq
    session = {"runtime_params": {"synthetic_sequences": {"n_users": 300, "n_items": 80}}}
    run(project, "synthetic", node_names=["synthetic.generate_sequences_raw"], session=session)
    pairs = project / "data/01_raw/synthetic_seq/sequences.txt"
    params = yaml.safe_load((ROOT / "conf/base/parameters_synthetic.yml").read_text())
    config = SequenceConfig(**{**params["synthetic_sequences"], "n_users": 300, "n_items": 80})
    generated = generate_sequences(config)
    assert pairs.read_text().splitlines()[:2] == [
        f"{u} {i}" for u, i in generated.head(2).select("UserId", "ItemId").iter_rows()
    ]
    data = generate_sequences(SMALL)
    write_movielens(data, project / "data/01_raw/ml100k/u.data", "ml-100k")

    names = ["synthetic_seq", "ml100k"]  # the lines format: tests/datasets/test_sequences.py
    run(project, "preprocess_sequences", namespaces=names)
    cat = catalog(project)
    for name in names:
        params = cat.load(f"params:preprocess_sequences.{name}")
        expected = read_sequences(
            params["format"],
            project / params["raw_dir"],
            params["file"],
            **({"variant": params["variant"]} if params["format"] == "movielens" else {}),
        )
        assert cat.load(f"{name}.sequences").equals(expected), name
        loo = S.leave_one_out(expected, params["min_items"])
        for split in SPLITS:
            assert cat.load(f"{name}.{split}").equals(getattr(loo, split.removeprefix("loo_")))
        stats = cat.load(f"{name}.seq_stats")
        assert stats["has_times"] is (name == "ml100k")
        assert stats["events"] == expected.height
        assert stats["users_evaluated"] == loo.test.height == stats["splits"]["loo_valid"]["rows"]
        assert (
            stats["users_train_only"]
            == (expected.group_by("UserId").len().filter(pl.col("len") < 3).height)
            > 0
        )
        # no catalog file: the item catalogue is the items of loo_train
        items = cat.load(f"{name}.items")
        assert items.equals(loo.train.select("ItemId").unique().sort("ItemId"))
        assert stats["catalogue"] == {"items": items.height, "source": "the items of loo_train",
                                      "never_in_train": 0}  # fmt: skip
        assert cat.load(f"{name}.seq_validation_report")["success"] is True
        assert cat.load(f"{name}.seq_raw_validation")["success"] is True
    assert cat.load("ml100k.sequences").equals(data)  # epoch seconds, ties in file order
    # only the requested namespaces ran
    assert not (project / "data/05_model_input/video").exists()


def versions(project: Path) -> dict[str, list[str]]:
    out = {}
    for folder in (project / "data").glob("*/video/*"):
        out[folder.name] = sorted(p.name for p in folder.iterdir())
    return out


def test_raw_dir_override_and_failed_runs_write_nothing(project: Path, monkeypatch):
    raw = project / "elsewhere"
    raw.mkdir()
    (raw / "Video.txt").write_text("1 5\n1 6\n1 7\n2 5\n2 8\n2 9\n2 6\n3 1\n")
    override = {"runtime_params": {"preprocess_sequences": {"video": {"raw_dir": str(raw)}}}}
    run(project, "preprocess_sequences", namespaces=["video"], session=override)
    cat = catalog(project)
    assert cat.load("video.loo_test").rows() == [(1, 7, 2), (2, 6, 3)]
    assert cat.load("video.seq_stats")["parameters"]["file"] == "Video.txt"  # merged, not replaced
    before, written = versions(project), files(project)
    assert len(before) == len(OUTPUTS) and all(len(v) == 1 for v in before.values())

    def leaky(sequences: pl.DataFrame, min_items: int = 3, holdout: str = "valid_test"):
        loo = real(sequences, min_items, holdout)  # a bug: the test event also stays in train
        return S.LeaveOneOut(pl.concat([loo.train, loo.test]), loo.valid, loo.test)

    real = S.leave_one_out
    monkeypatch.setattr(S, "leave_one_out", leaky)
    with pytest.raises(DataValidationError, match="every_event_once"):
        run(project, "preprocess_sequences", namespaces=["video"], session=override)
    assert versions(project) == before and files(project) == written
    monkeypatch.setattr(S, "leave_one_out", real)

    (raw / "Video.txt").write_text("1 5\n1 6\n2 x\n")
    with pytest.raises(RawDataError, match=r"Video\.txt line 3 column 2 is not an integer"):
        run(project, "preprocess_sequences", namespaces=["video"], session=override)
    assert versions(project) == before and files(project) == written

    (raw / "Video.txt").write_text("1 5\n1 6\n2 7\n2 8\n")  # nobody has 3 events: no test
    with pytest.raises(ValueError, match=r"'loo_valid' has 0 users; 'loo_test' has 0 users .* "
                       r"of 2 users 0 have the 3 events"):  # fmt: skip
        run(project, "preprocess_sequences", namespaces=["video"], session=override)
    assert versions(project) == before and files(project) == written


def test_item_catalogue_file_and_items_outside_it(project: Path):
    data = generate_sequences(SMALL)
    raw = project / "data/01_raw/ml100k"
    write_movielens(data, raw / "u.data", "ml-100k")
    rated = sorted(data.get_column("ItemId").unique().to_list())
    unrated = [max(rated) + 1, max(rated) + 7]  # movies nobody rated
    # u.item: "id|title|...", titles in latin-1
    lines = [f"{i}|Caf\xe9 {i} (1995)|01-Jan-1995||" for i in [*rated, *unrated]]
    (raw / "u.item").write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    override = {"runtime_params": {"preprocess_sequences": {"ml100k": {"catalog": "u.item"}}}}
    run(project, "preprocess_sequences", namespaces=["ml100k"], session=override)
    cat = catalog(project)
    assert cat.load("ml100k.items").get_column("ItemId").to_list() == rated + unrated
    stats = cat.load("ml100k.seq_stats")
    train_items = cat.load("ml100k.loo_train").get_column("ItemId").n_unique()
    assert stats["catalogue"] == {"items": len(rated) + 2, "source": "u.item",
                                  "never_in_train": len(rated) + 2 - train_items}  # fmt: skip
    report = cat.load("ml100k.seq_validation_report")
    assert report["artifacts"]["items"]["success"] is True
    assert any(e["check"] == "loo_test_in_catalogue" for e in
               report["artifacts"]["loo_test"]["expectations"])  # fmt: skip

    # a catalogue that lacks a rated movie: a validation error naming the events, nothing written
    outputs = {p: p.stat().st_mtime_ns for p in files(project) if "01_raw" not in p.parts}
    before = files(project)
    missing = rated[3]
    kept = [line for line in lines if not line.startswith(f"{missing}|")]
    (raw / "u.item").write_bytes("\n".join(kept).encode("latin-1"))
    with pytest.raises(DataValidationError, match=rf"sequences_in_catalogue(.|\n)*{missing}"):
        run(project, "preprocess_sequences", namespaces=["ml100k"], session=override)
    assert files(project) == before
    assert {p: p.stat().st_mtime_ns for p in outputs} == outputs

    (raw / "u.item").write_text("1|a\nmovie 2|b\n")
    with pytest.raises(RawDataError, match=r"u\.item line 2, column 1 has no integer item id"):
        run(project, "preprocess_sequences", namespaces=["ml100k"], session=override)
    assert files(project) == before


def test_missing_raw_file_names_the_default_folder(project: Path):
    with pytest.raises(RawDataError, match=r"data/01_raw/beauty/beauty\.txt"):
        run(project, "preprocess_sequences", namespaces=["beauty"])
    assert files(project) == set()


def test_catalog_factories_do_not_clash_and_datasets_match_parameters(project: Path):
    from kedro.framework.project import pipelines

    params = yaml.safe_load((ROOT / "conf/base/parameters_preprocess_sequences.yml").read_text())
    assert tuple(params["preprocess_sequences"]) == DATASETS
    cat = catalog(project)
    resolver = cat.config_resolver
    mine = pipelines["preprocess_sequences"]
    for name in mine.datasets():
        if name.startswith("params:"):
            continue
        pattern = resolver.match_dataset_pattern(name)
        suffix = name.split(".", 1)[1]
        if suffix.startswith("unvalidated_"):
            assert pattern == "{dataset}.unvalidated_{name}", name
        else:
            assert pattern == f"{{dataset}}.{suffix}", name
    others = set().union(
        *(p.datasets() for key, p in pipelines.items() if key != "preprocess_sequences")
    )
    # other pipelines may read this pipeline's outputs (the train template reads loo_*); no
    # other dataset may fall under its patterns
    clashes = {
        n for n in others - mine.datasets() if resolver.match_dataset_pattern(n) in NEW_PATTERNS
    }
    assert clashes == set()
    assert "video.loo_train" in pipelines["train"].datasets()
    assert "synthetic.sequences_raw" in cat
    default = {n.name for n in pipelines["__default__"].nodes}
    assert "generate.synthetic.generate_sequences_raw" in default
    assert not default & {n.name for n in mine.nodes}
