"""The model contract: what every model offers to training, evaluation, serving and operations.

Three layers, each documented below:

* :class:`ModelParams`: the base of every model's parameter dataclass (parsing from YAML or
  run.py-style strings ``name=value,name=value``, formatting back, field names).
* :class:`Recommender`: the contract of a trainable model (``kind``, ``task``, ``fit``,
  ``fine_tune``, ``save``/``load``, top-k ``recommend``). ``kind`` names it in the registry
  (:mod:`recsys_pipeline.models.registry`) and in ``model.json``; ``task`` says what it predicts:
  ``"next_item"`` (session and sequence models: the next item after a sequence of items) or
  ``"user_item"`` (NeuMF-like models: items for a known user).
* Two inference paths of next-item models:

  - **step** (:class:`NextItemModel`): a session is fed one event at a time; ``step`` returns a
    *query* (whatever the model needs to score candidates: a GRU4Rec hidden vector ``[B, H]``, the
    last item for a co-occurrence model, nothing for most-popular) and the new state. GRU4Rec's
    native path; ``recommend()``, serving and the session-parallel evaluation use it.
  - **batched encoding** (:class:`SequenceEncoder`): padded item sequences ``[B, L]`` (with their
    lengths and optional timestamps ``[B, L]``) give a query per position ``[B, L, D]`` (or per
    last position ``[B, D]``) in one forward pass, so an encoder never re-encodes a prefix per
    event. Encoder models get the step path for free from :class:`EncoderStepAdapter` (a window of
    the last ``maxlen`` items), so every caller of the step path keeps working.

  Both paths end in ``score(query, start, stop)``: scores ``[N, stop - start]`` of a contiguous
  slice of the item vocabulary, so evaluation can rank against catalogs too large for one
  ``[N, n_items]`` matrix by scoring item chunks. Items are dense indices ``0 .. n_items - 1``;
  ``item_ids`` maps them to raw ids; padding positions hold :data:`PAD` (``-1``).

A saved model is a folder: ``model.json`` (``{"kind", "format_version", "params"}``, written by
:func:`write_model_json`), the weights as a state dict (``weights.pt``, loaded with
``weights_only=True``: nothing is unpickled) and the id maps (``item_ids.json``, ...), plus what
the model needs (history, optimizer state). :func:`recsys_pipeline.models.registry.load_model`
reads ``model.json`` and dispatches on ``kind``.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import polars as pl
import torch

from recsys_pipeline.models.params import (
    checked_hints,
    convert_value,
    format_param_string,
    parse_param_string,
)
from recsys_pipeline.models.persistence import ModelFolderError, read_json, require_keys
from recsys_pipeline.storage import jsonio
from recsys_pipeline.training.sequences import PAD, SequenceBatch

__all__ = [
    "FORMAT_VERSION",
    "MODEL_FILE",
    "PAD",
    "TASKS",
    "EncoderStepAdapter",
    "ModelParams",
    "NextItemModel",
    "RecommendResult",
    "Recommender",
    "SequenceEncoder",
    "left_to_right",
    "read_model_json",
    "saved_params",
    "write_model_json",
]

TASKS = ("next_item", "user_item")
MODEL_FILE = "model.json"
#: version of the saved-folder layout; folders without ``model.json`` are version 0 (legacy)
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------- parameters


@dataclass
class ModelParams:
    """Base of every model's parameter dataclass: the fields are the hyperparameters, with the
    names (and defaults) of the model's reference implementation.

    Subclasses are ``@dataclass`` classes that set :attr:`model_name` (used in messages) and
    validate in ``__post_init__``; :meth:`_normalise` may rewrite raw values before conversion
    (e.g. a reference shorthand). Values convert from YAML types or strings: bool, int, float,
    str and lists of ints (``"256/128"`` in a parameter string).
    """

    model_name: ClassVar[str] = "model"
    #: the field holding the number of training epochs (the reference's name)
    epochs_field: ClassVar[str] = "n_epochs"
    #: fields a saved folder must hold: they decide the network (no default can stand in)
    shape_fields: ClassVar[tuple[str, ...]] = ()

    @property
    def epochs(self) -> int:
        """The number of training epochs (the field :attr:`epochs_field`)."""
        return int(getattr(self, self.epochs_field))

    @classmethod
    def field_names(cls) -> list[str]:
        """The parameter names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def _normalise(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite the raw ``values`` before type conversion (default: unchanged)."""
        return values

    @classmethod
    def from_dict(cls, values: typing.Mapping[str, Any]) -> Self:
        """From a mapping (e.g. YAML); values may be typed or strings as in a parameter string.

        Raises:
            ValueError: an unknown name (the message lists the valid ones) or a bad value.
        """
        hints = checked_hints(cls, values, cls.model_name)
        raw = cls._normalise(dict(values))
        return cls(**{k: convert_value(cls.model_name, k, v, hints[k]) for k, v in raw.items()})

    @classmethod
    def from_string(cls, text: str) -> Self:
        """From run.py's syntax ``name=value,name=value`` (``/`` separates list items)."""
        return cls.from_dict(parse_param_string(text))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML/MLflow friendly)."""
        return dataclasses.asdict(self)

    def study_tag(self) -> str:
        """What must stay fixed within one tuning study, as a name part (e.g. GRU4Rec's loss
        and embedding mode); empty by default."""
        return ""

    def to_string(self) -> str:
        """The parameter string :meth:`from_string` reads back."""
        return format_param_string(self.to_dict())


# ---------------------------------------------------------------------------- recommendations


@dataclass
class RecommendResult:
    """Top-k recommendations, best first.

    Attributes:
        items: raw item ids, ``[k]`` for one input or ``[S, k]`` for many.
        scores: the model's scores of ``items``, same shape, descending.
        indices: model item indices of ``items``, same shape (int64).
        exclude_seen: whether the inputs' own items (a session's items, a user's training
            items) were excluded.

    Unpacks as ``items, scores = result``.
    """

    items: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    exclude_seen: bool

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.items, self.scores))


# ---------------------------------------------------------------------------------- contract


class Recommender(ABC):
    """The contract of a trainable model (GRU4Rec, NeuMF, SASRec, ...).

    Class attributes: ``kind`` (registry name, e.g. ``"gru4rec"``), ``task`` (one of
    :data:`TASKS`) and ``params_class`` (its :class:`ModelParams` subclass). Instances hold
    ``params``, ``item_ids`` (raw id of every item index, ``[n_items]``) and, after ``fit``, the
    trained network.

    A next-item model also implements :class:`NextItemModel` (step path) and, if it encodes
    whole sequences, :class:`SequenceEncoder`; a user-item model offers ``score_all(users)`` /
    ``score(users, items)`` (:class:`~recsys_pipeline.evaluation.user_ranking.UserModel`).
    """

    kind: ClassVar[str]
    task: ClassVar[str]
    params_class: ClassVar[type[ModelParams]]

    params: Any
    item_ids: np.ndarray

    @property
    def n_items(self) -> int:
        """Size of the item vocabulary."""
        return len(self.item_ids)

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the model computes."""

    @classmethod
    def prepare_training_data(cls, train: pl.DataFrame) -> Any:
        """``train`` in the form ``fit`` reads fastest, prepared once when one dataset trains
        many models (tuning trials); default: unchanged."""
        return train

    @abstractmethod
    def fit(self, train: pl.DataFrame, valid: pl.DataFrame | None = None, **kwargs: Any) -> Self:
        """Train from scratch on ``train`` (one row per event or rating); ``valid`` (optional)
        drives a per-epoch validation metric and early stopping where the model offers it."""

    @abstractmethod
    def fine_tune(self, new_train: pl.DataFrame, **kwargs: Any) -> Self:
        """Continue training on new data; new items (users) grow the tables."""

    @abstractmethod
    def save(self, path: str | Path, *, optimizer: bool = True) -> Path:
        """Write the model folder (``model.json`` via :func:`write_model_json`, weights, ids)."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> Self:
        """Read a folder written by :meth:`save` (tensors with ``weights_only=True``)."""

    @abstractmethod
    def recommend(self, inputs: Any, k: int = 20, **kwargs: Any) -> RecommendResult:
        """Top-``k`` raw item ids: after each session (next-item models: ``inputs`` is one
        session or a list of sessions of raw item ids) or for each user (user-item models:
        ``inputs`` is a list of raw user ids)."""

    def item_index(self, ids: np.ndarray | pl.Series | list[Any]) -> np.ndarray:
        """Item indices ``[n]`` of raw ids (``-1`` for ids outside the vocabulary)."""
        vocab = pl.Series(self.item_ids)
        series = pl.Series(ids) if not isinstance(ids, pl.Series) else ids
        index = series.cast(vocab.dtype, strict=False).replace_strict(
            vocab, pl.int_range(len(vocab), dtype=pl.Int64, eager=True), default=-1
        )
        return index.to_numpy(writable=True)


def write_model_json(directory: Path, model: Recommender) -> None:
    """Write ``model.json``: ``{"kind", "task", "format_version", "params"}``."""
    record = {
        "kind": model.kind,
        "task": model.task,
        "format_version": FORMAT_VERSION,
        "params": model.params.to_dict(),
    }
    (directory / MODEL_FILE).write_text(jsonio.dumps(record, indent=2))


_P = typing.TypeVar("_P", bound=ModelParams)


def read_model_json(directory: Path) -> dict[str, Any] | None:
    """The record of ``directory/model.json``, or ``None`` when the folder has none (a folder
    written before ``model.json`` existed: format version 0).

    Raises:
        ModelFolderError: the file is not valid JSON or lacks ``kind`` / ``params`` (the
            message names the file).
    """
    path = Path(directory) / MODEL_FILE
    if not path.exists():
        return None
    record = read_json(path)
    if not isinstance(record, dict) or not {"kind", "params"} <= record.keys():
        raise ModelFolderError(f"{path}: needs the keys 'kind' and 'params'")
    return record


def saved_params(directory: Path, kind: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw parameters of the ``kind`` model saved in ``directory``: ``model.json``'s
    ``params``, or ``params.json`` in a folder written before ``model.json`` existed; each of
    ``required`` must be there.

    Raises:
        ModelFolderError: ``model.json`` names another kind, is not valid, or a required
            parameter is missing (the message names the file).
    """
    directory = Path(directory)
    record = read_model_json(directory)
    if record is None:  # format version 0
        path = directory / "params.json"
        if not path.exists():
            raise ModelFolderError(f"{directory}: not a saved model folder (no {MODEL_FILE})")
        params = read_json(path)
    else:
        path = directory / MODEL_FILE
        if record["kind"] != kind:
            raise ModelFolderError(f"{path}: a {record['kind']!r} model, not {kind!r}")
        params = record["params"]
    require_keys(params, required, path)
    return params


