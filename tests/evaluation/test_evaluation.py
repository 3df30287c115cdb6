"""Ranks under every tie mode, metrics, and the session-parallel full-ranking evaluation."""

from __future__ import annotations

import math
import sys

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation import (
    TIE_MODES,
    NoTargetsError,
    count_higher_equal,
    evaluate,
    metrics_from_ranks,
    rank_from_counts,
    rank_of_targets,
)
from tests.models.behaviour import HistoryModel


class TableModel:
    """Stateless protocol double: the scores after item ``i`` are row ``i`` of ``table``."""

    def __init__(self, item_ids: list, table: np.ndarray) -> None:
        self.item_ids = np.asarray(item_ids)
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.score_calls: list[tuple[int, int, int]] = []

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def initial_state(self, batch_size: int) -> None:
        return None

    def reset_state(self, state, finished):
        return None

    def keep_state(self, state, keep):
        return None

    def step(self, items: torch.Tensor, state):
        return items, None

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.n_items if stop is None else stop
        self.score_calls.append((len(query), start, stop))
        return self.table[query, start:stop]


def sessions_frame(sessions: dict, users: dict | None = None, times: dict | None = None):
    """Frame of ``{session_id: [items]}``; times increase in dict order unless ``times`` given."""
    rows, t = [], 0
    for sid, items in sessions.items():
        for j, item in enumerate(items):
            time = times[sid][j] if times else t
            rows.append({"SessionId": sid, "ItemId": item, "Time": time})
            if users is not None:
                rows[-1]["UserId"] = users[sid]
            t += 1
    return pl.DataFrame(rows)


def random_table(n_items: int, seed: int, levels: int = 4) -> np.ndarray:
    """Scores with many ties: integers in ``0 .. levels - 1``."""
    return np.random.default_rng(seed).integers(0, levels, (n_items, n_items)).astype(np.float32)


def random_test(n_items: int, n_sessions: int, seed: int, unknown: int = 0) -> pl.DataFrame:
    """Random sessions of length 1..7 over raw ids ``100 + i``; ``unknown`` extra raw ids
    (``900 + j``) the model does not know appear too."""
    rng = np.random.default_rng(seed)
    sessions = {}
    for s in range(n_sessions):
        length = int(rng.integers(1, 8))
        raw = [
            900 + int(rng.integers(0, unknown)) if unknown and rng.random() < 0.2 else 100 + int(i)
            for i in rng.integers(0, n_items, length)
        ]
        sessions[1000 + s] = raw
    return sessions_frame(sessions)


def brute_force_ranks(table: np.ndarray, test: pl.DataFrame, known: set) -> list[tuple]:
    """``(higher, ties excluding the target)`` per target, by a plain Python loop."""
    out = []
    test = test.with_row_index("_r").sort("SessionId", "Time", "_r")
    for _, g in test.group_by("SessionId", maintain_order=True):
        items = [i - 100 for i in g["ItemId"].to_list() if i in known]
        for prev, target in zip(items[:-1], items[1:], strict=True):
            row = table[prev]
            higher = int((row > row[target]).sum())
            ties = int((row == row[target]).sum()) - 1
            out.append((higher, ties))
    return out


# ---------------------------------------------------------------------------- rank formulas
def test_rank_from_counts_every_mode() -> None:
    h, e = torch.tensor([2, 0, 5]), torch.tensor([3, 0, 1])
    assert rank_from_counts(h, e, "standard").tolist() == [3, 1, 6]
    assert rank_from_counts(h, e, "conservative").tolist() == [6, 1, 7]
    assert rank_from_counts(h, e, "median").tolist() == [4.5, 1, 6.5]
    u = torch.tensor([0.0, 0.7, 0.999])
    assert rank_from_counts(h, e, "tiebreaking", u).tolist() == [3, 1, 7]
    u = torch.tensor([0.5, 0.0, 0.49])
    assert rank_from_counts(h, e, "tiebreaking", u).tolist() == [5, 1, 6]  # 3 + floor(.5 * 4)
    with pytest.raises(ValueError, match="uniform"):
        rank_from_counts(h, e, "tiebreaking")
    with pytest.raises(ValueError, match="unknown tie mode"):
        rank_from_counts(h, e, "optimistic")


