"""A scratch copy of the project (conf, pyproject) so pipeline tests write only under tmp_path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

ROOT = Path(__file__).resolve().parents[2]


def _end_mlflow_runs() -> None:
    """A run that failed in this process leaves its MLflow run active: close it."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status="FAILED")


def _lay_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    shutil.copytree(ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    _own_tracking_store(tmp_path)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEDRO_DISABLE_TELEMETRY", "true")
    bootstrap_project(tmp_path)
    _end_mlflow_runs()
    yield tmp_path
    _end_mlflow_runs()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tmp_path laid out as the project: conf/, pyproject.toml, empty src/ and data/ layers."""
    yield from _lay_out(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def shared_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """:func:`project` shared by the tests of a module (one MLflow store: its creation is
    most of a short failing run's time); each test leaves it as it found it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _lay_out(tmp_path_factory.mktemp("project"), monkeypatch)


def _own_tracking_store(project: Path) -> None:
    """conf/local/mlflow.yml with the project's sqlite store as an absolute URI. MLflow caches
    one store per URI string in a process, so the relative ``sqlite:///mlflow.db`` of
    conf/base would keep pointing at the first test project's database in later tests (and
    differ from what a ``kedro run`` subprocess of this project uses)."""
    server = yaml.safe_load((project / "conf/base/mlflow.yml").read_text())["server"]
    server["mlflow_tracking_uri"] = f"sqlite:///{project / 'mlflow.db'}"
    (project / "conf/local/mlflow.yml").write_text(yaml.safe_dump({"server": server}))


def run(project: Path, pipeline: str, **kwargs) -> None:
    """``kedro run --pipelines=<pipeline>`` through a KedroSession."""
    try:
        with KedroSession.create(project_path=project, **kwargs.pop("session", {})) as session:
            session.run(pipeline_names=[pipeline], **kwargs)
    finally:  # kedro-mlflow leaves the run open inside one process (a CLI run exits)
        _end_mlflow_runs()


def catalog(project: Path):
    """The project's catalog as a new session sees it."""
    with KedroSession.create(project_path=project) as session:
        return session.load_context().catalog
