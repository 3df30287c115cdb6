"""Pieces of a saved model folder that the models share: raw id arrays as JSON
(``{"dtype": ..., "ids": [...]}``, ints keep their width, anything else is stored as strings)
and the fine-tuning state: ``optimizer.pt`` (tensors by parameter name, read back with
``torch.load(..., weights_only=True)``, so loading executes no code) and ``fine_tune.json``
(the rounds of ``fine_tune``).

Every reader here checks what it reads: a missing or truncated file, invalid JSON, weights that
do not fit the saved parameters are a :class:`ModelFolderError`, one line naming the file;
:func:`checked_load` gives every model's ``load`` the same guarantee for anything else.
"""

from __future__ import annotations

import functools
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from recsys_pipeline.storage import jsonio

_T = TypeVar("_T")


class ModelFolderError(ValueError):
    """A saved model folder that cannot be loaded; the message names the folder and file."""


def read_json(path: Path) -> Any:
    """The JSON value of ``path``.

    Raises:
        ModelFolderError: the file is missing, unreadable or not valid JSON.
    """
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing" + (" (a folder)" if path.exists() else ""))
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: not valid JSON ({err})") from err


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save``, read with ``weights_only=True``.

    Raises:
        ModelFolderError: missing, truncated, or not a dict of tensors.
    """
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (EOFError, RuntimeError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"{path}: truncated or not a PyTorch state dict ({first})") from err
    if not isinstance(state, dict):
        raise ModelFolderError(f"{path}: not a state dict (a {type(state).__name__})")
    return state


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """``net.load_state_dict(state)``, with a one-line error naming ``path`` when the weights
    do not fit the network the saved parameters describe."""
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
        detail = lines[0] if lines else str(err).splitlines()[0]
        raise ModelFolderError(
            f"{path}: the weights do not fit the saved parameters ({detail}"
            + (f"; {len(lines) - 1} more" if len(lines) > 1 else "")
            + ")"
        ) from err


def require_keys(values: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    """The saved parameters ``values`` (read from ``path``) must hold every one of ``keys``:
    they decide the network's shape, so a default would load the wrong network."""
    if not isinstance(values, dict):
        raise ModelFolderError(f"{path}: the parameters are not a JSON object")
    missing = [k for k in keys if k not in values]
    if missing:
        raise ModelFolderError(
            f"{path}: missing the parameter(s) {', '.join(map(repr, missing))} (they decide "
            "the network's shape; no default can stand in)"
        )


def checked_load(load: Callable[..., _T]) -> Callable[..., _T]:
    """Decorate a model's ``load(cls, path, device=None)``: a missing folder and any error the
    loader did not already name (a :class:`ModelFolderError`) become one line naming the
    folder."""

    @functools.wraps(load)
    def wrapper(cls: Any, path: str | Path, *args: Any, **kwargs: Any) -> _T:
        directory = Path(path)
        if not directory.is_dir():
            what = "is a file, not a model folder" if directory.exists() else "does not exist"
            raise ModelFolderError(f"{directory}: {what}")
        try:
            return load(cls, path, *args, **kwargs)
        except ModelFolderError:
            raise
        except (OSError, KeyError, TypeError, ValueError, RuntimeError, EOFError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ModelFolderError(
                f"{directory}: cannot load this {getattr(cls, 'kind', 'model')} folder "
                f"({type(err).__name__}: {first})"
            ) from err

    return wrapper


def write_ids(path: Path, ids: np.ndarray) -> None:
    """Write the raw ids ``ids [n]`` to the JSON file ``path``."""
    dtype = ids.dtype.str if ids.dtype.kind in "iub" else "str"
    values = ids.tolist() if dtype != "str" else [str(x) for x in ids.tolist()]
    path.write_text(jsonio.dumps({"dtype": dtype, "ids": values}))


def read_ids(path: Path) -> np.ndarray:
    """The raw ids written by :func:`write_ids`."""
    stored = read_json(path)
    if not isinstance(stored, dict) or not {"ids", "dtype"} <= stored.keys():
        raise ModelFolderError(f"{path}: needs the keys 'dtype' and 'ids'")
    try:
        return np.asarray(stored["ids"], dtype=stored["dtype"])
    except (TypeError, ValueError) as err:
        raise ModelFolderError(f"{path}: ids not of dtype {stored['dtype']!r} ({err})") from err


def save_fine_tune_state(
    directory: Path,
    optimizer_state: dict[str, torch.Tensor] | None,
    rounds: list[dict[str, Any]],
) -> None:
    """``optimizer.pt`` unless ``optimizer_state`` is None; ``fine_tune.json`` if any rounds."""
    if optimizer_state is not None:
        torch.save(optimizer_state, directory / "optimizer.pt")
    if rounds:
        (directory / "fine_tune.json").write_text(jsonio.dumps(rounds, indent=2))


def load_fine_tune_state(
    directory: Path, device: torch.device
) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, Any]]]:
    """``(optimizer state or None, fine-tune rounds)`` of a folder (either file may be absent)."""
    optimizer = directory / "optimizer.pt"
    state = load_tensors(optimizer, device) if optimizer.exists() else None
    rounds = directory / "fine_tune.json"
    return state, read_json(rounds) if rounds.exists() else []
