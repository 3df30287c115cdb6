"""Positive cache, negative sampler and epoch batching for pointwise (NCF) training."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from recsys_pipeline.training.interactions import (
    PositiveSet,
    UserItemData,
    check_exact_possible,
    epoch_samples,
    iterate_batches,
    sample_negatives,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _data(n_users: int = 30, n_items: int = 12, per_user: int = 8) -> UserItemData:
    rng = np.random.default_rng(0)
    rows = [(10 * u, 100 + int(i)) for u in range(n_users)
            for i in rng.choice(n_items, per_user, replace=False)]  # fmt: skip
    rows += rows[:5]  # duplicates are removed
    return UserItemData.from_frame(pl.DataFrame(rows, schema=["UserId", "ItemId"], orient="row"))


def test_index_maps_and_dedup() -> None:
    data = _data()
    assert data.n_users == 30 and data.n_items == 12 and data.n_positives == 30 * 8
    users, items = data.index_pairs(pl.DataFrame({"UserId": [10, 7], "ItemId": [101, 999]}))
    assert users.tolist() == [1, -1] and items.tolist() == [1, -1]
    indptr, indices = data.csr()
    assert indptr[-1] == len(indices) and np.all(np.diff(indptr) == 8)


def test_positive_set_membership() -> None:
    data = _data()
    pos = PositiveSet(data.users, data.items, data.n_items, torch.device("cpu"))
    assert pos.contains(torch.from_numpy(data.users), torch.from_numpy(data.items)).all()
    dense = np.zeros((data.n_users, data.n_items), dtype=bool)
    dense[data.users, data.items] = True
    u, i = np.nonzero(~dense)
    assert not pos.contains(torch.from_numpy(u), torch.from_numpy(i)).any()


def test_exact_negatives_never_hit_a_positive() -> None:
    data = _data()  # 8 of 12 items positive: 2/3 of uniform draws hit
    pos = PositiveSet(data.users, data.items, data.n_items, torch.device("cpu"))
    users = torch.from_numpy(data.users).repeat(20)
    gen = torch.Generator().manual_seed(0)
    neg = sample_negatives(users, data.n_items, "exact", pos, gen)
    assert not pos.contains(users, neg).any()
    approx = sample_negatives(users, data.n_items, "approximate", pos, gen)
    assert pos.contains(users, approx).float().mean().item() > 0.5


def test_approximate_negatives_are_uniform() -> None:
    users = torch.zeros(120_000, dtype=torch.long)
    neg = sample_negatives(users, 12, "approximate", generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(neg, minlength=12).numpy()
    assert stats.chisquare(counts).pvalue > 0.001


def test_exact_impossible_is_reported() -> None:
    data = _data(n_items=8, per_user=8)
    with pytest.raises(ValueError, match="every item"):
        check_exact_possible(data)


def test_epoch_samples_ratio_shuffle_and_shards() -> None:
    data = _data()
    users, items = torch.from_numpy(data.users), torch.from_numpy(data.items)
    full = epoch_samples(users, items, data.n_items, 4, generator=torch.Generator().manual_seed(1))
    n = data.n_positives
    assert len(full) == 5 * n and int(full.labels.sum()) == n
    assert not bool(full.labels[:n].all())  # shuffled
    pos_pairs = set(zip(full.users[full.labels].tolist(), full.items[full.labels].tolist()))
    assert pos_pairs == set(zip(data.users.tolist(), data.items.tolist()))
    shards = [
        epoch_samples(users, items, data.n_items, 4, generator=torch.Generator().manual_seed(1),
                      rank=r, world_size=3)
        for r in range(3)
    ]  # fmt: skip
    assert all(len(s) == 5 * n // 3 for s in shards)
    joined = torch.cat([s.users.long() * 1000 + s.items.long() for s in shards])
    torch.testing.assert_close(
        joined, (full.users.long() * 1000 + full.items.long())[: len(joined)]
    )
    batches = list(iterate_batches(full, 64))
    assert sum(len(b[0]) for b in batches) == len(full) and batches[0][2].dtype == torch.float32
