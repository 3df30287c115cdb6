"""A short version of ``benchmarks/sasrec_reference.py``: SASRec on SASRec's own ``Video.txt``
with the reference configuration for 2 epochs, under the reference's sampled protocol, against
the reference port's figures at 2 epochs (pmixer/SASRec.pytorch at 9f6a02b, the original
layout, run unmodified by ``../shared/reference/drive_pmixer.py``: seeds 1 and 2, 1 thread,
measured 2026-12-06 here; the full comparison runs 100 epochs). Skipped without ``../shared``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys_pipeline.datasets.sequences import read_sequences
from recsys_pipeline.evaluation.last_item import evaluate_last_item
from recsys_pipeline.models.sasrec import SASRec, SASRecParams
from recsys_pipeline.preprocessing.sequences import leave_one_out

VIDEO = Path(__file__).resolve().parents[3] / "shared/data/real/amazon_video_games_sasrec/Video.txt"
#: the reference's mean test figures after 2 epochs (sampled-100, 10,000 users), seeds 1-2
REFERENCE_2_EPOCHS = {"sampled100_ndcg@10": (0.2730 + 0.2769) / 2,
                      "sampled100_hr@10": (0.4778 + 0.4748) / 2}  # fmt: skip
#: seeds and samples move these figures by ~1.5 % at 2 epochs; the 100-epoch goal is 2 %
TOLERANCE = 0.05


@pytest.mark.slow
def test_two_epochs_on_video_score_like_the_reference() -> None:
    if not VIDEO.is_file():
        pytest.skip(f"real data not available: {VIDEO} (the ../shared folder is absent)")
    torch.set_num_threads(1)
    split = leave_one_out(read_sequences("pairs", VIDEO.parent, VIDEO.name), min_items=3)
    key = {"UserId": "SessionId"}
    train, valid, test = (f.rename(key) for f in (split.train, split.valid, split.test))
    params = SASRecParams(maxlen=50, hidden_units=50, num_blocks=2, num_heads=1,
                          dropout_rate=0.5, lr=0.001, batch_size=128, num_epochs=2, seed=1,
                          device="cpu")  # fmt: skip
    model = SASRec(params).fit(train, progress=False)
    result = evaluate_last_item(
        model, train, targets=test, append=valid, ranking="sampled", n_negatives=100,
        max_users=10_000, cutoffs=(10,), user_key="SessionId", seed=1,
    )  # fmt: skip
    for name, reference in REFERENCE_2_EPOCHS.items():
        assert abs(result[name] / reference - 1) <= TOLERANCE, (name, result[name], reference)
