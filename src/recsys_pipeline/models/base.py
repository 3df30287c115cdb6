"""The interface every next-item model offers to the shared evaluation, ``recommend`` and serving.

A model sees a session one event at a time. ``step`` feeds the current item of each of ``B``
parallel sessions and returns a *query* (whatever the model needs to score candidates: a GRU4Rec
hidden vector ``[B, H]``, the last item for a co-occurrence model, nothing for most-popular) and the
new state. ``score`` turns a query into scores for a contiguous slice of the item vocabulary, so
that evaluation can rank against catalogs too large for one ``[B, n_items]`` matrix by scoring
item chunks. Items are dense indices ``0 .. n_items - 1``; ``item_ids`` maps them to raw ids.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class NextItemModel(Protocol):
    """What evaluation, ``recommend()`` and serving need from a model (GRU4Rec, baselines, ...)."""

    #: raw item id of every item index, shape ``[n_items]`` (numpy, any dtype)
    item_ids: np.ndarray

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary (the training items)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where ``step``/``score`` compute."""
        ...

    def initial_state(self, batch_size: int) -> Any:
        """State of ``batch_size`` fresh sessions (e.g. zero hidden states ``[L, B, H]``)."""
        ...

    def reset_state(self, state: Any, finished: torch.Tensor) -> Any:
        """Reset the slots where the bool mask ``finished [B]`` is True (a new session starts)."""
        ...

    def keep_state(self, state: Any, keep: torch.Tensor) -> Any:
        """Keep only the slots ``keep [B']`` (long indices): the batch shrinks."""
        ...

    def step(self, items: torch.Tensor, state: Any) -> tuple[Any, Any]:
        """Feed ``items [B]`` (long, item indices); return ``(query, new_state)``."""
        ...

    def score(self, query: Any, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[B, stop - start]`` of items ``start .. stop-1`` for the next item."""
        ...
