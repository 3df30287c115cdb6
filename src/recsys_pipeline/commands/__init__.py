"""Console entry points (``[project.scripts]`` in ``pyproject.toml``); none imports Kedro.

* ``recsys-gru4rec`` (:mod:`.gru4rec`): the official GRU4Rec ``run.py``'s options and output.
* ``recsys-neumf-ddp`` (:mod:`.neumf_ddp`): data-parallel NeuMF training under ``torchrun``.
* ``recsys-retrain-pending`` (:mod:`.pending`): whether a scheduled retrain has new files.

Each also runs as ``python -m recsys_pipeline.commands.<name>``.
"""
