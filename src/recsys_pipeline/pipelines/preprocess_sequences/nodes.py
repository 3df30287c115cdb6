"""Nodes of ``preprocess_sequences``: thin, typed wrappers around the library.

``params`` is ``preprocess_sequences.<dataset>`` of
``conf/base/parameters_preprocess_sequences.yml``: ``format`` (``pairs``, ``lines``,
``movielens``), ``raw_dir``, ``file``, ``min_items``, ``holdout`` (``valid_test``, default, or
``test``: no validation item), ``catalog`` (optional: a file in ``raw_dir`` listing every item
id of the catalogue, e.g. MovieLens' ``movies.dat``; without it the catalogue is the items of
``loo_train``) and, for MovieLens, ``variant`` and ``min_rating``.
"""

from __future__ import annotations

import logging
from typing import Any

import polars as pl

from recsys_pipeline.datasets.sequences import (
    HAS_TIMES,
    SEQUENCE_COLUMNS,
    read_item_catalog,
    read_sequences,
)
from recsys_pipeline.preprocessing import sequences as S

logger = logging.getLogger(__name__)

_KNOWN = {
    "format", "raw_dir", "file", "min_items", "holdout", "catalog", "variant", "min_rating",
}  # fmt: skip


def _checked(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - _KNOWN
    if unknown:
        raise ValueError(
            f"unknown preprocess_sequences parameter(s) {sorted(unknown)}; known: {sorted(_KNOWN)}"
        )
    missing = {"format", "raw_dir"} - set(params)
    if missing:
        raise ValueError(f"preprocess_sequences parameter(s) {sorted(missing)} missing")
    return params


def _min_items(params: dict[str, Any]) -> int:
    return int(params.get("min_items", S.DEFAULT_MIN_ITEMS))


def _holdout(params: dict[str, Any]) -> str:
    return str(params.get("holdout", "valid_test"))


def _label(params: dict[str, Any]) -> str:
    return f"{params['format']} {params['raw_dir']}/{params.get('file') or params.get('variant')}"


def ingest(params: dict[str, Any]) -> pl.DataFrame:
    """The dataset's raw file -> sequence frame ``UserId``, ``ItemId``, ``Time`` (Int64).

    Sorted by user and chronologically; ``Time`` is the position in the user's sequence (pairs,
    lines) or epoch seconds with ties in file order (movielens).
    """
    params = _checked(params)
    movielens = params["format"] == "movielens"
    return read_sequences(
        params["format"],
        params["raw_dir"],
        params.get("file"),
        variant=params.get("variant") if movielens else None,
        min_rating=params.get("min_rating") if movielens else None,
    )


def check_raw_schema(sequences: pl.DataFrame, params: dict[str, Any]) -> dict[str, Any]:
    """Great Expectations schema check of the ingested sequences (integer columns, no nulls)."""
    from recsys_pipeline.validation import validate_raw_events

    required = dict.fromkeys(SEQUENCE_COLUMNS, "int")
    return validate_raw_events(sequences, _label(params), required)


def split(
    sequences: pl.DataFrame, params: dict[str, Any], raw_report: dict[str, Any]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Leave-one-out: train, valid (second-to-last event; none with ``holdout: test``), test
    (last event) per user."""
    del raw_report  # ordering only: split runs on checked input
    holdout = _holdout(params)
    loo = S.leave_one_out(sequences, _min_items(params), holdout)
    minimum = max(1, int(params.get("min_split_users", 1)))
    small = [
        f"'{name}' has {frame.height} users"
        for name, frame in (("loo_valid", loo.valid), ("loo_test", loo.test))
        if frame.height < minimum and not (name == "loo_valid" and holdout == "test")
    ]
    if small:
        lengths = sequences.group_by("UserId").len().get_column("len")
        raise ValueError(
            f"{_label(params)}: " + "; ".join(small) + f" (at least {minimum} needed, "
            f"min_split_users): of {lengths.len()} users "
            f"{int((lengths >= _min_items(params)).sum())} have the {_min_items(params)} events "
            f"that held-out items need (the longest has {lengths.max() or 0}). Lower min_items "
            "or add data."
        )
    return loo.train, loo.valid, loo.test


def item_table(loo_train: pl.DataFrame, params: dict[str, Any]) -> pl.DataFrame:
    """The item catalogue the models rank (``ItemId``, ascending): the ids of the ``catalog``
    file in ``raw_dir`` when the parameter names one (items nobody interacted with included,
    as generative-recommenders ranks every id of ``movies.dat``), else the items of
    ``loo_train`` (what a model's item table holds by default)."""
    catalog = _checked(params).get("catalog")
    if catalog:
        return read_item_catalog(params["raw_dir"], str(catalog))
    return loo_train.select("ItemId").unique().sort("ItemId")


def validate(
    sequences: pl.DataFrame,
    loo_train: pl.DataFrame,
    loo_valid: pl.DataFrame,
    loo_test: pl.DataFrame,
    items: pl.DataFrame,
    raw_report: dict[str, Any],
    params: dict[str, Any],
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame, dict, dict]:
    """Great Expectations on the sequences, splits and item catalogue; only validated data
    reaches the catalog.

    Returns the five frames, the raw check's report and the split validation report, all
    written only when every check passed. Raises ``DataValidationError`` naming the artifact,
    the expectation and offending rows (e.g. events whose item the catalogue lacks).
    """
    from recsys_pipeline.validation.sequences import validate_loo_splits

    frames = {
        "sequences": sequences,
        "loo_train": loo_train,
        "loo_valid": loo_valid,
        "loo_test": loo_test,
    }
    report = validate_loo_splits(
        frames,
        _label(params),
        min_items=_min_items(params),
        holdout=_holdout(params),
        # a catalogue file must hold every item; the default one (loo_train's items) need not
        # hold the items first seen as a validation or test item
        items=items if params.get("catalog") else None,
    )
    return sequences, loo_train, loo_valid, loo_test, items, raw_report, report


def compute_stats(
    sequences: pl.DataFrame,
    loo_train: pl.DataFrame,
    loo_valid: pl.DataFrame,
    loo_test: pl.DataFrame,
    items: pl.DataFrame,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Users, items, events, lengths, users wholly in train, ``has_times``, rows per split, the
    item catalogue's size and source."""
    min_items = _min_items(params)
    stats = S.sequence_stats(sequences, min_items)
    splits = {"loo_train": loo_train, "loo_valid": loo_valid, "loo_test": loo_test}
    logger.info(
        "%s: %d users, %d items, %d events (mean length %.2f, median %.1f); %d users wholly in "
        "train; loo_train %d, loo_valid %d, loo_test %d rows",
        _label(params),
        stats["users"],
        stats["items"],
        stats["events"],
        stats["length"]["mean"],
        stats["length"]["median"],
        stats["users_train_only"],
        *(df.height for df in splits.values()),
    )
    return {
        "format": params["format"],
        "source": _label(params),
        "has_times": HAS_TIMES[params["format"]],
        "time": "epoch seconds" if HAS_TIMES[params["format"]] else "position in the sequence",
        "protocol": (
            "leave-one-out: test = last event, valid = second-to-last, train = the rest; "
            if _holdout(params) == "valid_test"
            else "leave-one-out: test = last event, train = the rest (no validation item); "
        )
        + f"users with < {min_items} events wholly in train",
        "parameters": {k: v for k, v in params.items()},
        **stats,
        "catalogue": {
            "items": items.height,
            "source": params.get("catalog") or "the items of loo_train",
            "never_in_train": items.height
            - loo_train.get_column("ItemId")
            .unique()
            .is_in(items.get_column("ItemId").implode())
            .sum(),
        },
        "splits": {
            name: {
                "rows": df.height,
                "users": df.get_column("UserId").n_unique(),
                "items": df.get_column("ItemId").n_unique(),
            }
            for name, df in splits.items()
        },
    }
