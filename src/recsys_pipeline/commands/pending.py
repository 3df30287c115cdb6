"""Is there anything for ``retrain`` to do? A check for schedulers, so that a scheduled run
with no new file is skipped instead of failing ("no new files").

``python -m recsys_pipeline.commands.pending --dataset <name>`` run in the project
folder prints the new files of the dataset's incoming folder and exits 0 when there are any, 1
when there are none, 255 on an error (systemd's ``ExecCondition=`` skips the unit on 1-254 and
fails it on 255). The folder and the manifest are the ``retrain`` parameters of the project's
configuration (``conf/base`` + ``conf/<env>``), read with Kedro's ``OmegaConfigLoader`` without
starting a session. The generated cron line, systemd service and Airflow DAG use it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsys_pipeline.operations.ingest import pending

NEW, NOTHING_NEW, ERROR = 0, 1, 255


def retrain_parameters(
    project_dir: str | Path = ".", env: str | None = None, dataset: str | None = None
) -> dict[str, Any]:
    """The project's ``retrain`` parameters (``retrain.dataset`` set to ``dataset``)."""
    import warnings

    from kedro.config import OmegaConfigLoader

    from recsys_pipeline.settings import CONFIG_LOADER_ARGS

    warnings.filterwarnings("ignore", message=r".*register_new_resolver\(\) is deprecated.*")
    runtime = {"retrain": {"dataset": dataset}} if dataset else {}
    loader = OmegaConfigLoader(
        conf_source=str(Path(project_dir) / "conf"),
        **CONFIG_LOADER_ARGS,
        env=env,
        runtime_params=runtime,
    )
    params = dict(loader["parameters"]["retrain"])
    if dataset:
        params["dataset"] = dataset
    return params


def pending_files(
    dataset: str, project_dir: str | Path = ".", env: str | None = None
) -> list[Path]:
    """The files of ``dataset``'s incoming folder whose content was never processed."""
    params = retrain_parameters(project_dir, env, dataset)
    project = Path(project_dir)
    incoming = project / params["incoming_dir"].format(dataset=params["dataset"])
    manifest = project / params["manifest"].format(dataset=params["dataset"])
    return pending(incoming, manifest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, help="retrain.dataset")
    parser.add_argument("--project-dir", default=".", help="the Kedro project (default: .)")
    parser.add_argument("--env", default=None, help="Kedro configuration environment")
    args = parser.parse_args(argv)
    try:
        files = pending_files(args.dataset, args.project_dir, args.env)
    except Exception as err:  # noqa: BLE001 - any failure must be 255, not "skip"
        print(f"cannot check the incoming files: {type(err).__name__}: {err}", file=sys.stderr)  # noqa: T201
        return ERROR
    if not files:
        print(f"{args.dataset}: no new incoming files: nothing to retrain")  # noqa: T201
        return NOTHING_NEW
    print(f"{args.dataset}: {len(files)} new incoming file(s): {[f.name for f in files]}")  # noqa: T201
    return NEW


if __name__ == "__main__":
    sys.exit(main())
