"""Project pipelines: the names users type.

``find_pipelines`` discovers ``pipelines/<name>/``: ``synthetic``, ``preprocess`` (every public
dataset at once) and ``preprocess_<dataset>`` (the template bound to one dataset). Kedro 1.7
imports only the requested pipeline modules, so the default is assembled only when all are loaded.
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

PARTS = ("generate", "preprocess", "train")


def part(pipe: Pipeline, name: str) -> Pipeline:
    """``pipe``'s nodes in one flat namespace ``name``: a part of the default pipeline that
    kedro-viz shows as one box, expanding straight to its nodes. Node names keep their own
    namespace after the part (``train.synthetic.gru4rec.evaluate``); datasets and parameters
    keep their catalog names. (``Node._copy`` is how Kedro itself re-namespaces nodes.)"""
    return Pipeline([n._copy(name=n.name, namespace=name) for n in pipe.nodes])


def identity_namespace(node_name: str, namespace: str | None) -> str:
    """The ``<dataset>[.<model>]`` namespace a node works in, also inside a part of the default
    pipeline: ``train.synthetic.gru4rec.evaluate`` -> ``synthetic.gru4rec``."""
    if namespace in PARTS and node_name.startswith(namespace + "."):
        inner = node_name[len(namespace) + 1 :]
        return inner.rsplit(".", 1)[0] if "." in inner else ""
    return namespace or ""


def _without_tsv_export(pipe: Pipeline) -> Pipeline:
    """The TSV copies are for the official GRU4Rec tools on real data; on the generated data
    they were five extra outputs in every view of the default run
    (``kedro run --pipelines=preprocess_synthetic`` still writes them)."""
    return Pipeline([n for n in pipe.nodes if not n.name.endswith(".export_tsv")])


def register_pipelines() -> dict[str, Pipeline]:
    """Discovered pipelines plus ``__default__``.

    The default: synthetic data -> preprocess -> validate -> GRU4Rec (and baselines) on it; no
    TSV export
    (the training template's namespace ``synthetic.gru4rec``), in three parts ``generate``,
    ``preprocess`` and ``train`` (node names ``train.synthetic.gru4rec.evaluate``, ...), so
    kedro-viz shows three boxes that expand instead of one namespace holding everything.
    """
    pipelines = find_pipelines(raise_errors=True)
    if {"synthetic", "preprocess_synthetic", "train"} <= pipelines.keys():
        pipelines["__default__"] = (
            part(pipelines["synthetic"], "generate")
            + part(_without_tsv_export(pipelines["preprocess_synthetic"]), "preprocess")
            + part(pipelines["train"].only_nodes_with_namespaces(["synthetic.gru4rec"]), "train")
        )
    return pipelines