def test_rank_of_targets_constructed_ties() -> None:
    scores = torch.tensor(
        [
            [0.5, 0.9, 0.5, 0.5, 0.1],  # target 0: 1 higher, 2 other ties
            [0.5, 0.9, 0.5, 0.5, 0.1],  # target 1: best, no tie
            [0.5, 0.9, 0.5, 0.5, 0.1],  # target 4: worst
            [1.0, 1.0, 1.0, 1.0, 1.0],  # target 2: all tied
        ]
    )
    targets = torch.tensor([0, 1, 4, 2])
    assert rank_of_targets(scores, targets, "standard").tolist() == [2, 1, 5, 1]
    assert rank_of_targets(scores, targets, "conservative").tolist() == [4, 1, 5, 5]
    assert rank_of_targets(scores, targets, "median").tolist() == [3, 1, 5, 3]
    gen = torch.Generator().manual_seed(0)
    tb = rank_of_targets(scores, targets, "tiebreaking", generator=gen)
    assert tb[1] == 1 and tb[2] == 5 and 2 <= tb[0] <= 4 and 1 <= tb[3] <= 5
    again = rank_of_targets(
        scores, targets, "tiebreaking", generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(tb, again)


def test_modes_agree_with_reference_formulas() -> None:
    """The official evaluator's formulas (median fixed: ``.sum`` instead of ``.dim``)."""
    gen = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 6, (64, 50), generator=gen).float()
    targets = torch.randint(0, 50, (64,), generator=gen)
    t = scores.gather(1, targets[:, None])
    standard = (scores > t).sum(1) + 1
    conservative = (scores >= t).sum(1)
    median = (scores > t).sum(1) + 0.5 * ((scores == t).sum(1) - 1) + 1
    assert torch.equal(rank_of_targets(scores, targets, "standard"), standard.double())
    assert torch.equal(rank_of_targets(scores, targets, "conservative"), conservative.double())
    assert torch.equal(rank_of_targets(scores, targets, "median"), median.double())


def test_tiebreaking_is_uniform_among_ties() -> None:
    scores = torch.ones(20000, 5)
    targets = torch.zeros(20000, dtype=torch.long)
    ranks = rank_of_targets(
        scores, targets, "tiebreaking", generator=torch.Generator().manual_seed(1)
    )
    counts = np.bincount(ranks.long().numpy(), minlength=6)[1:]
    assert counts.sum() == 20000
    assert np.all(np.abs(counts / 20000 - 0.2) < 0.02)
    assert ranks.mean().item() == pytest.approx(3.0, abs=0.05)  # = the median rank


def test_count_higher_equal_excludes_own_column_and_chunks_add_up() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (16, 40), generator=gen).float()
    targets = torch.randint(0, 40, (16,), generator=gen)
    t = scores.gather(1, targets[:, None]).squeeze(1)
    h, e = count_higher_equal(scores, t, targets)
    assert torch.equal(h, (scores > t[:, None]).sum(1))
    assert torch.equal(e, (scores == t[:, None]).sum(1) - 1)
    h2, e2 = torch.zeros_like(h), torch.zeros_like(e)
    for a in range(0, 40, 7):
        b = min(a + 7, 40)
        cols = torch.where((targets >= a) & (targets < b), targets - a, -1)
        hc, ec = count_higher_equal(scores[:, a:b], t, cols)
        h2 += hc
        e2 += ec
    assert torch.equal(h, h2) and torch.equal(e, e2)
    h4, e4 = count_higher_equal(scores, t, targets, need_equal=False)
    assert torch.equal(h4, h) and not e4.any()
    # the torch path (off the CPU fast path) gives the same counts
    h3, e3 = count_higher_equal(scores.to(torch.bfloat16), t.to(torch.bfloat16), targets)
    assert torch.equal(h3, h) and torch.equal(e3, e)


