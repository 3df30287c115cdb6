"""Popularity-based negative samples drawn in bulk on the training device.

Items are drawn with probability proportional to ``support ** alpha`` (``alpha = 0``: uniform,
``alpha = 1``: popularity) by inverse-CDF sampling (``searchsorted`` of uniform draws on the
cumulative distribution). ``store_size`` ids are drawn at once into a ``[n_batches, n_sample]``
store that lives on the device; ``next()`` hands out one row (a view, no copy) and the store is
refilled when used up, so sampling never stalls the training loop with small kernel launches.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = ["NegativeSampler", "sampling_distribution"]


def sampling_distribution(support: np.ndarray | torch.Tensor, alpha: float) -> torch.Tensor:
    """Probabilities ``[n_items]`` (float64) proportional to ``support ** alpha``; items without
    support get 0. A tensor ``support`` keeps its device (no copy to the host and back)."""
    raw = support if isinstance(support, torch.Tensor) else torch.as_tensor(np.asarray(support))
    weights = raw.to(torch.float64)
    if weights.ndim != 1 or len(weights) == 0:
        raise ValueError("support must be a non-empty 1-D array")
    if bool((weights < 0).any()):
        raise ValueError("support must be non-negative")
    weights = weights.pow(alpha) if alpha != 0 else torch.ones_like(weights)
    weights = torch.where(raw > 0, weights, 0.0)
    total = weights.sum()
    if total <= 0:
        raise ValueError("no item has positive support")
    return weights / total


class NegativeSampler:
    """A store of negative samples, refreshed in bulk.

    Args:
        support: training support of every item ``[n_items]``.
        n_sample: samples per mini-batch (the row length of the store).
        alpha: exponent of the support.
        store_size: ids drawn at once (at least one row of ``n_sample``).
        device: where the store lives (the training device).
        generator: random generator on ``device`` (seeded for reproducibility).
    """

    def __init__(
        self,
        support: np.ndarray | torch.Tensor,
        n_sample: int,
        alpha: float,
        *,
        store_size: int = 10_000_000,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
    ) -> None:
        if n_sample < 1:
            raise ValueError(f"n_sample must be >= 1, got {n_sample}")
        self.device = torch.device(device)
        self.n_sample = n_sample
        self.n_rows = max(1, store_size // n_sample)
        self.generator = generator
        cdf = torch.cumsum(sampling_distribution(support, alpha), 0)
        cdf[-1] = 1.0  # guard against rounding: every uniform draw lands in the table
        self._cdf = cdf.to(device=self.device, dtype=torch.float32)
        self._n_items = len(cdf)
        self._store = torch.empty(0, n_sample, dtype=torch.long, device=self.device)
        self._pointer = 0
        self.refill()
        logger.debug(
            "negative sample store: %d rows x %d ids on %s", self.n_rows, n_sample, self.device
        )

    def draw(self, n: int) -> torch.Tensor:
        """``n`` fresh item indices ``[n]`` (long)."""
        uniform = torch.rand(n, device=self.device, generator=self.generator)
        # right=True: an item of probability 0 (cdf[i] == cdf[i-1]) is never returned
        idx = torch.searchsorted(self._cdf, uniform, right=True)
        return idx.clamp_(max=self._n_items - 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The unused part of the store: ``{"store": [rows, n_sample], "pointer": 0-d}`` (the
        random generator's state is its owner's to save)."""
        return {"store": self._store.cpu(), "pointer": torch.tensor(self._pointer)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a :meth:`state_dict` (same ``n_sample``)."""
        store = state["store"].to(self.device)
        if store.dim() != 2 or store.shape[1] != self.n_sample:
            raise ValueError(
                f"sampler state has shape {tuple(store.shape)}, need [*, {self.n_sample}]"
            )
        self._store, self._pointer = store, int(state["pointer"])

    def refill(self) -> None:
        """Draw a new store of ``n_rows x n_sample`` ids."""
        self._store = self.draw(self.n_rows * self.n_sample).view(self.n_rows, self.n_sample)
        self._pointer = 0

    def next(self) -> torch.Tensor:
        """The samples of one mini-batch, ``[n_sample]`` long (a view into the store)."""
        if self._pointer >= self.n_rows:
            self.refill()
        sample = self._store[self._pointer]
        self._pointer += 1
        return sample
