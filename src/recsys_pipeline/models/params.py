"""run.py-style parameter strings shared by the models: ``name=value,name=value`` with ``/``
between list items (``layers=256/128``)."""

from __future__ import annotations

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
