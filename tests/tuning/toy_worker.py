"""A tuning worker with a cheap objective (sleeps per "epoch"), run as a subprocess by the tests.

python tests/tuning/toy_worker.py STORAGE_URL STUDY N_TRIALS [EPOCH_SECONDS]
"""

from __future__ import annotations

import sys
import time

import optuna

from recsys_pipeline.tuning import StudySettings, open_study, optimize, parse_space, suggest

SPACE = parse_space(
    '{"name": "x", "dtype": "float", "low": -2, "high": 2, "step": 0.01}\n'
    '{"name": "y", "dtype": "int", "low": 0, "high": 50}'
)


def main() -> int:
    url, name, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3])
    epoch_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.3
    settings = StudySettings(
        storage=url,
        study_name=name,
        pruner="none",
        n_startup_trials=2,
        heartbeat_interval=1,
        grace_period=2,
    )
    study = open_study(settings, {"space": [s.to_dict() for s in SPACE], "metric": "toy"})

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, SPACE)
        score = 0.0
        for epoch in range(1, 4):
            time.sleep(epoch_s)
            score = -((values["x"] - 0.5) ** 2) - values["y"] / 100 + epoch / 100
            trial.report(score, epoch)
        return score

    optimize(study, objective, n_trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