def test_nan_target_score_gets_worst_rank() -> None:
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [0.0, float("nan"), 2.0]])
    ranks = rank_of_targets(scores, torch.tensor([0, 2]), "standard")
    assert ranks.tolist() == [3, 1]


# ---------------------------------------------------------------------------- metrics
def test_metrics_from_ranks_hand_values() -> None:
    ranks = torch.tensor([1, 2, 5, 21, 2.5], dtype=torch.float64)
    m = metrics_from_ranks(ranks, cutoffs=(1, 5, 20))
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["recall@5"] == pytest.approx(4 / 5)  # rank 5 counts at k=5 (rank <= k)
    assert m["recall@20"] == pytest.approx(4 / 5)  # rank 21 does not count at k=20
    assert m["mrr@1"] == pytest.approx(1 / 5)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 2.5) / 5)
    ndcg5 = (1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(3.5)) / 5
    assert m["ndcg@5"] == pytest.approx(ndcg5)
    assert m["ndcg@20"] == pytest.approx(ndcg5)
    assert list(m) == [f"{n}@{k}" for k in (1, 5, 20) for n in ("recall", "mrr", "ndcg")]


def test_metrics_of_no_target_are_nan() -> None:
    m = metrics_from_ranks(torch.zeros(0, dtype=torch.float64), cutoffs=(20,))
    assert all(math.isnan(v) for v in m.values())


# ---------------------------------------------------------------------------- evaluate
N_ITEMS = 12
TABLE = random_table(N_ITEMS, seed=5)
ITEM_IDS = [100 + i for i in range(N_ITEMS)]


def test_evaluate_matches_brute_force_every_mode() -> None:
    test = random_test(N_ITEMS, 40, seed=1, unknown=3)
    expected = brute_force_ranks(TABLE, test, set(ITEM_IDS))
    h = torch.tensor([x[0] for x in expected])
    e = torch.tensor([x[1] for x in expected])
    for mode in ("standard", "conservative", "median"):
        result = evaluate(
            TableModel(ITEM_IDS, TABLE), test, mode=mode, progress=False, return_ranks=True
        )
        np.testing.assert_array_equal(result.ranks, rank_from_counts(h, e, mode).numpy())
        assert result.mode == mode
        assert mode in result.label()
        assert result["n_targets"] == len(expected)
        for key, value in metrics_from_ranks(rank_from_counts(h, e, mode)).items():
            assert result[key] == pytest.approx(value)
    tb = evaluate(
        TableModel(ITEM_IDS, TABLE), test, mode="tiebreaking", progress=False, return_ranks=True
    )
    lo = rank_from_counts(h, e, "standard").numpy()
    hi = rank_from_counts(h, e, "conservative").numpy()
    assert np.all((tb.ranks >= lo) & (tb.ranks <= hi))
    assert np.all(tb.ranks == np.floor(tb.ranks))


@pytest.mark.parametrize("mode", TIE_MODES)
def test_results_independent_of_batch_size_and_item_chunk(mode: str) -> None:
    test = random_test(N_ITEMS, 50, seed=2, unknown=2)
    base = evaluate(
        TableModel(ITEM_IDS, TABLE), test, mode=mode, seed=7, progress=False, return_ranks=True
    )
    assert base["n_targets"] > 50
    for bs, chunk in [(1, None), (3, 1), (7, 5), (512, N_ITEMS - 1), (2, N_ITEMS), (4, 100)]:
        other = evaluate(
            TableModel(ITEM_IDS, TABLE),
            test,
            mode=mode,
            seed=7,
            batch_size=bs,
            item_chunk=chunk,
            progress=False,
            return_ranks=True,
        )
        np.testing.assert_array_equal(other.ranks, base.ranks)
        for key in ("recall@1", "recall@5", "mrr@20", "ndcg@10", "n_targets", "n_sessions"):
            assert other[key] == pytest.approx(base[key], rel=1e-12, abs=1e-15)  # sum order


