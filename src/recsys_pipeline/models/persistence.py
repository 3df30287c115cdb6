"""Pieces of a saved model folder that the models share: raw id arrays as JSON
(``{"dtype": ..., "ids": [...]}``, ints keep their width, anything else is stored as strings)
and the fine-tuning state: ``optimizer.pt`` (tensors by parameter name, read back with
``torch.load(..., weights_only=True)``, so loading executes no code) and ``fine_tune.json``
(the rounds of ``fine_tune``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch


def write_ids(path: Path, ids: np.ndarray) -> None:
    """Write the raw ids ``ids [n]`` to the JSON file ``path``."""
    dtype = ids.dtype.str if ids.dtype.kind in "iub" else "str"
    values = ids.tolist() if dtype != "str" else [str(x) for x in ids.tolist()]
    path.write_text(json.dumps({"dtype": dtype, "ids": values}))


def read_ids(path: Path) -> np.ndarray:
    """The raw ids written by :func:`write_ids`."""
    stored = json.loads(path.read_text())
    return np.asarray(stored["ids"], dtype=stored["dtype"])


def save_fine_tune_state(
    directory: Path,
    optimizer_state: dict[str, torch.Tensor] | None,
    rounds: list[dict[str, Any]],
) -> None:
    """``optimizer.pt`` unless ``optimizer_state`` is None; ``fine_tune.json`` if any rounds."""
    if optimizer_state is not None:
        torch.save(optimizer_state, directory / "optimizer.pt")
    if rounds:
        (directory / "fine_tune.json").write_text(json.dumps(rounds, indent=2))


def load_fine_tune_state(
    directory: Path, device: torch.device
) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, Any]]]:
    """``(optimizer state or None, fine-tune rounds)`` of a folder (either file may be absent)."""
    optimizer = directory / "optimizer.pt"
    state = None
    if optimizer.exists():
        state = torch.load(optimizer, map_location=device, weights_only=True)
    rounds = directory / "fine_tune.json"
    return state, json.loads(rounds.read_text()) if rounds.exists() else []
