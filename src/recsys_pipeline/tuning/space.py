"""Optuna search spaces as data: the reference's ``paramspaces`` format, parsed and validated.

A space file holds one entry per tuned parameter, either as a JSON list or as JSON lines (one
object per line, the format of the reference's ``paramspaces/*.json``)::

    {"name": "layers", "dtype": "int", "low": 64, "high": 512, "step": 32}
    {"name": "learning_rate", "dtype": "float", "low": 0.01, "high": 0.25, "step": 0.005}
    {"name": "elu_param", "dtype": "categorical", "choices": [0, 0.5, 1]}

``dtype`` is ``int``, ``float`` or ``categorical``; numeric entries need ``low <= high`` and take
an optional ``step > 0`` or ``log: true`` (not both). Every ``name`` must be a parameter of the
model (checked against a list of valid names), and may appear once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

__all__ = ["DTYPES", "ParamSpec", "SpaceError", "load_space", "parse_space", "suggest"]

DTYPES = ("int", "float", "categorical")
_KEYS = {"name", "dtype", "low", "high", "step", "log", "choices"}


class SpaceError(ValueError):
    """A malformed search-space file or entry (the message names the file and the entry)."""


@dataclass(frozen=True)
class ParamSpec:
    """One tuned parameter: ``int``/``float`` in ``[low, high]`` (``step`` or ``log``), or
    ``categorical`` over ``choices``."""

    name: str
    dtype: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in a space file (``None`` fields left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and v is not False}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


def _entries(text: str, source: str) -> list[tuple[str, Any]]:
    """``(where, object)`` per entry: a JSON list, or one JSON object per non-empty line."""
    stripped = text.strip()
    if not stripped:
        raise SpaceError(f"{source}: the space file is empty")
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise SpaceError(f"{source}: not valid JSON: {err}") from err
        return [(f"entry {i}", item) for i, item in enumerate(items)]
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            out.append((f"line {lineno}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise SpaceError(f"{source}: line {lineno} is not a JSON object ({err}): {line!r}")
    return out


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpaceError(f"{where}: {key} must be a finite number, got {value!r}")
    return value


def _spec(item: Any, where: str, valid_names: Iterable[str] | None) -> ParamSpec:
    if not isinstance(item, dict):
        raise SpaceError(f"{where}: an entry must be a JSON object, got {item!r}")
    unknown_keys = sorted(set(item) - _KEYS)
    if unknown_keys:
        raise SpaceError(f"{where}: unknown key(s) {unknown_keys}; valid keys: {sorted(_KEYS)}")
    name, dtype = item.get("name"), item.get("dtype")
    if not isinstance(name, str) or not name:
        raise SpaceError(f"{where}: 'name' is missing or not a string: {item!r}")
    valid = None if valid_names is None else list(valid_names)
    if valid is not None and name not in valid:
        raise SpaceError(f"{where}: unknown parameter {name!r}; valid names: {', '.join(valid)}")
    if dtype not in DTYPES:
        raise SpaceError(f"{where} ({name}): dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype == "categorical":
        choices = item.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where} ({name}): categorical needs a non-empty 'choices' list")
        extra = sorted(set(item) - {"name", "dtype", "choices"})
        if extra:
            raise SpaceError(f"{where} ({name}): {extra} not allowed with dtype categorical")
        return ParamSpec(name, dtype, choices=tuple(choices))
    if "choices" in item:
        raise SpaceError(f"{where} ({name}): 'choices' is only for dtype categorical")
    for key in ("low", "high"):
        if key not in item:
            raise SpaceError(f"{where} ({name}): dtype {dtype} needs '{key}'")
    low, high = _number(item["low"], "low", where), _number(item["high"], "high", where)
    step = item.get("step")
    log = bool(item.get("log", False))
    if low > high:
        raise SpaceError(f"{where} ({name}): low {low} > high {high}")
    if step is not None:
        step = _number(step, "step", where)
        if step <= 0:
            raise SpaceError(f"{where} ({name}): step must be > 0, got {step}")
        if log:
            raise SpaceError(f"{where} ({name}): 'step' and 'log' cannot be combined")
    if log and low <= 0:
        raise SpaceError(f"{where} ({name}): log scale needs low > 0, got {low}")
    if dtype == "int":
        for key, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and value != int(value):
                raise SpaceError(f"{where} ({name}): {key} of an int parameter must be whole")
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    return ParamSpec(name, dtype, low=low, high=high, step=step, log=log)


def parse_space(
    text: str, source: str = "<space>", valid_names: Iterable[str] | None = None
) -> list[ParamSpec]:
    """Parse and validate a space (JSON list or JSON lines).

    Raises:
        SpaceError: malformed JSON, a bad entry, an unknown or repeated parameter name.
    """
    valid = None if valid_names is None else list(valid_names)
    specs: list[ParamSpec] = []
    seen: dict[str, str] = {}
    for where, item in _entries(text, source):
        spec = _spec(item, f"{source}: {where}", valid)
        if spec.name in seen:
            raise SpaceError(
                f"{source}: {where}: {spec.name!r} already defined at {seen[spec.name]}"
            )
        seen[spec.name] = where
        specs.append(spec)
    if not specs:
        raise SpaceError(f"{source}: the space defines no parameter")
    return specs


def load_space(path: str | Path, valid_names: Iterable[str] | None = None) -> list[ParamSpec]:
    """Read and validate the space file ``path`` (see :func:`parse_space`)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: search-space file not found")
    return parse_space(path.read_text(), str(path), valid_names)


def suggest(trial: optuna.Trial, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """One value per spec from ``trial`` (``trial.suggest_int/float/categorical``)."""
    values: dict[str, Any] = {}
    for s in specs:
        if s.dtype == "categorical":
            values[s.name] = trial.suggest_categorical(s.name, list(s.choices or ()))
        elif s.dtype == "int":
            values[s.name] = trial.suggest_int(
                s.name, int(s.low), int(s.high), step=int(s.step or 1), log=s.log
            )
        else:
            values[s.name] = trial.suggest_float(
                s.name, float(s.low), float(s.high), step=s.step, log=s.log
            )
    return values
