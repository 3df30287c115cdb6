"""Which splits a dataset compares on: the catalog resolver ``compare_split`` and the task.

Three kinds of dataset, three split layouts in ``data/05_model_input/<dataset>/``:

==================  ==========================================  ============  ==============
dataset             made by                                     task          train/valid/test
==================  ==========================================  ============  ==============
session datasets    ``preprocess_<dataset>``, the default run   next_item     train_full / train_valid / test
user sequences      ``preprocess_sequences`` (beauty, ml1m...)  next_item     loo_train / loo_valid / loo_test
``movielens``       ``preprocess_movielens`` (time split)       user_item     time_train / time_valid / time_test
==================  ==========================================  ============  ==============

``conf/base/catalog.yml`` reads ``${compare_split:<dataset>,<role>}`` (registered in
``settings.py``) so that ``--params=compare.dataset=beauty`` is all a user types.
"""

from __future__ import annotations

#: the splits, then ``items``: the frame whose ``ItemId`` column is the item catalogue the
#: models rank (a user-sequence dataset's ``items``; elsewhere the training split's items)
ROLES = ("train", "valid", "test", "items")
_LAYOUTS = {
    "sessions": ("train_full", "train_valid", "test", "train_full"),
    "sequences": ("loo_train", "loo_valid", "loo_test", "items"),
    "user_item": ("time_train", "time_valid", "time_test", "time_train"),
}
#: the dataset of user-item (NeuMF) models
USER_ITEM_DATASET = "movielens"


def layout(dataset: str) -> str:
    """``"sessions"``, ``"sequences"`` or ``"user_item"``: how ``dataset`` is split."""
    from recsys_pipeline.pipelines.preprocess_sequences.pipeline import DATASETS

    if dataset in DATASETS:
        return "sequences"
    if dataset == USER_ITEM_DATASET:
        return "user_item"
    return "sessions"


def task(dataset: str) -> str:
    """The model task that fits ``dataset``: ``user_item`` for MovieLens' time split, else
    ``next_item``."""
    return "user_item" if layout(dataset) == "user_item" else "next_item"


def compare_split(dataset: str, role: str) -> str:
    """The file name (without ``.parquet``) of ``dataset``'s ``role`` split (train, valid, test)
    or of its item catalogue (items).

    >>> compare_split("beauty", "train"), compare_split("diginetica", "test")
    ('loo_train', 'test')
    """
    if role not in ROLES:
        raise ValueError(f"compare_split: role must be one of {ROLES}, got {role!r}")
    return _LAYOUTS[layout(dataset)][ROLES.index(role)]
