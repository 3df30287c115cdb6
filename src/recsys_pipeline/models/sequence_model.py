"""What every item-sequence transformer of the platform shares (SASRec, BERT4Rec, ...): the
item vocabulary, training through the shared loop (:func:`~recsys_pipeline.training.loop.train_epochs`)
with early stopping on the last-item protocol, fine-tuning with item growth and the optimiser's
moments carried over, batched inference, and the saved folder.

A model is a subclass that supplies its network and the parts that differ between models:

* ``_new_network(n_items)``: the ``nn.Module``; it has ``n_items`` and
  ``grow_items(rows [N, D]) -> names`` (append item rows, return the names of the parameters that
  grew along dim 0, so the optimiser's moments get zero rows there);
* ``_make_batcher(data, seed)``: the :class:`~recsys_pipeline.training.sequences.SequenceBatcher`
  (causal or masked);
* ``_make_optimizer(net, lr, n_steps)``: the optimiser (Adam / AdamW, by parameter names
  in its state) and an optional per-step scheduler;
* ``_loss_function(net, generator, history, support)``: mini-batch -> (loss, targets);
* ``encode`` / ``score``: the :class:`~recsys_pipeline.models.base.SequenceEncoder` path.

Training data: one row per event, ``SessionId`` (a session) or ``UserId`` (a user's history),
``ItemId``, ``Time``; a sequence is the rows of one key in time order.

Saved folder: ``model.json``, ``weights.pt`` (state dict, read with ``weights_only=True``),
``item_ids.json``, ``support.json`` (training counts per item), ``history.json`` (epochs and
fine-tuning rounds) and ``optimizer.pt`` (the optimiser's moments by parameter name).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import numpy as np
import polars as pl
import torch
from torch import nn

from recsys_pipeline.models.base import (
    ModelParams,
    Recommender,
    RecommendResult,
    load_saved_params,
    write_model_json,
)
from recsys_pipeline.models.persistence import (
    checked_load,
    load_tensors,
    load_weights,
    read_ids,
    read_json,
    write_ids,
)
from recsys_pipeline.storage import jsonio
from recsys_pipeline.training.device import resolve_device
from recsys_pipeline.training.loop import LoopConfig, train_epochs
from recsys_pipeline.training.sequences import PAD, SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import SessionData, sessions_from_frame
from recsys_pipeline.training.trainer import EpochStats

__all__ = [
    "SequenceTransformer",
    "append_mask_slot",
    "as_sequence_frame",
    "encode_by_width",
    "glorot_rows",
    "last_position_mask",
]

_MOMENTS = ("exp_avg", "exp_avg_sq", "step")


class SequenceTransformer(Recommender):
    """The shared plumbing (module docstring). ``params`` must have ``maxlen``, ``lr``,
    ``seed``, ``device``, ``amp``, ``cpu_bf16``, ``patience``, ``valid_metric`` and an epochs
    field (:attr:`ModelParams.epochs_field`)."""

    task: ClassVar[str] = "next_item"
    padding: ClassVar[str] = "left"
    uses_times: ClassVar[bool] = False
    prefix_consistent: ClassVar[bool] = False
    #: the progress bar's label
    desc: ClassVar[str] = "model"

    def __init__(self, params: ModelParams | None = None) -> None:
        self.params: Any = params or self.params_class()
        self.item_ids = np.empty(0, dtype=np.int64)
        self.support = np.empty(0, dtype=np.int64)
        self.net: Any = None
        self.history: list[Any] = []
        self.best_epoch: int | None = None
        self.fine_tune_rounds: list[dict[str, Any]] = []
        self._optimizer_state: dict[str, Any] | None = None
        self._device = resolve_device(self.params.device)

    # ------------------------------------------------------------------- what a model supplies
    @abstractmethod
    def _new_network(self, n_items: int) -> nn.Module:
        """A freshly initialised network over ``n_items`` items."""

    @abstractmethod
    def _make_batcher(self, data: SessionData, seed: int) -> SequenceBatcher:
        """The training batches of ``data``."""

    def _causal_batcher(
        self, data: SessionData, seed: int, shuffle: bool | Literal["once"] = True
    ) -> SequenceBatcher:
        """Next-item training batches (every position's target is the next item; the last
        ``maxlen + 1`` items of a longer sequence), padded on the model's ``padding`` side;
        ``shuffle`` as :class:`SequenceBatcher`'s."""
        return SequenceBatcher(
            data,
            batch_size=self.params.batch_size,
            maxlen=self.params.maxlen,
            mode="causal",
            padding=self.padding,
            fixed_length=False,
            long="last",
            min_length=2,
            shuffle=shuffle,
            bucket=self.params.bucket,
            seed=seed,
            device=self.device,
        )

    @abstractmethod
    def _make_optimizer(
        self, net: nn.Module, lr: float, n_steps: int
    ) -> tuple[torch.optim.Optimizer, Any]:
        """(optimiser, per-step scheduler or None) for ``n_steps`` optimiser steps."""

    @abstractmethod
    def _loss_function(
        self,
        net: nn.Module,
        generator: torch.Generator,
        history: tuple[torch.Tensor, torch.Tensor],
        support: torch.Tensor,
    ) -> Callable[[SequenceBatch], tuple[torch.Tensor, int]]:
        """Mini-batch -> (loss, number of targets). ``history`` = (offsets, items) of the
        training sequences on the device, ``support`` the training count per item."""

    def _grad_clip(self) -> float | None:
        """Clip the gradients' global norm to this (None: off)."""
        return None

    # ----------------------------------------------------------------------- contract basics
    @property
    def maxlen(self) -> int:
        return int(self.params.maxlen)

    @property
    def device(self) -> torch.device:
        return self._device

    def _network(self) -> Any:
        if self.net is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        return self.net

    @classmethod
    def prepare_training_data(cls, train: pl.DataFrame) -> SessionData:
        """The sequences of ``train`` (``SessionId`` per sequence; ``UserId`` if there is none)."""
        return _sequences(train)

    # -------------------------------------------------------------------------------- train
    def fit(
        self,
        train: pl.DataFrame | SessionData,
        valid: pl.DataFrame | None = None,
        *,
        checkpoint_dir: str | Path | None = None,
        progress: bool = True,
        callback: Callable[[EpochStats], None] | None = None,
        item_ids: np.ndarray | None = None,
        **kwargs: Any,
    ) -> Self:
        """Train from scratch.

        Args:
            train: the training events (or :meth:`prepare_training_data`'s sequences).
            valid: one target row per sequence (``SessionId``/``UserId``, ``ItemId``: the
                leave-one-out validation item): the metric ``params.valid_metric`` of the
                last-item protocol (full ranking, history excluded; input = the sequence's
                ``train`` events) is computed after every epoch, early stopping with
                ``params.patience`` and the best epoch's weights restored.
            checkpoint_dir: write a checkpoint after every epoch and resume from it.
            progress: show the progress bar.
            callback: called with every finished epoch's stats (e.g. a tuning trial's report).
            item_ids: the item vocabulary (raw ids, a frame ``train`` only; default: the items
                of ``train``). Ids that never occur in ``train`` get rows too: they are drawn
                as negatives and ranked as candidates, as in references whose item table
                holds every id of the catalogue; events of items outside it are dropped.
        """
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")
        if item_ids is not None and isinstance(train, SessionData):
            raise ValueError("item_ids: pass the training events as a frame")
        data = train if isinstance(train, SessionData) else _sequences(train, item_ids)
        if data.n_items == 0:
            raise ValueError(f"{type(self).__name__}.fit: the training data has no events")
        p = self.params
        torch.manual_seed(p.seed)
        self.item_ids = np.asarray(data.item_ids)
        self.support = np.bincount(np.asarray(data.items), minlength=data.n_items)
        self.net = self._new_network(data.n_items).to(self.device)
        self.history, self.fine_tune_rounds, self._optimizer_state = [], [], None
        self._train(
            data, p.epochs, p.lr, p.seed, None, valid, train, checkpoint_dir, progress, callback
        )
        return self

    def fine_tune(
        self,
        new_train: pl.DataFrame,
        *,
        n_epochs: int | None = None,
        learning_rate: float | None = None,
        optimizer_state: str = "carry",
        progress: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Continue training on ``new_train`` (its sequences only). Items first seen there are
        appended to the vocabulary (ascending raw id) with new rows; with
        ``optimizer_state="carry"`` the optimiser continues with its moments (zero rows for new
        items), ``"reset"`` starts a fresh one. ``n_epochs`` / ``learning_rate``: ``None`` =
        the parameters' (GRU4Rec's names, so that retraining and the replay call every model
        alike). Round ``k`` draws from ``seed + 1000 k``."""
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")
        self._network()
        if optimizer_state not in ("carry", "reset"):
            raise ValueError(f"optimizer_state must be 'carry' or 'reset', got {optimizer_state!r}")
        if optimizer_state == "carry" and self._optimizer_state is None:
            raise RuntimeError("no optimizer state to carry (saved without it?): use 'reset'")
        frame = as_sequence_frame(new_train)
        if frame.height == 0:
            raise ValueError(f"{type(self).__name__}.fine_tune: empty frame")
        known = set(self.item_ids.tolist())
        new_ids = np.sort(
            np.asarray([i for i in frame.get_column("ItemId").unique().to_list() if i not in known])
        )
        n_epochs = self.params.epochs if n_epochs is None else int(n_epochs)
        lr = self.params.lr if learning_rate is None else float(learning_rate)
        round_ = len(self.fine_tune_rounds) + 1
        seed = self.params.seed + 1000 * round_
        if len(new_ids):
            self._grow(new_ids.astype(self.item_ids.dtype), seed)
        data = sessions_from_frame(frame, item_ids=self.item_ids)
        self.support = self.support + np.bincount(data.items, minlength=self.n_items)
        carry = self._optimizer_state if optimizer_state == "carry" else None
        self._train(data, n_epochs, lr, seed, carry, None, None, None, progress)
        self.fine_tune_rounds.append(
            {"round": round_, "n_epochs": n_epochs, "lr": lr, "new_items": int(len(new_ids)),
             "optimizer_state": optimizer_state}
        )  # fmt: skip
        return self

    def optimizer_state_dict(self) -> dict[str, torch.Tensor]:
        """The optimiser's state by parameter name (``exp_avg.<name>``, ``exp_avg_sq.<name>``,
        ``step.<name>``); ``{}`` before training or when loaded without ``optimizer.pt``."""
        return dict(self._optimizer_state or {})

    def _grow(self, new_ids: np.ndarray, seed: int) -> None:
        """Append ``new_ids`` to the vocabulary: the network's new item rows and zero moments
        for them in the carried optimiser state."""
        net = self._network()
        generator = torch.Generator().manual_seed(seed)
        grown = net.grow_items(len(new_ids), generator)
        self.item_ids = np.concatenate([self.item_ids, new_ids])
        self.support = np.concatenate(
            [self.support, np.zeros(len(new_ids), dtype=self.support.dtype)]
        )
        if self._optimizer_state is None:
            return
        state, params = self._optimizer_state, dict(net.named_parameters())
        for name in grown:
            for key in ("exp_avg", "exp_avg_sq"):
                old = state.get(f"{key}.{name}")
                if old is None:
                    continue
                rows = params[name].shape[0] - old.shape[0]
                pad = old.new_zeros((rows, *old.shape[1:]))
                state[f"{key}.{name}"] = torch.cat([old, pad])

    def _train(
        self,
        data: SessionData,
        n_epochs: int,
        lr: float,
        seed: int,
        optimizer_state: dict[str, Any] | None,
        valid: pl.DataFrame | None,
        train_frame: pl.DataFrame | SessionData | None,
        checkpoint_dir: str | Path | None,
        progress: bool,
        callback: Callable[[EpochStats], None] | None = None,
    ) -> None:
        p, net, device = self.params, self._network(), self.device
        batcher = self._make_batcher(data, seed)
        optimizer, scheduler = self._make_optimizer(net, lr, n_epochs * batcher.n_batches)
        if optimizer_state is not None:
            load_optimizer_state(net, optimizer, optimizer_state)
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        history = (
            torch.from_numpy(np.array(data.offsets, dtype=np.int64)).to(device),
            torch.from_numpy(np.array(data.items, dtype=np.int64)).to(device),
        )
        support = torch.from_numpy(self.support).to(device)
        loss_fn = self._loss_function(net, generator, history, support)
        validate = None
        if valid is not None:
            if train_frame is None:
                raise ValueError("validation needs the training frame")
            validate = self._validator(train_frame, valid)
        first_epoch = len(self.history)
        config = LoopConfig(
            n_epochs=n_epochs,
            amp=p.amp,
            cpu_bf16=p.cpu_bf16,
            patience=p.patience if validate is not None else None,
            restore_best=True,
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
            cleanup=True,
            progress=progress,
            desc=self.desc,
            metric_name=p.valid_metric,
            grad_clip=self._grad_clip(),
        )
        result = train_epochs(
            net,
            optimizer,
            batcher.epoch,
            loss_fn,
            config=config,
            device=device,
            validate=validate,
            scheduler=scheduler,
            fingerprint=_fingerprint(p, data, seed, n_epochs, lr),
            n_batches=lambda epoch: batcher.n_batches,
            extra_state={"negatives": generator},  # the name older checkpoints use
            on_epoch=callback,
        )
        renumbered = [replace(s, epoch=s.epoch + first_epoch) for s in result.history]
        self.history = self.history + renumbered
        self.best_epoch = result.best_epoch
        self._optimizer_state = optimizer_state_by_name(net, optimizer)

    def _validator(self, train: pl.DataFrame | SessionData, valid: pl.DataFrame) -> Any:
        from recsys_pipeline.evaluation.last_item import evaluate_last_item

        if isinstance(train, SessionData):
            raise ValueError("validation needs the training events as a frame")
        frame, targets = as_sequence_frame(train), as_sequence_frame(valid)
        metric = self.params.valid_metric
        cutoff = int(metric.split("@")[1]) if "@" in metric else 10

        def validate() -> float:
            result = evaluate_last_item(
                self, frame, targets=targets, cutoffs=(cutoff,), user_key="SessionId"
            )
            if metric not in result:
                raise ValueError(f"valid_metric {metric!r} not in {sorted(result)}")
            return float(result[metric])

        return validate

    # ------------------------------------------------------------------------ inference
    def recommend(self, inputs: Any, k: int = 20, **kwargs: Any) -> RecommendResult:
        """Top-``k`` raw ids after each sequence of raw ids (see ``serving.recommend``)."""
        from recsys_pipeline.serving.recommend import recommend

        return recommend(self, inputs, k=k, **kwargs)

    @torch.no_grad()
    def _masked_queries(
        self, batch: SequenceBatch, last_only: bool, pad_to_maxlen: bool = False
    ) -> torch.Tensor:
        """``encode`` of a masked-item model whose network is ``net(items, mask)`` on
        right-padded rows. With ``batch.mask`` (the last-item rows: a mask appended or in
        place) the outputs ``[B, L, F]`` (``[B, F]`` at each row's last position with
        ``last_only``); without one and with ``last_only`` (step-path rows: inference) a mask
        slot is appended after each row's newest ``maxlen - 1`` items. ``pad_to_maxlen``: rows
        padded to ``maxlen`` (a model whose outputs depend on the padding, as a reference)."""
        name = type(self).__name__
        if batch.padding != "right":
            raise ValueError(f"{name} reads right-padded batches")
        net = self._network()
        items, lengths = batch.items.to(self.device), batch.lengths.to(self.device)
        if batch.mask is None:
            if not last_only:
                raise ValueError(f"{name} answers queries at a mask: give batch.mask")
            items, lengths = append_mask_slot(items, lengths, self.maxlen)
            mask = last_position_mask(items, lengths)
        else:
            mask = batch.mask.to(self.device)
        if items.shape[1] > self.maxlen:
            raise ValueError(f"batch width {items.shape[1]} > maxlen {self.maxlen}")
        if pad_to_maxlen and items.shape[1] < self.maxlen:
            pad = items.new_full((items.shape[0], self.maxlen - items.shape[1]), PAD)
            items = torch.cat([items, pad], dim=1)
            mask = torch.cat([mask, torch.zeros_like(pad, dtype=torch.bool)], dim=1)
        out = net(items, mask)
        if not last_only:
            return out
        return out[torch.arange(len(out), device=out.device), lengths - 1]

    # --------------------------------------------------------------------------- save/load
    def save(self, path: str | Path, *, optimizer: bool = True) -> Path:
        """The folder of the module docstring (``optimizer.pt`` only with ``optimizer``)."""
        net = self._network()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, directory / "weights.pt")
        write_model_json(directory, self)
        write_ids(directory / "item_ids.json", self.item_ids)
        write_ids(directory / "support.json", np.asarray(self.support, dtype=np.int64))
        records = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in self.history]
        (directory / "history.json").write_text(
            jsonio.dumps({"epochs": records, "fine_tune_rounds": self.fine_tune_rounds})
        )
        if optimizer and self._optimizer_state is not None:
            torch.save(_cpu(self._optimizer_state), directory / "optimizer.pt")
        return directory

    @classmethod
    @checked_load
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> Self:
        """Read a folder written by :meth:`save` (``weights_only=True``: nothing unpickled);
        a damaged folder is a :class:`~recsys_pipeline.models.persistence.ModelFolderError`
        naming the file."""
        directory = Path(path)
        params = load_saved_params(directory, cls.kind, cls.params_class)
        if device is not None:
            params.device = str(device)
        model = cls(params)
        model.item_ids = read_ids(directory / "item_ids.json")
        support = directory / "support.json"
        model.support = (
            read_ids(support) if support.exists() else np.ones(len(model.item_ids), np.int64)
        )
        model.net = model._new_network(len(model.item_ids))
        weights = directory / "weights.pt"
        load_weights(model.net, load_tensors(weights, "cpu"), weights)
        model.net.to(model.device).eval()
        history = directory / "history.json"
        if history.exists():
            record = read_json(history)
            fields = {f.name for f in dataclasses.fields(EpochStats)}
            model.history = [
                EpochStats(**{k: v for k, v in r.items() if k in fields})
                for r in record.get("epochs", [])
            ]
            model.fine_tune_rounds = record.get("fine_tune_rounds", [])
        optimizer = directory / "optimizer.pt"
        if optimizer.exists():
            model._optimizer_state = load_tensors(optimizer, model.device)
        return model


# ------------------------------------------------------------------------------- helpers


def as_sequence_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its sequence key named ``SessionId`` (a ``UserId`` column is renamed)."""
    if "SessionId" in frame.columns:
        return frame
    if "UserId" in frame.columns:
        return frame.rename({"UserId": "SessionId"})
    raise ValueError(f"frame needs a SessionId or UserId column (columns: {frame.columns})")


