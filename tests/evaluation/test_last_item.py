"""The last-item protocol: hand-computed ranks on tiny sequences, options, and path parity."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.evaluation import NoTargetsError, evaluate_last_item
from recsys_pipeline.evaluation.last_item import draw_negatives, prepare
from recsys_pipeline.models.base import PAD, EncoderStepAdapter, NextItemModel, SequenceEncoder
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from recsys_pipeline.training.sequences import SequenceBatch
from tests.models.behaviour import successor_sessions

pytestmark = pytest.mark.usefixtures("single_torch_thread")

RAW = 100  # raw id of item index i is RAW + i


class StepOnly:
    """Scores by distance to the successor of the last input item: with last item ``l``,
    ``score(j) = -((j - l - 1) mod n)``, so item ``l + 1`` ranks 1st, ``l + 2`` 2nd, ... (no
    ties). Both paths: ``step`` (query = the last item) and ``encode`` (the last real position
    of each row); ``batches`` records what ``encode`` saw."""

    def __init__(self, n_items: int, maxlen: int | None = None, padding: str = "left") -> None:
        self.item_ids = np.arange(n_items) + RAW
        self.maxlen, self.padding = maxlen, padding
        self.uses_times, self.prefix_consistent = False, True
        self.batches: list[SequenceBatch] = []

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def initial_state(self, batch_size: int) -> torch.Tensor:
        return torch.full((batch_size,), -1, dtype=torch.long)

    def reset_state(self, state: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        return state.masked_fill(finished, -1)

    def keep_state(self, state: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return state[keep]

    def step(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return items.clone(), items.clone()

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        stop = self.n_items if stop is None else stop
        j = torch.arange(start, stop)
        return -((j[None, :] - query[:, None] - 1) % self.n_items).float()


class SuccessorModel(StepOnly):
    """:class:`StepOnly` with the batched path too."""

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        assert last_only
        self.batches.append(batch)
        n, width = batch.items.shape
        last = (
            torch.full((n,), width - 1) if batch.padding == "left" else batch.lengths - 1
        ).long()
        return batch.items[torch.arange(n), last]


def frame(rows: dict[str, list[int]], t0: int = 0) -> pl.DataFrame:
    """Events from ``{user: [item index, ...]}`` (unknown items: indices >= 50), times 10 apart."""
    users, items = [], []
    for user, seq in rows.items():
        users += [user] * len(seq)
        items += [RAW + i for i in seq]
    return pl.DataFrame(
        {"UserId": users, "ItemId": items, "Time": t0 + 10 * np.arange(len(items))},
        schema={"UserId": pl.String, "ItemId": pl.Int64, "Time": pl.Int64},
    )


# 6 items. Ranks by the successor rule (last input item l, target t): 1 + ((t - l - 1) mod 6)
TINY = {
    "a": [0, 1, 3],  # last 1, target 3: rank 2 (item 2 above); excluded {0, 1} rank lower
    "b": [2, 0, 1, 4],  # last 1, target 4: rank 3 (2, 3 above); 2 excluded -> rank 2
    "c": [3, 5, 3],  # last 5, target 3: rank 4; a repeat -> a miss when excluding
    "d": [0, 99],  # unknown target: not scored
    "e": [4, 99, 5],  # unknown input item dropped: last 4, target 5: rank 1
    "f": [2],  # no input: not scored
    "g": [99, 98, 1],  # no known input: not scored
}


def test_full_ranking_hand_computed_with_and_without_exclusion() -> None:
    model = SuccessorModel(6)
    kept = evaluate_last_item(model, frame(TINY), exclude_history=False, return_ranks=True)
    assert list(kept.users) == ["a", "b", "c", "e"]
    np.testing.assert_array_equal(kept.ranks, [2, 3, 4, 1])
    assert kept["n_targets"] == 4 and kept["n_users"] == 7
    assert kept["n_unknown_targets"] == 1 and kept["n_no_input"] == 2
    assert kept["n_dropped_events"] == 3  # 99 of e, 99 and 98 of g
    assert kept["recall@1"] == pytest.approx(1 / 4)
    assert kept["recall@5"] == pytest.approx(1.0)
    assert kept["mrr@5"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1) / 4)
    assert kept["ndcg@5"] == pytest.approx((1 / np.log2(3) + 0.5 + 1 / np.log2(5) + 1) / 4)
    assert kept["mrr@1"] == pytest.approx(1 / 4)

    excluded = evaluate_last_item(model, frame(TINY), return_ranks=True)  # default: exclude
    np.testing.assert_array_equal(excluded.ranks, [2, 2, np.inf, 1])
    assert excluded["recall@20"] == pytest.approx(3 / 4)  # the repeated target is a miss
    assert excluded["mrr@20"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 4)
    assert excluded.exclude_seen and not kept.exclude_seen
    assert excluded.label() == "last item, full ranking, history excluded, mode=standard"
    assert kept.label() == "last item, full ranking, history not excluded, mode=standard"


def test_step_path_gives_the_batched_ranks_and_is_chosen_without_encode() -> None:
    ranks = {}
    for model in (SuccessorModel(6), SuccessorModel(6, padding="right"), StepOnly(6)):
        for chunk in (None, 4):
            res = evaluate_last_item(model, frame(TINY), item_chunk=chunk, return_ranks=True)
            ranks[(type(model).__name__, model.padding, chunk)] = res.ranks
            assert res.path == ("step" if type(model) is StepOnly else "batched")
    forced = evaluate_last_item(SuccessorModel(6), frame(TINY), path="step", return_ranks=True)
    for value in [*ranks.values(), forced.ranks]:
        np.testing.assert_array_equal(value, [2, 2, np.inf, 1])


def test_tie_modes_count_the_tied_items() -> None:
    class Flat(SuccessorModel):  # every item scores 0: the target ties with all 5 others
        def score(self, query, start=0, stop=None):
            stop = self.n_items if stop is None else stop
            return torch.zeros(len(query), stop - start)

    seqs = frame({"a": [0, 1, 3]})
    got = {
        mode: evaluate_last_item(Flat(6), seqs, mode=mode, return_ranks=True).ranks[0]
        for mode in ("standard", "conservative", "median")
    }
    # 2 history items excluded: 3 tied competitors
    assert got == {"standard": 1.0, "conservative": 4.0, "median": 2.5}
    kept = evaluate_last_item(Flat(6), seqs, mode="conservative", exclude_history=False)
    assert kept["mrr@20"] == pytest.approx(1 / 6)
    ties = [
        evaluate_last_item(Flat(6), seqs, mode="tiebreaking", seed=s, return_ranks=True).ranks[0]
        for s in range(30)
    ]
    assert set(ties) <= {1.0, 2.0, 3.0, 4.0} and len(set(ties)) > 1


def test_exclude_window_leaves_out_only_what_the_model_reads() -> None:
    # last 2, target 4: only item 3 scores higher (rank 2), unless 3 is excluded
    seqs = frame({"a": [3, 0, 2, 4]})
    model = SuccessorModel(6, maxlen=2)  # reads [0, 2]
    full = evaluate_last_item(model, seqs, exclude_history="all", return_ranks=True)
    window = evaluate_last_item(model, seqs, exclude_history="window", return_ranks=True)
    np.testing.assert_array_equal(full.ranks, [1])  # 3 excluded
    np.testing.assert_array_equal(window.ranks, [2])  # 3 is outside the window: not excluded
    assert window.label().startswith("last item, full ranking, input window excluded")
    assert [b.items.tolist() for b in model.batches[-1:]] == [[[0, 2]]]


def test_append_puts_the_valid_item_into_the_input_before_the_target() -> None:
    model = SuccessorModel(6)
    tests = frame({"a": [0, 1, 4], "b": [2, 0, 5]})
    valid = frame({"a": [3], "b": [4]}, t0=1000)  # later times: still before the target
    plain = evaluate_last_item(model, tests, return_ranks=True)
    np.testing.assert_array_equal(plain.ranks, [3, 4])  # a: 2, 3 above; b: 1, 3, 4 above
    model.batches.clear()
    res = evaluate_last_item(model, tests, append=valid, return_ranks=True)
    assert [row[-1] for row in model.batches[0].items.tolist()] == [3, 4]  # the queries changed
    # a: last 3, target 4: rank 1; b: last 4, target 5: rank 1
    np.testing.assert_array_equal(res.ranks, [1, 1])
    assert res.label() == (
        "last item, full ranking, history excluded, appended items in the input, mode=standard"
    )
    # the appended item is history too: a target equal to it is a miss
    repeat = evaluate_last_item(
        model, frame({"c": [0, 2]}), append=frame({"c": [2]}), return_ranks=True
    )
    np.testing.assert_array_equal(repeat.ranks, [np.inf])
    # equivalent: the same events as one frame in time order
    whole = pl.concat([frame({"a": [0, 1], "b": [2, 0]}), valid, frame({"a": [4], "b": [5]}, 2000)])
    same = evaluate_last_item(model, whole, return_ranks=True)
    np.testing.assert_array_equal(same.ranks, res.ranks)
    # and as (history, targets) frames
    explicit = evaluate_last_item(
        model,
        frame({"a": [0, 1, 3], "b": [2, 0, 4]}),
        targets=frame({"a": [4], "b": [5]}, 5000),
        return_ranks=True,
    )
    np.testing.assert_array_equal(explicit.ranks, res.ranks)


def test_prepare_lays_out_inputs_then_target_and_drops_unknown_items() -> None:
    prepared = prepare(np.arange(6) + RAW, frame(TINY))
    assert list(prepared.users) == ["a", "b", "c", "e"]
    assert prepared.data.items.tolist() == [0, 1, 3, 2, 0, 1, 4, 3, 5, 3, 4, 5]
    assert prepared.targets.tolist() == [3, 4, 3, 5]
    assert prepared.n_inputs.tolist() == [2, 3, 2, 1]
    with pytest.raises(ValueError, match="one row per user"):
        prepare(np.arange(6) + RAW, frame(TINY), targets=frame({"a": [1, 2]}))
    with pytest.raises(ValueError, match="no column"):
        prepare(np.arange(6) + RAW, frame(TINY).drop("Time"))


def test_rows_are_the_last_maxlen_inputs_and_masked_models_get_their_slot() -> None:
    seqs = frame({"a": [0, 1, 2, 3, 4], "b": [5, 1]})
    model = SuccessorModel(6, maxlen=3, padding="right")
    evaluate_last_item(model, seqs)
    batch = model.batches[-1]
    assert batch.items.tolist() == [[1, 2, 3], [5, PAD, PAD]]
    assert batch.mask is None

    model.last_item_mask = "append"  # BERT4Rec: a mask slot after the last maxlen - 1 items
    model.batches.clear()
    evaluate_last_item(model, seqs)
    batch = model.batches[-1]
    assert batch.items.tolist() == [[2, 3, PAD], [5, PAD, PAD]]
    assert batch.mask.tolist() == [[False, False, True], [False, True, False]]

    model.batches.clear()
    res = evaluate_last_item(model, seqs, mask="last")  # XLNet-MLM: the target replaced in place
    assert res.mask == "last"
    batch = model.batches[-1]
    assert batch.items.tolist() == [[2, 3, 4], [5, 1, PAD]]
    assert batch.mask.tolist() == [[False, False, True], [False, True, False]]


class TimeRecorder(SuccessorModel):
    """The successor model, declared to read times (it records them)."""

    def __init__(self, n_items: int, padding: str) -> None:
        super().__init__(n_items, padding=padding)
        self.uses_times = True


@pytest.mark.parametrize("mask", ["none", "append"])
def test_query_time_is_the_last_event_or_the_target(mask) -> None:
    seqs = frame({"a": [0, 1, 2], "b": [3, 4]})  # times 0, 10, 20 | 30, 40
    model = TimeRecorder(6, padding="left")
    got = {}
    for query_time in ("last_event", "target"):
        model.batches.clear()
        res = evaluate_last_item(model, seqs, mask=mask, query_time=query_time)
        assert res.label().endswith(f"query time={query_time.replace('_', ' ')}, mode=standard")
        got[query_time] = model.batches[-1]
    if mask == "none":
        assert got["target"].times.tolist() == [[0, 10], [0, 30]]
        assert got["last_event"].times.tolist() == [[0, 10], [0, 30]]
        assert got["target"].target_times[:, -1].tolist() == [20, 40]
        assert got["last_event"].target_times[:, -1].tolist() == [10, 30]
    else:
        assert got["target"].times.tolist() == [[0, 10, 20], [0, 30, 40]]
        assert got["last_event"].times.tolist() == [[0, 10, 10], [0, 30, 30]]
    plain = evaluate_last_item(SuccessorModel(6), seqs)
    assert "query time" not in plain.label()


def test_sampled_ranking_hand_computed_when_every_free_item_is_drawn() -> None:
    # 8 items, every user has 4 distinct items: its 4 free items are its negatives
    seqs = frame({"a": [0, 1, 2, 4], "b": [7, 6, 5, 3], "c": [1, 2, 3, 0]})
    model = SuccessorModel(8)
    res = evaluate_last_item(model, seqs, ranking="sampled", n_negatives=4, return_ranks=True)
    # a: last 2, target 4, free {3, 5, 6, 7}: only 3 scores higher -> 2
    # b: last 5, target 3, free {0, 1, 2, 4}: 6, 7 (not free), 0, 1, 2 above -> 4
    # c: last 3, target 0, free {4, 5, 6, 7}: all four above -> 5
    np.testing.assert_array_equal(res.ranks, [2, 4, 5])
    assert res["sampled4_hr@1"] == 0.0
    assert res["sampled4_hr@5"] == pytest.approx(1.0)
    assert res["sampled4_mrr@5"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 5) / 3)
    assert res["sampled4_ndcg@5"] == pytest.approx(
        (1 / np.log2(3) + 1 / np.log2(5) + 1 / np.log2(6)) / 3
    )
    assert not any(k.startswith(("recall", "mrr", "ndcg")) for k in res)
    assert res.label() == (
        "last item, LEGACY sampled ranking (4 uniform negatives per user), mode=standard"
    )
    pop = evaluate_last_item(
        model, seqs, ranking="sampled", n_negatives=4, negatives="popularity", support=np.ones(8)
    )
    assert pop["sampled4_mrr@5"] == res["sampled4_mrr@5"]  # the same candidates
    assert "(4 popularity negatives per user)" in pop.label()
    with pytest.raises(ValueError, match="fewer than 5"):
        evaluate_last_item(model, seqs, ranking="sampled", n_negatives=5)


@pytest.mark.parametrize("kind", ["uniform", "popularity"])
def test_negatives_avoid_the_users_items_are_distinct_and_seeded(kind) -> None:
    rng = np.random.default_rng(0)
    n_items, lengths = 40, rng.integers(1, 25, 300)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(0, n_items, offsets[-1])
    support = rng.integers(1, 50, n_items)
    support[7] = 0  # never drawn by popularity
    draw = lambda seed: draw_negatives(  # noqa: E731
        items, offsets, n_items, 15, kind=kind, support=support, seed=seed
    )
    neg = draw(3)
    assert neg.shape == (300, 15)
    for r in range(300):
        assert len(set(neg[r])) == 15
        assert not set(neg[r]) & set(items[offsets[r] : offsets[r + 1]])
    np.testing.assert_array_equal(neg, draw(3))
    assert (neg != draw(4)).any()
    counts = np.bincount(neg.ravel(), minlength=n_items)
    drawable = support > 0 if kind == "popularity" else np.ones(n_items, dtype=bool)
    assert (counts[drawable] > 0).all() and (counts[~drawable] == 0).all()  # item 7: support 0


def test_popularity_negatives_follow_the_support() -> None:
    """One draw per row: P(item) = support / total over the row's free items."""
    n_rows = 20000
    offsets = np.arange(n_rows + 1)
    items = np.zeros(n_rows, dtype=np.int64)  # every row holds item 0: never drawn
    support = np.array([50, 1, 2, 3, 4, 0])
    neg = draw_negatives(items, offsets, 6, 1, kind="popularity", support=support, seed=1)
    share = np.bincount(neg.ravel(), minlength=6) / n_rows
    np.testing.assert_allclose(share, [0, 0.1, 0.2, 0.3, 0.4, 0], atol=0.015)
    every = draw_negatives(items, offsets, 6, 4, kind="popularity", support=support, seed=1)
    assert (np.sort(every, axis=1) == [1, 2, 3, 4]).all()  # without replacement


