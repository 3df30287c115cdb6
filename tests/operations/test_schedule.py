"""Tests of ``recsys_pipeline.operations.schedule``: generated systemd units and cron line.

``systemd-analyze`` (when installed and usable here) checks the units and the calendar expression
the way systemd itself would; the timers are never installed or started.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from recsys_pipeline.operations.schedule import (
    DEFAULT_ON_CALENDAR,
    cron_line,
    main,
    systemd_units,
    write_files,
)

DATASET = "retailrocket"
SERVICE = f"recsys-retrain-{DATASET}.service"
TIMER = f"recsys-retrain-{DATASET}.timer"
RETRAIN_ARGS = f"run --pipelines=retrain --params=retrain.dataset={DATASET}"


def _parse(text: str) -> configparser.ConfigParser:
    """Parse a unit file as INI (systemd allows repeated keys, hence strict=False)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep key case (ExecStart, not execstart)
    parser.read_string(text)
    return parser


def _fake_project(root: Path) -> Path:
    """A project directory with executable ``.venv/bin/kedro`` and ``.venv/bin/python`` stubs
    (systemd-analyze checks them)."""
    for name in ("kedro", "python"):
        exe = root / ".venv" / "bin" / name
        exe.parent.mkdir(parents=True, exist_ok=True)
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return root


