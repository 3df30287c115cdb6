"""Session ids (save versions) stay unique among runs of one project started together."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

from recsys_pipeline import settings
from recsys_pipeline.kedro_ext.session_store import UniqueSessionStore, reserve_session_id

ROOT = Path(__file__).resolve().parents[2]
STAMP = "2026-11-24T03.05.30.384Z"


def test_a_taken_id_moves_on_by_a_millisecond(tmp_path):
    ids = [reserve_session_id(tmp_path, STAMP) for _ in range(3)]
    assert ids == [STAMP, "2026-11-24T03.05.30.385Z", "2026-11-24T03.05.30.386Z"]
    # carries into the next second
    assert reserve_session_id(tmp_path, "2026-11-24T03.05.30.999Z") == "2026-11-24T03.05.30.999Z"
    assert reserve_session_id(tmp_path, "2026-11-24T03.05.30.999Z") == "2026-11-24T03.05.31.000Z"


def test_an_id_that_is_not_a_timestamp_is_kept(tmp_path):
    assert reserve_session_id(tmp_path, "my-run") == "my-run"
    assert reserve_session_id(tmp_path, "my-run") == "my-run"


def test_old_reservations_are_pruned(tmp_path):
    old = tmp_path / "2020-01-01T00.00.00.000Z"
    old.touch()
    os.utime(old, (time.time() - 2 * 86_400,) * 2)
    reserve_session_id(tmp_path, STAMP)
    assert not old.exists()
    assert (tmp_path / STAMP).exists()


def _reserve(folder: str) -> str:
    return reserve_session_id(Path(folder), STAMP)


def test_processes_reserving_the_same_id_get_distinct_ones(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_reserve, [str(tmp_path)] * 8)
    assert len(set(ids)) == 8
    assert min(ids) == STAMP


def test_two_kedro_sessions_started_in_the_same_millisecond(tmp_path, monkeypatch):
    """What two tuning workers started together did: same timestamp, so the same save version."""
    assert settings.SESSION_STORE_CLASS is UniqueSessionStore
    for name in ("pyproject.toml", ".telemetry"):
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    (tmp_path / "conf" / "base").mkdir(parents=True)
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    bootstrap_project(tmp_path)
    monkeypatch.setattr("kedro.framework.session.session.generate_timestamp", lambda: STAMP)
    versions = []
    for _ in range(2):
        session = KedroSession.create(project_path=tmp_path)
        versions.append(session.store["session_id"])
        session.close()
    assert versions == [STAMP, "2026-11-24T03.05.30.385Z"]
    assert sorted(p.name for p in (tmp_path / "sessions" / "ids").iterdir()) == versions


@pytest.mark.parametrize("value", [STAMP])
def test_setting_the_same_id_again_does_not_reserve_another(tmp_path, value):
    store = UniqueSessionStore(path=str(tmp_path), session_id=value)
    store["session_id"] = value
    store.update({"session_id": store["session_id"], "env": "local"})
    assert store["session_id"] == value
    assert [p.name for p in (tmp_path / "ids").iterdir()] == [value]
