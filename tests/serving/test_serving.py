"""Serving through MLflow: the pyfunc in process, then ``mlflow models serve`` over HTTP.

A tiny GRU4Rec is trained on the successor dataset, logged with :func:`log_pyfunc_model` to a
temporary sqlite tracking store (artifacts in a temporary folder; the project's ``mlflow.db`` and
``mlruns`` are not touched) and its answers are compared with :func:`recommend` in process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from mlflow.exceptions import MlflowException  # noqa: E402

from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams  # noqa: E402
from recsys_pipeline.serving.pyfunc import RecommenderPyfunc, log_pyfunc_model  # noqa: E402
from recsys_pipeline.serving.recommend import recommend  # noqa: E402
from tests.listeners import assert_loopback_only  # noqa: E402
from tests.models.behaviour import successor_sessions  # noqa: E402

N_ITEMS = 30
MAX_BATCH = 50
REGISTERED = "gru4rec_recommender_test"


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def trained() -> GRU4Rec:
    params = GRU4RecParams(
        layers=[32], batch_size=16, n_sample=16, n_epochs=4, learning_rate=0.1, device="cpu"
    )
    return GRU4Rec(params).fit(successor_sessions(N_ITEMS, 400, seed=0), progress=False)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary sqlite tracking store with its own artifact folder; restored afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment(
            "serving-test", artifact_location=(root / "artifacts").as_uri()
        )
        mlflow.set_experiment(experiment_id=experiment)
        yield uri
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env


@pytest.fixture(scope="module")
def logged(trained: GRU4Rec, tracking: str) -> str:
    """``runs:/<run_id>/recommender`` of the logged model."""
    info = log_pyfunc_model(
        trained, max_batch=MAX_BATCH, torch_threads=1, registered_model_name=REGISTERED
    )
    assert info.run_id and info.registered_model_version
    mlflow.MlflowClient().set_registered_model_alias(
        REGISTERED, "champion", info.registered_model_version
    )
    return f"runs:/{info.run_id}/recommender"


def _sessions(model: GRU4Rec) -> list[list[int]]:
    ids = model.item_ids.tolist()
    return [ids[:3], [ids[7]], [ids[4], 99999, ids[9]], ids[10:20], [ids[2]]]


# --------------------------------------------------------------------------- in process
def test_pyfunc_in_process(trained: GRU4Rec, logged: str) -> None:
    pyfunc = mlflow.pyfunc.load_model(f"models:/{REGISTERED}@champion")
    assert pyfunc.metadata.run_id == logged.split("/")[1]
    sessions = _sessions(trained)
    for params, exclude in (({"k": 5}, False), ({"k": 7, "exclude_seen": True}, True)):
        out = pyfunc.predict(pd.DataFrame({"session": sessions}), params=params)
        expected = recommend(trained, sessions, k=params["k"], exclude_seen=exclude)
        assert list(out.columns) == ["items", "scores"]
        assert [list(x) for x in out["items"]] == expected.items.tolist()
        np.testing.assert_allclose(np.stack(out["scores"]), expected.scores, rtol=1e-5)
    # default k (20) and per-session k / exclude_seen columns overriding params
    out = pyfunc.predict(pd.DataFrame({"session": sessions[:1]}))
    assert len(out["items"][0]) == 20
    frame = pd.DataFrame({"session": sessions[:2], "k": [2, None], "exclude_seen": [None, True]})
    out = pyfunc.predict(frame, params={"k": 4})
    assert out["items"][0] == recommend(trained, sessions[0], k=2).items.tolist()
    assert out["items"][1] == recommend(trained, sessions[1], k=4, exclude_seen=True).items.tolist()


def test_exclude_seen_drops_excluded(trained: GRU4Rec) -> None:
    """With exclude_seen and k close to n_items the excluded items (-inf) are left out."""
    wrapper = RecommenderPyfunc().configure(trained)
    ids = trained.item_ids.tolist()
    out = wrapper.predict(
        None, pd.DataFrame({"session": [ids[:3]]}), {"k": N_ITEMS, "exclude_seen": True}
    )
    items, scores = out["items"][0], out["scores"][0]
    assert len(items) == N_ITEMS - 3 and not set(items) & set(ids[:3])
    assert np.isfinite(scores).all()


@pytest.mark.parametrize(
    ("frame", "params", "message"),
    [
        ({"session": [[4000]], "item": [1]}, {}, "unknown field"),
        ({"sessions": [[4000]]}, {}, "unknown field"),
        ({"session": [[]]}, {}, "session 0: empty session"),
        ({"session": [[4000], [1, 2]]}, {}, "session 1: no item known"),
        ({"session": [[4000]]}, {"k": 0}, "'k' must be between 1"),
        ({"session": [[4000]]}, {"k": N_ITEMS + 1}, "'k' must be between 1"),
        ({"session": [[4000]], "k": [-1]}, {}, "session 0: 'k' must be between 1"),
        ({"session": [[4000]], "k": [2.5]}, {}, "'k' must be an integer"),
        ({"session": [["4000"]]}, {}, "item ids must be integers"),
        ({"session": ["4000"]}, {}, "must be a list of item ids"),
        ({"session": [[4000]], "exclude_seen": ["yes"]}, {}, "'exclude_seen' must be true"),
        ({"session": [[4000]] * (MAX_BATCH + 1)}, {}, "too many sessions"),
        ({"session": []}, {}, "empty batch"),
    ],
)
def test_invalid_requests_in_process(
    trained: GRU4Rec, frame: dict[str, Any], params: dict[str, Any], message: str
) -> None:
    wrapper = RecommenderPyfunc().configure(trained, max_batch=MAX_BATCH)
    with pytest.raises(MlflowException, match=message) as err:
        wrapper.predict(None, pd.DataFrame(frame), params)
    assert err.value.get_http_status_code() == 400


# --------------------------------------------------------------------------- HTTP server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, payload: Any) -> tuple[int, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except json.JSONDecodeError:
            return err.code, {"message": text}


def _wait_ready(base: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"the server did not answer /ping within {timeout} s")


@contextlib.contextmanager
def _serve(model_uri: str, tracking: str, log: Path) -> Iterator[str]:
    """``mlflow models serve`` of ``model_uri`` on a free loopback port; its base URL."""
    port = _free_port()
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    # the server runs `uvicorn` from PATH: the venv's bin folder must come first
    path = f"{mlflow_exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": tracking, "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(mlflow_exe), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            try:
                _wait_ready(base, process)
            except (RuntimeError, TimeoutError) as err:
                raise RuntimeError(f"{err}\n{log.read_text()[-3000:]}") from err
            assert_loopback_only(process.pid)
            yield base
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


@pytest.fixture(scope="module")
def server(logged: str, tracking: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The GRU4Rec model served over HTTP."""
    with _serve(logged, tracking, tmp_path_factory.mktemp("server") / "server.log") as base:
        yield base


