"""The GRU4Rec command line tool (``python -m recsys_pipeline.commands.gru4rec``): run.py's options and
output lines; train + save + load + evaluate, TSV and parquet input, parameter files, exit status
of bad command lines and bad data, and that Kedro still finds its own ``run`` command."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from recsys_pipeline.commands.gru4rec import main, parameters_from_file, read_event_file
from recsys_pipeline.models.gru4rec import GRU4RecParams

ROOT = Path(__file__).resolve().parents[2]
FAST = "loss=bpr-max,elu_param=1,layers=16,batch_size=8,n_epochs=1,n_sample=16,device=cpu"
CUTOFFS = ["1", "5", "10", "20"]
RESULT = re.compile(r"^Recall@(\d+): (\d\.\d{6}) MRR@(\d+): (\d\.\d{6})$")


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(autouse=True)
def _no_foreign_log_handlers():
    """A CLI process starts with no log handlers; Kedro tests run earlier in this process leave
    root handlers that print to stdout (conf/logging.yml), which would mix logs into the
    result lines. Keep only pytest's own capture handlers while a CLI test runs."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [h for h in saved if type(h).__module__.startswith("_pytest")]
    yield
    root.handlers = saved


def _events(n_sessions: int, seed: int, first_session: int = 0) -> pl.DataFrame:
    """Sessions over 40 items that mostly step to the next item (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    rows, t = [], 1_000_000
    for s in range(first_session, first_session + n_sessions):
        item = int(rng.integers(0, 40))
        for _ in range(int(rng.integers(2, 8))):
            rows.append((s, item, t))
            t += int(rng.integers(1, 100))
            item = (item + 1) % 40 if rng.random() < 0.7 else int(rng.integers(0, 40))
    return pl.DataFrame(rows, schema=["SessionId", "ItemId", "Time"], orient="row")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    d = tmp_path_factory.mktemp("cli_data")
    train, test = _events(300, seed=1), _events(60, seed=2, first_session=1000)
    paths = SimpleNamespace(dir=d)
    for name, frame in (("train", train), ("test", test)):
        frame.write_csv(d / f"{name}.tsv", separator="\t")
        frame.write_parquet(d / f"{name}.parquet")
        setattr(paths, name, str(d / f"{name}.tsv"))
        setattr(paths, f"{name}_pq", str(d / f"{name}.parquet"))
    # string item ids and other column names
    renamed = {"SessionId": "sid", "ItemId": "iid", "Time": "ts"}
    for name, frame in (("train", train), ("test", test)):
        strings = frame.with_columns(pl.format("item-{}", "ItemId").alias("ItemId"))
        strings.rename(renamed).write_csv(d / f"{name}_str.tsv", separator="\t")
        setattr(paths, f"{name}_str", str(d / f"{name}_str.tsv"))
    return paths


def run_subprocess(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def result_blocks(out: str) -> list[dict[int, tuple[float, float]]]:
    """``[{cutoff: (recall, mrr)}]``, one dict per test set (each starts with ``Test set:``)."""
    blocks: list[dict[int, tuple[float, float]]] = []
    for line in out.splitlines():
        if line.startswith("Test set: "):
            blocks.append({})
        match = RESULT.match(line)
        if match:
            assert match.group(1) == match.group(3)
            blocks[-1][int(match.group(1))] = (float(match.group(2)), float(match.group(4)))
    return blocks


@pytest.fixture(scope="module")
def trained(data: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One training run through main(): train TSV -> save -> evaluate, with --json."""
    d = tmp_path_factory.mktemp("cli_model")
    model_dir, report = d / "model", d / "report.json"
    argv = [data.train, "-ps", FAST, "-s", model_dir, "-t", data.test, "-m", *CUTOFFS]
    argv += ["--seed", "1", "--json", report, "-lpm"]
    code = main([str(a) for a in argv])
    return SimpleNamespace(code=code, model=model_dir, report=report)


