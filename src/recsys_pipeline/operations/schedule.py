"""Scheduled retraining on an existing scheduler: systemd timer units and a cron line.

No home-made scheduler: this module only *generates* the definitions that the machine's own
scheduler runs. The job is always the same command, run from the project directory with the
project's virtual environment::

    .venv/bin/kedro run --pipelines=retrain --params=retrain.dataset=<dataset>[,<extra>]

``systemd_units`` gives ``recsys-retrain-<dataset>.service`` (``Type=oneshot``) and
``recsys-retrain-<dataset>.timer`` (``OnCalendar=``, ``Persistent=true``); ``cron_line`` gives one
crontab line. Every value that ends up in a unit file or a shell line is validated first (no
newlines, no systemd specifiers or shell metacharacters), so that a dataset name or a path cannot
inject a second directive or a second command.

Command line (prints the files, or writes them with ``--out`` and prints the install commands)::

    python -m recsys_pipeline.operations.schedule systemd --dataset retailrocket --on-calendar "Sun 03:00"
    python -m recsys_pipeline.operations.schedule systemd --dataset retailrocket --out deploy/systemd
    python -m recsys_pipeline.operations.schedule cron --dataset retailrocket --schedule "0 3 * * 0"

This module imports nothing from Kedro: generating a schedule must not need a Kedro session.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_CRON_SCHEDULE",
    "DEFAULT_ON_CALENDAR",
    "RETRAIN_PIPELINE",
    "cron_line",
    "kedro_command",
    "pending_command",
    "service_name",
    "systemd_units",
    "timer_name",
    "write_files",
]

RETRAIN_PIPELINE = "retrain"
DEFAULT_ON_CALENDAR = "*-*-* 03:00:00"
DEFAULT_CRON_SCHEDULE = "0 3 * * *"
KEDRO_RELATIVE = Path(".venv") / "bin" / "kedro"
PYTHON_RELATIVE = Path(".venv") / "bin" / "python"
PENDING_MODULE = "recsys_pipeline.commands.pending"

# A dataset name becomes part of a unit name, a file name, a log name and a Kedro parameter value.
_DATASET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
# POSIX-ish user names (useradd's default NAME_REGEX, plus upper case and dots).
_USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
# Extra Kedro parameters: ``key=value`` pairs joined by commas, plain characters only.
_EXTRA_PARAM_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=[A-Za-z0-9_.:/+-]*")
# OnCalendar= expressions: digits, names, ``*-:,./~+`` and spaces; systemd checks the rest.
_CALENDAR_RE = re.compile(r"[A-Za-z0-9*:,./~+ -]+")
# One cron time field: numbers, names (jan, mon), ``*``, ranges, lists and steps.
_CRON_FIELD_RE = re.compile(r"[A-Za-z0-9*,/-]+")
# Characters refused in the project path: systemd specifiers (%), variable expansion ($), the
# quoting characters of systemd and of the shell, and any control character (newlines included).
_PATH_FORBIDDEN = set("%$\"'`\\") | {chr(c) for c in range(32)} | {"\x7f"}


def _check_no_newline(name: str, value: str) -> None:
    """Reject ``value`` when it contains a line break (it would start a new directive)."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"{name} must not contain a newline: {value!r}")


def _check_dataset(dataset: str) -> str:
    """Return ``dataset`` if it is a safe identifier (unit name, file name, parameter value)."""
    _check_no_newline("dataset", dataset)
    if not _DATASET_RE.fullmatch(dataset):
        raise ValueError(
            f"dataset must be 1-64 characters of letters, digits, '_' or '-', starting with a "
            f"letter or digit; got {dataset!r}"
        )
    return dataset


def _check_project_dir(project_dir: Path | str) -> Path:
    """Return ``project_dir`` as a ``Path`` if it is absolute and free of unsafe characters."""
    text = str(project_dir)
    _check_no_newline("project_dir", text)
    bad = sorted({ch for ch in text if ch in _PATH_FORBIDDEN})
    if bad:
        raise ValueError(
            f"project_dir contains characters that cannot be used safely in a unit file or a "
            f"crontab ({', '.join(repr(ch) for ch in bad)}): {text!r}"
        )
    path = Path(text)
    if not path.is_absolute():
        raise ValueError(f"project_dir must be an absolute path, got {text!r}")
    return path


