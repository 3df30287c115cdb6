"""Serving any registered model through MLflow (``mlflow models serve``).

:class:`RecommenderPyfunc` is an :class:`mlflow.pyfunc.PythonModel`: ``load_context`` loads the
saved model folder (``weights.pt`` with ``weights_only=True`` + JSON, through
:func:`~recsys_pipeline.models.registry.load_model`) from the MLflow model's artifacts and serves
it by its ``task``. For next-item models (below) ``predict`` answers with
:func:`~recsys_pipeline.serving.recommend.recommend`, the same code as the pipelines and the
CLI; user-item models (NeuMF) take one user per row (see :class:`RecommenderPyfunc`).
:func:`log_pyfunc_model` logs it ("models from code": a two-line script that imports this
module, so nothing is pickled; the weights stay a state dict).

Request (``POST /invocations``, ``Content-Type: application/json``)::

    {"dataframe_records": [{"session": [4001, 4017, 4003]},
                           {"session": [4005], "k": 5, "exclude_seen": true}],
     "params": {"k": 10, "exclude_seen": false}}

* ``session`` (required): the session's raw item ids, oldest first. Ids unknown to the model
  are skipped; a session must hold at least one known id.
* ``k`` (optional, ``1 <= k <= n_items``) and ``exclude_seen`` (optional, boolean): per request
  in ``params`` (defaults 20 and false), or per session as columns (a session's own value, when
  not null, wins over ``params``).
* ``{"dataframe_split": {"columns": ["session"], "data": [[[4001, 4017]], [[4005]]]}}`` works
  too. Any other column, an empty batch, more than ``max_batch`` sessions (default 1000), an
  empty session, a session longer than ``max_session_length`` (default 10000), a session with no
  known id or a value of the wrong type is answered with HTTP 400 (``error_code``
  ``INVALID_PARAMETER_VALUE`` and a ``message`` naming the session and the field).

  MLflow itself drops unknown keys of ``params`` (with a warning in the server log) before the
  model sees them, so a misspelled ``params`` key cannot be rejected; misspelled columns are.

Response (200)::

    {"predictions": [{"items": [4018, 4002, ...], "scores": [7.1, 3.2, ...]}, ...]}

one record per session, in request order: ``items`` the raw ids of the top-``k`` next items,
best first, and ``scores`` their model scores (descending). With ``exclude_seen`` the session's
own items are not recommended; if fewer than ``k`` other items exist the list is shorter.

``{"inputs": {"session": [[4001, 4017]]}, "params": {...}}`` (columns) and
``{"inputs": [{"session": [4001, 4017]}]}`` (records) are accepted as well.

Serving (the project is installed editable in ``.venv``, so ``--env-manager local`` has
everything; ``127.0.0.1`` is also mlflow's default host, port 5000 its default port). The
server runs ``uvicorn`` from ``PATH``, so the venv's ``bin`` must be on it (activate the venv)::

    source .venv/bin/activate   # or: PATH=$PWD/.venv/bin:$PATH
    mlflow models serve -m models:/<name>@champion --env-manager local \\
        --host 127.0.0.1 --port 5001
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recsys_pipeline.serving.recommend import recommend

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

try:  # mlflow is a project dependency, but keep the module importable without it
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    _PythonModel: type = mlflow.pyfunc.PythonModel
except ImportError:  # pragma: no cover
    mlflow = None  # type: ignore[assignment]
    _PythonModel = object

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_SESSION_LENGTH",
    "RecommenderPyfunc",
    "RequestError",
    "log_pyfunc_model",
]

#: artifact key of the saved model folder inside the MLflow model
MODEL_ARTIFACT = "model"
DEFAULT_K = 20
DEFAULT_MAX_BATCH = 1000
DEFAULT_MAX_SESSION_LENGTH = 10_000
#: input columns; ``session`` is required
SESSION, K, EXCLUDE_SEEN = "session", "k", "exclude_seen"
COLUMNS = (SESSION, K, EXCLUDE_SEEN)
#: input columns of user-item models; ``user`` (one raw user id per row) is required
USER, EXCLUDE_TRAIN = "user", "exclude_train"
USER_COLUMNS = (USER, K, EXCLUDE_TRAIN)

_CODE_SCRIPT = (
    '"""MLflow models-from-code entry point: a recsys_pipeline recommender."""\n'
    "from mlflow.models import set_model\n\n"
    "from recsys_pipeline.serving.pyfunc import RecommenderPyfunc\n\n"
    "set_model(RecommenderPyfunc())\n"
)


class RequestError(ValueError):
    """An invalid request (reported to the client as HTTP 400)."""


def _bad_request(message: str) -> Exception:
    """The exception for an invalid request: an ``MlflowException`` with
    ``INVALID_PARAMETER_VALUE`` (the scoring server answers 400 with ``message``)."""
    if mlflow is None:  # pragma: no cover
        return RequestError(message)
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _is_missing(value: Any) -> bool:
    """True for ``None`` and NaN (a column absent from some records)."""
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _as_k(value: Any, where: str, n_items: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise _bad_request(f"{where}: 'k' must be an integer, got {value!r}")
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        raise _bad_request(f"{where}: 'k' must be an integer, got {value!r}")
    k = int(value)
    if k < 1 or k > n_items:
        raise _bad_request(f"{where}: 'k' must be between 1 and n_items={n_items}, got {k}")
    return k


def _as_flag(value: Any, where: str, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise _bad_request(f"{where}: '{name}' must be true or false, got {value!r}")
    return bool(value)


def _as_frame(model_input: Any) -> pd.DataFrame:
    """The request as a DataFrame (the scoring server already gives one; in-process callers may
    also pass a list of records or a mapping of columns)."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
        return pd.DataFrame.from_records(model_input)
    if isinstance(model_input, Mapping):
        try:
            return pd.DataFrame({k: list(v) for k, v in model_input.items()})
        except (TypeError, ValueError) as err:
            raise _bad_request(f"cannot read the input columns: {err}") from err
    raise _bad_request(
        "input must be records with a 'session' field, e.g. "
        '{"dataframe_records": [{"session": [1, 2, 3]}]}; '
        f"got {type(model_input).__name__}"
    )