# ------------------------------------------------------------------------------ round trips


def test_train_save_load_evaluate_round_trip(trained, data, capsys):
    assert trained.code == 0
    assert {p.name for p in trained.model.iterdir()} >= {
        "weights.pt",
        "model.json",
        "item_ids.json",
        "history.json",
    }
    report = json.loads(trained.report.read_text())
    assert report["params"]["seed"] == 1 and report["params"]["layers"] == [16]
    assert len(report["train"]["history"]) == 1 and report["train"]["seconds"] > 0
    trained_metrics = report["tests"][0]["metrics"]

    code, out, _ = run(capsys, trained.model, "-l", "-t", data.test, "-m", *CUTOFFS)
    assert code == 0
    [loaded] = result_blocks(out)
    for k, (recall, mrr) in loaded.items():
        assert recall == pytest.approx(trained_metrics[f"recall@{k}"], abs=5e-7)
        assert mrr == pytest.approx(trained_metrics[f"mrr@{k}"], abs=5e-7)
    assert 0.0 < loaded[20][0] <= 1.0  # the model learnt something, not everything is a tie
    assert loaded[1][0] < 1.0


def test_output_lines_parse(data, capsys):
    argv = [data.train, "-ps", FAST, "-t", data.test, data.test, "-m", "20", "5", "1"]
    code, out, err = run(capsys, *argv, "--seed", "2", "-lpm", "-pm", "mrr")
    assert code == 0
    lines = out.splitlines()
    assert re.fullmatch(r"Total training time: \d+\.\d\ds", lines[0])
    block = lines[1:7]  # one test set: header, timing, 3 result lines, primary metric
    assert re.fullmatch(
        r"Test set: \S+test\.tsv \(\d+ targets in \d+ sessions, full ranking, mode=standard, "
        r"session-based\)",
        block[0],
    )
    assert re.fullmatch(r"Evaluation took \d+\.\d\ds", block[1])
    assert [RESULT.match(x).group(1) for x in block[2:5]] == ["20", "5", "1"]  # -m order
    primary = re.fullmatch(r"PRIMARY METRIC: (\S+)", block[5])
    first, second = result_blocks(out)
    assert first == second  # the same test set twice: the same numbers
    assert float(primary.group(1)) == pytest.approx(first[20][1], abs=5e-7)  # mrr@20
    for recall, mrr in first.values():
        assert 0.0 <= mrr <= recall <= 1.0
    assert first[1][0] <= first[5][0] <= first[20][0]
    timing = re.compile(r"Evaluation took \d+\.\d\ds")
    assert timing.fullmatch(lines[8])
    assert lines[7:8] + lines[9:] == lines[1:2] + lines[3:7]  # the second test set
    assert len(lines) == 13


def test_tie_modes_are_accepted_and_ordered(trained, data, capsys):
    results = {}
    for mode in ("standard", "conservative", "median", "tiebreaking"):
        code, out, _ = run(capsys, trained.model, "-l", "-t", data.test, "-e", mode)
        assert code == 0 and f"mode={mode}" in out
        results[mode] = result_blocks(out)[0][20][0]
    assert results["conservative"] <= results["median"] <= results["standard"]
    assert results["conservative"] <= results["tiebreaking"] <= results["standard"]


def test_parquet_input_gives_the_same_results_as_tsv(trained, data, capsys):
    argv = ["-ps", FAST, "--seed", "1", "-m", *CUTOFFS]
    code, out, _ = run(capsys, data.train_pq, *argv, "-t", data.test_pq, data.test)
    assert code == 0
    from_parquet, tsv_test = result_blocks(out)
    assert from_parquet == tsv_test  # same model, test set as parquet and as TSV
    report = json.loads(trained.report.read_text())["tests"][0]["metrics"]
    for k, (recall, mrr) in from_parquet.items():  # same seed, same data: same model as TSV
        assert recall == pytest.approx(report[f"recall@{k}"], abs=5e-7)
        assert mrr == pytest.approx(report[f"mrr@{k}"], abs=5e-7)


