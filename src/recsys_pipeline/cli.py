"""Project commands for the ``kedro`` CLI (Kedro loads ``<package>.cli.cli``).

``kedro run`` is Kedro's own command (its options, its session, its hooks); only the errors a
user causes and can fix, bad input data, an empty split, an evaluation without targets, a
damaged model folder, failed data validation, a bad tuning setup, end as one ``Error: ...``
message with exit status 1 instead of a traceback (their messages name the file, column,
lines or setting). Every other exception keeps its traceback: that is a bug to report.
"""

from __future__ import annotations

from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

from recsys_pipeline.datasets.base import RawDataError
from recsys_pipeline.evaluation.evaluate import NoTargetsError
from recsys_pipeline.models.persistence import ModelFolderError
from recsys_pipeline.operations.ingest import ManifestError, RetrainLockedError
from recsys_pipeline.pipelines.compare.nodes import CompareError
from recsys_pipeline.preprocessing.protocol import EmptySplitError
from recsys_pipeline.tuning.space import SpaceError
from recsys_pipeline.tuning.study import TuningError
from recsys_pipeline.validation.suites import DataValidationError

#: errors whose message says what to change: printed without a traceback
USER_ERRORS: tuple[type[Exception], ...] = (
    RawDataError,
    EmptySplitError,
    NoTargetsError,
    ModelFolderError,
    DataValidationError,
    SpaceError,
    TuningError,
    ManifestError,
    RetrainLockedError,
    CompareError,
)


@click.group(name="recsys_pipeline")
def cli() -> None:
    """recsys_pipeline's project commands."""


def user_error(exc: BaseException) -> Exception | None:
    """The user error ``exc`` is or was raised from (Kedro wraps what a dataset's ``load``
    raises in a ``DatasetError``), else ``None``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _run(**kwargs: Any) -> Any:
    try:
        return kedro_run.callback(**kwargs)  # type: ignore[misc]
    except Exception as exc:
        cause = user_error(exc)
        if cause is None:
            raise
        raise click.ClickException(f"{type(cause).__name__}: {cause}") from None


#: ``kedro run`` (and ``python -m recsys_pipeline``, which asks Kedro's ``find_run_command``)
run = click.Command(
    name="run",
    params=kedro_run.params,
    callback=_run,
    help=kedro_run.help,
    short_help=kedro_run.short_help,
    context_settings=kedro_run.context_settings,
)
cli.add_command(run)