class _Task:
    """What serving does differently per model task: the row key (a session's items or a
    user id), its validation, the exclusion flag and the top-k call."""

    key: str
    key_help: str
    flag: str
    flag_default: bool
    columns: tuple[str, ...]
    noun: str  # what one row is, in messages

    def known_ids(self, model: Any) -> Any:
        raise NotImplementedError

    def row(self, raw: Any, where: str, pyfunc: RecommenderPyfunc) -> Any:
        raise NotImplementedError

    def recommend(self, model: Any, keys: list[Any], k: int, flag: bool) -> tuple[Any, Any]:
        raise NotImplementedError


class _NextItem(_Task):
    """``next_item`` models: one row per session (its raw item ids, oldest first)."""

    key, key_help = SESSION, "the list of raw item ids of a session"
    flag, flag_default = EXCLUDE_SEEN, False
    columns = COLUMNS
    noun = "session"

    def known_ids(self, model: Any) -> Any:
        return model.item_ids

    def recommend(self, model: Any, keys: list[Any], k: int, flag: bool) -> tuple[Any, Any]:
        result = recommend(model, keys, k=k, exclude_seen=flag)
        return result.items, result.scores

    def row(self, raw: Any, where: str, pyfunc: RecommenderPyfunc) -> list[Any]:
        """One session's ids as a list of Python ints (or strs), validated."""
        if isinstance(raw, np.ndarray):
            raw = raw.tolist()
        if not isinstance(raw, (list, tuple)):
            raise _bad_request(
                f"{where}: 'session' must be a list of item ids, got {type(raw).__name__}"
            )
        if len(raw) == 0:
            raise _bad_request(f"{where}: empty session")
        if len(raw) > pyfunc.max_session_length:
            raise _bad_request(
                f"{where}: {len(raw)} items > max_session_length={pyfunc.max_session_length}"
            )
        items: list[Any] = []
        for x in raw:
            if pyfunc._str_ids:
                if not isinstance(x, str):
                    raise _bad_request(f"{where}: item ids must be strings, got {x!r}")
                items.append(x)
            else:
                if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
                    raise _bad_request(f"{where}: item ids must be integers, got {x!r}")
                items.append(int(x))
        if not any(x in pyfunc._known for x in items):
            shown = items[:5]
            raise _bad_request(
                f"{where}: no item known to the model (items: {shown}"
                f"{'...' if len(items) > 5 else ''})"
            )
        return items


