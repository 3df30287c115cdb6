"""Search-space files: the shipped reference spaces parse; malformed files fail clearly."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from recsys_pipeline.models.gru4rec import GRU4RecParams
from recsys_pipeline.tuning import ParamSpec, SpaceError, load_space, parse_space, suggest

ROOT = Path(__file__).resolve().parents[2]
NAMES = GRU4RecParams.field_names()


@pytest.mark.parametrize("name", ["gru4rec_cross-entropy", "gru4rec_bpr-max", "gru4rec_synthetic"])
def test_shipped_spaces_parse(name):
    specs = load_space(ROOT / "conf" / "base" / "paramspaces" / f"{name}.json", NAMES)
    assert {s.name for s in specs} >= {"layers", "batch_size", "learning_rate", "momentum"}


def test_reference_ranges_and_steps():
    specs = {s.name: s for s in load_space(ROOT / "conf/base/paramspaces/gru4rec_bpr-max.json")}
    assert specs["layers"] == ParamSpec("layers", "int", 64, 512, 32)
    assert specs["learning_rate"] == ParamSpec("learning_rate", "float", 0.01, 0.25, 0.005)
    assert specs["bpreg"] == ParamSpec("bpreg", "float", 0.0, 2.0, 0.05)
    assert specs["elu_param"].choices == (0, 0.5, 1)


def test_json_list_and_json_lines_are_equivalent():
    lines = '{"name": "layers", "dtype": "int", "low": 32, "high": 64, "step": 32}\n'
    listed = '[{"name": "layers", "dtype": "int", "low": 32, "high": 64, "step": 32}]'
    assert parse_space(lines) == parse_space(listed)


def test_suggest_stays_on_the_grid():
    specs = parse_space(
        '{"name": "layers", "dtype": "int", "low": 64, "high": 128, "step": 32}\n'
        '{"name": "learning_rate", "dtype": "float", "low": 0.01, "high": 0.02, "step": 0.005}\n'
        '{"name": "momentum", "dtype": "float", "low": 0.001, "high": 0.1, "log": true}\n'
        '{"name": "loss", "dtype": "categorical", "choices": ["bpr-max", "top1-max"]}'
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), specs)
        assert values["layers"] in (64, 96, 128)
        assert round(values["learning_rate"], 6) in (0.01, 0.015, 0.02)
        assert 0.001 <= values["momentum"] <= 0.1
        assert values["loss"] in ("bpr-max", "top1-max")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ('{"name": "layers", "dtype": "int", "low": 1, "high": 2}\nnot json', "line 2"),
        ('[{"name": "layers"', "not valid JSON"),
        ('{"name": "layerz", "dtype": "int", "low": 1, "high": 2}', "unknown parameter 'layerz'"),
        ('{"name": "layers", "dtype": "long", "low": 1, "high": 2}', "dtype must be one of"),
        ('{"name": "layers", "dtype": "int", "low": 9, "high": 2}', "low 9 > high 2"),
        ('{"name": "layers", "dtype": "int", "low": 1, "high": 2, "step": 0}', "step must be > 0"),
        ('{"name": "layers", "dtype": "int", "low": 1.5, "high": 2}', "must be whole"),
        ('{"name": "layers", "dtype": "int", "high": 2}', "needs 'low'"),
        ('{"name": "momentum", "dtype": "float", "low": 0, "high": 1, "log": true}', "low > 0"),
        ('{"name": "momentum", "dtype": "float", "low": "a", "high": 1}', "finite number"),
        ('{"name": "loss", "dtype": "categorical", "choices": []}', "non-empty 'choices'"),
        ('{"name": "loss", "dtype": "categorical", "choices": [1], "low": 0}', "not allowed"),
        ('{"name": "layers", "dtype": "int", "low": 1, "high": 2, "stepp": 1}', "unknown key"),
        ('["layers"]', "must be a JSON object"),
        (
            '{"name": "layers", "dtype": "int", "low": 1, "high": 2}\n'
            '{"name": "layers", "dtype": "int", "low": 1, "high": 3}',
            "already defined at line 1",
        ),
    ],
)
def test_malformed_spaces_are_rejected_with_the_place(text, message):
    with pytest.raises(SpaceError, match="spaces/bad.json") as err:
        parse_space(text, "spaces/bad.json", NAMES)
    assert message in str(err.value)


def test_missing_space_file(tmp_path):
    with pytest.raises(SpaceError, match="not found"):
        load_space(tmp_path / "nope.json")
