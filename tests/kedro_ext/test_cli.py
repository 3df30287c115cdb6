"""``kedro run``'s project wrapper (recsys_pipeline.cli): a user error, also one Kedro wrapped
in a DatasetError, becomes one ``Error:`` line; anything else keeps its traceback."""

from __future__ import annotations

import click
import pytest
from kedro.io import DatasetError

from recsys_pipeline import cli
from recsys_pipeline.datasets.base import RawDataError


def test_user_errors_are_found_through_kedro_wrappers() -> None:
    raw = RawDataError("x.csv column 'a' has negative values; first offending rows: line 3")
    try:
        try:
            raise raw
        except RawDataError as inner:
            raise DatasetError("Failed while loading data from dataset x") from inner
    except DatasetError as wrapped:
        assert cli.user_error(wrapped) is raw
    assert cli.user_error(RuntimeError("a bug")) is None


def test_run_turns_user_errors_into_one_line_and_keeps_bugs(monkeypatch) -> None:
    def failing(**kwargs):
        raise kwargs["error"]

    monkeypatch.setattr(cli.kedro_run, "callback", failing)
    with pytest.raises(click.ClickException, match=r"^RawDataError: bad file x\.csv line 2$"):
        cli._run(error=RawDataError("bad file x.csv line 2"))
    with pytest.raises(ZeroDivisionError):
        cli._run(error=ZeroDivisionError("a bug"))
    assert [c.name for c in cli.cli.commands.values()] == ["run"]
    assert {p.name for p in cli.cli.commands["run"].params} >= {"pipelines", "params", "namespaces"}