def test_popularity_negatives_default_to_the_models_support() -> None:
    seqs = frame({"a": [0, 1, 2, 4], "b": [7, 6, 5, 3]})
    model = SuccessorModel(8)
    model.support = np.array([1, 1, 1, 1, 1, 1, 1, 0])
    with pytest.raises(ValueError, match="fewer than 4"):  # b's free {0, 1, 2, 4}, a's lacks 7
        evaluate_last_item(model, seqs, ranking="sampled", n_negatives=4, negatives="popularity")
    res = evaluate_last_item(
        model, seqs, ranking="sampled", n_negatives=3, negatives="popularity", return_ranks=True
    )
    # a: last 2, target 4, free with support {3, 5, 6}: 3 above -> 2
    assert res.ranks[0] == 2


def test_max_users_scores_a_seeded_sample_of_the_users() -> None:
    seqs = successor_sessions(30, 200, seed=5, min_len=2, max_len=7).rename({"SessionId": "UserId"})

    def Model() -> SuccessorModel:  # noqa: N802
        model = SuccessorModel(30)
        model.item_ids = np.unique(seqs["ItemId"].to_numpy())
        return model

    full = evaluate_last_item(Model(), seqs, exclude_history=False, return_ranks=True)
    sub = evaluate_last_item(
        Model(), seqs, exclude_history=False, max_users=50, seed=1, return_ranks=True
    )
    assert full["n_targets"] == 200 and sub["n_targets"] == 50
    assert sub.label().endswith("50 of 200 users, mode=standard")
    position = np.searchsorted(full.users, sub.users)
    np.testing.assert_array_equal(full.users[position], sub.users)
    np.testing.assert_array_equal(full.ranks[position], sub.ranks)
    again = evaluate_last_item(Model(), seqs, max_users=50, seed=1, return_ranks=True)
    other = evaluate_last_item(Model(), seqs, max_users=50, seed=2, return_ranks=True)
    np.testing.assert_array_equal(again.users, sub.users)
    assert set(other.users) != set(sub.users)
    sampled = evaluate_last_item(
        Model(), seqs, ranking="sampled", n_negatives=10, max_users=50, seed=1
    )
    assert sampled.label() == (
        "last item, LEGACY sampled ranking (10 uniform negatives per user), 50 of 200 users, "
        "mode=standard"
    )


