"""Coveo shopper-intent data, 2020 release: ``release_10_23_2020.csv``."""

from __future__ import annotations

import polars as pl

from recsys_pipeline.datasets.base import Column, RawFormat
from recsys_pipeline.preprocessing.protocol import ITEM, TIME, first_appearance_index


class Coveo(RawFormat):
    """Session hashes cut further by the 1-hour gap on all events; ``detail`` events kept.

    Session and SKU hashes are ranked in order of first appearance over all rows (a missing SKU,
    on pageviews, counts as one value, as in the reference); the output ItemId is that rank.
    """

    name = "coveo"
    files = ("release_10_23_2020.csv",)
    columns = (
        Column("session_id_hash", "str"),
        Column("product_action", "event"),
        Column("product_skus_hash", "str", nullable=True),
        Column("server_timestamp_epoch_ms", "int"),
    )
    kept_events = ("detail",)
    needs_all_rows = True
    time_unit_seconds = 0.001
    published_at = "https://github.com/coveooss/shopper-intent-prediction-nature-2020"

    def standardize(self, df: pl.DataFrame) -> pl.LazyFrame:
        """Rank session and SKU hashes by first appearance."""
        ranked = first_appearance_index(df, {"session_id_hash": "key", "product_skus_hash": ITEM})
        return ranked.select(
            "key",
            ITEM,
            pl.col(ITEM).alias("sort_item"),
            pl.col("server_timestamp_epoch_ms").alias(TIME),
            "kept",
        )