def test_string_item_ids_and_other_column_names(data, tmp_path, capsys):
    keys = ["-sk", "sid", "-ik", "iid", "-tk", "ts"]
    model = tmp_path / "model"
    code, out, _ = run(capsys, data.train_str, "-ps", FAST, *keys, "-s", model, "-t", data.test_str)
    assert code == 0
    [trained] = result_blocks(out)
    ids = json.loads((model / "item_ids.json").read_text())
    assert ids["dtype"] == "str" and ids["ids"][0].startswith("item-")
    code, out, _ = run(capsys, model, "-l", *keys, "-t", data.test_str)
    assert code == 0 and result_blocks(out) == [trained]


def test_read_event_file_types(data):
    frame = read_event_file(data.train)
    assert frame.schema == pl.Schema({"SessionId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Int64})
    assert frame.equals(pl.read_parquet(data.train_pq))
    strings = read_event_file(data.train_str, "sid", "iid", "ts")
    assert strings.schema["iid"] == pl.String and strings.schema["sid"] == pl.Int64


# ------------------------------------------------------------------------ parameter files

PARAM_FILES = {
    "lines.txt": "# GRU4Rec\nloss=bpr-max\nelu_param = 1\nlayers=16\nbatch_size=8  # small\n"
    "n_epochs=1\nn_sample=16\ndevice=cpu\n",
    "comma.txt": FAST + "\n",
    "mixed.cfg": "loss=bpr-max,elu_param=1\nlayers=16,batch_size=8\nn_epochs=1,n_sample=16\n"
    "device=cpu\n",
    "params.yaml": "loss: bpr-max\nelu_param: 1\nlayers: [16]\nbatch_size: 8\nn_epochs: 1\n"
    "n_sample: 16\ndevice: cpu\n",
    "wrapped.yml": "gru4rec_params:\n  loss: bpr-max\n  elu_param: 1\n  layers: 16\n"
    "  batch_size: 8\n  n_epochs: 1\n  n_sample: 16\n  device: cpu\n",
    "params.json": json.dumps(
        {
            "loss": "bpr-max",
            "elu_param": 1,
            "layers": [16],
            "batch_size": 8,
            "n_epochs": 1,
            "n_sample": 16,
            "device": "cpu",
        }
    ),
    # the official paramfiles/*.py layout (parsed, never executed)
    "official.py": "from collections import OrderedDict\ngru4rec_params = OrderedDict([\n"
    "('loss', 'bpr-max'),\n('elu_param', 1),\n('layers', [16]),\n('batch_size', 8),\n"
    "('n_epochs', 1),\n('n_sample', 16),\n('device', 'cpu'),\n])\n",
}


@pytest.mark.parametrize("name", sorted(PARAM_FILES))
def test_parameter_file_formats(name, tmp_path):
    path = tmp_path / name
    path.write_text(PARAM_FILES[name])
    assert GRU4RecParams.from_dict(parameters_from_file(path)) == GRU4RecParams.from_string(FAST)


def test_official_python_parameter_file_is_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.py"
    path.write_text(
        f"open({str(marker)!r}, 'w').close()\ngru4rec_params = dict(layers=[8], loss='bpr-max')\n"
    )
    assert parameters_from_file(path) == {"layers": [8], "loss": "bpr-max"}
    assert not marker.exists()


def test_parameter_file_run_matches_parameter_string_run(trained, data, tmp_path, capsys):
    path = tmp_path / "official.py"
    path.write_text(PARAM_FILES["official.py"])
    code, out, _ = run(capsys, data.train, "-pf", path, "--seed", "1", "-t", data.test, "-m", "20")
    assert code == 0
    report = json.loads(trained.report.read_text())["tests"][0]["metrics"]
    recall, mrr = result_blocks(out)[0][20]
    assert recall == pytest.approx(report["recall@20"], abs=5e-7)
    assert mrr == pytest.approx(report["mrr@20"], abs=5e-7)


# -------------------------------------------------------------------------- bad command lines


def test_unknown_parameter_is_a_clear_usage_error(data, tmp_path, capsys):
    code, out, err = run(capsys, data.train, "-ps", FAST + ",n_layers=2", "-t", data.test)
    assert code == 2 and out == ""
    assert "unknown GRU4Rec parameter(s) ['n_layers']" in err and "valid names:" in err
    assert "-ps/--parameter_string" in err
    path = tmp_path / "p.txt"
    path.write_text("layers=16\nhidden_size=3\n")
    code, _, err = run(capsys, data.train, "-pf", path)
    assert code == 2 and "['hidden_size']" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-ps", "layers=abc"], "bad value for GRU4Rec parameter 'layers'"),
        (["-ps", "loss=hinge"], "loss must be one of"),
        (["-ps", "layers=16", "-l"], "not allowed with argument"),
        ([], "one of the arguments -ps/--parameter_string"),
        (["-ps", "layers=16", "-e", "optimistic"], "invalid choice: 'optimistic'"),
        (["-ps", "layers=16", "-m", "0"], "cut-offs must be positive"),
        (["-ps", "layers=16", "-d", "tpu:7"], "-d/--device"),
        (["-ps", "layers=16", "--json", "x.json"], "--json needs at least one test set"),
        (["-ps", "layers=16", "-g", "gru4rec_pytorch"], "-g/--gru4rec_model is not supported"),
        (["-pf", "/nonexistent/params.txt"], "cannot read parameter file"),
    ],
)
def test_bad_command_lines_exit_2(argv, message, data, capsys):
    code, out, err = run(capsys, data.train, *argv)
    assert code == 2 and out == ""
    assert message in err


