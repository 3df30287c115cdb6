"""The model registry: ``kind -> class``, and :func:`load_model` for a saved model folder.

Everything outside ``models/`` asks the registry instead of naming a model: the training
template, tuning, retraining, champion/challenger, replay, serving and the catalog's model
dataset take a ``model`` parameter (a kind) and call :func:`model_class`, :func:`create_model`
or :func:`load_model`.

Adding a model: one model file (a :class:`~recsys_pipeline.models.base.Recommender` subclass
with ``kind``, ``task`` and ``params_class``), one line in :data:`BUILTIN` (``kind ->
"module:Class"``, imported on first use so that importing the registry stays cheap), and one
parameter block in ``conf/base/parameters_models.yml``. Code outside the package (a plugin, a
test) calls :func:`register` instead.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from recsys_pipeline.models.base import (
    MODEL_FILE,
    TASKS,
    ModelParams,
    Recommender,
    read_model_json,
)

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN",
    "create_model",
    "detect_kind",
    "kinds",
    "load_model",
    "model_class",
    "register",
    "resolve_params",
]

#: the models shipped with the project: kind -> "module:Class"
BUILTIN: dict[str, str] = {
    "gru4rec": "recsys_pipeline.models.gru4rec:GRU4Rec",
    "neumf": "recsys_pipeline.models.neumf:NeuMF",
    "sasrec": "recsys_pipeline.models.sasrec:SASRec",
    "bert4rec": "recsys_pipeline.models.bert4rec:BERT4Rec",
    "xlnet_mlm": "recsys_pipeline.models.xlnet_mlm:XLNetMLM",
    "hstu": "recsys_pipeline.models.hstu:HSTU",
}

_REGISTERED: dict[str, type[Recommender]] = {}


def register(cls: type[Recommender]) -> type[Recommender]:
    """Register a model class under its ``kind`` (usable as a class decorator).

    Raises:
        TypeError: ``cls`` lacks the contract's class attributes or is not a ``Recommender``.
        ValueError: an unknown ``task``, or another class holds the kind.
    """
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise TypeError(f"{cls!r} is not a Recommender subclass")
    for attr in ("kind", "task", "params_class"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} lacks the class attribute {attr!r}")
    if cls.task not in TASKS:
        raise ValueError(f"{cls.__name__}.task must be one of {TASKS}, got {cls.task!r}")
    if not issubclass(cls.params_class, ModelParams):
        raise TypeError(f"{cls.__name__}.params_class must subclass ModelParams")
    held = _REGISTERED.get(cls.kind)
    if held is not None and held is not cls:
        raise ValueError(f"model kind {cls.kind!r} is already registered ({held.__name__})")
    _REGISTERED[cls.kind] = cls
    return cls


def kinds(task: str | None = None) -> list[str]:
    """Every known kind (built-in and registered), optionally only those of ``task``."""
    names = sorted(set(BUILTIN) | set(_REGISTERED))
    if task is None:
        return names
    return [k for k in names if model_class(k).task == task]


def named_kinds(value: str | Sequence[str]) -> list[str]:
    """The model kinds of a setting that names several: a list, or one string with the names
    joined by ``+`` or spaces (Kedro's ``--params`` allows no comma inside a value)."""
    return value.replace("+", " ").split() if isinstance(value, str) else list(value)


def model_class(kind: str) -> type[Recommender]:
    """The class registered as ``kind``.

    Raises:
        ValueError: an unknown kind; the message lists the known ones.
    """
    if kind not in _REGISTERED and kind in BUILTIN:
        module, _, name = BUILTIN[kind].partition(":")
        register(getattr(importlib.import_module(module), name))
    if kind not in _REGISTERED:
        known = ", ".join(sorted(set(BUILTIN) | set(_REGISTERED)))
        raise ValueError(f"unknown model {kind!r}; known models: {known}")
    return _REGISTERED[kind]


def create_model(kind: str, params: Mapping[str, Any] | str | ModelParams | None = None) -> Any:
    """A new, untrained ``kind`` model with ``params`` (a mapping as in the parameter files, a
    run.py-style string, a parameter object, or ``None`` for the reference defaults)."""
    cls = model_class(kind)
    if params is None:
        return cls()
    if isinstance(params, str):
        params = cls.params_class.from_string(params)
    elif not isinstance(params, ModelParams):
        params = cls.params_class.from_dict(dict(params))
    return cls(params)


def resolve_params(block: Mapping[str, Any] | None, dataset: str | None = None) -> dict[str, Any]:
    """The parameters of a model for ``dataset`` from its parameter block (one block per kind in
    ``conf/base/parameters_models.yml``): ``block["defaults"]`` overridden by
    ``block[dataset]`` (either may be absent).

    Raises:
        ValueError: a key of the block is not a mapping (a parameter put directly in the block
            instead of under ``defaults`` or a dataset, as parameter files did before blocks
            had them).
    """
    block = dict(block or {})
    flat = sorted(k for k, v in block.items() if v is not None and not isinstance(v, Mapping))
    if flat:
        raise ValueError(
            f"model parameter block: {flat} must go under 'defaults' or a dataset name "
            f"(e.g. <model>.defaults.{flat[0]} or <model>.<dataset>.{flat[0]})"
        )
    params = dict(block.get("defaults") or {})
    if dataset is not None and dataset != "defaults":
        params.update(dict(block.get(dataset) or {}))
    return params


def detect_kind(path: str | Path) -> str:
    """The kind of the model saved in ``path``: ``model.json``'s ``kind``; for a folder written
    before ``model.json`` existed (format version 0), ``neumf`` when it has ``user_ids.json``,
    ``gru4rec`` when it has ``params.json``.

    Raises:
        FileNotFoundError: ``path`` is not a model folder.
        ValueError: ``model.json`` is not valid.
    """
    directory = Path(path)
    record = read_model_json(directory)
    if record is not None:
        return str(record["kind"])
    if (directory / "params.json").is_file():
        return "neumf" if (directory / "user_ids.json").is_file() else "gru4rec"
    raise FileNotFoundError(f"{directory} is not a saved model folder (no {MODEL_FILE})")


def load_model(path: str | Path, device: str | torch.device | None = None) -> Any:
    """Load the model saved in ``path`` as its kind (:func:`detect_kind`)."""
    return model_class(detect_kind(path)).load(path, device=device)