def _systemd_analyze() -> str:
    """Path of a working ``systemd-analyze``, or skip the test with the reason."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    probe = subprocess.run(
        [exe, "calendar", "*-*-* 03:00:00"], check=False, capture_output=True, text=True, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run in this environment: {probe.stderr.strip()}")
    return exe


# ---- systemd units -------------------------------------------------------------------------


def test_units_name_retrain_pipeline_and_dataset(tmp_path: Path) -> None:
    units = systemd_units(tmp_path, DATASET)
    assert set(units) == {SERVICE, TIMER}
    service = _parse(units[SERVICE])
    exec_start = service["Service"]["ExecStart"]
    assert exec_start == f"{tmp_path}/.venv/bin/kedro {RETRAIN_ARGS}"
    assert "--pipelines=retrain" in shlex.split(exec_start)
    assert DATASET in units[TIMER]
    # a run with no new incoming file is skipped (ExecCondition exits 1), not failed
    condition = service["Service"]["ExecCondition"]
    assert condition == (
        f"{tmp_path}/.venv/bin/python -m recsys_pipeline.commands.pending --dataset {DATASET}"
    )


def test_units_parse_as_ini_with_expected_keys(tmp_path: Path) -> None:
    units = systemd_units(tmp_path, DATASET, on_calendar="Sun 03:00", user="recsys")
    service = _parse(units[SERVICE])
    assert service.sections() == ["Unit", "Service"]
    svc = service["Service"]
    assert svc["Type"] == "oneshot"
    assert svc["WorkingDirectory"] == str(tmp_path)
    assert svc["User"] == "recsys"
    assert "KEDRO_DISABLE_TELEMETRY=true" in svc["Environment"] or (
        "Environment=KEDRO_DISABLE_TELEMETRY=true" in units[SERVICE].splitlines()
    )
    timer = _parse(units[TIMER])
    assert timer.sections() == ["Unit", "Timer", "Install"]
    assert timer["Timer"]["OnCalendar"] == "Sun 03:00"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["Unit"] == SERVICE
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_environment_and_optional_user(tmp_path: Path) -> None:
    units = systemd_units(tmp_path, DATASET)
    lines = units[SERVICE].splitlines()
    assert "Environment=KEDRO_DISABLE_TELEMETRY=true" in lines
    assert not any(line.startswith("User=") for line in lines)
    assert _parse(units[TIMER])["Timer"]["OnCalendar"] == DEFAULT_ON_CALENDAR


def test_extra_params_are_appended(tmp_path: Path) -> None:
    units = systemd_units(tmp_path, DATASET, extra_params="retrain.epochs=5,retrain.seed=1")
    exec_start = _parse(units[SERVICE])["Service"]["ExecStart"]
    assert exec_start.endswith(
        f"--params=retrain.dataset={DATASET},retrain.epochs=5,retrain.seed=1"
    )


def test_project_dir_with_space_is_quoted(tmp_path: Path) -> None:
    project = tmp_path / "my project"
    units = systemd_units(project, DATASET)
    exec_start = _parse(units[SERVICE])["Service"]["ExecStart"]
    assert exec_start.startswith(f'"{project}/.venv/bin/kedro" run ')
    assert shlex.split(cron_line(project, DATASET))[6] == str(project)


def test_systemd_analyze_verify_accepts_units(tmp_path: Path) -> None:
    exe = _systemd_analyze()
    project = _fake_project(tmp_path / "project")
    paths = write_files(
        systemd_units(project, DATASET, on_calendar="Mon..Fri 02:30"), tmp_path / "units"
    )
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path / 'units'}:"}
    result = subprocess.run(
        [exe, "verify", *map(str, paths)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "recsys-retrain" not in result.stderr, result.stderr


def test_systemd_analyze_verify_catches_missing_kedro(tmp_path: Path) -> None:
    """Sanity check of the check above: verify does fail on a broken unit here."""
    exe = _systemd_analyze()
    paths = write_files(systemd_units(tmp_path / "no-venv", DATASET), tmp_path / "units")
    result = subprocess.run(
        [exe, "verify", *map(str, paths)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "not executable" in result.stderr


@pytest.mark.parametrize("on_calendar", [DEFAULT_ON_CALENDAR, "daily", "Sun 03:00", "*-*-01 04:15"])
def test_systemd_analyze_calendar_accepts_expression(on_calendar: str) -> None:
    exe = _systemd_analyze()
    result = subprocess.run(
        [exe, "calendar", on_calendar], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr


# ---- cron ----------------------------------------------------------------------------------


def test_cron_line_fields_and_command(tmp_path: Path) -> None:
    line = cron_line(tmp_path, DATASET)
    assert "\n" not in line
    assert "%" not in line
    fields = line.split(maxsplit=5)
    assert fields[:5] == ["0", "3", "*", "*", "*"]
    command = fields[5]
    assert command.startswith(f"cd {tmp_path} && ")
    assert f".venv/bin/kedro {RETRAIN_ARGS}" in command
    assert command.endswith(f">> logs/retrain-{DATASET}.log 2>&1")


def test_cron_schedule_is_normalised(tmp_path: Path) -> None:
    line = cron_line(tmp_path, DATASET, schedule="  30 2  * * 1-5 ")
    assert line.split()[:5] == ["30", "2", "*", "*", "1-5"]


def test_cron_command_runs_in_sh(tmp_path: Path) -> None:
    """The command part is valid /bin/sh; it calls the project's kedro with the retrain args
    only when the pending check (the venv's python) says there are new files."""
    project = _fake_project(tmp_path / "project dir")
    kedro = project / ".venv" / "bin" / "kedro"
    kedro.write_text('#!/bin/sh\necho "$@" > args.txt\n')
    python = project / ".venv" / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$@" > check.txt\nexit 1\n')  # nothing new
    if shutil.which("flock") is None:
        pytest.skip("flock (util-linux) is not installed on this machine")
    command = cron_line(project, DATASET).split(maxsplit=5)[5]
    run = subprocess.run(
        ["/bin/sh", "-c", command], check=False, timeout=30, env={"PATH": "/usr/bin:/bin"}
    )
    assert run.returncode == 1 and not (project / "args.txt").exists()
    check = f"-m recsys_pipeline.commands.pending --dataset {DATASET}"
    assert (project / "check.txt").read_text().strip() == check
    python.write_text("#!/bin/sh\nexit 0\n")  # new files
    subprocess.run(
        ["/bin/sh", "-c", command], check=True, timeout=30, env={"PATH": "/usr/bin:/bin"}
    )
    assert (project / "args.txt").read_text().strip() == RETRAIN_ARGS
    assert (project / "logs" / f"retrain-{DATASET}.log").exists()


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dataset": "retailrocket\nExecStartPre=/bin/rm"},
        {"dataset": "../etc"},
        {"dataset": "a b"},
        {"dataset": "data;rm"},
        {"dataset": ""},
        {"dataset": "-leading"},
        {"on_calendar": "daily\nOnCalendar=minutely"},
        {"on_calendar": ""},
        {"on_calendar": "daily; rm -rf /"},
        {"user": "root\nUser=evil"},
        {"user": "bad user"},
        {"extra_params": "retrain.epochs=5\nExecStartPre=/bin/rm"},
        {"extra_params": "retrain.epochs=5 --env=prod"},
        {"extra_params": "retrain.dataset=other"},
        {"extra_params": "noequals"},
        {"extra_params": "x=%h"},
    ],
)
def test_systemd_rejects_bad_inputs(tmp_path: Path, kwargs: dict[str, str]) -> None:
    args = {"project_dir": tmp_path, "dataset": DATASET, **kwargs}
    with pytest.raises(ValueError):
        systemd_units(**args)


