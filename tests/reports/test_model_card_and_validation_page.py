"""The model card and the validation page say what a reader needs, failures first."""

from __future__ import annotations

from recsys_pipeline.reports.model_card import model_card
from recsys_pipeline.reports.validation_page import validation_page


def test_model_card_has_data_protocol_parameters_metrics_time_and_commit() -> None:
    text = model_card(
        title="SASRec on ml1m", dataset="ml1m", data={"users": 6040, "items": 3416},
        protocol="each user's last item, full ranking", params={"lr": 1e-05, "maxlen": 200},
        metrics={"most_popular": {"ndcg@10": 0.05}, "sasrec": {"ndcg@10": 0.18, "n_targets": 6040.0}},
        model="sasrec", history=[{"epoch": 1, "seconds": 2.5}, {"epoch": 2, "seconds": 2.0}],
        commit="abc123", model_artifact="data/06_models/ml1m/sasrec",
    )  # fmt: skip
    assert text.startswith("# Model card: SASRec on ml1m")
    assert "6,040 users, 3,416 items" in text and "each user's last item, full ranking" in text
    assert "| lr | 1e-05 |" in text and "| maxlen | 200 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ndcg" not in line]
    assert rows[0] == "| **sasrec** | 0.1800 |"  # the model first, baselines after
    assert "2 epochs, 4.5 s of training" in text and "`abc123`" in text and "6,040 targets" in text


def test_validation_page_puts_failures_first_with_their_examples() -> None:
    ok = {"check": "not_null", "expectation": "expect_x", "kwargs": {"column": "ItemId"},
          "success": True, "observed": {"unexpected_count": 0, "element_count": 10}}  # fmt: skip
    bad = {"check": "sorted", "expectation": "expect_y", "kwargs": {"column": "is_sorted"},
           "success": False, "observed": {"unexpected_count": 2, "element_count": 10,
                                          "partial_unexpected_list": [7, 9]}}  # fmt: skip
    raw = {"dataset": "x", "artifact": "raw", "success": True, "n_rows": 10, "expectations": [ok]}
    splits = {"dataset": "x", "success": False, "cut_test": 5,
              "splits": {"test": {"n_rows": 10, "n_sessions": 3, "success": False,
                                  "expectations": [ok, bad]}}}  # fmt: skip
    page = validation_page(raw, splits, dataset="diginetica")
    assert page.startswith("# Data validation of diginetica: FAILED")
    assert "### test: FAILED (1)" in page and "10 rows, 3 sessions; 2 expectations." in page
    table = page[page.index("### test") :].splitlines()
    assert table[6].startswith("| **FAIL** | sorted |")  # first row after the header
    assert "2 unexpected of 10; e.g. [7, 9]" in page and "cut_test=5" in page
