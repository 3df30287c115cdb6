"""RetailRocket e-commerce dataset: ``events.csv``."""

from __future__ import annotations

import polars as pl

from recsys_pipeline.datasets.base import Column, RawFormat
from recsys_pipeline.preprocessing.protocol import ITEM, TIME


class RetailRocket(RawFormat):
    """Visitor-based sessions cut on all events (view, addtocart, transaction); views kept; ms."""

    name = "retailrocket"
    files = ("events.csv",)
    columns = (
        Column("timestamp", "int"),
        Column("visitorid", "int"),
        Column("event", "event"),
        Column("itemid", "int"),
    )
    kept_events = ("view",)
    time_unit_seconds = 0.001
    published_at = "https://www.kaggle.com/datasets/retailrocket/ecommerce-dataset"

    def standardize(self, df: pl.DataFrame) -> pl.DataFrame:
        """The visitor is the key; the item id is its own tie-breaker."""
        return df.select(
            pl.col("visitorid").alias("key"),
            pl.col("itemid").alias(ITEM),
            pl.col("itemid").alias("sort_item"),
            pl.col("timestamp").alias(TIME),
            "kept",
        )
