"""Project hooks: a lock so that two ``retrain`` runs never overlap; a run journal so that a
failed, interrupted or killed run leaves no new version behind (:class:`RunJournalHook`); the
MLflow run's name and tags (:class:`MlflowRunTagsHook`); the summary printed at the end of a run
(:class:`RunSummaryHook`)."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractVersionedDataset

from recsys_pipeline.operations.ingest import RunLock
from recsys_pipeline.pipeline_registry import identity_namespace
from recsys_pipeline.reports.provenance import git_commit
from recsys_pipeline.storage import jsonio
from recsys_pipeline.storage.partial import partial_suffix, process_gone, prune_empty, writer_gone

logger = logging.getLogger(__name__)

LOCK_FILE = Path("data") / ".retrain.lock"


class RetrainLockHook:
    """Holds ``data/.retrain.lock`` (``fcntl.flock``) while a run of the ``retrain`` pipeline
    lasts; a second run at the same time fails at once with ``RetrainLockedError`` naming the
    holder's pid and start time. The lock dies with its process, so a killed run frees it."""

    def __init__(self) -> None:
        self._lock: RunLock | None = None

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name")]
        if "retrain" not in (names or []):
            return
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        lock = RunLock(LOCK_FILE)
        lock.__enter__()  # raises RetrainLockedError when another run holds it
        self._lock = lock

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
            self._lock = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()


# ------------------------------------------------------------------------------ run journal

JOURNAL_DIR = Path("data") / ".runs"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _version_dirs(catalog: Any, names: set[str]) -> list[list[str]]:
    """``[folder, keep]`` per versioned dataset of ``names``: the folder this run's save will
    create, and its nearest ancestor that exists now (the rollback removes the folders the
    run created up to there)."""
    dirs = []
    for name in sorted(names):
        try:
            dataset = catalog.get(name)
        except Exception:  # noqa: BLE001 - a name the catalog cannot resolve saves nowhere
            continue
        if not isinstance(dataset, AbstractVersionedDataset):
            continue
        version = dataset.resolve_save_version()
        if version:
            path = Path(str(dataset._get_versioned_path(version))).parent.absolute()  # noqa: SLF001
            dirs.append([str(path), str(_existing_ancestor(path))])
    return dirs


class RunJournalHook:
    """A failed, interrupted or killed ``kedro run`` leaves no new version behind.

    Kedro saves every node's outputs as it goes, each under the run's save version
    (``data/<layer>/<dataset>/<name>/<save_version>/``). Before the pipeline runs, this hook
    writes a journal ``data/.runs/<save_version>.json`` (pid, host, the version folders the
    run may create, later its MLflow run id) and removes it when the run succeeds. When the
    run fails (an exception: Kedro's ``on_pipeline_error``) or is interrupted (Ctrl-C: at exit)
    it deletes this run's version folders, so "latest" is what it was before the run. A run
    killed outright (SIGKILL, power loss) cannot clean up: the next ``kedro run`` on the same
    host finds its journal with a dead pid and rolls it back then, removes the partial files
    writers leave (``*.partial-<host>-<pid>`` of dead processes under ``data/``: temporary
    decompressions, model folders being saved) and marks its MLflow run ``KILLED``.
    """

    def __init__(self) -> None:
        self._journal: Path | None = None
        self._record: dict[str, Any] = {}

    # ---------------------------------------------------------------- hooks
    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if self._journal is not None:  # an earlier run of this process never started its nodes
            rollback(self._record)
            self._close()
        recover_killed_runs()
        version = str(run_params.get("session_id") or time.strftime("%Y-%m-%dT%H.%M.%S"))
        outputs = set(pipeline.all_outputs())
        self._record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "save_version": version,
            "started": time.time(),
            "pipelines": run_params.get("pipeline_names") or [run_params.get("pipeline_name")],
            "version_dirs": _version_dirs(catalog, outputs),
            "mlflow_run_id": None,
            "mlflow_tracking_uri": None,
        }
        JOURNAL_DIR.mkdir(parents=True, exist_ok=True)
        self._journal = (JOURNAL_DIR / f"{version}-{os.getpid()}.json").absolute()
        self._write()
        atexit.register(self._at_exit)

    @hook_impl
    def before_node_run(self) -> None:
        if self._journal is None or self._record.get("mlflow_run_id"):
            return
        try:
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                self._record["mlflow_run_id"] = active.info.run_id
                self._record["mlflow_tracking_uri"] = mlflow.get_tracking_uri()
                self._write()
        except Exception:  # noqa: BLE001 - tracking is optional here
            return

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._close()

    @hook_impl
    def on_pipeline_error(self, error: Exception) -> None:
        removed = rollback(self._record)
        if removed:
            logger.warning(
                "the run failed (%s): its %d new version folder(s) were removed, the latest "
                "versions are those of before the run",
                type(error).__name__,
                len(removed),
            )
        self._close()

    # ---------------------------------------------------------------- helpers
    def _write(self) -> None:
        assert self._journal is not None
        tmp = self._journal.with_name(self._journal.name + partial_suffix())
        tmp.write_text(jsonio.dumps(self._record, indent=1))
        os.replace(tmp, self._journal)

    def _close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(FileNotFoundError):
                self._journal.unlink()
            prune_empty(self._journal.parent, self._journal.parent.parent)
        self._journal = None
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        """The interpreter exits while the run is unfinished (Ctrl-C, ``sys.exit``)."""
        if self._journal is None or not self._journal.exists():
            return
        rollback(self._record)
        _end_mlflow_run(self._record, "KILLED")
        self._close()


