"""Nodes of ``preprocess_movielens``: thin, typed wrappers around the library.

``params`` is ``preprocess_movielens`` of ``conf/base/parameters_preprocess_movielens.yml``:
``variant``, ``raw_dir``, ``min_user_ratings``, ``n_negatives``, ``seed`` and ``time_split``
(``test_fraction``, ``valid_fraction``, ``cut_test``, ``cut_valid``).
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from recsys_pipeline.datasets.movielens import read_ratings
from recsys_pipeline.preprocessing import ncf

logger = logging.getLogger(__name__)

NCF_ARTIFACTS = ("ncf_train", "ncf_valid", "ncf_test", "ncf_valid_negatives", "ncf_test_negatives")
TIME_ARTIFACTS = ("time_train", "time_valid", "time_test")
_KNOWN = {"variant", "raw_dir", "min_user_ratings", "n_negatives", "seed", "time_split"}


def _config(params: dict[str, Any]) -> ncf.NCFConfig:
    unknown = set(params) - _KNOWN
    if unknown:
        raise ValueError(
            f"unknown preprocess_movielens parameter(s) {sorted(unknown)}; known: {sorted(_KNOWN)}"
        )
    time_split = dict(params.get("time_split") or {})
    fields = ncf.NCFConfig.__dataclass_fields__
    bad = set(time_split) - set(fields)
    if bad:
        raise ValueError(f"unknown time_split parameter(s) {sorted(bad)}")
    top = {k: params[k] for k in ("min_user_ratings", "n_negatives", "seed") if k in params}
    return ncf.NCFConfig(**top, **time_split)


def ingest(params: dict[str, Any]) -> pl.DataFrame:
    """The variant's raw file (``u.data``, ``ratings.dat``, ``ratings.csv``; plain or .gz).

    Returns ``UserId``, ``ItemId``, ``Rating``, ``Time`` (epoch seconds), deduplicated by
    (UserId, ItemId) at the earliest time and sorted by (UserId, Time, ItemId).
    """
    _config(params)
    ratings = read_ratings(params["variant"], params.get("raw_dir", "data/01_raw/movielens"))
    return ncf.deduplicate_ratings(ratings).select(ncf.USER, ncf.ITEM, "Rating", ncf.TIME)


def check_raw_schema(ratings: pl.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations schema check of the ingested ratings (integer ids/time, no nulls)."""
    from recsys_pipeline.validation import validate_raw_events

    required = {"UserId": "int", "ItemId": "int", "Rating": "float", "Time": "int"}
    return validate_raw_events(ratings, f"movielens {params['variant']}", required)


def ncf_split(
    ratings: pl.DataFrame, params: dict[str, Any], raw_report: dict
) -> tuple[pl.DataFrame, ...]:
    """NCF leave-last-out (legacy, labelled): train, valid, test, valid and test negatives."""
    del raw_report  # ordering only: split checked input
    split = ncf.ncf_split(ratings, _config(params))
    return split.train, split.valid, split.test, split.valid_negatives, split.test_negatives


def time_split(
    ratings: pl.DataFrame, params: dict[str, Any], raw_report: dict
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Global time split (the recommended protocol) on all ratings; returns the cuts too."""
    del raw_report
    config = _config(params)
    cuts = ncf.time_cuts(
        ratings, config.test_fraction, config.valid_fraction, config.cut_test, config.cut_valid
    )
    return *ncf.time_split(ratings, cuts["cut_valid"], cuts["cut_test"]), cuts


def validate(
    ncf_train: pl.DataFrame,
    ncf_valid: pl.DataFrame,
    ncf_test: pl.DataFrame,
    ncf_valid_negatives: pl.DataFrame,
    ncf_test_negatives: pl.DataFrame,
    time_train: pl.DataFrame,
    time_valid: pl.DataFrame,
    time_test: pl.DataFrame,
    cuts: dict[str, int],
    params: dict[str, Any],
) -> tuple[Any, ...]:
    """Great Expectations on every output; only validated frames reach the catalog.

    Raises ``DataValidationError`` naming the artifact, the expectation and offending rows.
    """
    from recsys_pipeline.validation import validate_rating_splits

    config = _config(params)
    frames = dict(
        zip(
            NCF_ARTIFACTS + TIME_ARTIFACTS,
            (ncf_train, ncf_valid, ncf_test, ncf_valid_negatives, ncf_test_negatives)
            + (time_train, time_valid, time_test),
            strict=True,
        )
    )
    report = validate_rating_splits(
        frames,
        f"movielens {params['variant']}",
        min_user_ratings=config.min_user_ratings,
        n_negatives=config.n_negatives,
        cut_valid=cuts["cut_valid"],
        cut_test=cuts["cut_test"],
    )
    return *frames.values(), report


def compute_stats(
    ratings: pl.DataFrame,
    ncf_train: pl.DataFrame,
    ncf_valid: pl.DataFrame,
    ncf_test: pl.DataFrame,
    ncf_valid_negatives: pl.DataFrame,
    ncf_test_negatives: pl.DataFrame,
    time_train: pl.DataFrame,
    time_valid: pl.DataFrame,
    time_test: pl.DataFrame,
    cuts: dict[str, int],
    params: dict[str, Any],
) -> dict[str, Any]:
    """Rows, users, items and time range per artifact; the parameters and cut times."""
    config = _config(params)
    frames = {
        "ratings": ratings,
        "ncf_train": ncf_train,
        "ncf_valid": ncf_valid,
        "ncf_test": ncf_test,
        "ncf_valid_negatives": ncf_valid_negatives,
        "ncf_test_negatives": ncf_test_negatives,
        "time_train": time_train,
        "time_valid": time_valid,
        "time_test": time_test,
    }
    stats = {name: ncf.split_stats(df) for name, df in frames.items()}
    train_users = time_train.select(ncf.USER).unique()
    train_items = time_train.select(ncf.ITEM).unique()
    for name in ("time_valid", "time_test"):
        known = frames[name].join(train_users, on=ncf.USER, how="semi")
        stats[name]["rows_with_known_user_and_item"] = known.join(
            train_items, on=ncf.ITEM, how="semi"
        ).height
    for name, values in stats.items():
        logger.info(
            "%-20s %10d rows %8d users %7d items",
            name,
            values["rows"],
            values["users"],
            values["items"],
        )
    return {
        "variant": params["variant"],
        "protocols": {
            "ncf": "leave-last-out per user (legacy, for comparison with NCF numbers only)",
            "time": "global time split (recommended)",
        },
        "parameters": {k: v for k, v in vars(config).items()},
        "cuts": cuts,
        "artifacts": stats,
    }
