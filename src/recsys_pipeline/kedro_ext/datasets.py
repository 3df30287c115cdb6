"""Kedro dataset classes of the project (the only module besides ``pipelines/`` importing Kedro).

* :class:`RawEventsDataset`: a folder of raw files in a published format. ``load`` checks that the
  files are there (with a hint where to get them) and returns a :class:`RawSource`; ``save``
  (used for generated data) moves finished files into place, so nothing half-written appears.
* :class:`AtomicPolarsDataset`, :class:`AtomicJSONDataset`: kedro-datasets' polars and JSON
  datasets whose ``save`` writes to a temporary name and renames it, so an interrupted run never
  leaves a truncated artifact that a later load would pick up as the latest version.
* :class:`OptionalPolarsDataset`, :class:`OptionalPartitionedDataset`: loads that give an empty
  result where nothing was saved yet (retraining's old data and accepted history).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import polars as pl
from kedro.io.core import (
    AbstractDataset,
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
)
from kedro_datasets.json import JSONDataset
from kedro_datasets.partitions import PartitionedDataset
from kedro_datasets.polars import EagerPolarsDataset

from recsys_pipeline.datasets import get_format
from recsys_pipeline.storage import jsonio
from recsys_pipeline.storage.partial import partial_suffix


@dataclass(frozen=True)
class RawSource:
    """Where a dataset's raw files are: the format's reader takes it from here."""

    format: str
    directory: str
    files: list[str] = field(default_factory=list)


class RawEventsDataset(AbstractVersionedDataset[RawSource, RawSource]):
    """A folder holding a dataset's raw files (``2019-Oct.csv``, ``events.csv``, ...).

    Args:
        filepath: The folder, e.g. ``data/01_raw/rees46``.
        format: The published format (``rees46``, ``yoochoose``, ``rsc15``, ``coveo``,
            ``retailrocket``, ``diginetica``); it names the files to expect.
        files: Other file names than the format's defaults (e.g. a sample), in reading order.
        version: Kedro versioning (for generated raw data).
    """

    def __init__(
        self,
        filepath: str,
        format: str,  # noqa: A002 - the catalog key users write
        files: list[str] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(filepath=PurePosixPath(filepath), version=version)
        self._format = format
        self._files = list(files) if files else list(get_format(format).files)
        self.metadata = metadata

    def load(self) -> RawSource:
        """Check that the raw files exist (plain or .gz) and say where they are."""
        directory = Path(str(self._get_load_path()))
        paths = get_format(self._format).locate(directory, self._files)
        return RawSource(self._format, str(directory), [p.name for p in paths])

    def save(self, data: RawSource) -> None:
        """Move the finished files of ``data.directory`` into this dataset's folder."""
        target = Path(str(self._get_save_path()))
        staging = target.with_name(f".{target.name}{partial_suffix()}")
        staging.mkdir(parents=True, exist_ok=True)
        for name in data.files:
            shutil.move(str(Path(data.directory) / name), staging / name)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)

    def _exists(self) -> bool:
        try:
            load_path = Path(str(self._get_load_path()))
        except DatasetError:
            return False
        return load_path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "format": self._format, "files": self._files}


def _atomic_write(fs: Any, path: str, write: Any, open_args: dict[str, Any]) -> None:
    """Write through ``write(file)`` to ``path + .partial-<host>-<pid>``, then rename it to
    ``path``."""
    tmp = f"{path}{partial_suffix()}"
    fs.mkdirs(os.path.dirname(path), exist_ok=True)
    try:
        with fs.open(tmp, **open_args) as handle:
            write(handle)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


class AtomicPolarsDataset(EagerPolarsDataset):
    """``polars.EagerPolarsDataset`` (parquet, csv, ...) with an atomic, buffer-free save."""

    def save(self, data: pl.DataFrame) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        method = getattr(data, f"write_{self._file_format}")
        _atomic_write(
            self._fs, path, lambda h: method(h, **self._save_args), self._fs_open_args_save
        )
        self._invalidate_cache()


class OptionalPolarsDataset(AtomicPolarsDataset):
    """:class:`AtomicPolarsDataset` whose ``load`` gives an empty frame (no columns) when nothing
    was saved yet (e.g. ``retrain.old_train`` of a dataset without a preprocessed history)."""

    def load(self) -> pl.DataFrame:
        if not self._exists():
            return pl.DataFrame()
        return super().load()


class OptionalPartitionedDataset(PartitionedDataset):
    """kedro-datasets' ``PartitionedDataset`` whose ``load`` gives ``{}`` instead of failing
    when no partition exists yet (``retrain.history`` before the first retrain)."""

    def load(self) -> dict[str, Any]:
        try:
            return super().load()
        except DatasetError as err:
            if "No partitions found" not in str(err):
                raise
            return {}


