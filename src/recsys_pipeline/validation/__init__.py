"""Great Expectations suites for raw events and protocol splits (no Kedro imports).

GX is imported lazily, on the first validation, not when this package is imported.
"""

from .suites import DataValidationError, validate_raw_events, validate_splits

__all__ = ["DataValidationError", "validate_raw_events", "validate_splits"]
