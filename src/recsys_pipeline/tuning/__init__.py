"""Hyperparameter search with Optuna: spaces as data, resumable RDB studies, trials of any registered next-item model."""

from recsys_pipeline.tuning.objective import METRICS, Metric, model_objective, trial_params
from recsys_pipeline.tuning.space import ParamSpec, SpaceError, load_space, parse_space, suggest
from recsys_pipeline.tuning.study import (
    FINISHED,
    PRUNERS,
    StudySettings,
    TuningError,
    enqueue_defaults,
    finished_trials,
    open_study,
    optimize,
    redact_url,
    trials_table,
)

__all__ = [
    "FINISHED",
    "METRICS",
    "PRUNERS",
    "Metric",
    "ParamSpec",
    "SpaceError",
    "StudySettings",
    "TuningError",
    "enqueue_defaults",
    "finished_trials",
    "model_objective",
    "load_space",
    "open_study",
    "optimize",
    "parse_space",
    "redact_url",
    "suggest",
    "trial_params",
    "trials_table",
]