# ---------------------------------------------------------------------------- real models


class WindowEncoder:
    """A toy encoder reading its last ``maxlen`` items, positions counted from the end (the
    SASRec reference's convention): query = sum of tanh(E[item] + P[position from the end])."""

    def __init__(self, item_ids: np.ndarray, maxlen: int, padding: str) -> None:
        g = torch.Generator().manual_seed(0)
        self.item_ids = item_ids
        self.E = torch.randn(len(item_ids), 6, generator=g)
        self.P = torch.randn(maxlen, 6, generator=g)
        self.maxlen, self.padding = maxlen, padding
        self.uses_times, self.prefix_consistent = False, False

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        n, width = batch.items.shape
        assert int(batch.lengths.max()) <= self.maxlen
        cols = torch.arange(width)
        first = (width - batch.lengths) if batch.padding == "left" else torch.zeros(n).long()
        from_end = (batch.lengths[:, None] - 1) - (cols[None, :] - first[:, None])
        terms = torch.tanh(
            self.E[batch.items.clamp_min(0)] + self.P[from_end.clamp(0, self.maxlen - 1)]
        )
        return (terms * batch.valid[..., None]).sum(dim=1)

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return query @ self.E[start:stop].T


def _user_sequences(n_items: int, n_users: int, seed: int, max_len: int) -> pl.DataFrame:
    seqs = successor_sessions(n_items, n_users, seed, min_len=2, max_len=max_len)
    rng = np.random.default_rng(seed)  # noise, so that ranks spread and repeats occur
    ids = seqs["ItemId"].to_numpy().copy()
    noise = rng.random(len(ids)) < 0.3
    ids[noise] = rng.choice(np.unique(ids), noise.sum())
    return seqs.with_columns(pl.Series("ItemId", ids)).rename({"SessionId": "UserId"})