def _check_extra_params(extra_params: str) -> str:
    """Return ``extra_params`` if it is empty or comma-joined ``key=value`` pairs."""
    _check_no_newline("extra_params", extra_params)
    if not extra_params:
        return ""
    for pair in extra_params.split(","):
        if not _EXTRA_PARAM_RE.fullmatch(pair):
            raise ValueError(
                "extra_params must be comma-separated key=value pairs of letters, digits and "
                f"'_.:/+-' (e.g. 'retrain.epochs=5'); bad pair {pair!r} in {extra_params!r}"
            )
        if pair.split("=", 1)[0] == "retrain.dataset":
            raise ValueError("extra_params must not set retrain.dataset: use the dataset argument")
    return extra_params


def _check_on_calendar(on_calendar: str) -> str:
    """Return ``on_calendar`` if it looks like a systemd calendar expression (one line)."""
    _check_no_newline("on_calendar", on_calendar)
    if not on_calendar.strip() or not _CALENDAR_RE.fullmatch(on_calendar):
        raise ValueError(
            f"on_calendar must be a systemd calendar expression such as '*-*-* 03:00:00', "
            f"'daily' or 'Sun 03:00' (check it with `systemd-analyze calendar`); got {on_calendar!r}"
        )
    return on_calendar.strip()


def _check_cron_schedule(schedule: str) -> str:
    """Return ``schedule`` normalised to five space-separated cron time fields."""
    _check_no_newline("schedule", schedule)
    fields = schedule.split()
    if len(fields) != 5 or not all(_CRON_FIELD_RE.fullmatch(f) for f in fields):
        raise ValueError(
            "schedule must be five cron time fields (minute hour day-of-month month "
            f"day-of-week), e.g. '0 3 * * *'; got {schedule!r}"
        )
    return " ".join(fields)


def _check_user(user: str | None) -> str | None:
    """Return ``user`` if it is ``None`` or a plausible account name."""
    if user is None:
        return None
    _check_no_newline("user", user)
    if not _USER_RE.fullmatch(user):
        raise ValueError(f"user must be a plain account name, got {user!r}")
    return user


def service_name(dataset: str) -> str:
    """Name of the systemd service unit that retrains ``dataset``."""
    return f"recsys-retrain-{_check_dataset(dataset)}.service"


def timer_name(dataset: str) -> str:
    """Name of the systemd timer unit that triggers :func:`service_name`."""
    return f"recsys-retrain-{_check_dataset(dataset)}.timer"


def kedro_command(dataset: str, extra_params: str = "") -> list[str]:
    """Arguments after the ``kedro`` executable: the retrain run for ``dataset``.

    Args:
        dataset: dataset name, passed as ``retrain.dataset``.
        extra_params: further ``key=value`` pairs, comma-separated, appended to ``--params``.

    Returns:
        ``["run", "--pipelines=retrain", "--params=retrain.dataset=<dataset>[,<extra>]"]``.
    """
    params = f"retrain.dataset={_check_dataset(dataset)}"
    extra = _check_extra_params(extra_params)
    if extra:
        params = f"{params},{extra}"
    return ["run", f"--pipelines={RETRAIN_PIPELINE}", f"--params={params}"]


def pending_command(dataset: str) -> list[str]:
    """Arguments after the venv's ``python``: the check that skips a run with no new file
    (exit 0: new files, 1: nothing new, 255: error; see
    :mod:`recsys_pipeline.commands.pending`)."""
    return ["-m", PENDING_MODULE, "--dataset", _check_dataset(dataset)]


def _systemd_quote(arg: str) -> str:
    """Quote one ExecStart= word for systemd when it contains a space (validated input only)."""
    return f'"{arg}"' if " " in arg or "\t" in arg else arg


