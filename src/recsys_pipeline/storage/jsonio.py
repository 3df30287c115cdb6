"""JSON as the project writes it: always valid JSON (RFC 8259), never a bare ``NaN``.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no strict parser reads.
Every JSON file of the project goes through :func:`dumps`: a non-finite number becomes ``null``
(a figure that was not measured, e.g. a rate over zero seconds), and ``allow_nan=False`` makes
anything else non-finite an error at write time instead of a broken file. Metrics are never
non-finite in the first place: an evaluation without targets is an error
(:class:`~recsys_pipeline.evaluation.evaluate.NoTargetsError`).
"""

from __future__ import annotations

import json
import math
from typing import IO, Any

__all__ = ["dump", "dumps", "finite"]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (also inside dicts, lists and tuples, and numpy
    scalars) replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if hasattr(value, "dtype") and getattr(value, "shape", None) == ():  # numpy scalar
        item = value.item()
        return finite(item) if isinstance(item, float) else item
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(value)`` with ``allow_nan=False``."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def dump(value: Any, handle: IO[str], **kwargs: Any) -> None:
    """``json.dump`` of :func:`finite` ``(value)`` with ``allow_nan=False``."""
    json.dump(finite(value), handle, allow_nan=False, **kwargs)