@pytest.mark.parametrize("padding", ["left", "right"])
def test_window_encoder_batched_equals_its_step_adapter(padding) -> None:
    seqs = _user_sequences(40, 150, seed=6, max_len=12)
    model = WindowEncoder(np.unique(seqs["ItemId"].to_numpy()), maxlen=4, padding=padding)
    adapter = EncoderStepAdapter(model)
    assert isinstance(model, SequenceEncoder) and isinstance(adapter, NextItemModel)
    kwargs = dict(mode="conservative", return_ranks=True, exclude_history="window")
    batched = evaluate_last_item(model, seqs, batch_size=7, **kwargs)
    step = evaluate_last_item(adapter, seqs, batch_size=5, **kwargs)
    assert batched.path == "batched" and step.path == "step"
    assert batched["n_targets"] == 150
    np.testing.assert_array_equal(batched.ranks, step.ranks)
    assert len(np.unique(batched.ranks)) > 10


@pytest.fixture(scope="module")
def gru() -> tuple[GRU4Rec, pl.DataFrame]:
    train = _user_sequences(60, 300, seed=1, max_len=10).rename({"UserId": "SessionId"})
    params = GRU4RecParams.from_string("layers=16,n_epochs=1,batch_size=16,n_sample=8,device=cpu")
    test = _user_sequences(60, 200, seed=2, max_len=25)
    return GRU4Rec(params).fit(train, progress=False), test