def test_server_answers_like_recommend(trained: GRU4Rec, server: str) -> None:
    sessions = _sessions(trained)
    url = f"{server}/invocations"
    records = [{"session": s} for s in sessions]
    for params, exclude in (({"k": 5}, False), ({"k": 6, "exclude_seen": True}, True)):
        status, answer = _post(url, {"dataframe_records": records, "params": params})
        assert status == 200, answer
        expected = recommend(trained, sessions, k=params["k"], exclude_seen=exclude)
        predictions = answer["predictions"]
        assert [p["items"] for p in predictions] == expected.items.tolist()
        np.testing.assert_allclose(
            [p["scores"] for p in predictions], expected.scores, rtol=1e-5, atol=1e-6
        )
    # dataframe_split and a per-session k column; default k = 20
    payload = {"dataframe_split": {"columns": ["session", "k"], "data": [[sessions[0], 3]]}}
    status, answer = _post(url, payload)
    assert status == 200, answer
    assert answer["predictions"][0]["items"] == recommend(trained, sessions[0], k=3).items.tolist()
    status, answer = _post(url, {"dataframe_records": records[:1]})
    assert status == 200 and len(answer["predictions"][0]["items"]) == 20


@pytest.mark.parametrize(
    ("records", "params", "message"),
    [
        ([{"session": [4000], "user": 7}], {}, "unknown field"),
        ([{"session": []}], {}, "session 0: empty session"),
        ([{"session": [4000]}, {"session": [1, 2]}], {}, "session 1: no item known"),
        ([{"session": [4000]}], {"k": 0}, "'k' must be between 1"),
        ([{"session": [4000]}], {"k": -3}, "'k' must be between 1"),
        ([{"session": [4000]}], {"k": "ten"}, "Invalid parameters"),
        ([{"session": [4000]}] * (MAX_BATCH + 1), {}, "too many sessions"),
        ([{"session": ["a"]}], {}, "item ids must be integers"),
    ],
)
def test_server_rejects_bad_requests(
    server: str, records: list[dict[str, Any]], params: dict[str, Any], message: str
) -> None:
    status, answer = _post(
        f"{server}/invocations", {"dataframe_records": records, "params": params}
    )
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in answer["message"]


