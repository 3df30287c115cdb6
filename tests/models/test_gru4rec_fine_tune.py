"""GRU4Rec.fine_tune: item-table growth (old rows and scores kept, new rows drawn by the reference
rule), learning new items, carried vs reset optimizer state, persistence of the optimizer state
(``optimizer.pt``) and of the fine-tune rounds, determinism, and folders saved before the optimizer
state was persisted.

Data: the successor sequence of :func:`tests.models.behaviour.successor_sessions` over 30 items
(sequence position ``i`` -> ``i + 1``). The *old* data keeps only the sessions that stay within
positions 0..19, so the items at positions 20..29 are new in the *new* data (all 30 items).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import polars as pl
import pytest
import torch

from recsys_pipeline.models import gru4rec as G
from recsys_pipeline.models.gru4rec import GRU4Rec, GRU4RecParams
from tests.models.behaviour import successor_sessions

N_ITEMS, N_OLD = 30, 20
RAW = 4000 + np.random.default_rng(12345).permutation(N_ITEMS)  # raw id at position i
NEW_POSITIONS = np.arange(N_OLD - 1, N_ITEMS)  # the input or its successor is a new item
OLD_POSITIONS = np.arange(N_OLD - 1)

MODES = {
    "shared": {},
    "separate": {"constrained_embedding": False, "embedding": 16},
    "none": {"constrained_embedding": False},
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def old_frame(seed: int = 1, n_sessions: int = 300) -> pl.DataFrame:
    """Successor sessions restricted to the items at positions 0..19 (whole sessions)."""
    frame = successor_sessions(N_ITEMS, n_sessions, seed=seed)
    outside = frame.filter(~pl.col("ItemId").is_in(RAW[:N_OLD].tolist()))["SessionId"]
    return frame.filter(~pl.col("SessionId").is_in(outside.unique().to_list()))


def new_frame(seed: int = 2, n_sessions: int = 300, positions: np.ndarray | None = None):
    """Successor sessions over all 30 items (or only the sessions within ``positions``)."""
    frame = successor_sessions(N_ITEMS, n_sessions, seed=seed, first_session_id=10**6, t0=10**7)
    if positions is None:
        return frame
    outside = frame.filter(~pl.col("ItemId").is_in(RAW[positions].tolist()))["SessionId"]
    return frame.filter(~pl.col("SessionId").is_in(outside.unique().to_list()))


def params(**kwargs) -> GRU4RecParams:
    base = dict(layers=[32], batch_size=16, n_sample=16, n_epochs=4, learning_rate=0.1)
    return GRU4RecParams(**{**base, "device": "cpu", **kwargs})


def accuracy(model: GRU4Rec, positions: np.ndarray) -> float:
    """Share of ``positions`` whose successor is the top-scored item after one step."""
    idx = torch.as_tensor(model.item_index(RAW[positions]))
    assert bool((idx >= 0).all())
    query, _ = model.step(idx, model.initial_state(len(idx)))
    predicted = model.item_ids[model.score(query).argmax(dim=1).numpy()]
    return float(np.mean(predicted == RAW[(positions + 1) % N_ITEMS]))


def item_tables(model: GRU4Rec) -> dict[str, torch.Tensor]:
    names = G._item_table_names(model.net)
    return {k: v.detach().clone() for k, v in model.net.named_parameters() if k in names}


@pytest.fixture(scope="module")
def fitted() -> GRU4Rec:
    """Trained on the old data (momentum on, so that velocities exist)."""
    return GRU4Rec(params(momentum=0.3)).fit(old_frame(), progress=False)


# ------------------------------------------------------------------------------------- growth


@pytest.mark.parametrize("mode", list(MODES))
def test_growth_keeps_old_items_rows_and_scores(mode: str) -> None:
    model = GRU4Rec(params(n_epochs=1, **MODES[mode])).fit(old_frame(), progress=False)
    old_ids = model.item_ids.copy()
    before = {k: v.detach().clone() for k, v in model.net.named_parameters()}
    items = torch.arange(N_OLD)
    query, _ = model.step(items, model.initial_state(N_OLD))
    scores = model.score(query)
    history = list(model.history)

    model.fine_tune(new_frame(), n_epochs=0, progress=False)

    expected_new = np.sort(RAW[N_OLD:])
    assert model.n_items == N_ITEMS
    np.testing.assert_array_equal(model.item_ids[:N_OLD], old_ids)
    np.testing.assert_array_equal(model.item_ids[N_OLD:], expected_new)
    assert model.item_ids.dtype == old_ids.dtype
    tables = G._item_table_names(model.net)
    for name, param in model.net.named_parameters():
        if name in tables:
            assert param.shape[0] == N_ITEMS, name
            assert torch.equal(param.detach()[:N_OLD], before[name]), name
        else:
            assert torch.equal(param.detach(), before[name]), name
    query2, _ = model.step(items, model.initial_state(N_OLD))
    assert torch.equal(model.score(query2)[:, :N_OLD], scores)
    assert model.history == history  # no epoch ran
    # and training on the grown tables works in every mode
    model.fine_tune(new_frame(), n_epochs=1, progress=False)
    assert [s.epoch for s in model.history] == [1, 2]
    assert all(math.isfinite(s.loss) for s in model.history)


@pytest.mark.parametrize("mode", list(MODES))
def test_new_rows_follow_the_reference_initialisation(mode: str) -> None:
    p = params(n_epochs=1, layers=[48], **MODES[mode])
    model = GRU4Rec(p).fit(old_frame(), progress=False)
    # many new items for the statistics: raw ids 9000.. in random sessions
    rng = np.random.default_rng(0)
    n_new = 400
    new = pl.DataFrame(
        {
            "SessionId": np.repeat(np.arange(200), 4),
            "ItemId": 9000 + rng.permutation(np.tile(np.arange(n_new), 2)),
            "Time": np.arange(800),
        }
    )
    model.fine_tune(new, n_epochs=0, progress=False)
    n_total = N_OLD + n_new
    net = model.net
    rows = {"Wy": (net.Wy, 48)}
    if mode == "separate":
        rows["E"] = (net.E, 16)
    if mode == "none":
        rows["gru.0.Wx"] = (net.gru[0].Wx, 48)  # per gate block [n, H0]
    for name, (table, fan_out) in rows.items():
        values = table.detach()[N_OLD:]
        bound = math.sqrt(6.0 / (n_total + fan_out))
        assert float(values.abs().max()) <= bound, name
        assert float(values.abs().max()) > 0.95 * bound, name
        assert float(values.mean()) == pytest.approx(0.0, abs=0.05 * bound), name
        assert float(values.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05), name
    assert not net.By.detach()[N_OLD:].any()
    # exactly the reference draw, seeded with seed + 3 * (round 1)
    generator = torch.Generator().manual_seed(p.seed + 3)
    expected = {}
    for name, (_, fan_out) in rows.items():
        if name != "Wy":  # E / Wx are drawn before Wy, as in reset_parameters
            expected[name] = G._reference_init(
                (n_new, rows[name][0].shape[1]), n_total, fan_out, 0.0, False, generator
            )
    expected["Wy"] = G._reference_init((n_new, 48), n_total, 48, 0.0, False, generator)
    for name, values in expected.items():
        assert torch.equal(rows[name][0].detach()[N_OLD:], values), name


def test_new_rows_with_sigma_and_normal_init() -> None:
    model = GRU4Rec(params(n_epochs=1, sigma=0.05, init_as_normal=True)).fit(
        old_frame(), progress=False
    )
    model.fine_tune(new_frame(), n_epochs=0, progress=False)
    model.fine_tune(  # a second round adds more items
        pl.DataFrame(
            {
                "SessionId": np.repeat(np.arange(300), 2),
                "ItemId": 9000 + np.arange(600),
                "Time": np.arange(600),
            }
        ),  # fmt: skip
        n_epochs=0,
        progress=False,
    )
    new_rows = model.net.Wy.detach()[N_ITEMS:]
    assert new_rows.shape == (600, 32)
    assert float(new_rows.std()) == pytest.approx(0.05, rel=0.05)
    assert [r["round"] for r in model.fine_tune_rounds] == [1, 2]
    assert [r["n_new_items"] for r in model.fine_tune_rounds] == [N_ITEMS - N_OLD, 600]


# ------------------------------------------------------------------------------------ learning


def test_fine_tune_learns_the_new_items(fitted: GRU4Rec) -> None:
    assert accuracy(fitted, OLD_POSITIONS) >= 0.9
    model = copy.deepcopy(fitted)
    model.fine_tune(new_frame(), n_epochs=0, progress=False)
    untrained = accuracy(model, NEW_POSITIONS)
    assert untrained <= 0.3, untrained
    model.fine_tune(new_frame(), progress=False)  # n_epochs from params: 4
    assert accuracy(model, NEW_POSITIONS) >= 0.9
    assert accuracy(model, OLD_POSITIONS) >= 0.9
    n_fit = len(fitted.history)
    assert [s.epoch for s in model.history] == list(range(1, n_fit + 5))
    assert [s.loss for s in model.history[:n_fit]] == [s.loss for s in fitted.history]
    assert [r["optimizer_state"] for r in model.fine_tune_rounds] == ["carry", "carry"]


def test_items_absent_from_new_data_are_never_sampled_or_changed(fitted: GRU4Rec) -> None:
    """The sampler's popularity is that of the new data: absent items have support 0."""
    model = copy.deepcopy(fitted)
    absent = np.arange(10)  # positions 0..9 do not occur in the new data
    new = new_frame(positions=np.arange(10, N_ITEMS))
    assert not new["ItemId"].is_in(RAW[absent].tolist()).any()
    rows = model.item_index(RAW[absent])
    before = item_tables(model)
    model.fine_tune(new, n_epochs=2, progress=False)
    after = item_tables(model)
    for name in before:
        assert torch.equal(after[name][rows], before[name][rows]), name
        assert not torch.equal(after[name][: len(before[name])], before[name]), name