@pytest.mark.parametrize("exclude", [True, False])
def test_gru4rec_step_and_batched_paths_give_the_same_ranks(gru, exclude) -> None:
    model, test = gru
    kwargs = dict(exclude_history=exclude, return_ranks=True, mode="median")
    step = evaluate_last_item(model, test, path="step", batch_size=16, **kwargs)
    batched = evaluate_last_item(model, test, path="batched", batch_size=9, item_chunk=17, **kwargs)
    assert step["n_targets"] == batched["n_targets"] == 200
    np.testing.assert_array_equal(step.ranks, batched.ranks)
    assert len(np.unique(step.ranks)) > 20
    assert (np.isinf(step.ranks).any()) == exclude  # some targets repeat a history item
    for name in step:
        if name not in ("seconds", "targets_per_s"):
            assert batched[name] == pytest.approx(step[name], rel=1e-12), name


def test_gru4rec_sampled_ranks_agree_between_paths_and_stay_below_full_ranks(gru) -> None:
    model, test = gru
    kwargs = dict(ranking="sampled", n_negatives=20, seed=3, return_ranks=True, mode="median")
    step = evaluate_last_item(model, test, path="step", **kwargs)
    batched = evaluate_last_item(model, test, path="batched", item_chunk=11, **kwargs)
    np.testing.assert_array_equal(step.ranks, batched.ranks)
    assert 1 <= step.ranks.min() and step.ranks.max() <= 21
    # sampled ranks are at most the full ranks of the same targets (fewer competitors)
    full = evaluate_last_item(model, test, exclude_history=False, return_ranks=True, mode="median")
    assert (step.ranks <= full.ranks).all() and (step.ranks < full.ranks).any()