def glorot_rows(n_new: int, old_rows: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``[n_new, dim]`` Glorot-uniform rows for a table growing from ``old_rows`` rows."""
    bound = math.sqrt(6.0 / (old_rows + n_new + dim))
    return (torch.rand(n_new, dim, generator=generator) * 2 - 1) * bound


def grown_table(old: torch.Tensor, rows: torch.Tensor) -> nn.Embedding:
    """An item table (padding row 0) holding ``old [N, D]`` followed by ``rows [n_new, D]``,
    on ``old``'s device and dtype (fine-tuning with item growth)."""
    table = nn.Embedding(old.shape[0] + rows.shape[0], old.shape[1], padding_idx=0).to(old.device)
    with torch.no_grad():
        table.weight.copy_(torch.cat([old, rows.to(old.device, old.dtype)]))
    return table


def optimizer_state_by_name(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Adam's / AdamW's state as ``{"exp_avg.<name>", "exp_avg_sq.<name>", "step.<name>":
    tensor}`` over parameter names, so it survives the item table being replaced (growth)."""
    out: dict[str, Any] = {}
    for name, param in net.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        for key in _MOMENTS:
            out[f"{key}.{name}"] = state[key].detach().clone()
    return out


def load_optimizer_state(
    net: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Put :func:`optimizer_state_by_name`'s state into ``optimizer`` (over ``net``)."""
    for name, param in net.named_parameters():
        if f"exp_avg.{name}" not in state:
            continue
        optimizer.state[param] = {
            key: state[f"{key}.{name}"].to(param.device if key != "step" else "cpu")
            for key in _MOMENTS
        }


def append_mask_slot(
    items: torch.Tensor, lengths: torch.Tensor, maxlen: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``items [B, L]`` -> ``[B, L']`` with a :data:`PAD` slot after each row's
    newest ``maxlen - 1`` items (rows longer than that lose their oldest items)."""
    batch, width = items.shape
    keep = lengths.clamp(max=maxlen - 1)  # [B]
    new_width = int(keep.max()) + 1 if batch else 1
    cols = torch.arange(new_width, device=items.device)
    source = cols.unsqueeze(0) + (lengths - keep).unsqueeze(1)  # [B, L']
    taken = items.gather(1, source.clamp(max=max(width - 1, 0)))
    out = taken.masked_fill(cols.unsqueeze(0) >= keep.unsqueeze(1), PAD)
    return out, keep + 1


def encode_by_width(
    encoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    real: torch.Tensor,
    min_width: int = 4,
) -> torch.Tensor:
    """``encoder(x [B', W, D], real [B', W]) -> [B', W, D']`` over a right-padded batch, run
    once per group of rows of similar length, each group cut to its width (the row's last
    real position rounded up to a power of two, at least ``min_width``, at most ``L``).

    For an encoder whose padding is masked out of the attention and whose positions count
    from the row's start (BERT4Rec's learned ones, XLNet's relative ones), a real position's
    output does not depend on how much padding follows it, so this returns the one-call
    result (outputs and gradients; the models' tests check both) with less padding computed:
    session data fill about a fifth of their slots (Yoochoose 1/64: 4.1 of 20).

    Args:
        encoder: the transformer call; ``real`` is True at positions it must not ignore.
        x: ``[B, L, D]`` inputs, right padded.
        real: ``[B, L]`` True at real positions (a row's items and its mask slots).
        min_width: narrowest group (fewer, larger calls for short rows).

    Returns:
        ``[B, L, D']``, zero where a group was cut off (the padding beyond its width).
    """
    batch, length = real.shape
    last = length - 1 - real.flip(1).to(torch.int8).argmax(1)  # [B] last real column
    widths = torch.clamp(last + 1, min=min_width)
    widths = (2 ** torch.ceil(torch.log2(widths.double()))).long().clamp(max=length)
    parts, order = [], []
    for width in torch.unique(widths).tolist():  # one host sync per batch
        rows = (widths == width).nonzero().squeeze(1)  # [Bg]
        out = encoder(x.index_select(0, rows)[:, :width], real.index_select(0, rows)[:, :width])
        parts.append(torch.nn.functional.pad(out, (0, 0, 0, length - width)))
        order.append(rows)
    inverse = torch.empty(batch, dtype=torch.long, device=x.device)
    inverse[torch.cat(order)] = torch.arange(batch, device=x.device)
    return torch.cat(parts).index_select(0, inverse)


def last_position_mask(items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` True at each row's last position (its appended slot)."""
    cols = torch.arange(items.shape[1], device=items.device)
    return cols.unsqueeze(0) == (lengths - 1).unsqueeze(1)


def _sequences(train: pl.DataFrame, item_ids: np.ndarray | None = None) -> SessionData:
    frame = as_sequence_frame(train)
    if "Time" not in frame.columns:
        frame = frame.with_row_index("Time")
    if item_ids is not None:
        item_ids = np.unique(np.asarray(item_ids))
    return sessions_from_frame(frame, item_ids=item_ids)


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _fingerprint(p: ModelParams, data: SessionData, seed: int, n_epochs: int, lr: float) -> str:
    """What a checkpoint must match: parameters (device aside), seed, round and the data."""
    digest = hashlib.sha256()
    record = {**p.to_dict(), "device": None, "seed_used": seed, "n_epochs": n_epochs, "lr": lr}
    digest.update(json.dumps(record, sort_keys=True).encode())
    for array in (data.items, data.offsets):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(np.asarray(data.item_ids).tolist(), default=str).encode())
    return digest.hexdigest()