def systemd_units(
    project_dir: Path,
    dataset: str,
    on_calendar: str = DEFAULT_ON_CALENDAR,
    user: str | None = None,
    extra_params: str = "",
) -> dict[str, str]:
    """Text of the systemd service and timer units that retrain ``dataset`` on a calendar.

    The service is ``Type=oneshot`` (systemd does not start it again while a run is still going,
    and no start timeout applies); the timer is ``Persistent=true`` (a run missed while the
    machine was off happens at the next boot). Output goes to the journal:
    ``journalctl -u recsys-retrain-<dataset>.service``.

    Args:
        project_dir: absolute path of the Kedro project (holds ``.venv/bin/kedro``).
        dataset: dataset to retrain, passed as ``retrain.dataset``.
        on_calendar: systemd ``OnCalendar=`` expression (``man systemd.time``).
        user: account the service runs as (``User=``); ``None`` leaves it out (root for a
            system unit, the owner for a ``systemctl --user`` unit).
        extra_params: further comma-separated ``key=value`` Kedro parameters.

    Returns:
        ``{"recsys-retrain-<dataset>.service": text, "recsys-retrain-<dataset>.timer": text}``.

    Raises:
        ValueError: when any value is unsafe or malformed (see the module docstring).
    """
    project = _check_project_dir(project_dir)
    dataset = _check_dataset(dataset)
    on_calendar = _check_on_calendar(on_calendar)
    user = _check_user(user)
    argv = [str(project / KEDRO_RELATIVE), *kedro_command(dataset, extra_params)]
    check = [str(project / PYTHON_RELATIVE), *pending_command(dataset)]
    service, timer = service_name(dataset), timer_name(dataset)

    service_lines = [
        "[Unit]",
        f"Description=Retrain the recommender on dataset {dataset} (kedro pipeline "
        f"{RETRAIN_PIPELINE})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=oneshot",
        *([f"User={user}"] if user else []),
        f"WorkingDirectory={project}",
        "Environment=KEDRO_DISABLE_TELEMETRY=true",
        "Environment=PYTHONUNBUFFERED=1",
        # exit 1 (no new file) skips the run without marking the unit failed
        f"ExecCondition={' '.join(_systemd_quote(a) for a in check)}",
        f"ExecStart={' '.join(_systemd_quote(a) for a in argv)}",
        "TimeoutStartSec=infinity",
        "Nice=10",
        "",
    ]
    timer_lines = [
        "[Unit]",
        f"Description=Scheduled retraining on dataset {dataset} ({on_calendar})",
        "",
        "[Timer]",
        f"OnCalendar={on_calendar}",
        "Persistent=true",
        "RandomizedDelaySec=0",
        f"Unit={service}",
        "",
        "[Install]",
        "WantedBy=timers.target",
        "",
    ]
    return {service: "\n".join(service_lines), timer: "\n".join(timer_lines)}


def cron_line(
    project_dir: Path,
    dataset: str,
    schedule: str = DEFAULT_CRON_SCHEDULE,
    extra_params: str = "",
) -> str:
    """One crontab line that retrains ``dataset`` on ``schedule``.

    cron runs jobs with a minimal environment (``PATH=/usr/bin:/bin``, no activated venv, no
    login shell), so the line ``cd``s into the project and calls ``.venv/bin/kedro`` by path;
    nothing depends on ``PATH``. Output is appended to ``logs/retrain-<dataset>.log`` in the
    project. The run starts only when the incoming folder holds a new file
    (:func:`pending_command`); ``flock -n`` (util-linux) skips a run while the previous one
    still holds the lock.

    Args:
        project_dir: absolute path of the Kedro project (holds ``.venv/bin/kedro``).
        dataset: dataset to retrain, passed as ``retrain.dataset``.
        schedule: the five cron time fields (minute hour day-of-month month day-of-week).
        extra_params: further comma-separated ``key=value`` Kedro parameters.

    Returns:
        The line, without a trailing newline, for ``crontab -e`` (user crontab: no user field).

    Raises:
        ValueError: when any value is unsafe or malformed.
    """
    project = _check_project_dir(project_dir)
    dataset = _check_dataset(dataset)
    schedule = _check_cron_schedule(schedule)
    args = " ".join(shlex.quote(a) for a in kedro_command(dataset, extra_params))
    check = " ".join(shlex.quote(a) for a in pending_command(dataset))
    log = f"logs/retrain-{dataset}.log"
    lock = f"logs/retrain-{dataset}.lock"
    command = (
        f"cd {shlex.quote(str(project))} && mkdir -p logs && "
        f"{PYTHON_RELATIVE} {check} >> {log} 2>&1 && "
        f"KEDRO_DISABLE_TELEMETRY=true flock -n {lock} {KEDRO_RELATIVE} {args} >> {log} 2>&1"
    )
    if "%" in command:  # '%' means "newline" to cron; validation should have kept it out
        raise ValueError(f"cron command must not contain '%': {command!r}")
    return f"{schedule} {command}"