# ---------------------------------------------------------------------------- optimizer state


def test_fit_keeps_the_optimizer_and_growth_pads_its_state(fitted: GRU4Rec) -> None:
    state = fitted.optimizer_state_dict()
    names = {name for name, _ in fitted.net.named_parameters()}
    assert set(state) == {f"{kind}.{n}" for kind in ("acc", "velocity") for n in names}
    assert all(bool(v.abs().sum() > 0) for v in state.values())
    model = copy.deepcopy(fitted)
    model.fine_tune(new_frame(), n_epochs=0, progress=False)
    grown = model.optimizer_state_dict()
    tables = G._item_table_names(model.net)
    for key, value in state.items():
        name = key.split(".", 1)[1]
        if name in tables:
            assert grown[key].shape[0] == N_ITEMS
            assert torch.equal(grown[key][:N_OLD], value)
            assert not grown[key][N_OLD:].any()
        else:
            assert torch.equal(grown[key], value)
    # the optimizer tracks the grown parameters themselves
    assert all(p in model._optimizer.acc for p in model.net.parameters())

    reset = copy.deepcopy(fitted).fine_tune(
        new_frame(), n_epochs=0, optimizer_state="reset", progress=False
    )
    assert not any(v.any() for v in reset.optimizer_state_dict().values())


