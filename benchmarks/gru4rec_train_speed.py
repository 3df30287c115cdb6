"""GRU4Rec training throughput on the CPU, measured side by side with the official implementation.

Configuration of the issue: ``layers=512, batch_size=128, n_sample=2048`` (all other parameters at
the reference defaults, shared embedding), loss ``bpr-max`` and ``cross-entropy``, on a synthetic
event log of ~100k events and ~3k items (``recsys_pipeline.synthetic.sessions.generate_events``),
or on real files (``--train``, optionally ``--test``, ``--max-events``).

Every measurement runs in a fresh subprocess, so that its peak RSS is its own (``ru_maxrss`` of that
child from ``os.wait4``: interpreter, imports, data, model, everything) and the thread setting does
not leak. The legs of one round run one after the other, interleaved over ``--repeat`` rounds
(``[baseline,] ours, official, [baseline,] ours, official, ...``):

* **ours** (``current``): this checkout's package (``--run-child``);
* **official**: hidasib/GRU4Rec_PyTorch_Official, imported unmodified from ``--official-src`` by
  the shared driver ``drive_gru4rec_official.py`` (``--official-driver``), run by
  ``--official-python`` (a separate venv with ``numpy<2``, which the official code needs). Same
  data file (the events are written once as a ``SessionId, ItemId, Time`` TSV that both legs
  read), same parameters (the same parameter string), same number of epochs, seed and
  ``torch.set_num_threads``. Without ``--official-src`` / ``--official-python`` (or their
  environment variables ``GRU4REC_OFFICIAL_SRC`` / ``GRU4REC_OFFICIAL_PYTHON``) the leg is
  skipped with one line saying why, and no ratio to the official implementation is printed;
* **baseline** (``--baseline``): the package as of git revision ``--baseline-ref``, extracted
  read-only (``git archive``) into a temporary folder and imported from there by the same child.

Reported per run: seconds per epoch, mini-batches/s and targets/s (every event that has a next
event in its session is one target), each the median over the run's epochs (``best`` = fastest
epoch). Each implementation times its own epochs the same way, from the start to the end of the
epoch's loop over its mini-batches; the driver reads the official's from its epoch line
(seconds and mini-batches/s with 2 decimals, so its ``mb/epoch`` is approximate). The official's
printed ``e/s`` counts ``batch_size`` rows for every mini-batch, also the last, partly empty ones,
so its targets/s here is the data's number of targets (as counted by ours) / its epoch seconds.
Further:

* ``setup s``: wall time of ``fit`` minus the time of its epochs (grouping the events into
  sessions, network initialisation, the negative-sample store, planning the epoch);
* ``peak RSS`` of the child (with ``--test``: evaluation included, in both legs);
* ``GFLOP/s`` = mini-batches/s x 3 x forward, forward = ``2 B 3 H (E + H)`` per GRU layer +
  ``2 B H (B + n_sample)`` for the output layer at the nominal ``B = batch_size`` (2.06 GFLOP per
  mini-batch for this configuration). ``exact`` (ours only) uses every step's true number of rows;
* the 1-minute load average before and after the run (the machine is shared);
* ``sgemm now``: what plain sgemm of the same shapes (the 8 GEMMs of one step, full
  ``B + n_sample`` output columns) reaches at that moment with the same thread count, measured in
  the parent right before the run (``--sgemm-seconds``), and the ratio of the run's GFLOP/s to it;
* with ``--test``: Recall@20 and MRR@20 of both legs (full ranking, ``standard`` ties), a check
  that both trained the same configuration. Without it the driver, which always evaluates, gets
  the first 64 training sessions as a dummy test set and its metrics are not shown.

The summary gives, per loss and thread count, the median over the runs of every leg and the
speed ratios computed from the runs of this invocation only (official s/epoch / ours s/epoch).

Setup of the official leg (outside the project; never copy the reference code into it)::

    git --git-dir=<snapshot of hidasib/GRU4Rec_PyTorch_Official> archive HEAD \
        | tar x -C ../refrun/src/GRU4Rec_PyTorch_Official
    python3 -m venv ../refrun/venv_gru4rec
    ../refrun/venv_gru4rec/bin/pip install torch==2.13.0 "numpy<2" pandas

Examples::

    export GRU4REC_OFFICIAL_SRC=../refrun/src/GRU4Rec_PyTorch_Official
    export GRU4REC_OFFICIAL_PYTHON=../refrun/venv_gru4rec/bin/python
    .venv/bin/python benchmarks/gru4rec_train_speed.py --repeat 3          # both losses
    .venv/bin/python benchmarks/gru4rec_train_speed.py --loss bpr-max --threads 1,2 --repeat 3
    .venv/bin/python benchmarks/gru4rec_train_speed.py --baseline --json benchmarks/out/t.json
    # a real split: the first 100k training events of the SR-GNN Diginetica file
    .venv/bin/python benchmarks/gru4rec_train_speed.py --max-events 100000 \
        --train ../shared/data/real/diginetica_srgnn/diginetica_srgnn_sessions.tsv.gz
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "benchmarks" / "data"
BASELINE_REF = "a11f510"  # the commit before the training speed-ups
DRIVER = ROOT.parent / "shared" / "reference" / "drive_gru4rec_official.py"
COLUMNS = ["SessionId", "ItemId", "Time"]
#: the losses and parameter names the official implementation has (``GRU4Rec.__init__``)
OFFICIAL_LOSSES = ("bpr-max", "cross-entropy")
OFFICIAL_PARAMS = {
    "layers", "loss", "batch_size", "dropout_p_embed", "dropout_p_hidden", "learning_rate",
    "momentum", "sample_alpha", "n_sample", "embedding", "constrained_embedding", "n_epochs",
    "bpreg", "elu_param", "logq",
}  # fmt: skip
DUMMY_TEST_SESSIONS = 64


def forward_flops(batch: int, layers: list[int], n_input: int, n_sample: int) -> float:
    """FLOPs of one forward pass: GRU layers + output layer (the issue's count)."""
    flops = 0.0
    width = n_input
    for size in layers:
        flops += 2.0 * batch * 3 * size * (width + size)
        width = size
    return flops + 2.0 * batch * layers[-1] * (batch + n_sample)


# ------------------------------------------------------------------------------------- data


def synthetic_tsv(n_events: int, n_items: int, seed: int, tag: str = "synth") -> Path:
    """Synthetic events as a ``SessionId, ItemId, Time`` TSV, cached under ``benchmarks/data``.

    The one file both implementations read.
    """
    path = DATA_DIR / f"gru4rec_{tag}_{n_events}_{n_items}_{seed}.tsv"
    if path.exists():
        return path
    from recsys_pipeline.synthetic.sessions import SyntheticConfig, generate_events

    events, _ = generate_events(
        SyntheticConfig(
            n_events=n_events, n_items=n_items, n_users=max(1, n_events // 10), seed=seed
        )
    )
    frame = events.select(
        events["session"].alias("SessionId"),
        events["item"].alias("ItemId"),
        events["ts_ms"].alias("Time"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    frame.write_csv(tmp, separator="\t")
    tmp.replace(path)
    return path


def load_events(path: Path, split: str, max_events: int = 0) -> Any:
    """``SessionId, ItemId, Time`` events of a TSV / CSV (optionally .gz) or parquet file.

    The SR-GNN session form (``SessionId, ItemId, Pos, Split``, e.g.
    ``diginetica_srgnn_sessions.tsv.gz``) is read as ``gru4rec_diginetica_srgnn.py`` reads it:
    sessions by ``SessionId``, events by ``Pos``, ``Time`` = the running row index, only the rows
    of ``split``. ``max_events > 0`` keeps the leading sessions (in file order) whose events add
    up to at most that many.

    Returns:
        a polars frame with the three columns.
    """
    import polars as pl

    if path.name.endswith(".parquet"):
        frame = pl.read_parquet(path)
    else:
        sep = "," if ".csv" in path.name else "\t"
        frame = pl.read_csv(path, separator=sep)
    if "Pos" in frame.columns and "Split" in frame.columns:
        frame = (
            frame.sort(["SessionId", "Pos"])
            .with_row_index("Time")
            .with_columns(pl.col("Time").cast(pl.Int64))
            .filter(pl.col("Split") == split)
        )
    frame = frame.select(COLUMNS)
    if max_events > 0:
        lengths = frame.group_by("SessionId", maintain_order=True).len()
        keep = lengths.filter(pl.col("len").cum_sum() <= max_events)["SessionId"]
        frame = frame.filter(pl.col("SessionId").is_in(keep.implode()))
    return frame


def write_tsv(frame: Any, path: Path) -> Path:
    frame.write_csv(path, separator="\t")
    return path


def describe_data(path: Path) -> str:
    import polars as pl

    frame = pl.read_csv(path, separator="\t")
    return (
        f"{path} ({frame.height} events, {frame['SessionId'].n_unique()} sessions, "
        f"{frame['ItemId'].n_unique()} items)"
    )


# ----------------------------------------------------------------------------- subprocesses


def run_process(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[str, float]:
    """Run ``cmd`` to the end; its output and its own peak RSS in GiB (``os.wait4``)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"child failed: {' '.join(cmd)}\n{text}")
    return text, usage.ru_maxrss * 1024 / 2**30  # Linux: KiB


def extract_baseline(ref: str, into: Path) -> Path:
    """The package ``src/`` as of git ``ref`` under ``into`` (read-only git commands only)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def add_official_options(parser: argparse.ArgumentParser) -> None:
    """``--official-src``, ``--official-python``, ``--official-driver`` (shared by both scripts)."""
    parser.add_argument(
        "--official-src",
        default=os.environ.get("GRU4REC_OFFICIAL_SRC") or os.environ.get("OFFICIAL_GRU4REC_DIR"),
        help="folder with the official gru4rec_pytorch.py (env GRU4REC_OFFICIAL_SRC)",
    )
    parser.add_argument(
        "--official-python",
        default=os.environ.get("GRU4REC_OFFICIAL_PYTHON"),
        help="python of a venv with torch, numpy<2, pandas (env GRU4REC_OFFICIAL_PYTHON)",
    )
    parser.add_argument(
        "--official-driver",
        type=Path,
        default=Path(os.environ.get("GRU4REC_OFFICIAL_DRIVER", DRIVER)),
        help=f"the shared driver (env GRU4REC_OFFICIAL_DRIVER; default {DRIVER})",
    )


def official_unavailable(args: argparse.Namespace) -> str | None:
    """Why the official leg cannot run (``None``: it can)."""
    if not args.official_src:
        return "no --official-src / GRU4REC_OFFICIAL_SRC"
    if not (Path(args.official_src) / "gru4rec_pytorch.py").is_file():
        return f"no gru4rec_pytorch.py in {args.official_src}"
    if not args.official_python:
        return "no --official-python / GRU4REC_OFFICIAL_PYTHON (a venv with numpy<2)"
    if not os.access(args.official_python, os.X_OK):
        return f"{args.official_python} is not an executable"
    if not Path(args.official_driver).is_file():
        return f"driver {args.official_driver} not found"
    return None


def run_official(
    args: argparse.Namespace,
    params: dict[str, str],
    *,
    train: Path,
    test: Path,
    threads: int,
    cutoffs: str,
    eval_batch: int,
    eval_mode: str,
    work: Path,
) -> tuple[dict, float]:
    """One run of the official implementation through the shared driver.

    Returns:
        the driver's JSON record and the driver process's peak RSS in GiB.
    """
    params = dict(params)
    store = params.pop("sample_store_size", None)
    json_out = work / f"official_{time.monotonic_ns()}.json"
    cmd = [
        # absolute (the driver runs in ``work``); abspath, not resolve: a venv's python is a link
        os.path.abspath(args.official_python), os.path.abspath(args.official_driver),
        "--official-dir", os.path.abspath(args.official_src),
        "--train", str(train), "--test", str(test),
        "--params", ",".join(f"{k}={v}" for k, v in params.items()),
        "--threads", str(threads), "--seed", str(args.seed), "--cutoffs", cutoffs,
        "--eval-batch", str(eval_batch), "--eval-mode", eval_mode, "--json-out", str(json_out),
    ]  # fmt: skip
    if store is not None:
        cmd += ["--sample-store-size", str(store)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _, rss = run_process(cmd, env, work)
    record = json.loads(json_out.read_text())
    json_out.unlink()
    if record["torch_threads"] != threads:
        raise RuntimeError(f"official run used {record['torch_threads']} threads, not {threads}")
    return record, rss


def parse_params(text: str) -> dict[str, str]:
    """run.py syntax ``name=value,name=value`` -> dict (values kept as text)."""
    return dict(x.split("=", 1) for x in text.split(",") if x.strip())


# ------------------------------------------------------------------------------------ child


def sgemm_reference(batch: int, size: int, n_input: int, n_sample: int, seconds: float) -> float:
    """GFLOP/s of the 8 plain GEMMs of one training step of a one-layer network (forward: input
    and hidden projections, scores over ``B + n_sample`` columns; backward: the five gradient
    GEMMs), with the shapes of the FLOP count, at the current thread setting: best of several
    rounds of about ``seconds`` in all. What the machine's sgemm gives right now."""
    import torch

    n_out = batch + n_sample
    x, h = torch.randn(batch, n_input), torch.randn(batch, size)
    wx, wh = torch.randn(n_input, 3 * size) * 0.05, torch.randn(size, 3 * size) * 0.05
    bias, rows = torch.zeros(3 * size), torch.randn(n_out, size) * 0.05
    g_scores, g_gates = torch.randn(batch, n_out), torch.randn(batch, 3 * size)
    out = {k: torch.empty(*shape) for k, shape in {
        "gx": (batch, 3 * size), "gh": (batch, 3 * size), "s": (batch, n_out),
        "go": (n_out, size), "gh2": (batch, size), "gwx": (n_input, 3 * size),
        "gwh": (size, 3 * size), "gxin": (batch, n_input),
    }.items()}  # fmt: skip

    def step() -> None:
        torch.addmm(bias, x, wx, out=out["gx"])
        torch.mm(h, wh, out=out["gh"])
        torch.mm(h, rows.T, out=out["s"])
        torch.mm(g_scores.T, h, out=out["go"])
        torch.mm(g_scores, rows, out=out["gh2"])
        torch.mm(x.T, g_gates, out=out["gwx"])
        torch.mm(h.T, g_gates, out=out["gwh"])
        torch.mm(g_gates, wx.T, out=out["gxin"])

    flop = 3 * forward_flops(batch, [size], n_input, n_sample)
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    step()
    per_step = max(time.perf_counter() - t0, 1e-6)
    n = max(1, int(seconds / 5 / per_step))
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        best = max(best, n * flop / (time.perf_counter() - t0) / 1e9)
    return best


def run_child(args: argparse.Namespace) -> None:
    """Train once (ours) and print one JSON line with the figures (runs in a fresh process)."""
    t_import = time.perf_counter()
    import numpy as np
    import polars as pl
    import torch

    torch.set_num_threads(args.threads)
    import recsys_pipeline
    from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
    from recsys_pipeline.training.session_iterator import plan_epoch, sessions_from_frame

    import_s = time.perf_counter() - t_import
    train = pl.read_csv(args.data, separator="\t")
    params = GRU4RecParams.from_string(f"{args.params},device=cpu,seed={args.seed}")
    model = GRU4Rec(params)
    t0 = time.perf_counter()
    model.fit(train, progress=False)
    fit_s = time.perf_counter() - t0
    epochs = model.history
    setup_s = fit_s - sum(s.seconds for s in epochs)
    metrics = {}
    if args.test is not None:
        from recsys_pipeline.evaluation import evaluate

        test = pl.read_csv(args.test, separator="\t")
        result = evaluate(model, test, cutoffs=(20,), mode="standard", progress=False)
        metrics = {"recall@20": float(result["recall@20"]), "mrr@20": float(result["mrr@20"])}

    # the true size of every step, for the exact FLOP count (not timed)
    data = sessions_from_frame(train)
    order = data.session_order(params.time_sort)
    plan = plan_epoch(data.items, data.offsets, order, params.batch_size)
    sizes = np.diff(plan.step_offsets)
    n_input = params.layers[-1] if params.embedding_mode == "shared" else params.embedding
    exact = sum(
        3 * forward_flops(int(b), params.layers, n_input, params.n_sample) * int(c)
        for b, c in zip(*np.unique(sizes, return_counts=True), strict=True)
    )
    nominal = 3 * forward_flops(params.batch_size, params.layers, n_input, params.n_sample)
    out = {
        "threads": torch.get_num_threads(),
        "package": str(Path(recsys_pipeline.__file__).parent),
        "import_s": import_s,
        "fit_s": fit_s,
        "setup_s": setup_s,
        "n_batches": epochs[0].n_batches,
        "n_targets": epochs[0].n_targets,
        "n_items": model.n_items,
        "gflop_per_batch": nominal / 1e9,
        "gflop_per_epoch_exact": exact / 1e9,
        "metrics": metrics,
        "epochs": [
            {
                "seconds": s.seconds,
                "loss": s.loss,
                "mb_s": s.n_batches / s.seconds,
                "targets_s": s.n_targets / s.seconds,
            }
            for s in epochs
        ],
    }
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------- parent


def measure_ours(
    args: argparse.Namespace, params: dict[str, str], threads: int, src: Path, data: dict
) -> dict:
    cmd = [
        sys.executable, __file__, "--run-child", "--threads", str(threads),
        "--params", ",".join(f"{k}={v}" for k, v in params.items()),
        "--data", str(data["train"]), "--seed", str(args.seed),
    ]  # fmt: skip
    if data["test"] is not None:
        cmd += ["--test", str(data["test"])]
    return launch_child(cmd, src)


def launch_child(cmd: list[str], src: Path) -> dict:
    """Run a ``--run-child`` command with the package at ``src`` first on ``PYTHONPATH``; its
    ``RESULT {json}`` line, plus the child's ``peak_rss_gib``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    text, rss = run_process(cmd, env, ROOT)
    line = next(x for x in text.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["peak_rss_gib"] = rss
    return result


def measure_official(
    args: argparse.Namespace,
    params: dict[str, str],
    threads: int,
    data: dict,
    work: Path,
    n_targets: int,
) -> dict:
    """One official run; ``n_targets``: targets per epoch of this data (from ours' run).

    The official's own ``e/s`` counts ``batch_size`` rows for every mini-batch, the last, partly
    empty ones included (``fit`` never updates its ``n_valid``), so targets/s is computed here as
    ``n_targets`` / the epoch's seconds; the printed figure is kept as ``e_s_printed``.
    """
    test = data["test"] if data["test"] is not None else data["dummy_test"]
    rec, rss = run_official(
        args, params, train=data["train"], test=test, threads=threads, cutoffs="20",
        eval_batch=512, eval_mode="standard", work=work,
    )  # fmt: skip
    epochs = [
        {"seconds": e["seconds"], "loss": e["loss"], "mb_s": e["mb_per_s"],
         "targets_s": n_targets / e["seconds"], "e_s_printed": e["events_per_s"]}
        for e in rec["epochs"]
    ]  # fmt: skip
    if len(epochs) != int(params["n_epochs"]):
        raise RuntimeError(f"official run reported {len(epochs)} epochs: {rec}")
    first = rec["epochs"][0]
    metrics = {}
    if data["test"] is not None:
        metrics = {"recall@20": rec["recall"]["20"], "mrr@20": rec["mrr"]["20"]}
    return {
        "threads": rec["torch_threads"],
        "package": str(Path(args.official_src).resolve()),
        "versions": rec["versions"],
        "fit_s": rec["train_total_s"],
        "setup_s": rec["setup_overhead_s"],
        # from the official's rounded rates: approximate
        "n_batches": round(first["mb_per_s"] * first["seconds"]),
        "n_targets": n_targets,
        "n_items": rec["train_items"],
        "metrics": metrics,
        "epochs": epochs,
        "peak_rss_gib": rss,
    }


def measure(
    args: argparse.Namespace, loss: str, threads: int, impl: str, src: Path | None, data: dict,
    work: Path, n_targets: int = 0,
) -> dict:  # fmt: skip
    """One run of ``impl`` (``baseline``, ``current`` or ``official``) with the figures."""
    params = {"loss": loss, "layers": "512", "batch_size": "128", "n_sample": "2048"}
    params.update(parse_params(args.params))
    params["n_epochs"] = str(args.epochs)
    sgemm = 0.0
    if args.sgemm_seconds > 0:  # in this (parent) process, right before the run
        import torch

        torch.set_num_threads(threads)
        sgemm = sgemm_reference(128, 512, 512, 2048, args.sgemm_seconds)
    load_before = os.getloadavg()[0]
    if impl == "official":
        result = measure_official(args, params, threads, data, work, n_targets)
    else:
        assert src is not None
        result = measure_ours(args, params, threads, src, data)
    result.update(loss=loss, impl=impl, load_before=load_before, load_after=os.getloadavg()[0])
    result["sgemm_gflops"] = sgemm
    epochs = result["epochs"]
    result["s_epoch"] = statistics.median(e["seconds"] for e in epochs)
    result["mb_s"] = statistics.median(e["mb_s"] for e in epochs)
    result["mb_s_best"] = max(e["mb_s"] for e in epochs)
    result["targets_s"] = statistics.median(e["targets_s"] for e in epochs)
    return result


def add_gflops(r: dict, gflop_per_batch: float) -> None:
    """GFLOP/s by the nominal count (the official leg gets ours' count of the same config)."""
    r.setdefault("gflop_per_batch", gflop_per_batch)
    r["gflops"] = r["mb_s"] * r["gflop_per_batch"]
    r["gflops_best"] = r["mb_s_best"] * r["gflop_per_batch"]
    if "gflop_per_epoch_exact" in r:
        r["gflops_exact"] = r["gflop_per_epoch_exact"] / r["s_epoch"]


def describe(r: dict) -> str:
    exact = f", exact {r['gflops_exact']:6.1f}" if "gflops_exact" in r else ""
    approx = "~" if r["impl"] == "official" else ""
    metrics = "".join(f" | {k} {v:.4f}" for k, v in r["metrics"].items())
    sgemm = "sgemm now -"
    if r["sgemm_gflops"] > 0:
        sgemm = (
            f"sgemm now {r['sgemm_gflops']:5.1f} GFLOP/s (x{r['gflops'] / r['sgemm_gflops']:.2f})"
        )
    return (
        f"{r['loss']:>13} {r['impl']:>8} t={r['threads']} | {r['s_epoch']:7.2f} s/epoch | "
        f"{r['mb_s']:6.2f} mb/s (best {r['mb_s_best']:6.2f}, {approx}{r['n_batches']} mb/epoch) | "
        f"{r['targets_s']:7.0f} targets/s | {r['gflops']:6.1f} GFLOP/s (best "
        f"{r['gflops_best']:6.1f}{exact}) | setup {r['setup_s']:.3f} s | "
        f"peak RSS {r['peak_rss_gib']:.3f} GiB | {sgemm}"
        f" | load {r['load_before']:.2f}->{r['load_after']:.2f}{metrics}"
    )


def summarise(results: list[dict]) -> list[dict]:
    """Per (loss, threads, impl): medians over the runs of this invocation."""
    rows = []
    for key in dict.fromkeys((r["loss"], r["threads"], r["impl"]) for r in results):
        runs = [r for r in results if (r["loss"], r["threads"], r["impl"]) == key]
        row = {"loss": key[0], "threads": key[1], "impl": key[2], "runs": len(runs)}
        for name in ("s_epoch", "mb_s", "targets_s", "gflops", "setup_s", "peak_rss_gib"):
            row[name] = statistics.median(r[name] for r in runs)
        row["s_epoch_runs"] = [round(r["s_epoch"], 3) for r in runs]
        rows.append(row)
    return rows


def ratio_lines(rows: list[dict]) -> list[str]:
    """Speed ratios between the implementations measured in this invocation (s/epoch medians)."""
    lines = []
    for loss, threads in dict.fromkeys((r["loss"], r["threads"]) for r in rows):
        by = {r["impl"]: r for r in rows if (r["loss"], r["threads"]) == (loss, threads)}
        pairs = [("current", "official"), ("baseline", "official"), ("current", "baseline")]
        for a, b in pairs:
            if a in by and b in by:
                ra, rb = by[a], by[b]
                lines.append(
                    f"  {loss:>13} t={threads}: {a} / {b} speed = {rb['s_epoch'] / ra['s_epoch']:.2f}x"
                    f" ({b} {rb['s_epoch']:.2f} s/epoch over {ra['s_epoch']:.2f}; medians of "
                    f"{rb['runs']} and {ra['runs']} run(s) of this invocation)"
                )
    return lines


def prepare_data(args: argparse.Namespace, work: Path) -> dict:
    """The TSV files both legs read: ``train``, ``test`` (or ``None``) and ``dummy_test``."""
    import polars as pl

    if args.train is None:
        train = synthetic_tsv(args.events, args.items, args.seed)
    else:
        train = write_tsv(load_events(args.train, "train", args.max_events), work / "train.tsv")
    test = None
    if args.test is not None:
        test = write_tsv(load_events(args.test, "test", args.max_test_events), work / "test.tsv")
    frame = pl.read_csv(train, separator="\t")
    first = frame["SessionId"].unique(maintain_order=True).head(DUMMY_TEST_SESSIONS)
    dummy = write_tsv(
        frame.filter(pl.col("SessionId").is_in(first.implode())), work / "dummy_test.tsv"
    )
    return {"train": train, "test": test, "dummy_test": dummy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", default="bpr-max,cross-entropy", help="comma-separated")
    parser.add_argument("--events", type=int, default=100_000, help="synthetic events")
    parser.add_argument("--items", type=int, default=3_000, help="synthetic items")
    parser.add_argument(
        "--train",
        type=Path,
        help="real training events instead of synthetic ones: TSV / CSV (.gz) or parquet with "
        "SessionId, ItemId, Time, or the SR-GNN form (SessionId, ItemId, Pos, Split)",
    )
    parser.add_argument("--test", type=Path, help="test events: evaluate both legs (Recall@20)")
    parser.add_argument("--max-events", type=int, default=0, help="prefix of --train (sessions)")
    parser.add_argument("--max-test-events", type=int, default=0, help="prefix of --test")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", default="2", help="comma-separated, e.g. 1,2")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (runs per configuration)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--params", default="", help="extra GRU4Rec parameters, name=value,...")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--baseline", action="store_true", help="also run --baseline-ref")
    parser.add_argument("--baseline-ref", default=BASELINE_REF)
    parser.add_argument("--no-official", action="store_true", help="skip the official leg")
    add_official_options(parser)
    parser.add_argument(
        "--sgemm-seconds", type=float, default=3.0, help="time for the sgemm reference (0: skip)"
    )
    parser.add_argument("--run-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_child:
        args.threads = int(args.threads)
        run_child(args)
        return

    losses = [x.strip() for x in args.loss.split(",") if x.strip()]
    thread_counts = [int(x) for x in args.threads.split(",")]
    unknown = sorted(set(parse_params(args.params)) - OFFICIAL_PARAMS - {"sample_store_size"})
    skip_official = "--no-official" if args.no_official else official_unavailable(args)
    if skip_official is None and unknown:
        skip_official = f"--params sets {', '.join(unknown)}, which it does not have"
    if skip_official:
        print(f"official GRU4Rec: skipped ({skip_official}); no ratio to it is printed")
    else:
        print(f"official GRU4Rec: {Path(args.official_src).resolve()} via {args.official_driver}")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gru4rec_speed_") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = prepare_data(args, work)
        print(f"data: {describe_data(data['train'])} ({time.perf_counter() - t0:.1f} s)")
        if data["test"] is not None:
            print(f"test: {describe_data(data['test'])}")
        impls: list[tuple[str, Path | None]] = [("current", ROOT / "src")]
        if args.baseline:
            base = work / "baseline"
            base.mkdir()
            impls.insert(0, ("baseline", extract_baseline(args.baseline_ref, base)))
        if not skip_official:
            impls.append(("official", None))
        gflop_per_batch: dict[str, float] = {}  # per loss, from ours' runs (same config)
        n_targets: dict[str, int] = {}
        for repeat in range(args.repeat):
            for loss in losses:
                for threads in thread_counts:
                    for impl, src in impls:
                        if impl == "official" and loss not in OFFICIAL_LOSSES:
                            if repeat == 0 and threads == thread_counts[0]:
                                print(f"official GRU4Rec: skipped for loss {loss} (it has none)")
                            continue
                        r = measure(
                            args, loss, threads, impl, src, data, work, n_targets.get(loss, 0)
                        )
                        r["repeat"] = repeat
                        if impl == "current":
                            gflop_per_batch[loss] = r["gflop_per_batch"]
                            n_targets[loss] = r["n_targets"]
                        add_gflops(r, gflop_per_batch.get(loss, float("nan")))
                        results.append(r)
                        print(describe(r), flush=True)
    ours = next(r for r in results if r["impl"] == "current")
    print(
        f"\nours: {ours['n_targets']} targets/epoch, {ours['n_batches']} mini-batches,"
        f" {ours['n_items']} items; {ours['gflop_per_batch']:.3f} GFLOP per "
        f"mini-batch; {os.cpu_count()} CPUs; own peak RSS (parent) "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.3f} GiB"
    )
    rows = summarise(results)
    print("summary (median over the runs of this invocation; each run: median of its epochs):")
    for row in rows:
        print(
            f"  {row['loss']:>13} {row['impl']:>8} t={row['threads']}: {row['runs']} run(s) | "
            f"{row['s_epoch']:7.2f} s/epoch {row['s_epoch_runs']} | {row['mb_s']:6.2f} mb/s | "
            f"{row['targets_s']:7.0f} targets/s | {row['gflops']:6.1f} GFLOP/s | "
            f"setup {row['setup_s']:.3f} s | peak RSS {row['peak_rss_gib']:.3f} GiB"
        )
    lines = ratio_lines(rows)
    if lines:
        print("speed ratios (measured side by side in this invocation):")
        print("\n".join(lines))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"runs": results, "summary": rows, "ratios": lines, "argv": sys.argv[1:]},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