@pytest.mark.parametrize(
    "project_dir",
    [Path("relative/project"), Path("/srv/pro\nject"), Path("/srv/100%"), Path("/srv/$HOME")],
)
def test_rejects_bad_project_dir(project_dir: Path) -> None:
    with pytest.raises(ValueError, match="project_dir"):
        systemd_units(project_dir, DATASET)
    with pytest.raises(ValueError, match="project_dir"):
        cron_line(project_dir, DATASET)


@pytest.mark.parametrize(
    "schedule", ["0 3 * *", "0 3 * * * *", "0 3 * * *\n* * * * *", "0 3 * * 1%", "@daily"]
)
def test_cron_rejects_bad_schedule(tmp_path: Path, schedule: str) -> None:
    with pytest.raises(ValueError, match="schedule"):
        cron_line(tmp_path, DATASET, schedule=schedule)


def test_cron_rejects_bad_dataset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset"):
        cron_line(tmp_path, "x$(reboot)")


# ---- files and CLI -------------------------------------------------------------------------


def test_write_files_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = write_files({"a.service": "x\n", "a.timer": "y\n"}, out)
    assert [p.name for p in paths] == ["a.service", "a.timer"]
    assert sorted(p.name for p in out.iterdir()) == ["a.service", "a.timer"]
    with pytest.raises(ValueError):
        write_files({"../escape": ""}, out)


def test_cli_systemd_writes_units_and_prints_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = _fake_project(tmp_path / "project")
    out = tmp_path / "deploy"
    argv = ["systemd", "--dataset", DATASET, "--project-dir", str(project), "--out", str(out)]
    assert main([*argv, "--on-calendar", "Sun 03:00"]) == 0
    stdout = capsys.readouterr().out
    assert (out / SERVICE).read_text() == systemd_units(project, DATASET, "Sun 03:00")[SERVICE]
    assert (out / TIMER).exists()
    assert "sudo systemctl daemon-reload" in stdout
    assert f"sudo systemctl enable --now {TIMER}" in stdout
    assert "systemctl list-timers" in stdout
    assert f"journalctl -u {SERVICE}" in stdout


def test_cli_cron_prints_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _fake_project(tmp_path / "project")
    assert main(["cron", "--dataset", DATASET, "--project-dir", str(project)]) == 0
    stdout = capsys.readouterr().out
    assert cron_line(project, DATASET) in stdout.splitlines()
    assert "crontab -e" in stdout


def test_cli_rejects_bad_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cron", "--dataset", "a\nb", "--project-dir", str(tmp_path)]) == 2
    assert "error: dataset" in capsys.readouterr().err
