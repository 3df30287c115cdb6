"""Accuracy reproduction of the official GRU4Rec on the Diginetica sample (support >= 2 split).

Both losses x seeds 1, 2, 3 (10 epochs each, several minutes on a CPU): the mean of ours must be
within two reference standard deviations or 5 % of the reference mean, whichever is wider, on
R@20 and MRR@20. The configurations, the reference numbers and the runner live in
``benchmarks/gru4rec_diginetica_reproduction.py`` (which also prints the per-seed table); the
data in ``../shared`` (skipped when absent).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"
SCRIPT = ROOT / "benchmarks" / "gru4rec_diginetica_reproduction.py"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gru4rec_diginetica_reproduction", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _benchmark()


@pytest.fixture(scope="module")
def split():
    path = bench.data_file(SHARED)
    if not path.is_file():
        pytest.skip(f"real data not available: {path} (the ../shared folder is absent)")
    return bench.load_split(SHARED)


def test_tolerance_rule():
    assert bench.tolerance(0.427, 0.004) == pytest.approx(0.05 * 0.427)  # 5 % is wider
    assert bench.tolerance(0.343, 0.026) == pytest.approx(0.052)  # 2 sd is wider


@pytest.mark.slow
def test_split_is_the_reference_split(split):
    _, _, stats = split
    assert stats == bench.EXPECTED_SPLIT


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["bpr-max", "cross-entropy"])
def test_mean_of_three_seeds_is_within_tolerance_of_the_official_implementation(loss, split):
    train, test, _ = split
    rows = bench.run_all([loss], [1, 2, 3], train, test, device="auto")
    assert all(r["n_targets"] == bench.EXPECTED_SPLIT["targets"] for r in rows)
    summary = bench.summarise(rows)[loss]
    report = bench.format_report(rows, {loss: summary})
    failures = [
        f"{metric}: ours {s['mean']:.4f} vs reference {s['reference_mean']:.3f} "
        f"+- {s['tolerance']:.4f} (diff {s['difference']:+.4f})"
        for metric, s in summary.items()
        if not s["within"]
    ]
    assert not failures, f"{loss}: " + "; ".join(failures) + "\n" + report