def write_files(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write ``{name: text}`` into ``out_dir`` atomically (temporary name, then rename).

    Args:
        files: file names (no directories) and their text.
        out_dir: target directory, created if missing.

    Returns:
        The written paths, in the order of ``files``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        if Path(name).name != name:
            raise ValueError(f"file name must not contain a directory: {name!r}")
        target = out_dir / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def _systemd_instructions(dataset: str, paths: Sequence[Path]) -> str:
    """Commands that install and start the timer, and inspect it afterwards."""
    files = " ".join(shlex.quote(str(p)) for p in paths)
    timer, service = timer_name(dataset), service_name(dataset)
    return (
        "# install and start (system units):\n"
        f"sudo cp {files} /etc/systemd/system/ && sudo systemctl daemon-reload && "
        f"sudo systemctl enable --now {timer}\n"
        "# check the schedule, run once now, read the logs:\n"
        f"systemctl list-timers {timer}\n"
        f"sudo systemctl start {service}\n"
        f"journalctl -u {service}\n"
    )


def _cron_instructions(path: Path | None) -> str:
    """Commands that add the line to the user's crontab."""
    if path is None:
        return "# add the line above with `crontab -e` (as the account that owns the project)\n"
    return (
        "# append to the current user's crontab, then check:\n"
        f"(crontab -l 2>/dev/null; cat {shlex.quote(str(path))}) | crontab -\n"
        "crontab -l\n"
    )


def _build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``python -m recsys_pipeline.operations.schedule``."""
    parser = argparse.ArgumentParser(
        prog="python -m recsys_pipeline.operations.schedule",
        description="Generate a systemd timer or a cron line that runs the retrain pipeline.",
    )
    sub = parser.add_subparsers(dest="engine", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dataset", required=True, help="dataset to retrain (retrain.dataset)")
    common.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="absolute path of the Kedro project (default: the current directory)",
    )
    common.add_argument(
        "--extra-params", default="", help="extra Kedro params, e.g. 'retrain.epochs=5'"
    )
    common.add_argument("--out", type=Path, default=None, help="write the files into this dir")
    systemd = sub.add_parser("systemd", parents=[common], help="systemd .service + .timer")
    systemd.add_argument("--on-calendar", default=DEFAULT_ON_CALENDAR, help="OnCalendar= value")
    systemd.add_argument("--user", default=None, help="User= of the service")
    cron = sub.add_parser("cron", parents=[common], help="one crontab line")
    cron.add_argument("--schedule", default=DEFAULT_CRON_SCHEDULE, help="five cron fields")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: print (or write with ``--out``) the schedule definition.

    Returns:
        0 on success, 2 on invalid input (message on stderr).
    """
    args = _build_parser().parse_args(argv)
    project = (args.project_dir or Path.cwd()).absolute()
    out = sys.stdout.write
    try:
        if not (project / KEDRO_RELATIVE).exists():
            sys.stderr.write(f"warning: {project / KEDRO_RELATIVE} does not exist yet\n")
        if args.engine == "systemd":
            files = systemd_units(
                project, args.dataset, args.on_calendar, args.user, args.extra_params
            )
        else:
            line = cron_line(project, args.dataset, args.schedule, args.extra_params)
            files = {f"recsys-retrain-{args.dataset}.crontab": line + "\n"}
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2

    if args.out is not None:
        paths = write_files(files, args.out)
        for path in paths:
            out(f"wrote {path}\n")
    else:
        paths = [Path(name) for name in files]
        for name, text in files.items():
            if args.engine == "systemd":
                out(f"# ---- {name} ----\n")
            out(text if text.endswith("\n") else text + "\n")
    if args.engine == "systemd":
        out(_systemd_instructions(args.dataset, paths))
    else:
        out(_cron_instructions(paths[0] if args.out is not None else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
