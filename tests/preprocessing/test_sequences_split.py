"""Leave-one-out split of user sequences: hand-computed cases and the SASRec reference's rule."""

from __future__ import annotations

import polars as pl
import pytest

from recsys_pipeline.preprocessing.sequences import leave_one_out, sequence_stats
from recsys_pipeline.synthetic.sequences import SequenceConfig, generate_sequences

SCHEMA = {"UserId": pl.Int64, "ItemId": pl.Int64, "Time": pl.Int64}


def frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


# users: 1 has one event, 2 has two, 3 has three, 4 has four (with a tie at Time 7: row order)
SEQUENCES = frame(
    [
        (1, 10, 0),
        (2, 20, 0),
        (2, 21, 1),
        (3, 30, 0),
        (3, 31, 1),
        (3, 32, 2),
        (4, 40, 5),
        (4, 41, 7),
        (4, 43, 7),
        (4, 42, 7),
    ]
)


def test_default_threshold_three():
    loo = leave_one_out(SEQUENCES)
    assert loo.train.equals(
        frame([(1, 10, 0), (2, 20, 0), (2, 21, 1), (3, 30, 0), (4, 40, 5), (4, 41, 7)])
    )
    assert loo.valid.equals(frame([(3, 31, 1), (4, 43, 7)]))
    assert loo.test.equals(frame([(3, 32, 2), (4, 42, 7)]))  # the last row, not the largest id


def test_threshold_two_and_four():
    loo = leave_one_out(SEQUENCES, min_items=2)
    assert loo.valid.equals(frame([(2, 20, 0), (3, 31, 1), (4, 43, 7)]))
    assert loo.test.equals(frame([(2, 21, 1), (3, 32, 2), (4, 42, 7)]))
    assert loo.train.equals(frame([(1, 10, 0), (3, 30, 0), (4, 40, 5), (4, 41, 7)]))
    loo = leave_one_out(SEQUENCES, min_items=4)
    assert loo.valid["UserId"].to_list() == [4] and loo.test["UserId"].to_list() == [4]
    assert loo.train.height == SEQUENCES.height - 2


def test_holdout_test_keeps_the_second_to_last_in_train():
    """generative-recommenders' protocol: the last event tests, every other event trains."""
    loo = leave_one_out(SEQUENCES, holdout="test")
    assert loo.valid.height == 0 and loo.valid.schema == SEQUENCES.schema
    assert loo.test.equals(frame([(3, 32, 2), (4, 42, 7)]))
    assert loo.train.equals(
        frame([(1, 10, 0), (2, 20, 0), (2, 21, 1), (3, 30, 0), (3, 31, 1), (4, 40, 5),
               (4, 41, 7), (4, 43, 7)])
    )  # fmt: skip
    with pytest.raises(ValueError, match="holdout must be one of"):
        leave_one_out(SEQUENCES, holdout="valid")


def test_threshold_below_two_is_rejected():
    with pytest.raises(ValueError, match="min_items must be >= 2"):
        leave_one_out(SEQUENCES, min_items=1)
    with pytest.raises(ValueError, match="lack column"):
        leave_one_out(SEQUENCES.drop("Time"))


def reference_partition(df: pl.DataFrame, min_items: int) -> tuple[list, list, list]:
    """The SASRec reference's data_partition on (user, item) lists, written out naively."""
    train, valid, test = [], [], []
    for user, items in df.group_by("UserId", maintain_order=True).agg(pl.col("ItemId")).iter_rows():
        if len(items) < min_items:
            train += [(user, i) for i in items]
        else:
            train += [(user, i) for i in items[:-2]]
            valid.append((user, items[-2]))
            test.append((user, items[-1]))
    return train, valid, test


@pytest.mark.parametrize("min_items", [2, 3, 5])
def test_matches_the_reference_rule_on_synthetic_data(min_items: int):
    sequences = generate_sequences(
        SequenceConfig(n_users=400, n_items=100, n_short_users=30, seed=2)
    )
    loo = leave_one_out(sequences, min_items)
    train, valid, test = reference_partition(sequences, min_items)
    for got, want in ((loo.train, train), (loo.valid, valid), (loo.test, test)):
        assert [tuple(r) for r in got.select("UserId", "ItemId").iter_rows()] == want
    assert loo.train.height + loo.valid.height + loo.test.height == sequences.height
    lengths = sequences.group_by("UserId").len()["len"]
    assert loo.test.height == loo.valid.height == int((lengths >= min_items).sum())


def test_sequence_stats_hand_computed():
    stats = sequence_stats(SEQUENCES)
    assert stats == {
        "users": 4,
        "items": 10,
        "events": 10,
        "users_train_only": 2,
        "users_evaluated": 2,
        "length": {"mean": 2.5, "median": 2.5, "min": 1, "max": 4},
    }
