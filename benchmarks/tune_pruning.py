"""What pruning saves: the same GRU4Rec study with and without the median pruner.

Both studies search ``conf/base/paramspaces/gru4rec_synthetic.json`` on the default run's synthetic
``train_tr`` -> ``train_valid`` (the latest versions in ``data/05_model_input/synthetic/``: run
``kedro run`` first) with the same TPE seed, fixed parameters ``gru4rec.synthetic`` and
``--epochs`` epochs per trial, MRR@20. Printed per study: trials (complete / pruned), wall seconds,
epochs trained, best MRR@20; then the time saved and the difference of the best values.

    .venv/bin/python benchmarks/tune_pruning.py --trials 12 --epochs 4
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import torch
import yaml

from recsys_pipeline.models.gru4rec import GRU4RecParams
from recsys_pipeline.models.registry import resolve_params
from recsys_pipeline.tuning import (
    Metric,
    StudySettings,
    load_space,
    model_objective,
    open_study,
    optimize,
)

ROOT = Path(__file__).resolve().parents[1]


def latest(split: str) -> pl.DataFrame:
    files = sorted(
        glob.glob(str(ROOT / f"data/05_model_input/synthetic/{split}.parquet/*/{split}.parquet"))
    )
    if not files:
        sys.exit(f"no {split} split: run `kedro run` (the default pipeline) first")
    return pl.read_parquet(files[-1])


def run(pruner: str, args: argparse.Namespace, train, valid, base, specs) -> dict:
    folder = tempfile.mkdtemp(prefix="tune-pruning-")
    settings = StudySettings(
        storage=f"sqlite:///{folder}/study.db",
        study_name=pruner,
        pruner=pruner,
        pruner_args={"n_startup_trials": 3, "n_warmup_steps": 1} if pruner != "none" else {},
        sampler_seed=args.seed,
        n_startup_trials=4,
    )
    study = open_study(settings, {"pruner": pruner})
    objective = model_objective("gru4rec", train, valid, base, specs, Metric("mrr", 20))
    started = time.perf_counter()
    optimize(study, objective, args.trials)
    seconds = time.perf_counter() - started
    states = [t.state.name for t in study.trials]
    return {
        "pruner": pruner,
        "seconds": seconds,
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "best": study.best_value,
        "best_params": study.best_params,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, valid = latest("train_tr"), latest("train_valid")
    params = yaml.safe_load((ROOT / "conf/base/parameters_models.yml").read_text())
    base = resolve_params(params["gru4rec"], "synthetic") | {"n_epochs": args.epochs}
    base.pop("num_threads", None)
    specs = load_space(
        ROOT / "conf/base/paramspaces/gru4rec_synthetic.json", GRU4RecParams.field_names()
    )
    print(
        f"train_tr {train.height:,} events, train_valid {valid.height:,}; {args.trials} trials "
        f"x {args.epochs} epochs; {args.threads} thread(s)"
    )
    rows = []
    for pruner in ("none", "median"):
        row = run(pruner, args, train, valid, base, specs)
        rows.append(row)
        print(
            f"{pruner:>7}: {row['seconds']:7.1f} s | {row['complete']} complete, "
            f"{row['pruned']} pruned | {row['epochs']} epochs trained | "
            f"best MRR@20 {row['best']:.4f} {row['best_params']}",
            flush=True,
        )
    none, median = rows
    print(
        f"pruning saved {none['seconds'] - median['seconds']:.1f} s "
        f"({1 - median['seconds'] / none['seconds']:.0%}; ratio {median['seconds'] / none['seconds']:.2f}), "
        f"{none['epochs'] - median['epochs']} epochs; best MRR@20 difference "
        f"{median['best'] - none['best']:+.4f}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
