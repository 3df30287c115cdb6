"""Command line tools of the project that run without Kedro (``python -m recsys_pipeline.gru4rec_cli``).

* :mod:`recsys_pipeline.cli.gru4rec`: train / load, save and evaluate GRU4Rec with the options and
  output lines of the official ``run.py`` (documented in ``docs/gru4rec_cli.md``).

Kedro compatibility: Kedro treats a module named ``<package>.cli`` as the project's own CLI
(``kedro.framework.cli.utils.find_run_command`` and ``KedroCLI.project_groups`` import it and
require the attributes ``cli`` (a click group of extra ``kedro`` commands) and ``run`` (the
``kedro run`` / ``python -m recsys_pipeline`` command)). This package therefore provides both,
as Kedro's own project template does: ``cli`` is an empty group and ``run`` is Kedro's standard
``run`` command, so every ``kedro`` command behaves exactly as without this package. They are
resolved lazily (PEP 562 ``__getattr__``) so that the GRU4Rec tool never imports Kedro.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cli", "run"]


def __getattr__(name: str) -> Any:
    if name == "cli":
        import click

        @click.group(name="recsys_pipeline")
        def cli() -> None:
            """Project-specific Kedro commands (none: the GRU4Rec tool is
            ``python -m recsys_pipeline.gru4rec_cli``)."""

        globals()["cli"] = cli
        return cli
    if name == "run":
        from kedro.framework.cli.project import run

        globals()["run"] = run
        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
