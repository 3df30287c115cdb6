"""Yoochoose (RecSys Challenge 2015): ``yoochoose-clicks.dat`` (+ ``yoochoose-test.dat``), no header.

Two protocols read these files: the 2023 one ("yoochoose": clicks and the challenge's test clicks,
UTC seconds) and the older "rsc15" one (clicks only, float seconds of the naive local time).
"""

from __future__ import annotations

import polars as pl

from recsys_pipeline.datasets.base import Column, RawFormat
from recsys_pipeline.preprocessing.protocol import ITEM, TIME

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%.fZ"


class Yoochoose(RawFormat):
    """Given session ids; every click kept; Time = UTC epoch seconds (sub-second part dropped)."""

    name = "yoochoose"
    files = ("yoochoose-clicks.dat", "yoochoose-test.dat")
    has_header = False
    columns = (Column("column_1", "int"), Column("column_2", "time"), Column("column_3", "int"))
    time_unit_seconds = 1.0
    published_at = "https://recsys.acm.org/recsys15/challenge/ (yoochoose-data.7z)"

    def parse_time(self, col: pl.Expr) -> pl.Expr:
        """``2014-04-07T10:51:09.277Z`` -> whole UTC epoch seconds (floor)."""
        return col.str.strptime(pl.Datetime("ms"), TIME_FORMAT, strict=False).dt.epoch("s")

    def standardize(self, df: pl.DataFrame) -> pl.DataFrame:
        """The given session id is the key; the item id is its own tie-breaker."""
        return df.select(
            pl.col("column_1").alias("key"),
            pl.col("column_3").alias(ITEM),
            pl.col("column_3").alias("sort_item"),
            pl.col("column_2").alias(TIME),
            "kept",
        )


class Rsc15(Yoochoose):
    """The older protocol's input: clicks only, Time = float seconds of the naive timestamp.

    The reference used ``time.mktime`` (the machine's local time zone, whole seconds); here the
    zone is a parameter (``timezone``, default UTC) so results do not depend on the machine.
    """

    name = "rsc15"
    files = ("yoochoose-clicks.dat",)

    def __init__(self, timezone: str = "UTC") -> None:
        self.timezone = timezone

    def parse_time(self, col: pl.Expr) -> pl.Expr:
        """Naive timestamp read in ``timezone``, truncated to whole seconds, as Float64 seconds."""
        parsed = col.str.strptime(pl.Datetime("ms"), TIME_FORMAT, strict=False)
        return (
            parsed.dt.truncate("1s")
            .dt.replace_time_zone(self.timezone, ambiguous="earliest", non_existent="null")
            .dt.epoch("s")
            .cast(pl.Float64)
        )
