"""Project settings (Kedro defaults plus the OmegaConfigLoader environments)."""

import os
import warnings

from kedro.config import OmegaConfigLoader

# Great Expectations: no analytics, even though 1.x ships no client.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# MLflow's "Downloading artifacts" bars (each model a run logs is loaded once to check its
# input example): a bar per model, lines of their own when the output is not a terminal.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# MLflow's own INFO lines ("Creating initial MLflow database tables", "Validating input example
# against model signature" for every model a run logs) go to its own handler: from WARNING.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# Third-party deprecation noise on every run (omegaconf 2.4 via kedro and kedro-mlflow; mlflow).
warnings.filterwarnings("ignore", message=r".*register_new_resolver\(\) is deprecated.*")
warnings.filterwarnings("ignore", message=r".*Add type hints to the `predict` method.*")
# Kedro warns once when a node's namespace is not its datasets' prefix. Dataset names are
# `<dataset>.<artifact>` by design (README, "Artifacts"), and the default pipeline groups its
# nodes in parts (generate, preprocess, train: pipeline_registry.part) across those names.
warnings.filterwarnings("ignore", message=r"One or more dataset names contain '\.' characters")

CONFIG_LOADER_CLASS = OmegaConfigLoader

from recsys_pipeline.kedro_ext.console import tidy_console  # noqa: E402

tidy_console()  # plain console lines in a file or pipe; no unactionable warnings

from recsys_pipeline.hooks import (  # noqa: E402
    MlflowRunTagsHook,
    RetrainLockHook,
    RunJournalHook,
    RunSummaryHook,
)
from recsys_pipeline.kedro_ext.resolvers import project_path  # noqa: E402
from recsys_pipeline.kedro_ext.session_store import UniqueSessionStore  # noqa: E402
from recsys_pipeline.pipelines.compare.splits import compare_split  # noqa: E402

HOOKS = (RetrainLockHook(), RunJournalHook(), MlflowRunTagsHook(), RunSummaryHook())
# Session ids (the save version of every versioned dataset) unique among runs of the project,
# e.g. tuning workers started in the same millisecond (session_store.py).
SESSION_STORE_CLASS = UniqueSessionStore
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # conf/<env> parameter files deep-merge into conf/base: they (and `--params`) need only the
    # keys they change (Kedro's default "destructive" merge replaces a whole top-level block,
    # and then drops its other keys, e.g. `synthetic.format`, when `--params` sets one key).
    "merge_strategy": {"parameters": "soft"},
    # catalog.yml: the split files of `compare.dataset` (pipelines/compare/splits.py);
    # mlflow.yml: the tracking store in the project root from any working directory
    "custom_resolvers": {"compare_split": compare_split, "project_path": project_path},
}