def test_no_scorable_user_gives_nan_metrics_and_counts() -> None:
    with pytest.raises(NoTargetsError, match="0 users to evaluate .* 1 have a target item"):
        evaluate_last_item(SuccessorModel(6), frame({"a": [0, 99], "b": [3]}))
    res = evaluate_last_item(
        SuccessorModel(6), frame({"a": [0, 99], "b": [3]}), return_ranks=True, min_targets=0
    )
    assert res["n_targets"] == 0 and res["n_users"] == 2
    assert res["n_unknown_targets"] == 1 and res["n_no_input"] == 1
    assert np.isnan(res["recall@10"]) and len(res.ranks) == 0
    with pytest.raises(ValueError, match="exclude_history"):
        evaluate_last_item(SuccessorModel(6), frame(TINY), exclude_history="seen")
    with pytest.raises(ValueError, match="no 'batched' path"):
        evaluate_last_item(StepOnly(6), frame(TINY), path="batched")


def test_unknown_targets_as_misses_scale_every_metric() -> None:
    """``unknown_targets="miss"``: users the model cannot answer (target never seen, or no
    known input) are evaluated as misses; every metric is the skip-mode metric times scored /
    (scored + missed)."""
    model = SuccessorModel(6)
    skip = evaluate_last_item(model, frame(TINY), exclude_history=False)
    miss = evaluate_last_item(model, frame(TINY), exclude_history=False, unknown_targets="miss")
    assert skip["n_targets"] == 4 and skip["n_unknown_targets"] == 1  # "d"
    # missed: "d" (unknown target), "f" and "g" (no known input item)
    assert miss["n_targets"] == 7 and miss["n_missed"] == 3
    for key in ("recall@5", "mrr@5", "ndcg@5", "recall@1"):
        assert miss[key] == pytest.approx(skip[key] * 4 / 7)
    assert "unknown targets count as misses" in miss.label()
    assert "misses" not in skip.label()
    for seed in range(5):  # the sample is drawn from scored and missed users alike
        sampled = evaluate_last_item(model, frame(TINY), unknown_targets="miss", max_users=3,
                                     seed=seed)  # fmt: skip
        assert sampled["n_targets"] == 3


def test_capped_rank_metrics_as_generative_recommenders() -> None:
    """Ranks beyond the cap count as cap + 1 (the reference keeps its top 2,500); an
    excluded repeat (rank inf) is a miss; mrr_exact is uncapped."""
    from recsys_pipeline.evaluation.last_item import capped_rank_metrics

    ranks = np.array([1.0, 3.0, 2600.0, np.inf])
    out = capped_rank_metrics(ranks, (1, 10), max_rank=2500)
    assert out["ndcg@1"] == pytest.approx(0.25)
    assert out["hr@10"] == pytest.approx(0.5)
    assert out["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert out["mrr"] == pytest.approx((1 + 1 / 3 + 2 / 2501) / 4)
    assert out["mrr_exact"] == pytest.approx((1 + 1 / 3 + 1 / 2600) / 4)
    assert out["n_beyond_cap"] == 2