def test_bad_parameter_file_exits_2(data, tmp_path, capsys):
    for name, text in (("a.txt", "layers 16\n"), ("b.yaml", "- 1\n- 2\n"), ("c.py", "x = 1\n")):
        (tmp_path / name).write_text(text)
        code, _, err = run(capsys, data.train, "-pf", tmp_path / name)
        assert code == 2 and f"parameter file {tmp_path / name}" in err


# ------------------------------------------------------------------------------- bad data


def test_bad_data_exits_1_with_a_clear_message(data, trained, tmp_path, capsys):
    code, out, err = run(capsys, data.train, "-ps", FAST, "-ik", "Item")
    assert code == 1 and out == ""
    assert "no item column 'Item'" in err and "-ik/--item_key" in err
    assert "['SessionId', 'ItemId', 'Time']" in err

    code, _, err = run(capsys, tmp_path / "missing.tsv", "-ps", FAST)
    assert code == 1 and "data file not found" in err

    code, _, err = run(capsys, data.dir / "x.pickle", "-ps", FAST)
    assert code == 1 and "pickled DataFrames are not read" in err

    code, _, err = run(capsys, tmp_path, "-l", "-t", data.test)
    assert code == 1 and "is not a saved model directory" in err

    single = tmp_path / "single.tsv"  # every session has one event: nothing to train on
    single.write_text("SessionId\tItemId\tTime\n1\t1\t1\n2\t2\t2\n")
    code, _, err = run(capsys, single, "-ps", FAST)
    assert code == 1 and "no training targets" in err

    unknown = tmp_path / "unknown.tsv"  # every test item unknown to the model: no targets
    unknown.write_text("SessionId\tItemId\tTime\n1\t-5\t1\n1\t-6\t2\n")
    code, out, err = run(capsys, trained.model, "-l", "-t", unknown)
    assert code == 1 and "0 targets to evaluate" in err and "2 events of items" in err

    code, _, err = run(capsys, data.train, "-ps", "layers=8,n_epochs=0")
    assert code == 2 and "n_epochs=0 trains nothing" in err

    # a missing test file is found before any training or evaluation
    code, out, err = run(capsys, data.train, "-ps", FAST, "-t", data.test, tmp_path / "nope.tsv")
    assert code == 2 and out == "" and f"-t/--test: {tmp_path / 'nope.tsv'} not found" in err
    code, _, err = run(capsys, data.train, "-ps", FAST, "-t", tmp_path)
    assert code == 2 and "is a folder, not a data file" in err
    code, _, err = run(capsys, tmp_path, "-ps", FAST)
    assert code == 1 and f"{tmp_path} is a folder, not a data file" in err


