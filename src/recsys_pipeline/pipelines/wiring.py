"""Helpers that wire nodes into pipelines (no logic of their own)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def bind(func: Callable[..., Any], **bound: Any) -> Callable[..., Any]:
    """``func`` with the keyword arguments ``bound`` fixed, as a node function: it keeps the
    name, docstring and (reduced) signature of ``func`` (a ``functools.partial`` has no name for
    Kedro's logs and kedro-viz)."""

    def node_func(*args: Any) -> Any:
        return func(*args, **bound)

    signature = inspect.signature(func)
    node_func.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name not in bound]
    )
    for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
        setattr(node_func, attr, getattr(func, attr))
    return node_func
