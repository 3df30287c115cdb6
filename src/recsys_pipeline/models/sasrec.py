"""SASRec (Kang & McAuley, ICDM 2018), faithful to the original TensorFlow code
(``kang205/SASRec``, ``model.py`` + ``modules.py``), on the model platform.

Network (``maxlen`` = N, ``hidden_units`` = D, ``num_blocks``, ``num_heads``)::

    items [B, L] (left padded, PAD = -1; the last item in column L - 1, L <= N)
    x = item_emb(items) * sqrt(D) + pos_emb(position)      # [B, L, D]; positions count from
                                                            # the end: the last column is N - 1
    x = dropout(x) * valid                                  # padding rows zeroed
    for each block:
        q = LayerNorm(x)                                    # the query only is normalised ...
        a = q + MultiHead(Q=q W_q, K=x W_k, V=x W_v)        # ... keys/values read the raw x;
                                                            # residual from the normalised query
        h = LayerNorm(a)
        x = (h + FFN(h)) * valid                            # FFN: Linear-ReLU-drop-Linear-drop
    out = LayerNorm(x)                                      # [B, L, D]
    score(item j) = out . item_emb[j]                       # tied table, no output bias

Attention: causal, and a padding position is never attended (the TensorFlow key mask) nor
attends (its output is zeroed: the query mask); dropout on the attention weights; the heads
are concatenated **without an output projection** (the TF ``multihead_attention`` has none).
Layer norms have ``eps = 1e-8``. Initialisation as TF's defaults: Glorot-uniform embeddings and
dense kernels, zero biases, the padding row of the item table fixed at zero. Optimiser: Adam,
betas (0.9, 0.98), eps 1e-8; ``l2_emb`` adds ``l2_emb * sum(w^2) / 2`` of both embedding tables
to the loss (TF's ``l2_regularizer``).

Where popular PyTorch ports differ (each is a test in ``tests/models/test_sasrec.py``):

* pmixer/SASRec.pytorch uses ``torch.nn.MultiheadAttention`` with only a causal mask: left
  padding is attended by real positions (through the K/V biases), and the heads get an output
  projection. Its positions count from 1 at the first column of the fixed-width window, which
  is the same as ours (the last item at ``maxlen``) for left padding to ``maxlen``.
* pmixer's ``l2_emb`` adds the (non-squared) norm; the TF code the squared norm / 2.
* Since 2025 pmixer defaults to ``norm_first=False``, a **post-LN** block
  (``x = LN(x + MHA(x)); x = LN(x + FFN(x))``, keys normalised too): our ``norm_first=False``.
  Our ``norm_first=True`` (default) is the original query-only layout above.
* Negatives: the original draws one negative per position uniformly among the items the user
  never interacted with in training (``random_neq``); so does ``loss="bce"`` here, vectorised
  (:func:`~recsys_pipeline.training.losses.uniform_negatives_excluding`) instead of a Python
  sampler process. The reference samples users with replacement for each batch; here every
  user with >= 2 training items is one row per epoch, in a new random order each epoch.

Losses (``loss``): ``"bce"`` (the original; one negative per position), ``"ce"`` (full softmax
over every item, "SASRec+" of Klenitskiy & Vasilev 2023; ``label_smoothing``) and
``"sampled_softmax"`` (``n_negatives`` per position drawn ``negatives="uniform"`` or
``"popularity"`` (``alpha``), ``temperature``, ``logq`` correction, accidental hits masked: the
generative-recommenders / gSASRec family).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.models.base import (
    ModelParams,
    Recommender,
    RecommendResult,
    saved_params,
    write_model_json,
)
from recsys_pipeline.models.persistence import read_ids, write_ids
from recsys_pipeline.training.device import resolve_device
from recsys_pipeline.training.loop import LoopConfig, train_epochs
from recsys_pipeline.training.losses import (
    bce_negative_loss,
    full_softmax_cross_entropy,
    popularity_negatives,
    sampled_softmax_loss,
    uniform_negatives,
    uniform_negatives_excluding,
)
from recsys_pipeline.training.sequences import PAD, SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import SessionData, sessions_from_frame
from recsys_pipeline.training.trainer import EpochStats

logger = logging.getLogger(__name__)

__all__ = ["LOSSES", "SASRec", "SASRecNet", "SASRecParams"]

LOSSES = ("bce", "ce", "sampled_softmax")
NEGATIVES = ("uniform", "popularity")
_LN_EPS = 1e-8  # the TF normalize() and pmixer's LayerNorm


@dataclass
class SASRecParams(ModelParams):
    """SASRec's hyperparameters, with the reference's names and defaults where it has them.

    Attributes:
        maxlen: the longest input window (the reference's ``maxlen``, default 50 on Amazon, 200
            on MovieLens).
        hidden_units: embedding and model width ``D``.
        num_blocks: attention blocks.
        num_heads: attention heads (``hidden_units`` must be divisible by it).
        dropout_rate: embedding, attention-weight and feed-forward dropout.
        l2_emb: L2 penalty of the embedding tables (TF: ``l2_emb * sum(w^2) / 2``).
        lr: Adam's learning rate.
        batch_size: sequences per batch.
        num_epochs: training epochs.
        loss: ``"bce"``, ``"ce"`` or ``"sampled_softmax"`` (module docstring).
        n_negatives: ``sampled_softmax``: negatives per position.
        negatives: ``sampled_softmax``: ``"uniform"`` or ``"popularity"``.
        alpha: popularity exponent of ``"popularity"`` negatives.
        temperature: ``sampled_softmax``: logits are divided by it.
        logq: ``sampled_softmax``: subtract the log sampling probability (logQ correction).
        label_smoothing: ``ce``: torch's label smoothing.
        norm_first: ``True``: the original query-only pre-LN block; ``False``: post-LN.
        bucket: sort the rows by length within chunks of ``bucket`` batches (less padding,
            faster; changes which sequences share a batch); 0 = off, the reference's batches.
        patience: early stopping after this many epochs without a better validation metric
            (needs ``valid`` in :meth:`SASRec.fit`); ``None``: train all epochs.
        valid_metric: the validation metric (a key of the last-item evaluation, e.g.
            ``"ndcg@10"``: full ranking, history excluded).
        seed: seeds the initialisation, order, negatives and dropout.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: mixed precision: ``"auto"`` (bf16 or fp16 on CUDA), ``"off"``, ``"bf16"``, ``"fp16"``.
        cpu_bf16: bf16 autocast on CPUs that have it (off: fidelity first).
    """

    model_name: ClassVar[str] = "SASRec"
    epochs_field: ClassVar[str] = "num_epochs"

    maxlen: int = 50
    hidden_units: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout_rate: float = 0.5
    l2_emb: float = 0.0
    lr: float = 0.001
    batch_size: int = 128
    num_epochs: int = 200
    loss: str = "bce"
    n_negatives: int = 128
    negatives: str = "uniform"
    alpha: float = 1.0
    temperature: float = 1.0
    logq: bool = False
    label_smoothing: float = 0.0
    norm_first: bool = True
    bucket: int = 0
    patience: int | None = None
    valid_metric: str = "ndcg@10"
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    cpu_bf16: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("maxlen", "hidden_units", "num_blocks", "num_heads", "batch_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_heads >= 1 and self.hidden_units % self.num_heads:
            errors.append(
                f"hidden_units ({self.hidden_units}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            errors.append(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        if self.loss not in LOSSES:
            errors.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.negatives not in NEGATIVES:
            errors.append(f"negatives must be one of {NEGATIVES}, got {self.negatives!r}")
        if self.n_negatives < 1:
            errors.append(f"n_negatives must be >= 1, got {self.n_negatives}")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}")
        if self.lr <= 0 or self.l2_emb < 0 or self.num_epochs < 0:
            errors.append("need lr > 0, l2_emb >= 0 and num_epochs >= 0")
        if not 0.0 <= self.label_smoothing <= 1.0:
            errors.append(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        if self.bucket < 0:
            errors.append(f"bucket must be >= 0, got {self.bucket}")
        if self.patience is not None and self.patience < 1:
            errors.append(f"patience must be >= 1 or None, got {self.patience}")
        if errors:
            raise ValueError("SASRec: " + "; ".join(errors))

    def study_tag(self) -> str:
        """The loss stays fixed within a tuning study (losses are not comparable)."""
        return self.loss


# ------------------------------------------------------------------------------ the network


#: narrowest attention width of a row group (see :class:`_Layout`)
_MIN_WIDTH = 8


@dataclass(frozen=True)
class _Layout:
    """Where the real positions of a left-padded batch ``[B, L]`` are. The network computes
    only the ``T`` real positions: every per-position layer on ``[T, D]`` (with short
    sequences most of a batch is padding), and the attention product per *group* of rows of
    similar length, each at its own width (the next power of two >= its longest row, at least
    8, at most ``L``; a left-padded row's real items are its last columns). Attention is per
    row, so this is the same computation as one ``[B, L, L]`` product; padding is never
    computed and its outputs are zero, as the reference's after every block.

    Attributes:
        index: ``[T]`` flat positions ``b * L + c`` of the real tokens, row-major.
        batch: ``B``; length: ``L``.
        groups: ``(rows [Bg], width W, allowed [Bg, 1, W, W])`` per group: the query column
            may attend the key column (causal, real keys; the diagonal keeps a padding row
            from having no key at all).
    """

    index: torch.Tensor
    batch: int
    length: int
    groups: list[tuple[torch.Tensor, int, torch.Tensor]]

    @classmethod
    def of(cls, items: torch.Tensor) -> _Layout:
        """The layout of left-padded ``items [B, L]`` (:data:`PAD` at padding)."""
        batch, length = items.shape
        valid = items >= 0  # [B, L]
        index = valid.reshape(-1).nonzero().squeeze(1)  # [T]
        lengths = valid.sum(1)  # [B]
        widths = torch.clamp(lengths, min=_MIN_WIDTH, max=length)
        widths = 2 ** torch.ceil(torch.log2(widths.double())).long().clamp(max=length)
        widths = widths.clamp(max=length)
        groups = []
        for width in torch.unique(widths).tolist():  # one host sync per batch
            rows = (widths == width).nonzero().squeeze(1)
            keys = valid.index_select(0, rows)[:, length - width :]  # [Bg, W]
            eye = torch.eye(width, dtype=torch.bool, device=items.device)
            causal = torch.ones(width, width, dtype=torch.bool, device=items.device).tril()
            allowed = ((causal & keys.unsqueeze(1)) | eye).unsqueeze(1)  # [Bg, 1, W, W]
            groups.append((rows, int(width), allowed))
        return cls(index, batch, length, groups)

    def scatter(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[T, F]`` -> ``[B, L, F]``, zero at padding."""
        flat = tokens.new_zeros(self.batch * self.length, tokens.shape[-1])
        return flat.index_copy(0, self.index, tokens).view(self.batch, self.length, -1)

    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """``[B, L, F]`` -> ``[T, F]``."""
        return padded.reshape(self.batch * self.length, -1).index_select(0, self.index)


class _Attention(nn.Module):
    """TF ``multihead_attention``: Q, K, V projections with bias, scaled dot product (causal,
    real keys only), dropout on the attention weights, heads concatenated, no output
    projection."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """``query``, ``keys`` ``[T, D]`` (real positions) -> ``[T, D]``."""
        dim = query.shape[-1]
        qkv = layout.scatter(torch.cat([self.q(query), self.k(keys), self.v(keys)], dim=-1))
        out = qkv.new_zeros(layout.batch, layout.length, dim)  # [B, L, D]
        dropout = self.dropout if self.training else 0.0
        for rows, width, allowed in layout.groups:
            part = qkv.index_select(0, rows)[:, layout.length - width :]  # [Bg, W, 3D]
            q, k, v = part.reshape(len(rows), width, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout
            )  # [Bg, H, W, D / H]
            attended = attended.transpose(1, 2).reshape(len(rows), width, dim)
            out = out.index_put((rows.unsqueeze(1), torch.arange(
                layout.length - width, layout.length, device=rows.device)), attended)  # fmt: skip
        return layout.gather(out)


class _FeedForward(nn.Module):
    """TF ``feedforward`` with kernel-1 convolutions = per-position Linear layers:
    ``Linear -> ReLU -> dropout -> Linear -> dropout`` (the residual is added by the block)."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, dim)
        self.outer = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.outer(self.drop(F.relu(self.inner(x)))))


