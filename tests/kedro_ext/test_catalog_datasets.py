"""The project's Kedro datasets: atomic writes, raw folders."""

from __future__ import annotations

import polars as pl
import pytest
from kedro.io.core import DatasetError, Version

from recsys_pipeline.kedro_ext.datasets import (
    AtomicJSONDataset,
    AtomicPolarsDataset,
    RawEventsDataset,
    RawSource,
)


def test_interrupted_parquet_write_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "x.parquet"
    ds = AtomicPolarsDataset(filepath=str(path), file_format="parquet", version=Version(None, "v1"))

    def broken(self, file, **kwargs):
        file.write(b"PAR1 half a file")
        raise KeyboardInterrupt  # the run is killed mid-write

    monkeypatch.setattr(pl.DataFrame, "write_parquet", broken)
    with pytest.raises(KeyboardInterrupt):
        ds.save(pl.DataFrame({"a": [1]}))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_parquet_and_json_round_trip_versioned(tmp_path):
    ds = AtomicPolarsDataset(
        filepath=str(tmp_path / "x.parquet"), file_format="parquet", version=Version(None, "v1")
    )
    ds.save(pl.DataFrame({"a": [1, 2]}))
    assert ds.load()["a"].to_list() == [1, 2]
    assert (tmp_path / "x.parquet" / "v1" / "x.parquet").is_file()
    js = AtomicJSONDataset(filepath=str(tmp_path / "r.json"), version=Version(None, "v1"))
    js.save({"ok": True})
    assert js.load() == {"ok": True}
    assert not list(tmp_path.rglob("*.partial-*"))


def test_raw_dataset_moves_finished_files_and_checks_presence(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "events.csv").write_text("timestamp,visitorid,event,itemid\n1,1,view,5\n")
    ds = RawEventsDataset(
        filepath=str(tmp_path / "raw"), format="retailrocket", version=Version(None, "v1")
    )
    ds.save(RawSource("retailrocket", str(scratch), ["events.csv"]))
    loaded = ds.load()
    assert loaded.files == ["events.csv"] and loaded.directory.endswith("v1/raw")
    assert not (scratch / "events.csv").exists()
    with pytest.raises(DatasetError, match="raw file not found.*published at"):
        RawEventsDataset(filepath=str(tmp_path / "nothing"), format="retailrocket").load()
