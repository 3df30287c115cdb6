"""The console of ``kedro run`` (``conf/logging.yml``): Kedro's rich handler on a terminal, one
plain line per message when the output goes to a file or a pipe (rich wraps every message at 80
columns there), and a filter for a warning no user can act on.

Kept free of heavy imports: ``conf/logging.yml`` is applied when Kedro starts. (Kedro's
logging configuration refuses ``()`` factories: a handler ``class`` is what it accepts.)
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence

from kedro.logging import RichHandler

#: warnings that only the authors of a dependency can fix, dropped from the console
UNACTIONABLE = (
    # mlflow warns when kedro-mlflow's own PythonModel (KedroPipelineModel) is defined, at every
    # `kedro` command; it wraps the check in warnings.simplefilter("once"), which overrides any
    # warnings filter, so the logged record is what can be dropped
    r"Add type hints to the `predict` method",
)


#: loggers that reset their own level when imported (kedro-mlflow sets INFO in its
#: ``__init__``, after the logging configuration): their configured level is enforced here
RESET_ON_IMPORT = ("kedro_mlflow",)


class DropMessages(logging.Filter):
    """Drops records whose message matches one of ``patterns`` (regular expressions, searched),
    and records of the ``levels`` loggers (and their children) below the given level."""

    def __init__(
        self, patterns: Sequence[str] = UNACTIONABLE, levels: dict[str, int] | None = None
    ) -> None:
        super().__init__()
        self._patterns = [re.compile(p) for p in patterns]
        self._levels = dict(levels or {})

    def filter(self, record: logging.LogRecord) -> bool:
        for name, level in self._levels.items():
            if record.levelno < level and (
                record.name == name or record.name.startswith(name + ".")
            ):
                return False
        message = record.getMessage()
        return not any(p.search(message) for p in self._patterns)


def _configured_levels(names: Sequence[str]) -> dict[str, int]:
    """The levels ``conf/logging.yml`` gives the loggers ``names`` (as applied now)."""
    return {name: logging.getLogger(name).level for name in names if logging.getLogger(name).level}


class _StdoutHandler(logging.StreamHandler):
    """A ``StreamHandler`` on whatever ``sys.stdout`` is when a record is written (as rich's
    console does), not the object it was when the handler was made (test runners and
    notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - the stream logging writes to
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - StreamHandler.__init__ sets it
        pass


def _plain_handler(like: logging.Handler) -> logging.Handler:
    handler = _StdoutHandler()
    handler.setLevel(like.level)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")
    )
    for existing in like.filters:
        handler.addFilter(existing)
    return handler


def tidy_console(terminal: bool | None = None) -> None:
    """Adjust the root logger's console handler that ``conf/logging.yml`` made (Kedro's
    ``RichHandler``): drop the :data:`UNACTIONABLE` warnings, and when standard output is not
    a terminal replace it with one ``HH:MM:SS LEVEL message`` line per record. Idempotent.

    Called from ``settings.py``: Kedro imports it when the project starts, after it applied
    the logging configuration and before the plugins (kedro-mlflow) load. Kedro's logging
    configuration accepts no project classes (only ``logging`` and ``kedro.logging``, unless
    an environment variable allows more), hence this instead of a handler class in the YAML.
    """
    if terminal is None:
        terminal = sys.stdout.isatty()
    root = logging.getLogger()
    levels = _configured_levels(RESET_ON_IMPORT)
    for index, handler in enumerate(list(root.handlers)):
        if not isinstance(handler, RichHandler):
            continue
        if not any(isinstance(f, DropMessages) for f in handler.filters):
            handler.addFilter(DropMessages(levels=levels))
        if not terminal:
            root.handlers[index] = _plain_handler(handler)
