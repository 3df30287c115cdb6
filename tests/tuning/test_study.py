"""RDB studies: resume after a kill, retry of interrupted trials, signature and storage checks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from recsys_pipeline.tuning import StudySettings, TuningError, open_study, optimize
from recsys_pipeline.tuning.study import make_pruner

WORKER = Path(__file__).with_name("toy_worker.py")


def _states(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _start(url: str, name: str, n: int, epoch_s: float = 0.3) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), url, name, str(n), str(epoch_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_study_resumes_after_a_kill_and_retries_the_interrupted_trial(tmp_path):
    url, name = f"sqlite:///{tmp_path / 'study.db'}", "killed"
    proc = _start(url, name, 5, epoch_s=0.4)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for: >= 1 complete trial and one running
        time.sleep(0.2)
        try:
            trials = _states(url, name)
        except KeyError:  # study not created yet
            continue
        states = [t.state for t in trials]
        # the running trial must have its parameters already (a trial killed between its
        # creation and its first suggestion has none to retry with)
        if TrialState.COMPLETE in states and states[-1] == TrialState.RUNNING and trials[-1].params:
            break
    else:
        proc.kill()
        pytest.fail("worker made no progress: " + proc.communicate()[0].decode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [t for t in _states(url, name) if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    killed_trial = killed[0]
    time.sleep(2.5)  # longer than the grace period: the trial is stale now

    out = subprocess.run(
        [sys.executable, str(WORKER), url, name, "5", "0.05"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    trials = _states(url, name)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 5  # nothing lost, nothing run twice
    assert len({t.number for t in trials}) == len(trials)
    by_number = {t.number: t for t in trials}
    assert by_number[killed_trial.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_trial.number]
    assert len(retries) == 1 and retries[0].params == killed_trial.params
    assert retries[0].state == TrialState.COMPLETE

    # a third run finds the work done and runs nothing
    subprocess.run([sys.executable, str(WORKER), url, name, "5"], check=True, timeout=300)
    assert len(_states(url, name)) == len(trials)


def _kill_while_running(
    url: str, name: str, n_trials: int, n_complete: int
) -> optuna.trial.FrozenTrial:
    """Start a worker, SIGKILL it while trial ``n_complete`` runs (``n_complete`` complete
    before it, its parameters drawn); the killed trial."""
    proc = _start(url, name, n_trials, epoch_s=0.5)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.1)
        try:
            trials = _states(url, name)
        except KeyError:
            continue
        states = [t.state for t in trials]
        if (states.count(TrialState.COMPLETE) == n_complete and states[-1] == TrialState.RUNNING
                and trials[-1].params and trials[-1].user_attrs.get("worker")):  # fmt: skip
            break
        if states.count(TrialState.COMPLETE) > n_complete:
            proc.kill()
            pytest.fail("missed the moment to kill")
    else:
        proc.kill()
        pytest.fail("worker made no progress: " + proc.communicate()[0].decode())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    running = [t for t in _states(url, name) if t.state == TrialState.RUNNING]
    assert len(running) == 1
    return running[0]


def _resume(url: str, name: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    out = subprocess.run(
        [sys.executable, str(WORKER), url, name, str(n_trials), "0.02"],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    return _states(url, name)


def _assert_retried(
    trials: list[optuna.trial.FrozenTrial], killed: optuna.trial.FrozenTrial
) -> None:
    by_number = {t.number: t for t in trials}
    assert by_number[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state == TrialState.COMPLETE
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.parametrize("wait", [0.0, 2.5], ids=["rerun-at-once", "rerun-after-grace"])
def test_a_trial_killed_while_the_last_needed_one_runs_is_retried(tmp_path, wait):
    """The issue's sequence: n_trials=3, SIGKILL while trial 2 runs (0 and 1 complete), rerun:
    trial 2 is failed and retried with its parameters, at once (its process is gone from this
    host) as well as after the grace period; a further rerun runs nothing."""
    url, name = f"sqlite:///{tmp_path / 'study.db'}", "last"
    killed = _kill_while_running(url, name, 3, n_complete=2)
    time.sleep(wait)
    trials = _resume(url, name, 3)
    _assert_retried(trials, killed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    time.sleep(2.5)
    assert len(_resume(url, name, 3)) == len(trials)


def test_a_dead_trial_is_retried_when_the_study_is_already_full(tmp_path):
    """A worker on another host died while its trial ran and the study reached n_trials
    meanwhile (another worker finished one more): resuming after the grace period still fails
    and retries the dead trial (the early return used to leave it RUNNING for good)."""
    url, name = f"sqlite:///{tmp_path / 'study.db'}", "full"
    killed = _kill_while_running(url, name, 3, n_complete=2)
    study = optuna.load_study(study_name=name, storage=url)
    study._storage.set_trial_user_attr(killed._trial_id, "worker", "another-host:1")
    done = study.get_trials(states=(TrialState.COMPLETE,))[0]
    study.add_trial(optuna.trial.create_trial(
        params=done.params, distributions=done.distributions, value=-1.0))  # fmt: skip
    time.sleep(2.5)  # longer than the grace period
    trials = _resume(url, name, 3)
    _assert_retried(trials, killed)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


def _settings(tmp_path, **kwargs) -> StudySettings:
    return StudySettings(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", **kwargs)


def test_another_space_on_the_same_study_is_refused(tmp_path):
    study = open_study(_settings(tmp_path), {"space": [{"name": "layers"}], "metric": "mrr@20"})
    optimize(study, lambda t: t.suggest_float("x", 0, 1), 1)
    open_study(_settings(tmp_path), {"space": [{"name": "layers"}], "metric": "mrr@20"})
    with pytest.raises(TuningError, match=r"another setup; metric: study has 'mrr@20'"):
        open_study(_settings(tmp_path), {"space": [{"name": "layers"}], "metric": "recall@20"})
    with pytest.raises(TuningError, match="optimises maximize"):
        open_study(_settings(tmp_path, direction="minimize"), {"space": [], "metric": "mrr@20"})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://user:secret@127.0.0.1:9/optuna",  # nothing listens on port 9
        "sqlite:////nonexistent-dir/for/sure/s.db",
        "nosuchdialect://host/db",
    ],
)
def test_unreachable_storage_is_a_clear_error_without_the_password(url):
    settings = StudySettings(storage=url, study_name="s")
    with pytest.raises(TuningError, match="Optuna storage") as err:
        open_study(settings, {})
    assert "secret" not in str(err.value)


def test_pruners():
    assert isinstance(make_pruner("median", {"n_warmup_steps": 1}), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(TuningError, match="unknown pruner"):
        make_pruner("mediun")
    with pytest.raises(TuningError, match="bad arguments"):
        make_pruner("median", {"n_warmup": 1})


def test_signature_is_stored_as_plain_json(tmp_path):
    study = open_study(_settings(tmp_path), {"space": [{"name": "x", "low": 1}], "metric": "m"})
    assert json.loads(json.dumps(study.user_attrs["signature"]))["metric"] == "m"


def test_a_lost_schema_race_is_recognised():
    """Workers creating the schema at once: the loser's error is retried (an IntegrityError,
    or PostgreSQL's duplicate-object / duplicate-table ProgrammingError), nothing else is."""
    import sqlalchemy

    from recsys_pipeline.tuning.study import _schema_race

    class _Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(sqlstate)
            self.sqlstate = sqlstate

    def programming(sqlstate: str) -> sqlalchemy.exc.ProgrammingError:
        return sqlalchemy.exc.ProgrammingError("CREATE TABLE ...", {}, _Orig(sqlstate))

    assert _schema_race(sqlalchemy.exc.IntegrityError("INSERT ...", {}, _Orig("23505")))
    assert _schema_race(programming("42710"))  # type "alembic_version" already exists
    assert _schema_race(programming("42P07"))
    assert not _schema_race(programming("42601"))  # a syntax error is not a race
    assert not _schema_race(sqlalchemy.exc.OperationalError("connect", {}, _Orig("08001")))
    assert not _schema_race(None)
