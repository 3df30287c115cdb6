"""Every pipeline end to end on synthetic data through a KedroSession, versioning, failures."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys_pipeline.datasets import RawDataError, read_events
from recsys_pipeline.preprocessing import ProtocolConfig, run_protocol
from recsys_pipeline.synthetic.sessions import SyntheticConfig, write_raw
from tests.pipelines.conftest import catalog, run

SMALL = SyntheticConfig(n_events=30_000, n_items=400, n_users=3_000, seed=3)
SPLITS = ("full", "train_full", "test", "train_tr", "train_valid")


def protocol_config(cat, dataset: str) -> ProtocolConfig:
    params = dict(cat.load(f"params:preprocess.{dataset}"))
    return ProtocolConfig(
        **{k: v for k, v in params.items() if k not in ("format", "reader_options")}
    )


@pytest.mark.parametrize(
    "dataset", ["rees46", "yoochoose", "rsc15", "coveo", "retailrocket", "diginetica"]
)
def test_preprocess_pipeline_end_to_end(project: Path, dataset: str):
    write_raw(dataset, project / "data" / "01_raw" / dataset, SMALL)
    run(project, f"preprocess_{dataset}")
    cat = catalog(project)
    out = {name: cat.load(f"{dataset}.{name}") for name in SPLITS}

    # the nodes give what the library's chained protocol gives on the same raw files
    config = protocol_config(cat, dataset)
    options = dict(cat.load(f"params:preprocess.{dataset}")).get("reader_options", {})
    events = read_events(dataset, project / "data" / "01_raw" / dataset, kept_only=True, **options)
    expected = run_protocol(events, config)
    for name in SPLITS:
        frame = expected.full if name == "full" else expected.splits[name]
        assert out[name].equals(frame), name
        assert out[name].columns == ["SessionId", "ItemId", "Time"]
        assert out[name].height > 0, f"{dataset}.{name} is empty: the synthetic window is wrong"

    # protocol promises, checked independently of the validation module
    for name in ("full", "train_full", "train_tr"):
        assert out[name].group_by("SessionId").len()["len"].min() >= 2
    assert set(out["train_full"]["SessionId"]).isdisjoint(out["test"]["SessionId"])
    assert set(out["train_tr"]["SessionId"]).isdisjoint(out["train_valid"]["SessionId"])

    stats = cat.load(f"{dataset}.stats")
    assert stats["splits"]["test"]["events"] == out["test"].height
    assert stats["filter_trace"][-1]["events"] == out["full"].height
    assert cat.load(f"{dataset}.validation_report")["success"] is True

    tsv = project / "data" / "05_model_input" / dataset / "tsv" / "test.tsv"
    version_dir = next(tsv.iterdir())
    text = (version_dir / "test.tsv").read_text()
    assert text.splitlines()[0] == "SessionId\tItemId\tTime"
    assert pl.read_csv(version_dir / "test.tsv", separator="\t").height == out["test"].height


def versions(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def run_synthetic(project: Path, config: dict) -> None:
    """Generate and preprocess synthetic data (the default run, without training)."""
    session = {"runtime_params": {"synthetic": {"config": config}}}
    run(project, "synthetic", session=session)
    run(project, "preprocess_synthetic", session=session)


def test_versions_and_load_versions(project: Path):
    run_synthetic(project, {"n_events": 20000})
    first_raw = versions(project / "data/01_raw/synthetic/raw")
    first_stats = catalog(project).load("synthetic.stats")
    run_synthetic(project, {"n_events": 25000, "seed": 9})
    raw_versions = versions(project / "data/01_raw/synthetic/raw")
    assert len(raw_versions) == 2 and raw_versions[0] == first_raw[0]
    split_versions = versions(project / "data/05_model_input/synthetic/train_full.parquet")
    assert len(split_versions) == 2  # re-running never overwrites
    second_stats = catalog(project).load("synthetic.stats")
    assert second_stats["splits"]["full"] != first_stats["splits"]["full"]

    # --load-versions: reprocess the first raw version and get the first statistics back
    run(project, "preprocess_synthetic", load_versions={"synthetic.raw": first_raw[0]})
    assert catalog(project).load("synthetic.stats")["splits"] == first_stats["splits"]


def test_failed_validation_stops_the_run_and_writes_no_split(project: Path, monkeypatch):
    from recsys_pipeline.preprocessing import protocol
    from recsys_pipeline.validation import DataValidationError

    write_raw("diginetica", project / "data/01_raw/diginetica", SMALL)
    real_splits = protocol.protocol_splits

    def leaky(full, points, min_session_length=2):  # a bug: one test session leaks into training
        splits = real_splits(full, points, min_session_length)
        leaked = splits["test"].filter(pl.col("SessionId") == splits["test"]["SessionId"][0])
        splits["train_full"] = pl.concat([splits["train_full"], leaked]).sort("SessionId", "Time")
        return splits

    monkeypatch.setattr(protocol, "protocol_splits", leaky)
    with pytest.raises(DataValidationError) as err:
        run(project, "preprocess_diginetica")
    assert "diginetica" in str(err.value)
    assert not (project / "data/05_model_input/diginetica").exists()
    assert not (project / "data/03_primary/diginetica").exists()


def test_missing_raw_files_fail_before_anything_is_written(project: Path):
    with pytest.raises(Exception) as err:
        run(project, "preprocess_retailrocket")
    assert "events.csv" in str(err.value) and "data/01_raw/retailrocket" in str(err.value)
    written = [p for p in (project / "data").rglob("*") if p.is_file()]
    assert written == []


def test_raw_error_inside_kedro_names_the_file(project: Path):
    raw = project / "data/01_raw/retailrocket"
    raw.mkdir(parents=True)
    (raw / "events.csv").write_text("timestamp,visitorid,event,itemid\nsoon,1,view,5\n")
    with pytest.raises(RawDataError, match="'timestamp'.*line 2"):
        run(project, "preprocess_retailrocket")
    assert not list((project / "data/02_intermediate").rglob("*.parquet"))