def test_server_rejects_malformed_json(server: str) -> None:
    status, _ = _post(f"{server}/invocations", b"{not json")
    assert 400 <= status < 500
    status, answer = _post(f"{server}/invocations", {"records": [{"session": [4000]}]})
    assert status == 400, answer


# --------------------------------------------------------------------------- NeuMF
@pytest.fixture(scope="module")
def neumf(tracking: str) -> tuple[Any, Any]:
    """A tiny NeuMF and its ``log_pyfunc_model`` info (registered, aliased ``champion``)."""
    import polars as pl

    from recsys_pipeline.models.neumf import NeuMF

    rng = np.random.default_rng(0)
    train = pl.DataFrame(
        {"UserId": rng.integers(1, 41, 800), "ItemId": rng.integers(100, 160, 800)}
    ).unique()
    model = NeuMF(factors=4, layers=[8, 4], n_epochs=1, batch_size=512, device="cpu").fit(
        train, progress=False
    )
    name = "neumf_serving_test"
    info = log_pyfunc_model(model, torch_threads=1, registered_model_name=name, max_batch=20)
    mlflow.MlflowClient().set_registered_model_alias(
        name, "champion", info.registered_model_version
    )
    return model, info


def test_neumf_pyfunc_in_process(neumf: tuple[Any, Any], tmp_path: Path) -> None:
    model, info = neumf
    assert (
        Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path)))
        / "artifacts"
        / "model"
        / "user_ids.json"
    ).exists()
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    users = model.user_ids[:3].tolist()
    out = pyfunc.predict(pd.DataFrame({"user": users}), params={"k": 5})
    ids, scores = model.recommend(users, k=5)
    assert out["items"].tolist() == ids.tolist()
    np.testing.assert_allclose(np.array(out["scores"].tolist()), scores, rtol=1e-5)
    # k per row, exclude_train false
    out = pyfunc.predict(pd.DataFrame({"user": users[:1], "k": [3], "exclude_train": [False]}))
    assert len(out["items"][0]) == 3
    with pytest.raises(MlflowException, match="not known"):
        pyfunc.predict(pd.DataFrame({"user": [999_999]}))
    with pytest.raises(MlflowException, match="unknown field"):
        pyfunc.predict(pd.DataFrame({"user": users, "session": [[1]] * 3}))


def test_neumf_server_answers_like_recommend_and_rejects_bad_requests(
    neumf: tuple[Any, Any], tracking: str, tmp_path: Path
) -> None:
    """The NeuMF champion (``models:/<name>@champion``) over HTTP: the answers equal
    ``NeuMF.recommend``; bad requests get 400 with a message."""
    model, _ = neumf
    users = model.user_ids[:4].tolist()
    with _serve("models:/neumf_serving_test@champion", tracking, tmp_path / "server.log") as base:
        url = f"{base}/invocations"
        status, answer = _post(
            url, {"dataframe_records": [{"user": u} for u in users], "params": {"k": 7}}
        )
        assert status == 200, answer
        ids, scores = model.recommend(users, k=7)
        assert [p["items"] for p in answer["predictions"]] == ids.tolist()
        np.testing.assert_allclose(
            [p["scores"] for p in answer["predictions"]], scores, rtol=1e-5, atol=1e-6
        )
        bad = [
            ([{"user": users[0], "session": [1]}], {}, "unknown field"),
            ([{"user": 999_999}], {}, "not known"),
            ([{"user": users[0]}], {"k": 0}, "'k' must be between 1"),
            ([{"user": users[0]}] * 21, {}, "too many"),
        ]
        for records, params, message in bad:
            status, answer = _post(url, {"dataframe_records": records, "params": params})
            assert status == 400 and message in answer.get("message", ""), (message, answer)


