"""OmegaConf resolvers of the project's configuration (registered in settings.py).

``${project_path:}``: the project root, found as Kedro finds it (the first folder upwards from
the working directory whose pyproject.toml has a ``[tool.kedro]`` table). conf/base/mlflow.yml
uses it so the sqlite tracking store is the project's ``mlflow.db`` from any working directory:
kedro-mlflow makes a relative *path* absolute but leaves a relative ``sqlite:///`` URI as it is,
which MLflow then resolves against the working directory (a notebook's kernel runs in
``notebooks/`` and would get an empty store of its own there).
"""

from __future__ import annotations

from pathlib import Path

from kedro.utils import find_kedro_project


def project_path() -> str:
    """The Kedro project root above the working directory (the working directory if none)."""
    found = find_kedro_project(Path.cwd())
    return str(Path(found) if found else Path.cwd())
