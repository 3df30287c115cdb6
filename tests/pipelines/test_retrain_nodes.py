"""The data a retrain challenger sees: history partitions, orphans, sliding window, NeuMF
protocol on new ratings (node functions of ``pipelines/retrain``, no Kedro session)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys_pipeline.operations import ingest
from recsys_pipeline.pipelines.retrain import nodes

GRU = {"model": "gru4rec", "mode": "scratch_growing", "sliding_days": 2, "time_unit_seconds": 1}
DAY = 86_400


def _sessions(first_session: int, n: int, start: int) -> pl.DataFrame:
    """``n`` two-event sessions, one per day from ``start``; ids from ``first_session``."""
    return pl.DataFrame(
        {
            "SessionId": [s for s in range(first_session, first_session + n) for _ in (0, 1)],
            "ItemId": [1, 2] * n,
            "Time": [start + d * DAY + k for d in range(n) for k in (0, 1)],
        }
    )


def _report(tmp_path: Path, batches: list[str]) -> ingest.IngestReport:
    return ingest.IngestReport(manifest_path=tmp_path / "m.json", ingested_batches=batches)


def test_history_is_old_data_plus_committed_batches_only(tmp_path: Path):
    old = _sessions(0, 3, 0)
    batch_a, orphan = _sessions(0, 2, 10 * DAY), _sessions(0, 5, 20 * DAY)
    history = {"batch-a": lambda: batch_a, "batch-orphan": lambda: orphan}
    empty = pl.DataFrame()
    data = nodes.gather_history(old, empty, history, _report(tmp_path, ["batch-a"]), GRU)
    assert data.height == old.height + batch_a.height  # the orphan (no manifest entry) is ignored
    assert data["SessionId"].n_unique() == 3 + 2  # ids renumbered: no collision across parts
    assert data.filter(pl.col("Time") >= 10 * DAY)["SessionId"].min() > old["SessionId"].max()
    # a batch listed by the manifest whose partition is gone: warned about, not fatal
    data = nodes.gather_history(old, empty, {}, _report(tmp_path, ["batch-a"]), GRU)
    assert data.equals(old)
    # nothing at all: an empty frame with the right columns
    none = nodes.gather_history(empty, empty, {}, _report(tmp_path, []), GRU)
    assert none.columns == list(nodes.SESSION_COLUMNS) and none.height == 0


def test_growing_window_keeps_everything_and_sliding_keeps_the_last_days():
    history = _sessions(0, 10, 0)  # days 0..9
    new = _sessions(0, 2, 10 * DAY)  # days 10, 11; ids collide with the history's
    growing = nodes._training_data(history, new, GRU)
    assert growing.height == history.height + new.height
    assert growing["SessionId"].n_unique() == 12
    sliding = nodes._training_data(history, new, GRU | {"mode": "scratch_sliding"})
    # sessions starting at or after (newest event - 2 days) = day 9 + 1 s: those of days 10, 11
    assert sliding["Time"].min() == 10 * DAY
    assert sliding["SessionId"].n_unique() == 2


def test_neumf_prepare_applies_the_movielens_protocol(tmp_path: Path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    rows = [  # user, item, rating, time
        (1, 10, 5, 1 * DAY),
        (1, 10, 3, 2 * DAY),  # repeated pair: the earliest is kept
        (1, 11, 4, 3 * DAY),
        (2, 10, 2, 3 * DAY),
        (2, 12, 4, 9 * DAY),  # newest day: the window
        (3, 13, 4, 9 * DAY + 5),
        (4, 99, 1, 4 * DAY),  # rated before this run: dropped
    ]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    report = ingest.scan_incoming(folder, tmp_path / "manifest.json", lambda path: None)
    history = pl.DataFrame({"UserId": [4], "ItemId": [99], "Time": [0]})
    params = {"model": "neumf", "dataset": "movielens", "eval_days": 1}
    train, window, summary = nodes._prepare_ratings(report, history, params)
    assert train.columns == ["UserId", "ItemId", "Time"]
    assert sorted(train.rows()) == [(1, 10, DAY), (1, 11, 3 * DAY), (2, 10, 3 * DAY)]
    assert sorted(window.rows()) == [(2, 12, 9 * DAY), (3, 13, 9 * DAY + 5)]
    assert summary["repeated_dropped"] == 1 and summary["known_pairs_dropped"] == 1
    assert summary["validation"]["success"] is True
    assert summary["batch"] == report.batch and summary["files"] == ["u.data"]
    # everything new was rated before: a clear error, nothing to train on
    everything = pl.DataFrame(
        {"UserId": [u for u, *_ in rows], "ItemId": [i for _, i, *_ in rows], "Time": [0] * 7}
    )
    with pytest.raises(ValueError, match="only \\(user, item\\) pairs rated before"):
        nodes._prepare_ratings(report, everything, params)


def test_batch_key_depends_on_the_files_only(tmp_path: Path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "a.csv").write_text("a")
    (folder / "b.csv").write_text("b")
    first = ingest.scan_incoming(folder, tmp_path / "m.json", lambda path: None)
    (folder / "a.csv").rename(folder / "z.csv")  # another name, same contents: same batch
    again = ingest.scan_incoming(folder, tmp_path / "m.json", lambda path: None)
    assert first.batch == again.batch and first.batch.startswith("batch-")
    ingest.commit(again)
    entries = ingest.read_manifest(tmp_path / "m.json")
    assert {e.batch for e in entries} == {first.batch}
    (folder / "c.csv").write_text("c")
    later = ingest.scan_incoming(folder, tmp_path / "m.json", lambda path: None)
    assert later.ingested_batches == [first.batch] and later.batch != first.batch