def test_a_damaged_model_folder_is_one_line_naming_the_file(trained, data, tmp_path, capsys):
    """Truncated weights, garbage model.json, a missing shape parameter, weights of another
    shape, a missing id file: exit 1, one ``error:`` line naming the folder's file."""
    import shutil

    def damaged(name: str, change) -> Path:
        folder = tmp_path / name
        shutil.copytree(trained.model, folder)
        change(folder)
        return folder

    def truncate(folder: Path) -> None:
        weights = folder / "weights.pt"
        weights.write_bytes(weights.read_bytes()[:100])

    def garbage(folder: Path) -> None:
        (folder / "model.json").write_text("{not json")

    def edit_params(**changes):
        def change(folder: Path) -> None:
            record = json.loads((folder / "model.json").read_text())
            for key, value in changes.items():
                if value is None:
                    record["params"].pop(key)
                else:
                    record["params"][key] = value
            (folder / "model.json").write_text(json.dumps(record))

        return change

    cases = {
        "truncated": (truncate, "weights.pt: truncated or not a PyTorch state dict"),
        "garbage": (garbage, "model.json: not valid JSON"),
        "no_layers": (edit_params(layers=None), "model.json: missing the parameter(s) 'layers'"),
        "other_shape": (edit_params(layers=[7]), "weights.pt: the weights do not fit"),
        "no_ids": (lambda f: (f / "item_ids.json").unlink(), "item_ids.json: missing"),
    }
    for name, (change, message) in cases.items():
        folder = damaged(name, change)
        code, out, err = run(capsys, folder, "-l", "-t", data.test)
        lines = err.strip().splitlines()
        assert code == 1 and out == "", name
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
        assert str(folder) in lines[0] and message in lines[0], (name, err)


# -------------------------------------------------------------------- as a program, Kedro


def test_python_dash_m_entry_point(data):
    cmd = [sys.executable, "-m", "recsys_pipeline.commands.gru4rec", data.train, "-ps", FAST]
    proc = run_subprocess([*cmd, "-t", data.test, "-m", "5", "20"], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    [block] = result_blocks(proc.stdout)
    assert sorted(block) == [5, 20]
    assert "epoch 1 --> loss:" in proc.stderr  # progress is logged on standard error
    assert "Recall@" not in proc.stderr

    bad = run_subprocess([*cmd[:-1], "layers=8,colour=red"])
    assert bad.returncode == 2 and "unknown GRU4Rec parameter(s) ['colour']" in bad.stderr


def test_tool_does_not_import_kedro_and_kedro_still_finds_its_run_command():
    code = "import sys, recsys_pipeline.commands.gru4rec; print('kedro' in sys.modules)"
    proc = run_subprocess([sys.executable, "-c", code])
    assert proc.stdout.strip() == "False", proc.stderr

    # Kedro imports `<package>.cli` as the project's CLI: its `run` is Kedro's own command
    # (same options) behind the one-line error wrapper (the tools live in `commands/`)
    from kedro.framework.cli.project import run as kedro_run
    from kedro.framework.cli.utils import find_run_command

    from recsys_pipeline import cli

    found = find_run_command("recsys_pipeline")
    assert found.callback is cli._run
    assert [o.name for o in found.params] == [o.name for o in kedro_run.params]