class AtomicJSONDataset(JSONDataset):
    """``json.JSONDataset`` with an atomic save."""

    def save(self, data: Any) -> None:
        path = get_filepath_str(self._get_save_path(), self._protocol)
        args = {"mode": "w", **self._fs_open_args_save}
        args.pop("encoding", None)
        _atomic_write(
            self._fs,
            path,
            lambda h: (
                h.write(jsonio.dumps(data, **self._save_args).encode("utf-8"))
                if "b" in args["mode"]
                else jsonio.dump(data, h, **self._save_args)
            ),
            args,
        )
        self._invalidate_cache()


class ModelDataset(AbstractVersionedDataset):
    """A trained model of any registered kind as a folder: ``model.json``, weights (state dict,
    loaded with ``weights_only=True``) and JSON (:mod:`recsys_pipeline.models.registry`).

    ``save`` writes to a temporary sibling folder and renames it, then (``log_to_mlflow``) logs
    it to the active MLflow run as an MLflow model named ``artifact_path``: the project's pyfunc
    (:func:`~recsys_pipeline.serving.pyfunc.log_pyfunc_model`: models from code, the folder as
    its artifact, signature and input example), so that ``mlflow models serve -m
    runs:/<run id>/<artifact_path> --env-manager local`` serves what the run trained. Never a
    pickle.

    Args:
        filepath: The folder, e.g. ``data/06_models/diginetica/gru4rec``.
        model: the kind the folder must hold (``gru4rec``, ``neumf``, ...), or ``auto`` (the
            default): whatever kind its ``model.json`` names (older folders: by their files).
        log_to_mlflow: Log the model to the active MLflow run, if there is one.
        artifact_path: The MLflow model's name in the run.
    """

    def __init__(
        self,
        filepath: str,
        model: str = "auto",
        log_to_mlflow: bool = True,
        artifact_path: str = "model",
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(filepath=PurePosixPath(filepath), version=version)
        self._model = model
        self._log_to_mlflow = log_to_mlflow
        self._artifact_path = artifact_path
        self.metadata = metadata

    def load(self) -> Any:
        from recsys_pipeline.models import registry

        path = str(self._get_load_path())
        if self._model == "auto":
            return registry.load_model(path)
        return registry.model_class(self._model).load(path)

    def save(self, data: Any) -> None:
        target = Path(str(self._get_save_path()))
        staging = target.with_name(f".{target.name}{partial_suffix()}")
        if staging.exists():
            shutil.rmtree(staging)
        staging.parent.mkdir(parents=True, exist_ok=True)
        data.save(str(staging))
        staging.rename(target)
        if self._log_to_mlflow:
            import mlflow

            if mlflow.active_run() is not None:  # servable: runs:/<run id>/<artifact_path>
                from recsys_pipeline.serving.pyfunc import log_pyfunc_model

                log_pyfunc_model(target, artifact_path=self._artifact_path, include_code=False)

    def _exists(self) -> bool:
        try:
            return Path(str(self._get_load_path())).is_dir()
        except DatasetError:
            return False

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "model": self._model}


class OptunaStorageDataset(AbstractDataset[str, str]):
    """The SQLAlchemy URL of the Optuna storage that tuning workers share (load only).

    ``url`` in the catalog (e.g. a SQLite file in the project), or ``credentials`` with a ``url``
    key (e.g. PostgreSQL with a password, from ``conf/local/credentials.yml``), which wins. For
    SQLite the folder of the file is created. Nothing is stored here: the URL is the dataset.
    """

    def __init__(
        self,
        url: str | None = None,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        url = (credentials or {}).get("url") or url
        if not url:
            raise DatasetError(
                "OptunaStorageDataset needs `url` or credentials with a `url` key "
                "(e.g. postgresql+psycopg://user:password@host:5432/optuna)"
            )
        self._url = str(url)
        self.metadata = metadata

    def load(self) -> str:
        if self._url.startswith("sqlite:///"):
            path = Path(self._url.removeprefix("sqlite:///"))
            if str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
        return self._url

    def save(self, data: str) -> None:
        raise DatasetError("OptunaStorageDataset is read-only: set its url in the catalog")

    def _describe(self) -> dict[str, Any]:
        from recsys_pipeline.tuning.study import redact_url

        return {"url": redact_url(self._url)}


def _study_dataset_base() -> type:
    from kedro_datasets_experimental.optuna import StudyDataset

    return StudyDataset


class StudySnapshotDataset(_study_dataset_base()):  # type: ignore[misc]
    """kedro-datasets' Optuna ``StudyDataset`` (a versioned copy of the study in an RDB), whose
    save survives workers that create its SQLite file at the same moment (schema race: retried).
    """

    def save(self, data: Any) -> None:
        import time

        for attempt in range(1, 6):
            try:
                return super().save(data)
            except DatasetError as err:  # Kedro wraps the sqlalchemy OperationalError
                text = f"{err} {err.__cause__}"
                racy = ("already exists", "UNIQUE constraint failed", "database is locked")
                if not any(m in text for m in racy) or attempt == 5:
                    raise
                time.sleep(0.3 * attempt)
        return None
