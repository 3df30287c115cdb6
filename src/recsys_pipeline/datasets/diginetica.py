"""Diginetica (CIKM Cup 2016): ``train-item-views.csv`` (``;``-separated)."""

from __future__ import annotations

import polars as pl

from recsys_pipeline.datasets.base import Column, RawFormat
from recsys_pipeline.preprocessing.protocol import ITEM, TIME


class Diginetica(RawFormat):
    """Given session ids, all views kept, Time in ms anchored on the session's first date.

    ``Time = (UTC midnight of the session's earliest eventdate, in s) * 1000 + timeframe``: every
    event of a session is anchored on that first date even if its own eventdate is later.
    Both spellings of the header (``sessionId;userId;itemId`` and ``session_id;user_id;item_id``)
    are accepted.
    """

    name = "diginetica"
    files = ("train-item-views.csv",)
    separator = ";"
    header_aliases = {"session_id": "sessionId", "user_id": "userId", "item_id": "itemId"}
    columns = (
        Column("sessionId", "int"),
        Column("itemId", "int"),
        Column("timeframe", "int"),
        Column("eventdate", "time"),
    )
    time_unit_seconds = 0.001
    published_at = "https://competitions.codalab.org/competitions/11161 (CIKM Cup 2016, track 2)"

    def parse_time(self, col: pl.Expr) -> pl.Expr:
        """``YYYY-MM-DD`` -> epoch seconds of that UTC midnight."""
        return col.str.to_date("%Y-%m-%d", strict=False).cast(pl.Int64) * 86_400

    def standardize(self, df: pl.DataFrame) -> pl.DataFrame:
        """Anchor every event on its session's earliest date."""
        anchor = pl.col("eventdate").min().over("sessionId")
        return df.select(
            pl.col("sessionId").alias("key"),
            pl.col("itemId").alias(ITEM),
            pl.col("itemId").alias("sort_item"),
            (anchor * 1000 + pl.col("timeframe")).alias(TIME),
            "kept",
        )