def test_item_chunk_scores_in_chunks() -> None:
    model = TableModel(ITEM_IDS, TABLE)
    test = random_test(N_ITEMS, 10, seed=3)
    evaluate(model, test, item_chunk=5, batch_size=4, progress=False)
    assert {(a, b) for _, a, b in model.score_calls} == {(0, 5), (5, 10), (10, 12)}
    assert max(b - a for _, a, b in model.score_calls) == 5


def test_tiebreaking_seeded() -> None:
    test = random_test(N_ITEMS, 80, seed=4)
    table = np.zeros((N_ITEMS, N_ITEMS), dtype=np.float32)  # everything ties
    a = evaluate(TableModel(ITEM_IDS, table), test, mode="tiebreaking", seed=1, progress=False)
    b = evaluate(TableModel(ITEM_IDS, table), test, mode="tiebreaking", seed=1, progress=False)
    c = evaluate(TableModel(ITEM_IDS, table), test, mode="tiebreaking", seed=2, progress=False)
    assert a["mrr@20"] == b["mrr@20"]
    assert a["mrr@20"] != c["mrr@20"]
    assert a["recall@1"] == pytest.approx(1 / N_ITEMS, abs=0.05)


def test_unknown_items_bridged_and_short_sessions_dropped() -> None:
    table = np.tile(np.arange(4, dtype=np.float32), (4, 1))  # item 3 best, item 0 worst
    ids = [10, 11, 12, 13]
    test = sessions_frame(
        {
            1: [10, 99, 13],  # a -> unknown -> b: one target 13 after 10
            2: [12, 98],  # one known event left: dropped
            3: [97, 96],  # nothing known: dropped
            4: [11],  # length 1: dropped
        }
    )
    result = evaluate(TableModel(ids, table), test, progress=False, return_ranks=True)
    assert result["n_targets"] == 1
    assert result["n_sessions"] == 1
    assert result.ranks.tolist() == [1.0]
    bridged = evaluate(TableModel(ids, table), sessions_frame({1: [10, 13]}), progress=False)
    assert bridged["mrr@20"] == result["mrr@20"] == 1.0
    # the pair a -> b is what the model sees
    model = HistoryModel(np.array(ids))
    evaluate(model, test, progress=False)
    assert model.log == [(0,)]


def test_single_session_and_empty_test() -> None:
    one = evaluate(
        TableModel(ITEM_IDS, TABLE), sessions_frame({5: [100, 101, 102]}), progress=False
    )
    assert one["n_targets"] == 2 and one["n_sessions"] == 1
    with pytest.raises(NoTargetsError, match="0 targets to evaluate .* 1 events in 1 sessions"):
        evaluate(TableModel(ITEM_IDS, TABLE), sessions_frame({5: [100]}), progress=False)
    empty = evaluate(
        TableModel(ITEM_IDS, TABLE), sessions_frame({5: [100]}), progress=False, min_targets=0
    )
    assert empty["n_targets"] == 0
    assert math.isnan(empty["recall@20"])


def test_events_ordered_by_time_not_row_order() -> None:
    test = sessions_frame({1: [100, 101, 102, 103], 2: [104, 105]})
    shuffled = test.sample(fraction=1.0, shuffle=True, seed=3)
    a = evaluate(TableModel(ITEM_IDS, TABLE), test, progress=False, return_ranks=True)
    b = evaluate(TableModel(ITEM_IDS, TABLE), shuffled, progress=False, return_ranks=True)
    np.testing.assert_array_equal(a.ranks, b.ranks)