class _UserItem(_Task):
    """``user_item`` models: one row per user (a raw user id of the training data)."""

    key, key_help = USER, "a raw user id"
    flag, flag_default = EXCLUDE_TRAIN, True
    columns = USER_COLUMNS
    noun = "user"

    def known_ids(self, model: Any) -> Any:
        return model.user_ids

    def row(self, raw: Any, where: str, pyfunc: RecommenderPyfunc) -> Any:
        if pyfunc._str_ids:
            ok = isinstance(raw, str)
        else:
            ok = isinstance(raw, numbers.Integral) and not isinstance(raw, (bool, np.bool_))
        user = (raw if pyfunc._str_ids else int(raw)) if ok else raw
        if not ok or user not in pyfunc._known:
            raise _bad_request(f"{where}: user {raw!r} is not known to the model")
        return user

    def recommend(self, model: Any, keys: list[Any], k: int, flag: bool) -> tuple[Any, Any]:
        result = model.recommend(keys, k=k, exclude_train=flag)
        return result.items, result.scores


TASK_HANDLERS: dict[str, _Task] = {"next_item": _NextItem(), "user_item": _UserItem()}


class RecommenderPyfunc(_PythonModel):
    """MLflow pyfunc model of any registered recommender: top-k items per row.

    ``load_context`` loads the saved model folder (``context.artifacts["model"]``) with
    :func:`~recsys_pipeline.models.registry.load_model` and serves it by its ``task``:

    * ``next_item`` (GRU4Rec, the transformer models): one row per session, see the module
      docstring (``session``, ``k``, ``exclude_seen``), answered by
      :func:`~recsys_pipeline.serving.recommend.recommend`;
    * ``user_item`` (NeuMF): one row per user, ``{"dataframe_records": [{"user": 196},
      {"user": 22, "k": 5}], "params": {"k": 10, "exclude_train": true}}``; ``user``
      (required) a raw user id of the training data, ``exclude_train`` (default true: the
      user's training items are not recommended); answered by the model's ``recommend``.

    Both: ``k`` (``1 <= k <= n_items``, default 20) and the flag per request in ``params`` or
    per row (a row's own value, when not null, wins); invalid requests (unknown column, key or
    user, bad ``k``, too many rows) are HTTP 400. Response: ``items`` (raw ids, best first) and
    ``scores`` (descending) per row, in request order; excluded items (scored ``-inf``) are
    left out. Config (``model_config``): ``max_batch`` (rows per request, default 1000),
    ``max_session_length`` (next-item models, default 10000), ``device`` (default ``"cpu"``),
    ``torch_threads``.
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.task: _Task | None = None
        self.max_batch = DEFAULT_MAX_BATCH
        self.max_session_length = DEFAULT_MAX_SESSION_LENGTH
        self._known: frozenset[Any] = frozenset()
        self._str_ids = False

    # -- loading -------------------------------------------------------------------------------
    def load_context(self, context: Any) -> None:
        """Load the saved model folder (artifact ``model``; models logged before it was named
        so hold a single artifact) and read the config."""
        from recsys_pipeline.models.registry import load_model

        config = dict(getattr(context, "model_config", None) or {})
        artifacts = dict(context.artifacts)
        folder = artifacts.get(MODEL_ARTIFACT) or next(iter(artifacts.values()))
        model = load_model(folder, device=config.get("device", "cpu"))
        self.configure(
            model,
            max_batch=int(config.get("max_batch", DEFAULT_MAX_BATCH)),
            max_session_length=int(config.get("max_session_length", DEFAULT_MAX_SESSION_LENGTH)),
        )
        threads = config.get("torch_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))

    def configure(
        self,
        model: Any,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_session_length: int = DEFAULT_MAX_SESSION_LENGTH,
    ) -> RecommenderPyfunc:
        """Serve an already loaded ``model`` (also what ``load_context`` calls).

        Raises:
            ValueError: a non-positive limit, or a model whose ``task`` serving does not know.
        """
        if max_batch < 1 or max_session_length < 1:
            raise ValueError("max_batch and max_session_length must be positive")
        task = getattr(model, "task", None)
        if task not in TASK_HANDLERS:
            raise ValueError(f"cannot serve a model of task {task!r} ({type(model).__name__})")
        self.model, self.task = model, TASK_HANDLERS[task]
        self.max_batch, self.max_session_length = max_batch, max_session_length
        ids = np.asarray(self.task.known_ids(model))
        self._str_ids = ids.dtype.kind in "OUS"
        self._known = frozenset(ids.tolist())
        logger.info(
            "%s recommender loaded: %d items, max_batch %d",
            getattr(model, "kind", type(model).__name__),
            model.n_items,
            max_batch,
        )
        return self

    # -- prediction ----------------------------------------------------------------------------
    def predict(
        self,
        context: Any,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Top-k recommendations for every row of ``model_input``.

        Returns:
            One row per input row, in order: ``items`` (list of raw ids, best first) and
            ``scores`` (list of floats, descending).

        Raises:
            MlflowException: ``INVALID_PARAMETER_VALUE`` (HTTP 400) for an invalid request.
        """
        if self.model is None or self.task is None:
            raise RuntimeError("no model: load_context() was not called")
        keys, groups = self._validate(_as_frame(model_input), params or {})
        items_out: list[list[Any]] = [[] for _ in keys]
        scores_out: list[list[float]] = [[] for _ in keys]
        for (k, flag), rows in groups.items():
            items, scores = self.task.recommend(self.model, [keys[r] for r in rows], k, flag)
            for j, r in enumerate(rows):
                keep = ~np.isneginf(scores[j])
                items_out[r] = items[j][keep].tolist()
                scores_out[r] = scores[j][keep].astype(float).tolist()
        return pd.DataFrame({"items": items_out, "scores": scores_out})

    def _validate(
        self, frame: pd.DataFrame, params: Mapping[str, Any]
    ) -> tuple[list[Any], dict[tuple[int, bool], list[int]]]:
        """``(key of every row, rows by (k, flag))``; raises a 400 error."""
        task = self.task
        assert task is not None
        unknown = [str(c) for c in frame.columns if c not in task.columns]
        if unknown:
            raise _bad_request(
                f"unknown field(s) {unknown}; allowed fields: {list(task.columns)} "
                f"('k' and '{task.flag}' may also be given in 'params')"
            )
        if task.key not in frame.columns:
            raise _bad_request(f"missing field '{task.key}' ({task.key_help})")
        n = len(frame)
        if n == 0:
            raise _bad_request(f"empty batch: send at least one {task.noun}")
        if n > self.max_batch:
            raise _bad_request(f"too many {task.noun}s: {n} > max_batch={self.max_batch}")
        n_items = int(self.model.n_items)
        default_k = _as_k(params.get(K, DEFAULT_K), "params", n_items)
        default_flag = _as_flag(params.get(task.flag, task.flag_default), "params", task.flag)
        k_col = frame[K].tolist() if K in frame.columns else [None] * n
        flag_col = frame[task.flag].tolist() if task.flag in frame.columns else [None] * n
        keys: list[Any] = []
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, raw in enumerate(frame[task.key].tolist()):
            where = f"{task.noun} {i}"
            keys.append(task.row(raw, where, self))
            k = default_k if _is_missing(k_col[i]) else _as_k(k_col[i], where, n_items)
            flag = flag_col[i]
            flag = default_flag if _is_missing(flag) else _as_flag(flag, where, task.flag)
            groups.setdefault((k, flag), []).append(i)
        return keys, groups