def test_carry_and_reset_differ_and_carry_restores_the_saved_state(fitted, tmp_path) -> None:
    fitted.save(tmp_path / "m")
    assert (tmp_path / "m" / "optimizer.pt").exists()
    loaded = GRU4Rec.load(tmp_path / "m")
    for key, value in fitted.optimizer_state_dict().items():
        assert torch.equal(loaded.optimizer_state_dict()[key], value), key

    carried = copy.deepcopy(fitted).fine_tune(new_frame(), n_epochs=1, progress=False)
    carried_loaded = loaded.fine_tune(new_frame(), n_epochs=1, progress=False)
    reset = copy.deepcopy(fitted).fine_tune(
        new_frame(), n_epochs=1, optimizer_state="reset", progress=False
    )
    sc, sl, sr = (m.net.state_dict() for m in (carried, carried_loaded, reset))
    assert all(torch.equal(sc[k], sl[k]) for k in sc)  # the saved state was really restored
    assert not all(torch.equal(sc[k], sr[k]) for k in sc)
    assert carried.history[-1].loss != reset.history[-1].loss
    so = carried.optimizer_state_dict()
    for key, value in carried_loaded.optimizer_state_dict().items():
        assert torch.equal(so[key], value), key


def test_learning_rate_override_and_bad_arguments(fitted: GRU4Rec) -> None:
    model = copy.deepcopy(fitted)
    model.fine_tune(new_frame(), n_epochs=0, learning_rate=0.01, progress=False)
    assert model._optimizer.lr == 0.01
    assert model.fine_tune_rounds[-1]["learning_rate"] == 0.01
    with pytest.raises(ValueError, match="optimizer_state"):
        model.fine_tune(new_frame(), optimizer_state="keep", progress=False)
    with pytest.raises(RuntimeError, match="not trained"):
        GRU4Rec(params()).fine_tune(new_frame(), progress=False)
    fresh = copy.deepcopy(fitted)
    with pytest.raises(ValueError, match="no training targets"):  # and nothing changed
        fresh.fine_tune(
            pl.DataFrame({"SessionId": [1, 2], "ItemId": [RAW[0], 9999], "Time": [0, 1]}),
            progress=False,
        )
    assert fresh.n_items == N_OLD and fresh.fine_tune_rounds == []


