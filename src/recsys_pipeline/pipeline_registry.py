"""Project pipelines: the names users type.

``find_pipelines`` discovers ``pipelines/<name>/``: ``synthetic``, ``preprocess`` (every public
dataset at once) and ``preprocess_<dataset>`` (the template bound to one dataset). Kedro 1.7
imports only the requested pipeline modules, so the default is assembled only when all are loaded.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Discovered pipelines plus ``__default__``.

    The default: synthetic data -> preprocess -> validate -> GRU4Rec (and baselines) on it
    (the training template's namespace ``synthetic.gru4rec``).
    """
    pipelines = find_pipelines(raise_errors=True)
    if {"synthetic", "preprocess_synthetic", "train"} <= pipelines.keys():
        pipelines["__default__"] = (
            pipelines["synthetic"]
            + pipelines["preprocess_synthetic"]
            + pipelines["train"].only_nodes_with_namespaces(["synthetic.gru4rec"])
        )
    return pipelines