# -- logging ---------------------------------------------------------------------------------
def _requirements() -> list[str]:
    """Pinned pip requirements of the serving environment (the installed versions)."""
    out = []
    for name in ("mlflow", "torch", "numpy", "pandas", "polars"):
        try:
            out.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:  # pragma: no cover
            out.append(name)
    return out


def _signature(model: Any) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    task = TASK_HANDLERS[model.task]
    id_type = DataType.string if np.asarray(model.item_ids).dtype.kind in "OUS" else DataType.long
    # No input schema on purpose: MLflow's schema enforcement silently drops unknown columns,
    # which the model rejects itself (see RecommenderPyfunc._validate).
    return ModelSignature(
        inputs=None,
        outputs=Schema(
            [ColSpec(Array(id_type), "items"), ColSpec(Array(DataType.double), "scores")]
        ),
        params=ParamSchema(
            [
                ParamSpec(K, DataType.long, DEFAULT_K),
                ParamSpec(task.flag, DataType.boolean, task.flag_default),
            ]
        ),
    )


def _input_example(model: Any) -> pd.DataFrame:
    """Three rows of what the model's task serves (sessions of one item, or users)."""
    ids = np.asarray(TASK_HANDLERS[model.task].known_ids(model))[:3].tolist()
    if model.task == "user_item":
        return pd.DataFrame({USER: ids})
    return pd.DataFrame({SESSION: [ids]})