# ------------------------------------------------------------------------------- persistence


def test_save_load_round_trip_after_fine_tune(fitted: GRU4Rec, tmp_path) -> None:
    model = copy.deepcopy(fitted).fine_tune(new_frame(), n_epochs=1, progress=False)
    model.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {
        "weights.pt", "model.json", "item_ids.json", "history.json", "optimizer.pt",
        "fine_tune.json",
    }  # fmt: skip
    raw = torch.load(tmp_path / "m" / "optimizer.pt", weights_only=True)
    assert isinstance(raw, dict) and all(isinstance(v, torch.Tensor) for v in raw.values())
    loaded = GRU4Rec.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.item_ids, model.item_ids)
    assert loaded.fine_tune_rounds == model.fine_tune_rounds
    assert [s.epoch for s in loaded.history] == [s.epoch for s in model.history]
    sm, sl = model.net.state_dict(), loaded.net.state_dict()
    assert all(torch.equal(sm[k], sl[k]) for k in sm)
    om, ol = model.optimizer_state_dict(), loaded.optimizer_state_dict()
    assert om.keys() == ol.keys() and all(torch.equal(om[k], ol[k]) for k in om)
    # the next round continues identically (same round number -> same seeds)
    third = new_frame(seed=3)
    a = model.fine_tune(third, n_epochs=1, progress=False)
    b = loaded.fine_tune(third, n_epochs=1, progress=False)
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.fine_tune_rounds[-1]["round"] == 2
    # serving copies can leave the optimizer out
    model.save(tmp_path / "serve", optimizer=False)
    assert not (tmp_path / "serve" / "optimizer.pt").exists()


def test_folder_without_optimizer_state_loads_and_fine_tunes_with_reset(tmp_path) -> None:
    """A model folder written before optimizer.pt existed (only the four original files)."""
    model = GRU4Rec(params()).fit(old_frame(), progress=False)
    model.save(tmp_path / "old")
    (tmp_path / "old" / "optimizer.pt").unlink()
    assert {p.name for p in (tmp_path / "old").iterdir()} == {
        "weights.pt", "model.json", "item_ids.json", "history.json"
    }  # fmt: skip
    loaded = GRU4Rec.load(tmp_path / "old")
    assert loaded.optimizer_state_dict() == {}
    with pytest.raises(RuntimeError, match="optimizer_state='reset'"):
        loaded.fine_tune(new_frame(), progress=False)
    assert loaded.n_items == N_OLD  # the refused call changed nothing
    loaded.fine_tune(new_frame(), optimizer_state="reset", progress=False)
    assert accuracy(loaded, NEW_POSITIONS) >= 0.9
    loaded.save(tmp_path / "new")
    assert (tmp_path / "new" / "optimizer.pt").exists()


def test_optimizer_state_that_does_not_fit_is_refused(fitted: GRU4Rec, tmp_path) -> None:
    fitted.save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "optimizer.pt", weights_only=True)
    state.pop("acc.Wy")
    torch.save(state, tmp_path / "m" / "optimizer.pt")
    with pytest.raises(ValueError, match=r"missing \['acc.Wy'\]"):
        GRU4Rec.load(tmp_path / "m")


# ------------------------------------------------------------------------------- determinism


def test_fine_tune_is_deterministic_under_the_seed() -> None:
    kw = dict(dropout_p_embed=0.2, dropout_p_hidden=0.2, momentum=0.2, train_random_order=True)

    def run(seed: int) -> dict[str, torch.Tensor]:
        model = GRU4Rec(params(n_epochs=1, seed=seed, **kw)).fit(old_frame(), progress=False)
        return model.fine_tune(new_frame(), n_epochs=1, progress=False).net.state_dict()

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["Wy"][N_OLD:], c["Wy"][N_OLD:])