def test_states_reset_per_session_and_shrink() -> None:
    test = sessions_frame(
        {1: [100, 101, 102], 2: [103, 104], 3: [105, 106, 107, 108], 4: [109, 110]}
    )
    expected = sorted([(0,), (0, 1), (3,), (5,), (5, 6), (5, 6, 7), (9,)])
    for bs in (1, 2, 3, 512):
        model = HistoryModel(np.array(ITEM_IDS[:11] + [111]))
        evaluate(model, test, batch_size=bs, progress=False)
        assert sorted(model.log) == expected, bs


def test_sequence_aware_warmup_and_continued_state() -> None:
    ids = np.array([100 + i for i in range(10)])  # a=100 (0), b=101, ..., g=106
    test = sessions_frame(
        {
            10: [102, 103],  # user 1: c d
            11: [104],  # user 1: e (one event: fed, not scored)
            12: [105, 106],  # user 1: f g
            20: [100, 101],  # user 2: a b (no warmup)
        },
        users={10: 1, 11: 1, 12: 1, 20: 2},
        times={10: [10, 11], 11: [20], 12: [30, 31], 20: [5, 6]},
    )
    warmup = pl.DataFrame(
        {
            "SessionId": [0, 0, 0, 1],
            "ItemId": [101, 999, 100, 108],  # 999 unknown: dropped; row order != time order
            "Time": [2, 1, 1, 0],
            "UserId": [1, 1, 1, 3],  # user 3 has no test events: ignored
        }
    )
    session_log = sorted([(2,), (5,), (0,)])
    seq_log = sorted(
        [(0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (0, 1, 2, 3, 4), (0, 1, 2, 3, 4, 5), (0,)]
    )
    results = {}
    for bs in (1, 2, 512):
        model = HistoryModel(ids)
        plain = evaluate(model, test, batch_size=bs, progress=False, return_ranks=True)
        assert sorted(model.log) == session_log
        model = HistoryModel(ids)
        seq = evaluate(
            model,
            test,
            warmup=warmup,
            user_column="UserId",
            batch_size=bs,
            progress=False,
            return_ranks=True,
        )
        assert sorted(model.log) == seq_log, bs
        assert seq.sequence_aware and not plain.sequence_aware
        assert seq["n_targets"] == plain["n_targets"] == 3
        assert seq["n_sessions"] == plain["n_sessions"] == 3
        results[bs] = seq.ranks
    for bs in (2, 512):
        np.testing.assert_array_equal(results[bs], results[1])
    # without warmup the state still continues across the user's sessions
    model = HistoryModel(ids)
    evaluate(model, test, user_column="UserId", progress=False)
    assert sorted(model.log) == sorted([(2,), (2, 3), (2, 3, 4), (2, 3, 4, 5), (0,)])


def test_sequence_aware_changes_scores_as_expected() -> None:
    ids = np.array([100, 101, 102])
    # score = count of the item in the state's history, + bonus: 102 > 101 > 100 when unseen
    bonus = np.array([0.0, 0.1, 0.2])
    test = sessions_frame({1: [101, 100]}, users={1: 7})
    warmup = pl.DataFrame(
        {"SessionId": [0, 0], "ItemId": [100, 100], "Time": [0, 1], "UserId": [7, 7]}
    )
    plain = evaluate(HistoryModel(ids, bonus), test, progress=False, return_ranks=True)
    seq = evaluate(HistoryModel(ids, bonus), test, warmup=warmup, progress=False, return_ranks=True)
    assert plain.ranks.tolist() == [3.0]  # 100 (0) below 102 (.2) and 101 (1.1)
    assert seq.ranks.tolist() == [1.0]  # 100 seen twice in the warmup: 2 > 1.1


def test_exclude_seen_hand_example() -> None:
    ids = [10, 11, 12, 13, 14]
    table = np.tile(np.array([4, 3, 2, 1, 0], dtype=np.float32), (5, 1))  # 10 best ... 14 worst
    test = sessions_frame({1: [10, 11, 12], 2: [12, 10, 12], 3: [13, 13]})
    plain = evaluate(TableModel(ids, table), test, progress=False, return_ranks=True)
    assert plain.ranks.tolist() == [2, 3, 1, 3, 4]
    assert not plain.exclude_seen
    excl = evaluate(
        TableModel(ids, table), test, exclude_seen=True, progress=False, return_ranks=True
    )
    # 11 after {10}: 1; 12 after {10, 11}: 1; 10 after {12}: 1; 12 after {12, 10}: repeat;
    # 13 after {13}: repeat
    assert excl.ranks.tolist() == [1, 1, 1, math.inf, math.inf]
    assert excl.exclude_seen and "exclude_seen" in excl.label()
    assert excl["recall@1"] == pytest.approx(3 / 5)
    assert excl["mrr@20"] == pytest.approx(3 / 5)
    assert excl["ndcg@20"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("mode", ["standard", "conservative", "median"])
def test_exclude_seen_matches_brute_force(mode: str) -> None:
    test = random_test(N_ITEMS, 40, seed=11, unknown=2)
    expected = []
    for _, g in (
        test.with_row_index("_r")
        .sort("SessionId", "Time", "_r")
        .group_by("SessionId", maintain_order=True)
    ):
        items = [i - 100 for i in g["ItemId"].to_list() if i < 900]
        for j in range(1, len(items)):
            target, seen = items[j], set(items[:j])
            if target in seen:
                expected.append(math.inf)
                continue
            row = TABLE[items[j - 1]]
            others = [c for c in range(N_ITEMS) if c != target and c not in seen]
            h = sum(row[c] > row[target] for c in others)
            e = sum(row[c] == row[target] for c in others)
            expected.append(float(rank_from_counts(torch.tensor([h]), torch.tensor([e]), mode)))
    for bs, chunk in [(512, None), (3, 5), (1, 1)]:
        result = evaluate(
            TableModel(ITEM_IDS, TABLE),
            test,
            mode=mode,
            batch_size=bs,
            item_chunk=chunk,
            exclude_seen=True,
            progress=False,
            return_ranks=True,
        )
        assert result.ranks.tolist() == expected


def test_string_ids_and_errors() -> None:
    ids = ["x", "y", "z"]
    table = np.array([[0, 1, 2], [2, 0, 1], [1, 2, 0]], dtype=np.float32)
    test = pl.DataFrame(
        {"SessionId": ["s", "s", "s"], "ItemId": ["x", "z", "y"], "Time": [1, 2, 3]}
    )
    result = evaluate(TableModel(ids, table), test, progress=False, return_ranks=True)
    assert result.ranks.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="unknown tie mode"):
        evaluate(TableModel(ids, table), test, mode="bad", progress=False)
    with pytest.raises(ValueError, match="no column"):
        evaluate(TableModel(ids, table), test.drop("Time"), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(TableModel(ids, table), test, batch_size=0, progress=False)


def test_result_keys_and_progress_bar(capsys, monkeypatch) -> None:
    test = random_test(N_ITEMS, 5, seed=9)
    evaluate(TableModel(ITEM_IDS, TABLE), test, cutoffs=(3, 7), progress=True)
    assert capsys.readouterr().err == ""  # not a terminal: no bar (each refresh would be a line)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    result = evaluate(TableModel(ITEM_IDS, TABLE), test, cutoffs=(3, 7), progress=True)
    keys = {"recall@3", "mrr@3", "ndcg@3", "recall@7", "mrr@7", "ndcg@7"}
    keys |= {"n_targets", "n_sessions", "seconds", "targets_per_s"}
    assert set(result) == keys
    assert all(isinstance(v, float) for v in result.values())
    assert result.cutoffs == (3, 7)
    assert "targets/s" in capsys.readouterr().err  # on a terminal, with the unit spelled out
