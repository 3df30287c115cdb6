"""Parameter handling shared by the models: run.py-style parameter strings
(``name=value,name=value`` with ``/`` between list items, ``layers=256/128``), typed values from
YAML or strings, and the arguments of a fine-tuning round."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any


def parse_param_string(text: str) -> dict[str, str]:
    """``"a=1,b=2/3"`` -> ``{"a": "1", "b": "2/3"}`` (values stay strings).

    Raises:
        ValueError: an item that is not ``name=value``.
    """
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"parameter {item!r} is not of the form name=value")
        values[name.strip()] = value.strip()
    return values


def format_param_string(values: dict[str, Any]) -> str:
    """The inverse of :func:`parse_param_string` (lists joined with ``/``)."""

    def fmt(v: Any) -> str:
        return "/".join(map(str, v)) if isinstance(v, list) else str(v)

    return ",".join(f"{k}={fmt(v)}" for k, v in values.items())


def checked_hints(cls: type, values: typing.Mapping[str, Any], model: str) -> dict[str, Any]:
    """The field types of the parameter dataclass ``cls``, once every name in ``values`` is
    one of its fields.

    Raises:
        ValueError: an unknown name; the message lists the valid ones.
    """
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown {model} parameter(s) {unknown}; valid names: {', '.join(valid)}")
    return typing.get_type_hints(cls)


def convert_value(model: str, name: str, value: Any, hint: Any) -> Any:
    """``value`` (typed, or a string as in a parameter string) as the type ``hint`` of field
    ``name``: bool, int, float, str or a list of ints (``"256/128"``); an optional field
    (``int | None``, ...) also takes ``None`` or the strings ``none`` / ``null``.

    Raises:
        ValueError: the value does not convert; the message names the model and field.
    """
    args = typing.get_args(hint)
    if type(None) in args and len(args) == 2:  # X | None
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            return _as_bool(value)
        if typing.get_origin(hint) is list:
            if isinstance(value, str):
                value = value.split("/")
            elif isinstance(value, int | float):
                value = [value]
            return [_as_int(x) for x in value]
        if hint is int:
            return _as_int(value)
        return float(value) if hint is float else str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad value for {model} parameter {name!r}: {err}") from err


def _as_bool(value: Any) -> bool:
    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("true", "false", "1", "0"):
        return text in ("true", "1")
    raise ValueError(f"not a boolean: {value!r}")


def _as_int(value: Any) -> int:
    number = float(value) if isinstance(value, str) and not value.strip().isdigit() else value
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    return int(number)


def fine_tune_round(
    params: Any,
    n_epochs: int | None,
    learning_rate: float | None,
    optimizer_state: str,
    has_optimizer_state: bool,
) -> tuple[int, float]:
    """``(n_epochs, learning_rate)`` of a fine-tuning round (``None``: the model's
    ``params.n_epochs`` / ``params.learning_rate``), once the arguments are checked.

    Raises:
        ValueError: ``optimizer_state`` not ``"carry"``/``"reset"``, ``n_epochs < 0`` or
            ``learning_rate <= 0``.
        RuntimeError: ``"carry"`` but the model has no optimizer state.
    """
    if optimizer_state not in ("carry", "reset"):
        raise ValueError(f"optimizer_state must be 'carry' or 'reset', got {optimizer_state!r}")
    n_epochs = params.n_epochs if n_epochs is None else int(n_epochs)
    learning_rate = params.learning_rate if learning_rate is None else float(learning_rate)
    if n_epochs < 0 or learning_rate <= 0:
        raise ValueError(
            f"need n_epochs >= 0 and learning_rate > 0, got {n_epochs}, {learning_rate}"
        )
    if optimizer_state == "carry" and not has_optimizer_state:
        raise RuntimeError(
            "optimizer_state='carry' but the model has no optimizer state (saved without "
            "optimizer.pt?): use optimizer_state='reset'"
        )
    return n_epochs, learning_rate