class _Block(nn.Module):
    """One attention block; ``norm_first`` picks the original (query-only pre-LN) or the
    post-LN layout (module docstring)."""

    def __init__(self, dim: int, heads: int, dropout: float, norm_first: bool) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attn_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = _Attention(dim, heads, dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.ffn = _FeedForward(dim, dropout)

    def forward(self, x: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """``x [T, D]`` (real positions) -> ``[T, D]``."""
        if self.norm_first:
            q = self.attn_norm(x)
            h = self.ffn_norm(q + self.attn(q, x, layout))
            return h + self.ffn(h)
        h = self.attn_norm(x + self.attn(x, x, layout))
        return self.ffn_norm(h + self.ffn(h))


class SASRecNet(nn.Module):
    """The SASRec network over ``n_items`` items (module docstring).

    ``item_emb`` has ``n_items + 1`` rows: row 0 is padding (always zero), item index ``i`` is
    row ``i + 1``. ``pos_emb`` has ``maxlen`` rows; column ``c`` of a left-padded batch of width
    ``L`` gets position ``maxlen - L + c``, so the last item is always at position
    ``maxlen - 1`` whatever the batch width (the reference pads every row to ``maxlen``).
    Padding positions are never computed (their outputs are zero), which equals the
    reference's zeroing of padding rows after every block.
    """

    def __init__(self, n_items: int, params: SASRecParams) -> None:
        super().__init__()
        d = params.hidden_units
        self.maxlen = params.maxlen
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(params.maxlen, d)
        self.emb_drop = nn.Dropout(params.dropout_rate)
        self.blocks = nn.ModuleList(
            _Block(d, params.num_heads, params.dropout_rate, params.norm_first)
            for _ in range(params.num_blocks)
        )
        self.last_norm = nn.LayerNorm(d, eps=_LN_EPS)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF defaults: Glorot-uniform tables and kernels, zero biases, unit LN gains."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @property
    def n_items(self) -> int:
        return self.item_emb.num_embeddings - 1

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Left-padded item indices ``[B, L]`` (:data:`PAD` = -1, ``L <= maxlen``) -> the
        output per position ``[B, L, D]`` (zero at padding)."""
        length = items.shape[1]
        if length > self.maxlen:
            raise ValueError(f"sequence width {length} > maxlen {self.maxlen}")
        layout = _Layout.of(items)
        index = layout.index
        tokens = items.reshape(-1).index_select(0, index)  # [T]
        positions = index % length + (self.maxlen - length)  # [T], last column = maxlen - 1
        scale = math.sqrt(self.item_emb.embedding_dim)
        x = self.item_emb(tokens + 1) * scale + self.pos_emb(positions)  # [T, D]
        x = self.emb_drop(x)
        for block in self.blocks:
            x = block(x, layout)
        return layout.scatter(self.last_norm(x))

    def item_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Embeddings ``[stop - start, D]`` of item indices ``start .. stop - 1``."""
        stop = self.n_items if stop is None else stop
        return self.item_emb.weight[1 + start : 1 + stop]

    def l2_penalty(self) -> torch.Tensor:
        """``sum(w^2) / 2`` of both embedding tables (TF's ``l2_loss``)."""
        return 0.5 * (self.item_emb.weight.square().sum() + self.pos_emb.weight.square().sum())


# -------------------------------------------------------------------------------- the model


class SASRec(Recommender):
    """SASRec on the platform: a :class:`~recsys_pipeline.models.base.SequenceEncoder`
    (batched evaluation; the step path through
    :class:`~recsys_pipeline.models.base.EncoderStepAdapter`) and a
    :class:`~recsys_pipeline.models.base.Recommender`.

    Training data: one row per event, ``SessionId`` (a session or a user), ``ItemId``, ``Time``;
    a sequence is a session / a user's history in time order.
    """

    kind: ClassVar[str] = "sasrec"
    task: ClassVar[str] = "next_item"
    params_class: ClassVar[type[ModelParams]] = SASRecParams
    padding: ClassVar[str] = "left"
    uses_times: ClassVar[bool] = False
    prefix_consistent: ClassVar[bool] = False  # positions count from the end

    def __init__(self, params: SASRecParams | None = None) -> None:
        self.params = params or SASRecParams()
        self.item_ids = np.empty(0, dtype=np.int64)
        self.support = np.empty(0, dtype=np.int64)
        self.net: SASRecNet | None = None
        self.history: list[Any] = []
        self.best_epoch: int | None = None
        self.fine_tune_rounds: list[dict[str, Any]] = []
        self._optimizer_state: dict[str, Any] | None = None
        self._device = resolve_device(self.params.device)

    # ----------------------------------------------------------------------- contract basics
    @property
    def maxlen(self) -> int:
        return self.params.maxlen

    @property
    def device(self) -> torch.device:
        return self._device

    def _network(self) -> SASRecNet:
        if self.net is None:
            raise RuntimeError("SASRec is not fitted")
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
        """
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")
        data = train if isinstance(train, SessionData) else _sequences(train)
        if data.n_items == 0:
            raise ValueError("SASRec.fit: the training data has no events")
        p = self.params
        torch.manual_seed(p.seed)
        self.item_ids = np.asarray(data.item_ids)
        self.support = np.bincount(np.asarray(data.items), minlength=data.n_items)
        self.net = SASRecNet(data.n_items, p).to(self.device)
        self.history, self.fine_tune_rounds, self._optimizer_state = [], [], None
        self._train(
            data, p.num_epochs, p.lr, p.seed, None, valid, train, checkpoint_dir, progress,
            callback,
        )  # fmt: skip
        return self

    def fine_tune(
        self,
        new_train: pl.DataFrame,
        *,
        n_epochs: int | None = None,
        lr: float | None = None,
        optimizer_state: str = "carry",
        progress: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Continue training on ``new_train`` (its sequences only). Items first seen there are
        appended to the vocabulary (ascending raw id) with new Glorot rows; with
        ``optimizer_state="carry"`` Adam continues with its moments (zero rows for new items),
        ``"reset"`` starts a fresh Adam. Round ``k`` draws from ``seed + 1000 k``."""
        if kwargs:
            raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")
        net = self._network()
        if optimizer_state not in ("carry", "reset"):
            raise ValueError(f"optimizer_state must be 'carry' or 'reset', got {optimizer_state!r}")
        if optimizer_state == "carry" and self._optimizer_state is None:
            raise RuntimeError("no optimizer state to carry (saved without it?): use 'reset'")
        frame = _as_sequence_frame(new_train)
        if frame.height == 0:
            raise ValueError("SASRec.fine_tune: empty frame")
        known = set(self.item_ids.tolist())
        new_ids = np.sort(
            np.asarray([i for i in frame.get_column("ItemId").unique().to_list() if i not in known])
        )
        n_epochs = self.params.num_epochs if n_epochs is None else int(n_epochs)
        lr = self.params.lr if lr is None else float(lr)
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
        del net
        return self

    def optimizer_state_dict(self) -> dict[str, torch.Tensor]:
        """Adam's state by parameter name (``exp_avg.<name>``, ``exp_avg_sq.<name>``,
        ``step.<name>``); ``{}`` before training or when loaded without ``optimizer.pt``."""
        return dict(self._optimizer_state or {})

    def _grow(self, new_ids: np.ndarray, seed: int) -> None:
        """Append ``new_ids`` to the vocabulary: new item rows (Glorot-uniform over the grown
        table's fan) and zero Adam moments for them."""
        net = self._network()
        old = net.item_emb.weight.detach()
        n_new, dim = len(new_ids), old.shape[1]
        bound = math.sqrt(6.0 / (old.shape[0] + n_new + dim))
        generator = torch.Generator().manual_seed(seed)
        rows = (torch.rand(n_new, dim, generator=generator) * 2 - 1) * bound
        table = nn.Embedding(old.shape[0] + n_new, dim, padding_idx=0).to(self.device)
        with torch.no_grad():
            table.weight.copy_(torch.cat([old, rows.to(old.device, old.dtype)]))
        net.item_emb = table
        self.item_ids = np.concatenate([self.item_ids, new_ids])
        self.support = np.concatenate([self.support, np.zeros(n_new, dtype=self.support.dtype)])
        if self._optimizer_state is not None:
            state = self._optimizer_state
            for key in ("exp_avg.item_emb.weight", "exp_avg_sq.item_emb.weight"):
                if key in state:
                    pad = torch.zeros(n_new, dim, dtype=state[key].dtype, device=state[key].device)
                    state[key] = torch.cat([state[key], pad])

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
        optimizer = torch.optim.Adam(
            net.parameters(),
            lr=lr,
            betas=(0.9, 0.98),
            eps=1e-8,
            fused=device.type in ("cpu", "cuda") or None,  # one kernel: 4x faster on CPU
        )
        if optimizer_state is not None:
            _load_optimizer_state(net, optimizer, optimizer_state)
        batcher = SequenceBatcher(
            data,
            batch_size=p.batch_size,
            maxlen=p.maxlen,
            mode="causal",
            padding="left",
            fixed_length=False,
            long="last",
            min_length=2,
            bucket=p.bucket,
            seed=seed,
            device=device,
        )
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        history = (
            torch.from_numpy(np.array(data.offsets, dtype=np.int64)).to(device),
            torch.from_numpy(np.array(data.items, dtype=np.int64)).to(device),
        )
        support = torch.from_numpy(self.support).to(device)
        loss_fn = _loss_function(net, p, generator, history, support)
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
            desc="sasrec",
            metric_name=p.valid_metric,
        )
        result = train_epochs(
            net,
            optimizer,
            batcher.epoch,
            loss_fn,
            config=config,
            device=device,
            validate=validate,
            fingerprint=_fingerprint(p, data, seed, n_epochs, lr),
            n_batches=lambda epoch: batcher.n_batches,
            extra_state={"negatives": generator},
            on_epoch=callback,
        )
        renumbered = [replace(s, epoch=s.epoch + first_epoch) for s in result.history]
        self.history = self.history + renumbered
        self.best_epoch = result.best_epoch
        self._optimizer_state = _optimizer_state(net, optimizer)

    def _validator(self, train: pl.DataFrame | SessionData, valid: pl.DataFrame) -> Any:
        from recsys_pipeline.evaluation.last_item import evaluate_last_item

        if isinstance(train, SessionData):
            raise ValueError("validation needs the training events as a frame")
        frame, targets = _as_sequence_frame(train), _as_sequence_frame(valid)
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
    @torch.no_grad()
    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """Queries ``[B, L, D]`` (or ``[B, D]`` with ``last_only``) of a left-padded batch
        (only its last ``maxlen`` columns are read)."""
        if batch.padding != "left":
            raise ValueError("SASRec reads left-padded batches")
        net = self._network()
        items = batch.items[:, -self.maxlen :].to(self.device)
        out = net(items)
        return out[:, -1] if last_only else out

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[N, stop - start]``: dot products with the item table (no bias)."""
        table = self._network().item_table(start, stop)
        return query.to(table.dtype) @ table.T

    def recommend(self, inputs: Any, k: int = 20, **kwargs: Any) -> RecommendResult:
        """Top-``k`` raw ids after each sequence of raw ids (see ``serving.recommend``)."""
        from recsys_pipeline.serving.recommend import recommend

        return recommend(self, inputs, k=k, **kwargs)

    # --------------------------------------------------------------------------- save/load
    def save(self, path: str | Path, *, optimizer: bool = True) -> Path:
        """``model.json``, ``weights.pt`` (state dict), ``item_ids.json``, ``support.json``,
        ``history.json``, and ``optimizer.pt`` (Adam moments by parameter name) for
        fine-tuning."""
        net = self._network()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, directory / "weights.pt")
        write_model_json(directory, self)
        write_ids(directory / "item_ids.json", self.item_ids)
        write_ids(directory / "support.json", np.asarray(self.support, dtype=np.int64))
        records = [s.to_dict() if hasattr(s, "to_dict") else dict(s) for s in self.history]
        (directory / "history.json").write_text(
            json.dumps({"epochs": records, "fine_tune_rounds": self.fine_tune_rounds})
        )
        if optimizer and self._optimizer_state is not None:
            torch.save(_cpu(self._optimizer_state), directory / "optimizer.pt")
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> Self:
        """Read a folder written by :meth:`save` (``weights_only=True``: nothing unpickled)."""
        directory = Path(path)
        params = SASRecParams.from_dict(saved_params(directory, cls.kind))
        if device is not None:
            params.device = str(device)
        model = cls(params)
        model.item_ids = read_ids(directory / "item_ids.json")
        support = directory / "support.json"
        model.support = (
            read_ids(support) if support.exists() else np.ones(len(model.item_ids), np.int64)
        )
        model.net = SASRecNet(len(model.item_ids), params)
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        model.net.load_state_dict(state)
        model.net.to(model.device).eval()
        history = directory / "history.json"
        if history.exists():
            record = json.loads(history.read_text())
            fields = {f.name for f in dataclasses.fields(EpochStats)}
            model.history = [
                EpochStats(**{k: v for k, v in r.items() if k in fields})
                for r in record.get("epochs", [])
            ]
            model.fine_tune_rounds = record.get("fine_tune_rounds", [])
        optimizer = directory / "optimizer.pt"
        if optimizer.exists():
            model._optimizer_state = torch.load(
                optimizer, map_location=model.device, weights_only=True
            )
        return model


# ------------------------------------------------------------------------------- helpers


def _as_sequence_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with its sequence key named ``SessionId`` (a ``UserId`` column is renamed)."""
    if "SessionId" in frame.columns:
        return frame
    if "UserId" in frame.columns:
        return frame.rename({"UserId": "SessionId"})
    raise ValueError(f"frame needs a SessionId or UserId column (columns: {frame.columns})")


def _sequences(train: pl.DataFrame) -> SessionData:
    frame = _as_sequence_frame(train)
    if "Time" not in frame.columns:
        frame = frame.with_row_index("Time")
    return sessions_from_frame(frame)


def _loss_function(
    net: SASRecNet,
    p: SASRecParams,
    generator: torch.Generator,
    history: tuple[torch.Tensor, torch.Tensor],
    support: torch.Tensor,
) -> Any:
    """Mini-batch -> (loss, number of targets) for ``p.loss``."""

    def loss_fn(batch: SequenceBatch) -> tuple[torch.Tensor, int]:
        out = net(batch.items)  # [B, L, D]
        labelled = batch.targets != PAD  # [B, L]
        query = out[labelled]  # [N, D]
        positives = batch.targets[labelled]  # [N] item indices
        n = len(positives)
        if p.loss == "bce":
            assert batch.sequence is not None
            negatives = uniform_negatives_excluding(
                net.n_items,
                batch.targets.shape,
                history,
                generator,
                users=batch.sequence,
            )[labelled]  # [N]: one per position, outside the user's training items
            pos_logits = torch.linalg.vecdot(query, net.item_emb(positives + 1))
            neg_logits = torch.linalg.vecdot(query, net.item_emb(negatives + 1))
            loss = bce_negative_loss(pos_logits, neg_logits)
        elif p.loss == "ce":
            logits = query @ net.item_table().T  # [N, n_items]
            loss = full_softmax_cross_entropy(
                logits.float(), positives, label_smoothing=p.label_smoothing
            )
        else:
            shape = (n, p.n_negatives)
            if p.negatives == "uniform":
                negatives, log_q = uniform_negatives(net.n_items, shape, generator)
                pos_log_q = torch.full_like(positives, -math.log(net.n_items), dtype=log_q.dtype)
            else:
                negatives, log_q = popularity_negatives(support, p.alpha, shape, generator)
                probs = support.double().pow(p.alpha)
                pos_log_q = (probs / probs.sum()).log()[positives].to(log_q.dtype)
            loss = sampled_softmax_loss(
                query.float(),
                net.item_emb(positives + 1).float(),
                net.item_emb(negatives + 1).float(),
                pos_ids=positives,
                neg_ids=negatives,
                temperature=p.temperature,
                pos_log_q=pos_log_q if p.logq else None,
                neg_log_q=log_q if p.logq else None,
            )
        if p.l2_emb > 0:
            loss = loss + p.l2_emb * net.l2_penalty()
        return loss, n

    return loss_fn


def _optimizer_state(net: nn.Module, optimizer: torch.optim.Adam) -> dict[str, Any]:
    """Adam's state as ``{"exp_avg.<name>", "exp_avg_sq.<name>", "step.<name>": tensor}`` over
    parameter names, so it survives the item table being replaced (growth)."""
    out: dict[str, Any] = {}
    for name, param in net.named_parameters():
        state = optimizer.state.get(param)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq", "step"):
            out[f"{key}.{name}"] = state[key].detach().clone()
    return out


def _load_optimizer_state(
    net: nn.Module, optimizer: torch.optim.Adam, state: dict[str, Any]
) -> None:
    for name, param in net.named_parameters():
        if f"exp_avg.{name}" not in state:
            continue
        optimizer.state[param] = {
            key: state[f"{key}.{name}"].to(param.device if key != "step" else "cpu")
            for key in ("exp_avg", "exp_avg_sq", "step")
        }


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _fingerprint(p: SASRecParams, data: SessionData, seed: int, n_epochs: int, lr: float) -> str:
    """What a checkpoint must match: parameters (device aside), seed, round and the data."""
    digest = hashlib.sha256()
    record = {**p.to_dict(), "device": None, "seed_used": seed, "n_epochs": n_epochs, "lr": lr}
    digest.update(json.dumps(record, sort_keys=True).encode())
    for array in (data.items, data.offsets):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(np.asarray(data.item_ids).tolist(), default=str).encode())
    return digest.hexdigest()