def load_saved_params(directory: Path, kind: str, params_class: type[_P]) -> _P:
    """The ``params_class`` object saved in ``directory`` (:func:`saved_params` with the
    class's :attr:`ModelParams.shape_fields` required).

    Raises:
        ModelFolderError: as :func:`saved_params`, or a bad value (naming the file).
    """
    directory = Path(directory)
    raw = saved_params(directory, kind, params_class.shape_fields)
    try:
        return params_class.from_dict(raw)
    except (TypeError, ValueError) as err:
        where = directory / (MODEL_FILE if (directory / MODEL_FILE).exists() else "params.json")
        raise ModelFolderError(f"{where}: {err}") from err


# ------------------------------------------------------------------------- inference paths


@runtime_checkable
class NextItemModel(Protocol):
    """The step path: what the session-parallel evaluation, ``recommend()`` and serving need
    (GRU4Rec, the baselines, and every encoder through :class:`EncoderStepAdapter`)."""

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


@runtime_checkable
class SequenceEncoder(Protocol):
    """The batched path: one forward pass over padded sequences.

    ``maxlen`` is the longest context the model reads (``None``: unbounded, e.g. an RNN); the
    evaluation gives every target at most the last ``maxlen`` items, exactly as the step adapter
    does. ``padding`` is the side the model wants its batches padded on (``"left"``: the last
    item at position ``L - 1``, as the SASRec reference; ``"right"``: the first item at position
    0). ``uses_times``: whether ``encode`` reads ``batch.times``.

    Two properties the evaluation relies on:

    * **padding invariance** (required): a row's queries do not depend on how much padding the
      batch adds (its width ``L``); a model with absolute positions counts them from the row's
      first real item (right padding) or from its last (left padding), never from the batch edge.
    * ``prefix_consistent``: True when the query at position ``t`` depends only on the items up
      to ``t`` and their positions counted from the sequence start (an RNN; a transformer with
      positions from the start). Then one forward pass over a whole sequence gives every
      prefix's query. False when positions count from the end (the SASRec reference: the last
      item always at position ``maxlen - 1``): the query of a prefix then depends on the
      sequence's length, and the evaluation encodes every target's prefix as its own row.
    """

    item_ids: np.ndarray
    maxlen: int | None
    padding: str
    uses_times: bool
    prefix_consistent: bool

    @property
    def n_items(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """Queries of ``batch.items [B, L]``: ``[B, L, D]`` (the query at position ``t`` reads
        positions ``<= t`` only and predicts the item after ``t``), or ``[B, D]`` for each row's
        last real position when ``last_only``. Values at padding positions are unspecified."""
        ...

    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[N, stop - start]`` of items ``start .. stop - 1`` for queries ``[N, D]``."""
        ...


class EncoderStepAdapter:
    """The step path (:class:`NextItemModel`) of a :class:`SequenceEncoder`: the state of a slot
    is a window of its last ``maxlen`` items (``[B, W]``, padded on the encoder's side with
    :data:`PAD`) and ``step`` re-encodes the window (``last_only``). Without a ``maxlen`` the
    window grows with the longest session. Timestamps are not carried (``times`` is None)."""

    def __init__(self, encoder: SequenceEncoder) -> None:
        self.encoder = encoder
        self.item_ids = encoder.item_ids
        self.maxlen = encoder.maxlen

    @property
    def n_items(self) -> int:
        return self.encoder.n_items

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def initial_state(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(window [B, 0], lengths [B])``: empty windows."""
        device = self.device
        window = torch.full((batch_size, 0), PAD, dtype=torch.long, device=device)
        return window, torch.zeros(batch_size, dtype=torch.long, device=device)

    def reset_state(
        self, state: tuple[torch.Tensor, torch.Tensor], finished: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        window, lengths = state
        finished = finished.to(window.device)
        return window.masked_fill(finished.unsqueeze(1), PAD), lengths.masked_fill(finished, 0)

    def keep_state(
        self, state: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = keep.to(state[0].device)
        return state[0].index_select(0, keep), state[1].index_select(0, keep)

    @torch.no_grad()
    def step(
        self, items: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Append ``items [B]`` to every window and encode it; query ``[B, D]``."""
        window, lengths = state  # left-padded: the newest item in the last column
        grown = torch.cat([window, items.to(window.device).unsqueeze(1)], dim=1)
        lengths = lengths + 1
        if self.encoder.maxlen is not None:
            lengths = lengths.clamp(max=self.encoder.maxlen)
        grown = grown[:, -int(lengths.max()) :]  # drop columns that are padding in every row
        left = self.encoder.padding == "left"
        inputs = grown if left else left_to_right(grown, lengths)
        batch = SequenceBatch(
            items=inputs,
            lengths=lengths,
            targets=torch.full_like(inputs, PAD),
            times=None,
            mask=None,
            padding="left" if left else "right",
        )
        query = self.encoder.encode(batch, last_only=True)
        return query, (grown, lengths)

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self.encoder.score(query, start, stop)


def left_to_right(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Left-padded ``items [B, W]`` (real items in the last ``lengths[b]`` columns) as
    right-padded (real items in the first ``lengths[b]`` columns, :data:`PAD` after)."""
    width = items.shape[1]
    cols = torch.arange(width, device=items.device)
    source = (cols.unsqueeze(0) + (width - lengths).unsqueeze(1)) % max(width, 1)
    out = items.gather(1, source)
    return out.masked_fill(cols.unsqueeze(0) >= lengths.unsqueeze(1), PAD)
