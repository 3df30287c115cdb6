"""Two non-neural user models (:class:`~recsys_pipeline.evaluation.user_ranking.UserModel`) for
the user-based evaluation of NeuMF.

* :class:`UserPopularity`: the score of item ``j`` is its number of training users, whoever asks.
* :class:`UserCooccurrence`: the score of item ``j`` for user ``u`` is
  ``sum_{i in H(u), i != j} C[i, j]`` with ``C = X^T X`` the item-item co-occurrence counts of the
  binary user-item training matrix ``X [n_users, n_items]`` and ``H(u)`` the user's training
  items; computed as ``X_u X^T X - X_u * diag(C)`` with sparse ``X`` (no ``[n_items, n_items]``
  matrix is built), so scoring ``U`` users costs ``O(U * (nnz + n_users))``.

Both index users and items in ascending raw-id order, like NeuMF.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import polars as pl
import torch

from recsys_pipeline.training.interactions import UserItemData

__all__ = ["UserCooccurrence", "UserPopularity"]


class UserPopularity:
    """Item popularity (number of distinct training users) as every user's score."""

    def __init__(self) -> None:
        self.user_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.item_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.popularity = torch.zeros(0)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def fit(
        self,
        train: pl.DataFrame,
        user_key: str = "UserId",
        item_key: str = "ItemId",
        counts_from: pl.DataFrame | None = None,
    ) -> Self:
        """Users and items of ``train``; popularity counted on ``counts_from`` (default
        ``train``; e.g. only the recent part, so that the scores are recent popularity while
        every user of ``train`` is known)."""
        data = UserItemData.from_frame(train, user_key, item_key)
        self.user_ids, self.item_ids = data.user_ids, data.item_ids
        if counts_from is None:
            counts = np.bincount(data.items, minlength=data.n_items)
        else:
            recent = counts_from.select(user_key, item_key).unique()
            index = pl.DataFrame(
                {item_key: self.item_ids, "_i": np.arange(len(self.item_ids), dtype=np.int64)}
            ).with_columns(pl.col(item_key).cast(recent.schema[item_key]))
            positions = recent.join(index, on=item_key, how="inner")["_i"].to_numpy()
            counts = np.bincount(positions, minlength=data.n_items)
        self.popularity = torch.from_numpy(counts.astype(np.float32))
        return self

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """``[U, n_items]``: the popularity row for every user."""
        return self.popularity.unsqueeze(0).expand(users.shape[0], -1)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[U, C]`` popularity of the candidates ``items [U, C]``."""
        return self.popularity[items]


class UserCooccurrence:
    """Item-item co-occurrence with the user's training items (see the module docstring)."""

    def __init__(self) -> None:
        self.user_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.item_ids: np.ndarray = np.empty(0, dtype=np.int64)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def fit(self, train: pl.DataFrame, user_key: str = "UserId", item_key: str = "ItemId") -> Self:
        data = UserItemData.from_frame(train, user_key, item_key)
        self.user_ids, self.item_ids = data.user_ids, data.item_ids
        index = torch.from_numpy(np.stack([data.users, data.items]))
        values = torch.ones(data.n_positives, dtype=torch.float32)
        shape = (data.n_users, data.n_items)
        self._x = torch.sparse_coo_tensor(index, values, shape, check_invariants=True).coalesce()
        self._xt = self._x.t().coalesce()  # X^T [n_items, n_users]
        self._rows_of = data.csr()
        self._diag = torch.from_numpy(np.bincount(data.items, minlength=data.n_items)).float()
        return self

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """``[U, n_items]`` co-occurrence scores."""
        xu = self._rows(users)  # [U, n_items] dense binary
        user_user = self._x @ xu.t()  # [n_users, U]
        scores = (self._xt @ user_user).t()  # [U, n_items]
        return scores - xu * self._diag

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[U, C]`` scores of the candidates ``items [U, C]``."""
        return self.score_all(users).gather(1, items)

    def _rows(self, users: torch.Tensor) -> torch.Tensor:
        """Dense binary rows ``[U, n_items]`` of ``X``."""
        indptr, indices = self._rows_of
        u = users.cpu().numpy()
        lens = indptr[u + 1] - indptr[u]
        rows = np.repeat(np.arange(len(u)), lens)
        cols = indices[
            np.concatenate(
                [np.arange(a, b) for a, b in zip(indptr[u], indptr[u + 1])] or [[]]
            ).astype(np.int64)
        ]
        dense = torch.zeros(len(u), self.n_items)
        dense[torch.from_numpy(rows), torch.from_numpy(cols)] = 1.0
        return dense
