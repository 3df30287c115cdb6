"""Great Expectations suites for raw events and protocol splits (no Kedro imports).

GX is imported lazily, on the first validation, not when this package is imported.
"""

from .ratings import validate_rating_splits
from .suites import DataValidationError, validate_raw_events, validate_splits

__all__ = [
    "DataValidationError",
    "validate_rating_splits",
    "validate_raw_events",
    "validate_splits",
]
