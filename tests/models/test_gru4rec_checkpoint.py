"""GRU4Rec's per-epoch checkpoints: an interrupted fit resumes after its last finished epoch and
ends with exactly the weights and optimizer state of an uninterrupted fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.training.loop import CHECKPOINT_FILE
from tests.models.behaviour import successor_sessions

pytestmark = pytest.mark.usefixtures("single_torch_thread")

PARAMS = GRU4RecParams.from_string(
    "layers=16,n_epochs=4,batch_size=16,n_sample=32,dropout_p_hidden=0.3,device=cpu,"
    "train_random_order=True"
)


class Stop(Exception):
    pass


def _stop_after(epoch: int):
    def callback(stats) -> None:
        if stats.epoch == epoch:
            raise Stop

    return callback


def _equal(a: GRU4Rec, b: GRU4Rec) -> bool:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    oa, ob = a.optimizer_state_dict(), b.optimizer_state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa) and all(torch.equal(oa[k], ob[k]) for k in oa)


@pytest.fixture(scope="module")
def train():
    return successor_sessions(50, 400, 1, min_len=2, max_len=10)


def test_interrupted_fit_resumes_after_the_last_finished_epoch(train, tmp_path: Path, caplog):
    full = GRU4Rec(PARAMS).fit(train, progress=False)
    with pytest.raises(Stop):  # killed after epoch 2's checkpoint was written
        GRU4Rec(PARAMS).fit(train, progress=False, checkpoint_dir=tmp_path, callback=_stop_after(2))
    assert (tmp_path / CHECKPOINT_FILE).is_file()
    with caplog.at_level("INFO", logger="recsys_pipeline.models.gru4rec"):
        resumed = GRU4Rec(PARAMS).fit(train, progress=False, checkpoint_dir=tmp_path)
    assert "continuing at epoch 3 of 4" in caplog.text
    assert [s.epoch for s in resumed.history] == [1, 2, 3, 4]
    assert [s.loss for s in resumed.history] == [s.loss for s in full.history]
    assert _equal(full, resumed)
    assert not (tmp_path / CHECKPOINT_FILE).exists()  # removed once training ended


def test_a_checkpoint_of_other_parameters_or_data_is_not_resumed(train, tmp_path: Path, caplog):
    with pytest.raises(Stop):
        GRU4Rec(PARAMS).fit(train, progress=False, checkpoint_dir=tmp_path, callback=_stop_after(1))
    other = GRU4RecParams.from_dict(PARAMS.to_dict() | {"learning_rate": 0.1})
    with caplog.at_level("WARNING"):
        model = GRU4Rec(other).fit(train, progress=False, checkpoint_dir=tmp_path)
    assert "belongs to another run" in caplog.text
    assert _equal(model, GRU4Rec(other).fit(train, progress=False))
    with pytest.raises(Stop):
        GRU4Rec(PARAMS).fit(train, progress=False, checkpoint_dir=tmp_path, callback=_stop_after(1))
    fewer = train.filter(train["SessionId"] != train["SessionId"][0])
    caplog.clear()
    with caplog.at_level("WARNING"):
        GRU4Rec(PARAMS).fit(fewer, progress=False, checkpoint_dir=tmp_path)
    assert "belongs to another run" in caplog.text
