"""Check that the optimised GRU4Rec training step computes what the unoptimised one does.

The package as of git revision ``--baseline-ref`` (the commit before the training speed-ups) is
extracted read-only (``git archive``) and imported under another name, next to the current one.
For every configuration both implementations start from the same weights and run the same
mini-batches with the same negative samples and dropout masks (same seeds, same order of random
draws); after every step the losses are compared and, at the end, every parameter, the optimizer
state and the hidden state. Differences can only come from floating-point rounding (other
summation orders, fused formulas); they are reported as the maximum relative difference.

Examples::

    .venv/bin/python benchmarks/gru4rec_train_equivalence.py              # all configurations
    .venv/bin/python benchmarks/gru4rec_train_equivalence.py --steps 50 --dtype float64
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE_REF = "a11f510"

CONFIGS = [
    "loss=bpr-max",
    "loss=cross-entropy",
    "loss=cross-entropy,logq=1.0",
    "loss=bpr-max,elu_param=0,momentum=0.3,lmbd=0.0001",
    "loss=bpr-max,dropout_p_embed=0.2,dropout_p_hidden=0.3,layers=64/48",
    "loss=cross-entropy,constrained_embedding=False,embedding=32,grad_cap=0.5",
    "loss=cross-entropy,constrained_embedding=False,dropout_p_embed=0.1",
    "loss=top1-max,adapt=sgd",
    "loss=bpr,n_sample=0",
    "loss=xe_logit,hidden_act=elu-1",
    "loss=top1,final_act=tanh",
]


def extract(ref: str, into: Path) -> None:
    """``src/recsys_pipeline`` at ``ref`` as package ``recsys_baseline`` under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src/recsys_pipeline"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    package = into / "recsys_baseline"
    (into / "src" / "recsys_pipeline").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(text.replace("recsys_pipeline", "recsys_baseline"))


def run(pkg: str, config: str, args: argparse.Namespace, dtype: object) -> dict:
    import numpy as np
    import torch

    g4r = importlib.import_module(f"{pkg}.models.gru4rec")
    optim = importlib.import_module(f"{pkg}.training.optim")
    sampler_mod = importlib.import_module(f"{pkg}.training.sampler")
    iterator_mod = importlib.import_module(f"{pkg}.training.session_iterator")
    base = f"layers=64,batch_size=32,n_sample=64,device=cpu,seed=3,learning_rate=0.1,{config}"
    params = g4r.GRU4RecParams.from_string(base)
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 9, size=400)
    items = rng.zipf(1.3, size=int(lengths.sum())) % args.items
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    support = np.bincount(items, minlength=args.items)
    torch.manual_seed(0)
    net = g4r.GRU4RecNetwork(args.items, params)
    net.reset_parameters(params.sigma, params.init_as_normal, torch.Generator().manual_seed(1))
    net.to(dtype)
    gen = torch.Generator().manual_seed(2)
    sampler = None
    if params.n_sample:
        sampler = sampler_mod.NegativeSampler(
            support, params.n_sample, params.sample_alpha, store_size=2**16, generator=gen
        )
    log_support = torch.log(torch.as_tensor(np.maximum(support, 1), dtype=dtype))
    opt = optim.IndexedAdagradM(
        net.parameters(), lr=params.learning_rate, momentum=params.momentum,
        lmbd=params.lmbd, adapt=params.adapt,
    )  # fmt: skip
    step = g4r._TrainStep(net, params, opt, sampler, log_support, gen)
    step.state = [h.to(dtype) for h in step.state]
    iterator = iterator_mod.SessionParallelIterator(items, offsets, params.batch_size)
    losses = []
    for i, batch in enumerate(iterator.epoch()):
        if i == args.steps:
            break
        loss, _ = step(batch)
        losses.append(float(loss))
    state = {name: p.detach().clone() for name, p in net.named_parameters()}
    acc = {name: opt.acc[p].clone() for name, p in net.named_parameters() if p in opt.acc}
    return {"losses": losses, "params": state, "acc": acc, "hidden": step.state}


def rel(a: object, b: object) -> float:
    import torch

    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max relative difference (default 1e-3 float32, 1e-9 float64)")  # fmt: skip
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    tolerance = args.tolerance or (1e-3 if dtype == torch.float32 else 1e-9)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        extract(args.baseline_ref, Path(tmp))
        sys.path.insert(0, tmp)
        for config in CONFIGS:
            old = run("recsys_baseline", config, args, dtype)
            new = run("recsys_pipeline", config, args, dtype)
            d_loss = rel(old["losses"], new["losses"])
            d_par = max(rel(old["params"][k], new["params"][k]) for k in old["params"])
            d_acc = max((rel(old["acc"][k], new["acc"][k]) for k in old["acc"]), default=0.0)
            d_hid = max(rel(a, b) for a, b in zip(old["hidden"], new["hidden"], strict=True))
            worst = max(d_loss, d_par, d_acc, d_hid)
            ok = worst <= tolerance
            failed += not ok
            print(
                f"{'OK  ' if ok else 'FAIL'} {config:70s} max rel. diff: losses {d_loss:.1e}, "
                f"params {d_par:.1e}, Adagrad acc {d_acc:.1e}, state {d_hid:.1e}"
            )
    print(f"{len(CONFIGS) - failed}/{len(CONFIGS)} configurations within {tolerance:g}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