def rollback(record: dict[str, Any]) -> list[str]:
    """Delete the version folders of the run ``record`` (a journal) and the empty folders it
    created above them; the removed paths."""
    removed = []
    for folder, keep in record.get("version_dirs", []):
        path = Path(folder)
        if path.exists():
            _remove(path)
            removed.append(folder)
        prune_empty(path.parent, Path(keep))
    return removed


def _end_mlflow_run(record: dict[str, Any], status: str) -> None:
    run_id, uri = record.get("mlflow_run_id"), record.get("mlflow_tracking_uri")
    if not run_id:
        return
    try:
        import mlflow

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status=status)
            return
        client = mlflow.MlflowClient(tracking_uri=uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status=status)
    except Exception as err:  # noqa: BLE001 - the data rollback matters more
        logger.warning("could not mark MLflow run %s %s: %s", run_id, status, err)


def sweep_partial_files(root: Path = Path("data")) -> list[Path]:
    """Remove the ``*.partial-<host>-<pid>`` files and folders under ``root`` whose process on
    this host is gone (what a killed writer left); the removed paths."""
    if not root.exists():
        return []
    removed = []
    for path in sorted(root.rglob("*.partial-*")):
        if path.exists() and writer_gone(path.name):
            _remove(path)
            removed.append(path)
    return removed


def recover_killed_runs() -> list[dict[str, Any]]:
    """Roll back every journalled run of this host whose process is gone, remove the partial
    files of dead writers and mark their MLflow runs ``KILLED``; the recovered journals."""
    recovered = []
    host = socket.gethostname()
    for journal in sorted(JOURNAL_DIR.glob("*.json")) if JOURNAL_DIR.exists() else []:
        try:
            record = json.loads(journal.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if record.get("host") != host or not process_gone(int(record.get("pid", 0))):
            continue
        removed = rollback(record)
        _end_mlflow_run(record, "KILLED")
        with contextlib.suppress(FileNotFoundError):
            journal.unlink()
        logger.warning(
            "an earlier run (%s, pid %s, started %s) was killed: removed its %d version folder(s)",
            ", ".join(p for p in record.get("pipelines") or [] if p) or "__default__",
            record.get("pid"),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("started", 0))),
            len(removed),
        )
        recovered.append(record)
    for path in sweep_partial_files():
        logger.warning("removed %s, left by a killed process", path)
    if JOURNAL_DIR.exists():
        prune_empty(JOURNAL_DIR, JOURNAL_DIR.parent)
    return recovered


# ---------------------------------------------------------------------------- MLflow run tags


