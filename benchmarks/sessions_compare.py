"""Session data, one protocol, every model: GRU4Rec vs SASRec vs the baselines on the SR-GNN
Diginetica split.

Data: ``../shared/data/real/diginetica_srgnn/diginetica_srgnn_sessions.tsv.gz`` as given (the
same loading as ``gru4rec_diginetica_srgnn.py``: sessions by ``SessionId``, events by ``Pos``,
``Time`` = the running row index; the given ``train`` / ``test`` split). Protocol: the shared
session evaluation (``evaluation.evaluate``): every event after a test session's first is a
target, ranked against all training items (full ranking, nothing excluded), ``standard`` ties,
Recall / MRR at 1, 5, 10, 20; test items unknown to training dropped.

Models (``--models``): GRU4Rec with the Diginetica best parameters (``gru4rec.diginetica``),
SASRec with its block for ``diginetica`` (``sasrec.defaults`` + ``sasrec.diginetica``) and a
loss each (``sasrec:bce`` is the original, ``sasrec:ce`` the full softmax), BERT4Rec with its
``diginetica`` block, and always the most-popular and last-item co-occurrence baselines. SASRec
reads a session as its sequence: every position after the first is a training target (causal
batches of the session's last ``maxlen`` items); BERT4Rec trains on masked sessions, and each
test prefix is one row with the mask appended after it.

``--set kind.key=value`` changes a parameter over the block (e.g. ``sasrec.cpu_bf16=true``).
Printed: one line per epoch, then one table (the metrics, training and evaluation seconds,
peak RSS of the whole run). ``--max-sessions`` takes the first N training sessions (a quick
check). It takes tens of minutes on 2 CPU cores: a benchmark, not a test.

    .venv/bin/python benchmarks/sessions_compare.py --json out/sessions_compare.json
    .venv/bin/python benchmarks/sessions_compare.py --max-sessions 5000 --epochs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import torch
import yaml
from gru4rec_diginetica_srgnn import load as load_srgnn  # noqa: E402  (this folder is on sys.path)
from published_sequential import parse_overrides  # noqa: E402

from recsys_pipeline.evaluation import evaluate
from recsys_pipeline.models.baselines import LastItemCooccurrence, MostPopular
from recsys_pipeline.models.registry import create_model, resolve_params

ROOT = Path(__file__).resolve().parents[1]
DATA = (
    ROOT
    / ".."
    / "shared"
    / "data"
    / "real"
    / "diginetica_srgnn"
    / "diginetica_srgnn_sessions.tsv.gz"
)
PARAMS_FILE = ROOT / "conf" / "base" / "parameters_models.yml"
CUTOFFS = (1, 5, 10, 20)
SHOWN = ("recall@1", "recall@5", "recall@10", "recall@20", "mrr@10", "mrr@20")


def load(path: Path, max_sessions: int | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``(train, test)`` as ``gru4rec_diginetica_srgnn.load`` reads them; ``max_sessions``: the
    first N training sessions only."""
    train, test = load_srgnn(path)
    if max_sessions:
        keep = train["SessionId"].unique(maintain_order=True).head(max_sessions)
        train = train.filter(pl.col("SessionId").is_in(keep.implode()))
    return train, test


def block_params(kind: str, dataset: str) -> dict[str, Any]:
    """The model's parameter block of ``parameters_models.yml`` resolved for ``dataset``."""
    block = yaml.safe_load(PARAMS_FILE.read_text())[kind]
    params = dict(resolve_params(block, dataset))
    params.pop("num_threads", None)  # a run setting of the pipeline, not a model parameter
    return params


def run_model(name: str, model: Any, train: pl.DataFrame, test: pl.DataFrame) -> dict[str, Any]:
    t0 = time.perf_counter()
    if hasattr(model, "history"):
        model.fit(train, progress=False)
        for stats in model.history:
            print(f"{name}: {stats.summary()}", flush=True)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(model, test, cutoffs=CUTOFFS, mode="standard", progress=False)
    eval_s = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in result.items() if "@" in k}
    return {"model": name, "metrics": metrics, "n_targets": int(result["n_targets"]),
            "train_s": train_s, "eval_s": eval_s}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    parser.add_argument(
        "--models", default="gru4rec,sasrec:bce,sasrec:ce,bert4rec",
        help="kind[:loss] list; the baselines always run",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--max-sessions", type=int, default=None)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KIND.KEY=VALUE",
        help="a model's parameter over its diginetica block, e.g. sasrec.cpu_bf16=true",
    )  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    overrides = parse_overrides(parser, args.set)
    logging.basicConfig(level=logging.WARNING)
    if not args.data.exists():
        print(f"data not found: {args.data} (needs ../shared next to the checkout)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load(args.data, args.max_sessions)
    print(
        f"data: train {train.height:,} events / {train['SessionId'].n_unique():,} sessions / "
        f"{train['ItemId'].n_unique():,} items; test {test.height:,} events"
    )
    runs = []
    models: list[tuple[str, Any]] = []
    for spec in filter(None, args.models.split(",")):
        kind, _, loss = spec.partition(":")
        params = block_params(kind, "diginetica") | {"seed": args.seed, "device": "cpu"}
        if loss:
            params["loss"] = loss
        if args.epochs:
            params[create_model(kind, params).params.epochs_field] = args.epochs
        params |= overrides.get(kind, {})
        models.append((f"{kind} ({loss})" if loss else kind, create_model(kind, params)))
    models += [("most_popular", MostPopular.fit(train)),
               ("last_item_cooccurrence", LastItemCooccurrence.fit(train))]  # fmt: skip
    for name, model in models:
        runs.append(run_model(name, model, train, test))
        if args.json:  # after every model: a partial run counts
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"runs": runs}, indent=1))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\nprotocol: every event after a test session's first, full ranking, ties standard; "
          f"{runs[0]['n_targets']:,} targets; {torch.get_num_threads()} threads")  # fmt: skip
    header = f"{'model':<24}" + "".join(f"{m:>11}" for m in SHOWN) + f"{'train s':>9}{'eval s':>8}"
    print(header)
    for run in runs:
        values = "".join(f"{run['metrics'][m]:>11.4f}" for m in SHOWN)
        print(f"{run['model']:<24}{values}{run['train_s']:>9.0f}{run['eval_s']:>8.1f}")
    print(f"peak RSS of the run {rss:.2f} GiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"runs": runs, "peak_rss_gib": rss}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