def log_pyfunc_model(
    model_dir_or_model: Any,
    artifact_path: str = "recommender",
    registered_model_name: str | None = None,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_session_length: int = DEFAULT_MAX_SESSION_LENGTH,
    torch_threads: int | None = None,
    include_code: bool = True,
    with_optimizer: bool = False,
) -> ModelInfo:
    """Log a trained model (any registered kind) as an MLflow pyfunc model (to the active run,
    or a new one), served by :class:`RecommenderPyfunc` according to the model's ``task``.

    The saved model folder becomes the artifact ``model`` of the MLflow model; the wrapper is
    logged as code (a generated script importing :class:`RecommenderPyfunc`), never pickled.

    Args:
        model_dir_or_model: a saved model folder or a trained model.
        artifact_path: name of the MLflow model inside the run (``runs:/<run_id>/<name>``).
        registered_model_name: also register it under this name (a new version).
        max_batch: most rows (sessions or users) per request.
        max_session_length: most items per session (next-item models).
        torch_threads: ``torch.set_num_threads`` in the server (``None``: torch's default).
        include_code: copy the ``recsys_pipeline`` package into the MLflow model
            (``code_paths``), so that it loads with the code it was logged with (and without
            the project installed); if False the serving environment must have the package
            (it has with ``--env-manager local`` and the editable install).
        with_optimizer: a trained model is saved with its optimizer state (``optimizer.pt``),
            so that a registered champion can be fine-tuned with ``optimizer_state="carry"``
            (retraining registers challengers so); off for a model that is only served.

    Returns:
        The :class:`mlflow.models.model.ModelInfo` (``model_uri``, ``run_id``, ...).
    """
    from recsys_pipeline.models.registry import load_model

    if mlflow is None:  # pragma: no cover
        raise ImportError("mlflow is not installed")
    with tempfile.TemporaryDirectory(prefix="recsys-serving-") as tmp:
        tmp_dir = Path(tmp)
        if isinstance(model_dir_or_model, str | Path):
            model_dir = Path(model_dir_or_model)
            model = load_model(model_dir, device="cpu")
        else:
            model = model_dir_or_model
            model_dir = model.save(tmp_dir / MODEL_ARTIFACT, optimizer=with_optimizer)
        if model.task not in TASK_HANDLERS:
            raise ValueError(f"cannot serve a model of task {model.task!r}")
        code_file = tmp_dir / "recommender.py"
        code_file.write_text(_CODE_SCRIPT)
        config = {"max_batch": max_batch, "max_session_length": max_session_length}
        if torch_threads:
            config["torch_threads"] = torch_threads
        code_paths = None
        if include_code:
            package = Path(__file__).resolve().parents[1]
            staged = tmp_dir / "code" / package.name
            shutil.copytree(package, staged, ignore=shutil.ignore_patterns("__pycache__"))
            code_paths = [str(staged)]
        kwargs: dict[str, Any] = {
            "name": artifact_path,
            "python_model": str(code_file),
            "artifacts": {MODEL_ARTIFACT: str(model_dir)},
            "model_config": config,
            "signature": _signature(model),
            "input_example": (_input_example(model), {K: min(DEFAULT_K, model.n_items)}),
            "pip_requirements": _requirements(),
            "code_paths": code_paths,
            "registered_model_name": registered_model_name,
        }
        if mlflow.active_run() is not None:
            info = mlflow.pyfunc.log_model(**kwargs)
        else:
            with mlflow.start_run():
                info = mlflow.pyfunc.log_model(**kwargs)
    logger.info(
        "logged the %s recommender: %s (%s)", model.kind, info.model_uri, json.dumps(config)
    )
    return info