def run_identity(pipeline_names: list[str], namespaces: list[str]) -> dict[str, str]:
    """Name and tags of a run from its pipelines and the namespaces of its nodes
    (``<dataset>`` or ``<dataset>.<model>``): ``run_name`` ``<model>-<dataset>`` when the run
    trains one model on one dataset, else the datasets (or pipelines) joined; ``dataset``,
    ``model`` (comma-separated when several) and ``pipeline``."""
    datasets = sorted({n.split(".")[0] for n in namespaces if n})
    models = sorted({n.split(".")[1] for n in namespaces if n.count(".") >= 1})
    pipelines = [p for p in pipeline_names if p] or ["__default__"]
    if len(datasets) == 1 and len(models) == 1:
        name = f"{models[0]}-{datasets[0]}"
    elif datasets:
        name = "+".join(pipelines) + ":" + ",".join(datasets)
    else:
        name = "+".join(pipelines)
    tags = {"run_name": name, "pipeline": ",".join(pipelines)}
    if datasets:
        tags["dataset"] = ",".join(datasets)
    if models:
        tags["model"] = ",".join(models)
    return tags


def runner_name(runner: Any) -> str:
    """The runner's class name from Kedro's ``run_params["runner"]`` (the class name, or the
    object's repr ``<kedro.runner....SequentialRunner object at 0x...>``, or ``"None"`` when
    the session used its default, ``SequentialRunner``)."""
    import re

    if runner is not None and not isinstance(runner, str):
        return type(runner).__name__
    text = str(runner or "")
    match = re.search(r"(\w+) object at 0x", text)
    if match:
        return match.group(1)
    return "SequentialRunner" if text in ("", "None") else text


class MlflowRunTagsHook:
    """Names the MLflow run that kedro-mlflow opened (``<model>-<dataset>`` instead of the
    pipeline name) and tags it with ``dataset``, ``model``, ``pipeline``, the git commit
    (``mlflow.source.git.commit``) and the runner's class name (kedro-mlflow tags the runner
    object's repr). kedro-mlflow's ``before_pipeline_run`` runs first (plugin hooks are
    registered after the project's and called first), so its run is active here.

    Also types the experiment for model training (``mlflow.experimentKind``: the UI opens its
    machine-learning view, not the GenAI one) and records every training split a node loads
    (:data:`TRAINING_SPLITS`) as an MLflow dataset input of the run (context ``training``: name,
    digest, schema, row count and the file it was read from)."""

    #: last segment of a catalog name read as training data
    TRAINING_SPLITS = ("train_full", "loo_train", "time_train", "train_tr")

    def __init__(self) -> None:
        self._catalog: Any = None
        self._logged: set[str] = set()

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Any, catalog: Any = None
    ) -> None:
        import mlflow

        self._catalog, self._logged = catalog, set()
        run = mlflow.active_run()
        if run is None:
            return
        with contextlib.suppress(Exception):  # typing the experiment is cosmetic
            client = mlflow.MlflowClient()
            if "mlflow.experimentKind" not in client.get_experiment(run.info.experiment_id).tags:
                client.set_experiment_tag(
                    run.info.experiment_id, "mlflow.experimentKind", "custom_model_development"
                )
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or ""]
        namespaces = [identity_namespace(node.name, node.namespace) for node in pipeline.nodes]
        tags = run_identity(list(names), namespaces)
        name = tags.pop("run_name")
        tags["runner"] = runner_name(run_params.get("runner"))
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        mlflow.set_tags({"mlflow.runName": name, **tags})

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any) -> None:
        last = dataset_name.rsplit(".", 1)[-1]
        if dataset_name in self._logged or not (
            last in self.TRAINING_SPLITS or dataset_name == "compare.train"
        ):
            return
        import mlflow
        import polars as pl

        if mlflow.active_run() is None or not isinstance(data, pl.DataFrame):
            return
        self._logged.add(dataset_name)
        source = None
        with contextlib.suppress(Exception):
            dataset = self._catalog.get(dataset_name)
            source = str(Path(str(dataset._get_load_path())).absolute())  # noqa: SLF001
        try:
            with warnings.catch_warnings():  # MLflow registers two equivalent local-file
                warnings.simplefilter("ignore", UserWarning)  # sources, picks one and warns
                logged = mlflow.data.from_polars(data, source=source, name=dataset_name)
            mlflow.log_input(logged, context="training")
        except Exception:  # noqa: BLE001 - lineage in MLflow must never fail a run
            logger.debug("could not log %s as an MLflow dataset", dataset_name, exc_info=True)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any) -> None:
        """Logs every file of the ``reporting`` layer the run writes (plots, metrics JSON, data
        statistics, validation reports and pages) and every model card as an artifact of the
        run, under ``reports/<dataset>[/<model>]/``."""
        import mlflow

        if self._catalog is None or mlflow.active_run() is None:
            return
        try:
            dataset = self._catalog.get(dataset_name)
        except Exception:  # noqa: BLE001 - not a catalog entry: nothing to log
            return
        layer = ((getattr(dataset, "metadata", None) or {}).get("kedro-viz") or {}).get("layer")
        if layer != "reporting" and not dataset_name.endswith("model_card"):
            return
        path = _saved_path(self._catalog, dataset_name)
        if path is None or not Path(path).is_file():
            return
        folder = "/".join(["reports", *dataset_name.split(".")[:-1]])
        try:
            mlflow.log_artifact(path, artifact_path=folder)
        except Exception:  # noqa: BLE001 - tracking must never fail a run
            logger.debug("could not log %s to MLflow", path, exc_info=True)