# ------------------------------------------------------------------------------- SASRec
def test_sasrec_served_over_http_answers_like_recommend(tracking: str, tmp_path: Path) -> None:
    """A SASRec (an encoder: the pyfunc steps it through the window adapter) logged with the
    same pyfunc and served on loopback: answers equal ``SASRec.recommend``."""
    from recsys_pipeline.models.sasrec import SASRec, SASRecParams

    params = SASRecParams(maxlen=6, hidden_units=16, num_epochs=2, lr=0.01, device="cpu")
    model = SASRec(params).fit(successor_sessions(N_ITEMS, 200, seed=0), progress=False)
    info = log_pyfunc_model(model, max_batch=MAX_BATCH, torch_threads=1)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    sessions = _sessions(model)
    expected = recommend(model, sessions, k=5)
    out = pyfunc.predict(pd.DataFrame({"session": sessions}), params={"k": 5})
    assert out["items"].tolist() == expected.items.tolist()
    uri = f"runs:/{info.run_id}/recommender"
    with _serve(uri, tracking, tmp_path / "server.log") as base:
        records = [{"session": s} for s in sessions]
        status, answer = _post(
            f"{base}/invocations", {"dataframe_records": records, "params": {"k": 5}}
        )
        assert status == 200, answer
        assert [p["items"] for p in answer["predictions"]] == expected.items.tolist()
        np.testing.assert_allclose(
            [p["scores"] for p in answer["predictions"]], expected.scores, rtol=1e-5, atol=1e-6
        )
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [{"session": []}]})
        assert status == 400 and "empty session" in answer.get("message", "")


# ----------------------------------------------------------------------------- BERT4Rec
def test_bert4rec_pyfunc_answers_like_recommend(tracking: str) -> None:
    """BERT4Rec through the one pyfunc (the step path: ``encode`` appends its mask slot)
    answers as ``recommend`` (the appended-mask rows of the evaluation)."""
    from recsys_pipeline.models.bert4rec import BERT4Rec, BERT4RecParams

    params = BERT4RecParams(maxlen=6, hidden_units=16, num_epochs=2, lr=0.005, device="cpu")
    model = BERT4Rec(params).fit(successor_sessions(N_ITEMS, 200, seed=0), progress=False)
    info = log_pyfunc_model(model, max_batch=MAX_BATCH, torch_threads=1)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    sessions = _sessions(model)
    expected = recommend(model, sessions, k=5)
    out = pyfunc.predict(pd.DataFrame({"session": sessions}), params={"k": 5})
    assert out["items"].tolist() == expected.items.tolist()
    np.testing.assert_allclose(np.stack(out["scores"]), expected.scores, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- XLNet-MLM
def test_xlnet_mlm_pyfunc_answers_like_recommend(tracking: str) -> None:
    """XLNet-MLM through the one pyfunc (inference: a mask appended) answers as ``recommend``."""
    from recsys_pipeline.models.xlnet_mlm import XLNetMLM, XLNetMLMParams

    params = XLNetMLMParams(maxlen=6, d_model=16, item_dim=24, n_layer=1, n_head=2,
                            num_epochs=2, lr=0.005, device="cpu")  # fmt: skip
    model = XLNetMLM(params).fit(successor_sessions(N_ITEMS, 200, seed=0), progress=False)
    info = log_pyfunc_model(model, max_batch=MAX_BATCH, torch_threads=1)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    sessions = _sessions(model)
    expected = recommend(model, sessions, k=5)
    out = pyfunc.predict(pd.DataFrame({"session": sessions}), params={"k": 5})
    assert out["items"].tolist() == expected.items.tolist()
    np.testing.assert_allclose(np.stack(out["scores"]), expected.scores, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- HSTU
def test_hstu_pyfunc_answers_like_recommend(tracking: str) -> None:
    """HSTU through the one pyfunc (sessions carry no times: the positional bias only, as
    ``recommend``) answers as ``recommend``."""
    from recsys_pipeline.models.hstu import HSTU, HSTUParams

    params = HSTUParams(maxlen=6, hidden_units=16, dqk=8, dv=8, n_negatives=16, num_epochs=2,
                        lr=0.005, device="cpu")  # fmt: skip
    model = HSTU(params).fit(successor_sessions(N_ITEMS, 200, seed=0), progress=False)
    info = log_pyfunc_model(model, max_batch=MAX_BATCH, torch_threads=1)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    sessions = _sessions(model)
    expected = recommend(model, sessions, k=5)
    out = pyfunc.predict(pd.DataFrame({"session": sessions}), params={"k": 5})
    assert out["items"].tolist() == expected.items.tolist()
    np.testing.assert_allclose(np.stack(out["scores"]), expected.scores, rtol=1e-5, atol=1e-6)
