"""Rees46 ("eCommerce behavior data from multi category store"): ``2019-Oct.csv`` + ``2019-Nov.csv``."""

from __future__ import annotations

import polars as pl

from recsys_pipeline.datasets.base import Column, RawFormat
from recsys_pipeline.preprocessing.protocol import ITEM, TIME, first_appearance_index


class Rees46(RawFormat):
    """User-based sessions; ``ItemId`` is the original ``product_id``; Time in UTC epoch seconds.

    As in the reference, user and product ids are ranked in order of first appearance over all
    events of both months (October first); the product rank breaks ties of equal timestamps.
    """

    name = "rees46"
    files = ("2019-Oct.csv", "2019-Nov.csv")
    columns = (
        Column("event_time", "time"),
        Column("event_type", "event"),
        Column("product_id", "int"),
        Column("user_id", "int"),
    )
    kept_events = ("view",)
    time_unit_seconds = 1.0
    needs_all_rows = True
    published_at = "https://www.kaggle.com/datasets/mkechinov/ecommerce-behavior-data-from-multi-category-store"

    def parse_time(self, col: pl.Expr) -> pl.Expr:
        """``2019-10-01 00:00:00 UTC`` -> epoch seconds."""
        return col.str.strptime(pl.Datetime("us"), "%Y-%m-%d %H:%M:%S UTC", strict=False).dt.epoch(
            "s"
        )

    def standardize(self, df: pl.DataFrame) -> pl.LazyFrame:
        """Rank users and products by first appearance; users are the sessionisation key."""
        ranked = first_appearance_index(df, {"user_id": "key", "product_id": "sort_item"})
        return ranked.select(
            "key",
            pl.col("product_id").alias(ITEM),
            "sort_item",
            pl.col("event_time").alias(TIME),
            "kept",
        )