def _saved_path(catalog: Any, name: str) -> str | None:
    """Where the run saved ``name`` (its version's file or folder), relative to the project, or
    None (in memory, MLflow-only, or nothing there)."""
    try:
        dataset = catalog.get(name)
        if isinstance(dataset, AbstractVersionedDataset):
            path = Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))  # noqa: SLF001
        else:
            raw = getattr(dataset, "_filepath", None)
            if raw is None:
                return None
            path = Path(str(raw))
    except Exception:  # noqa: BLE001 - a dataset without a path is not an artifact
        return None
    if not path.exists():
        return None
    with contextlib.suppress(ValueError):
        path = path.absolute().relative_to(Path.cwd())
    return str(path)


def _mlflow_model_name(catalog: Any, name: str) -> str | None:
    """The MLflow model name ``name`` was logged under (a ``ModelDataset`` that logs), or None."""
    from recsys_pipeline.kedro_ext.datasets import ModelDataset

    try:
        dataset = catalog.get(name)
    except Exception:  # noqa: BLE001 - not a catalog entry: nothing logged
        return None
    if isinstance(dataset, ModelDataset) and dataset._log_to_mlflow:  # noqa: SLF001
        return str(dataset._artifact_path)  # noqa: SLF001
    return None


class RunSummaryHook:
    """Prints one summary when a run that trains or evaluates ends (``kedro_ext/run_summary.py``): the
    metrics per model with the protocol named, the artifacts it wrote, and the MLflow run with
    the command that opens it. Runs without metrics (preprocessing) print nothing. The summary
    never fails a run."""

    def __init__(self) -> None:
        self._mlflow: tuple[str | None, str | None, str | None] = (None, None, None)
        self._started = time.perf_counter()

    @hook_impl
    def before_pipeline_run(self) -> None:
        self._started = time.perf_counter()
        self._mlflow = (None, None, None)
        with contextlib.suppress(Exception):
            import mlflow

            run = mlflow.active_run()  # kedro-mlflow's hook ran first (MlflowRunTagsHook)
            if run is not None:
                self._mlflow = (run.info.run_id, run.info.experiment_id, mlflow.get_tracking_uri())

    @hook_impl
    def after_pipeline_run(self, pipeline: Any, catalog: Any) -> None:
        try:
            lines = self._lines(pipeline, catalog)
        except Exception:  # noqa: BLE001 - a summary must never fail a finished run
            logger.debug("no run summary", exc_info=True)
            return
        if lines:
            print("\n".join(lines), flush=True)  # noqa: T201 - the run's console summary

    def _lines(self, pipeline: Any, catalog: Any) -> list[str]:
        from recsys_pipeline.kedro_ext import run_summary as rs

        outputs = sorted(pipeline.all_outputs())
        tables: list[str] = []
        for name in outputs:
            if name == "compare.table":
                metrics, words = rs.comparison_metrics(catalog.load(name))
                tables += rs.metrics_table(name, metrics, words)
            elif rs.is_metrics_output(name):
                data = catalog.load(name)
                if isinstance(data, dict):
                    tables += rs.metrics_table(name, data)
        if not tables:
            return []
        seconds = time.perf_counter() - self._started
        artifacts = [(n, p) for n in outputs if (p := _saved_path(catalog, n))]
        logged = [name for n in outputs if (name := _mlflow_model_name(catalog, n))]
        return [
            "",
            f"== run summary ({seconds:,.0f} s) ==",
            *tables,
            *rs.artifact_lines(artifacts),
            *rs.mlflow_lines(*self._mlflow, models=logged),
        ]
