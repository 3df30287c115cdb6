"""HSTU (Zhai et al., ICML 2024, "Actions Speak Louder than Words"), faithful to the research
code of generative-recommenders (``research/modeling/sequential/hstu.py`` at commit 2e81fab,
its ``LearnablePositionalEmbeddingInputFeaturesPreprocessor``, ``L2NormEmbeddingPostprocessor``,
``LocalNegativesSampler`` and ``SampledSoftmaxLoss``), on the model platform.

Network (``maxlen`` = N, ``hidden_units`` = D, ``num_heads`` = h, ``dqk``, ``dv``)::

    items [B, L] (right padded, PAD = -1; L <= N), times [B, L] (seconds), query_times [B, L]
    x = item_emb(items) * sqrt(D) + pos_emb(0 .. L-1)        # [B, L, D], positions from the start
    x = dropout(x) * valid                                    # padding rows zeroed
    for each block:
        u, v, q, k = split(SiLU(LayerNorm(x) @ W_uvqk))       # non-affine LN (eps 1e-6); one
                                                              # fused [D, 2 h dv + 2 h dqk]
                                                              # projection, no bias
        A = SiLU(q k^T + rab) / n * causal                    # [B, h, L, L]: NO softmax, no
                                                              # 1/sqrt(dqk); causal keeps the
                                                              # diagonal
        x = Linear(dropout(u * LayerNorm(A v))) + x           # no feed-forward block
    out = x / max(|x|, 1e-6)                                  # L2-normalised queries
    score(item j) = out . item_emb[j] / max(|item_emb[j]|, 1e-6)   # cosine, tied table

``n``: the reference divides by its padded width, ``max_sequence_length + max_output_len``
(its history window plus ``gr_output_length + 1`` = 11 output slots: 211 for ML-1M's 200), the
same for every row (``attention_norm="padded"``, n = ``maxlen + output_slots``);
``"length"`` divides position ``i`` by the number of items it attends (``i + 1``, its true
length: the output at a position still depends only on the items up to it).

Relative attention bias ``rab`` (one module per block, as the reference): a learned bias per
relative position, ``pos_w[N' - 1 + j - i]`` over ``2 N' - 1`` offsets (N' = n: the reference's
padded width), plus a learned bias per time bucket ``ts_w[b]``,
``b = clamp(floor(ln(max(|dt|, 1)) / 0.301), 0, 128)``, where ``dt`` is the time of the item
*after* the query position ``i`` minus the time of the key ``j`` (the reference appends the
target's time to the sequence, so at evaluation the target's time is read: the
``query_time="target"`` of :func:`~recsys_pipeline.evaluation.last_item.evaluate_last_item`;
``"last_event"``, the default there and what serving has, uses the last event's own time).
``relative_bias``: ``"time_position"`` (the reference with timestamps), ``"position"``
(positions only: what data without timestamps gets; the reference then has no bias at all),
``"none"``. A model trained with ``"time_position"`` on data without times falls back to
positions only and says so.

Initialisation as the reference: item table truncated normal (std 0.02, cut at 2 std), the
positional table ``xavier_normal_`` over its ``n`` rows, ``W_uvqk`` and both bias tables
normal (std 0.02), the output Linear Xavier-uniform with PyTorch's default bias.

Training (:class:`HSTUParams` defaults = the reference's ML-1M configuration): every position
predicts the next item; sampled softmax against ``n_negatives`` (128) items drawn uniformly
(with replacement) per position, item embeddings L2-normalised, logits / ``temperature``
(0.05), a negative equal to the positive masked (the reference uses -5e4, here -inf); AdamW,
lr 1e-3, betas (0.9, 0.98), weight decay 0. The reference's attention dropout parameter is
unused by its ``rel_bias`` path and is not offered.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.models.base import ModelParams
from recsys_pipeline.models.sequence_model import SequenceTransformer, grown_table
from recsys_pipeline.training.losses import l2_normalize, sampled_softmax_loss, uniform_negatives
from recsys_pipeline.training.sequences import PAD, SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import SessionData

logger = logging.getLogger(__name__)

__all__ = ["HSTU", "HSTUNet", "HSTUParams", "time_buckets"]

RELATIVE_BIASES = ("time_position", "position", "none")
ATTENTION_NORMS = ("padded", "length")
_LN_EPS = 1e-6  # the reference's layer norms and L2 normalisation
_N_BUCKETS = 128
_BUCKET_LOG_BASE = 0.301  # ln(dt) / 0.301: about log2 of the seconds


@dataclass
class HSTUParams(ModelParams):
    """HSTU's hyperparameters; defaults = the reference's ML-1M configuration
    (``configs/ml-1m/hstu-sampled-softmax-n128-final.gin``).

    Attributes:
        maxlen: the longest input window (the reference's ``max_sequence_length``, 200).
        hidden_units: embedding width ``D`` (the reference's ``item_embedding_dim``).
        num_blocks: HSTU layers.
        num_heads: attention heads.
        dqk: query/key width per head (``attention_dim``).
        dv: value/u width per head (``linear_dim``).
        dropout_rate: input dropout after the embeddings (the reference's ``dropout_rate``).
        linear_dropout_rate: dropout before each layer's output Linear.
        relative_bias: ``"time_position"``, ``"position"`` or ``"none"`` (module docstring).
        attention_norm: ``"padded"`` (divide by ``maxlen + output_slots``, the reference) or
            ``"length"`` (position ``i`` by ``i + 1``, the items it attends).
        output_slots: the reference's ``gr_output_length + 1`` (11): its padded width, the
            positional table and the relative-position offsets have ``maxlen + output_slots``.
        n_negatives: uniform negatives per position (128; 512 for large catalogues).
        temperature: logits are divided by it.
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        batch_size: sequences per batch.
        num_epochs: training epochs (the reference's configuration runs 101).
        bucket: sort rows by length within chunks of ``bucket`` batches (less padding); 0 = off.
        patience: early stopping after this many epochs without a better validation metric
            (needs ``valid`` in ``fit``); ``None``: train all epochs (the reference has no
            validation split).
        valid_metric: the validation metric (a key of the last-item evaluation).
        seed: seeds the initialisation, order, negatives and dropout.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: mixed precision: ``"auto"`` (bf16 or fp16 on CUDA), ``"off"``, ``"bf16"``, ``"fp16"``.
        cpu_bf16: bf16 autocast on CPUs that have it (off: fidelity first).
    """

    model_name: ClassVar[str] = "HSTU"
    epochs_field: ClassVar[str] = "num_epochs"
    shape_fields: ClassVar[tuple[str, ...]] = (
        "maxlen", "hidden_units", "num_blocks", "num_heads", "dqk", "dv", "relative_bias",
        "output_slots",
    )  # fmt: skip

    maxlen: int = 200
    hidden_units: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dqk: int = 50
    dv: int = 50
    dropout_rate: float = 0.2
    linear_dropout_rate: float = 0.2
    relative_bias: str = "time_position"
    attention_norm: str = "padded"
    output_slots: int = 11
    n_negatives: int = 128
    temperature: float = 0.05
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    num_epochs: int = 101
    bucket: int = 0
    patience: int | None = None
    valid_metric: str = "ndcg@10"
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    cpu_bf16: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("maxlen", "hidden_units", "num_blocks", "num_heads", "dqk", "dv",
                     "batch_size", "n_negatives"):  # fmt: skip
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("dropout_rate", "linear_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                errors.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.relative_bias not in RELATIVE_BIASES:
            errors.append(
                f"relative_bias must be one of {RELATIVE_BIASES}, got {self.relative_bias!r}"
            )
        if self.attention_norm not in ATTENTION_NORMS:
            errors.append(
                f"attention_norm must be one of {ATTENTION_NORMS}, got {self.attention_norm!r}"
            )
        if self.output_slots < 0:
            errors.append(f"output_slots must be >= 0, got {self.output_slots}")
        if self.temperature <= 0:
            errors.append(f"temperature must be > 0, got {self.temperature}")
        if self.lr <= 0 or self.weight_decay < 0 or self.num_epochs < 0:
            errors.append("need lr > 0, weight_decay >= 0 and num_epochs >= 0")
        if self.bucket < 0:
            errors.append(f"bucket must be >= 0, got {self.bucket}")
        if self.patience is not None and self.patience < 1:
            errors.append(f"patience must be >= 1 or None, got {self.patience}")
        if errors:
            raise ValueError("HSTU: " + "; ".join(errors))


# ------------------------------------------------------------------------------ the network


def time_buckets(dt: torch.Tensor, n_buckets: int = _N_BUCKETS) -> torch.Tensor:
    """The reference's bucket of a time difference in seconds:
    ``clamp(floor(ln(max(|dt|, 1)) / 0.301), 0, n_buckets)`` (long, same shape)."""
    value = dt.to(torch.float32, copy=True).abs_().clamp_(min=1).log_().div_(_BUCKET_LOG_BASE)
    return value.long().clamp_(0, n_buckets)  # in place: one [B, L, L] float copy in all


def _truncated_normal_(
    weight: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> None:
    """Normal(0, std) cut at two standard deviations (the reference's ``truncated_normal``)."""
    with torch.no_grad():
        nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)


class _Lookup(torch.autograd.Function):
    """``table.flatten()[index]`` whose backward is one ``scatter_add`` into the table (autograd's
    indexing backward is an accumulating ``index_put``, 2x slower on the CPU for the
    ``[B, L, L]`` index of the relative bias)."""

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.shape, ctx.dtype = table.shape, table.dtype
        return torch.take(table, index)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (index,) = ctx.saved_tensors
        flat = grad.new_zeros(math.prod(ctx.shape), dtype=torch.float32)
        flat.scatter_add_(0, index.reshape(-1), grad.reshape(-1).float())
        return flat.view(ctx.shape).to(ctx.dtype), None


def bias_index(length: int, n: int, buckets: torch.Tensor | None) -> torch.Tensor:
    """The index of each (query ``i``, key ``j``) pair into a layer's bias table (computed once
    per forward, read by every layer): the relative position ``j - i + n - 1`` ``[1, L, L]``,
    or with time ``buckets [B, L, L]`` the pair (position, bucket) as
    ``position * 129 + bucket`` into the ``[2n - 1, 129]`` table of sums."""
    index = torch.arange(length, device=None if buckets is None else buckets.device)
    relative = (index.unsqueeze(0) - index.unsqueeze(1) + n - 1).unsqueeze(0)  # [1, L, L]
    if buckets is None:
        return relative
    return relative * (_N_BUCKETS + 1) + buckets


class _RelativeBias(nn.Module):
    """The relative attention bias of one layer: ``pos_w [2n - 1]`` per relative position
    and, with ``use_time``, ``ts_w [129]`` per time bucket (module docstring). Both are read
    in one lookup from their ``[2n - 1, 129]`` table of sums ``pos_w[r] + ts_w[b]``
    (:func:`bias_index`)."""

    def __init__(self, n: int, use_time: bool) -> None:
        super().__init__()
        self.n = n
        self.pos_w = nn.Parameter(torch.empty(2 * n - 1).normal_(0.0, 0.02))
        self.ts_w = (
            nn.Parameter(torch.empty(_N_BUCKETS + 1).normal_(0.0, 0.02)) if use_time else None
        )

    def forward(self, index: torch.Tensor, timed: bool) -> torch.Tensor:
        """``[1 or B, L, L]``: bias of query ``i`` for key ``j``; ``index`` from
        :func:`bias_index` (``timed``: with time buckets)."""
        if not timed or self.ts_w is None:
            return self.pos_w[index]  # [1, L, L]: small
        table = self.pos_w.unsqueeze(1) + self.ts_w.unsqueeze(0)  # [2n - 1, 129]
        return _Lookup.apply(table, index)


class _HSTULayer(nn.Module):
    """One sequential transduction unit (module docstring)."""

    def __init__(self, params: HSTUParams, n: int) -> None:
        super().__init__()
        d, h = params.hidden_units, params.num_heads
        self.heads, self.dqk, self.dv = h, params.dqk, params.dv
        self.uvqk = nn.Parameter(torch.empty(d, 2 * h * params.dv + 2 * h * params.dqk))
        self.out = nn.Linear(h * params.dv, d)
        self.drop = nn.Dropout(params.linear_dropout_rate)
        self.bias = (
            _RelativeBias(n, params.relative_bias == "time_position")
            if params.relative_bias != "none"
            else None
        )

    def forward(
        self, x: torch.Tensor, scale: torch.Tensor, index: torch.Tensor, timed: bool
    ) -> torch.Tensor:
        """``x [B, L, D]`` -> ``[B, L, D]``; ``scale [L, L]``: the causal mask divided by the
        attention norm (``1 / n`` at ``j <= i``, else 0), ``index``: the bias index
        (:func:`bias_index`; ``timed``: it has time buckets)."""
        batch, length, dim = x.shape
        h, dqk, dv = self.heads, self.dqk, self.dv
        projected = F.silu(F.layer_norm(x, (dim,), eps=_LN_EPS) @ self.uvqk)
        u, v, q, k = projected.split([h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        scores = torch.einsum(
            "bnhd,bmhd->bhnm", q.view(batch, length, h, dqk), k.view(batch, length, h, dqk)
        )  # [B, h, L, L]
        if self.bias is not None:
            scores = scores + self.bias(index, timed).unsqueeze(1)
        weights = F.silu(scores) * scale  # pointwise: no softmax, no 1/sqrt(dqk); / n, causal
        attended = torch.einsum("bhnm,bmhd->bnhd", weights, v.view(batch, length, h, dv))
        attended = attended.reshape(batch, length, h * dv)
        gated = u * F.layer_norm(attended, (h * dv,), eps=_LN_EPS)
        return self.out(self.drop(gated)) + x


class HSTUNet(nn.Module):
    """The HSTU encoder over ``n_items`` items (module docstring).

    ``item_emb`` has ``n_items + 1`` rows: row 0 is padding (never read: padding inputs are
    zeroed), item index ``i`` is row ``i + 1``. ``pos_emb`` has ``n = maxlen + output_slots``
    rows; column ``c`` of a right-padded batch is position ``c``.
    """

    def __init__(self, n_items: int, params: HSTUParams) -> None:
        super().__init__()
        d = params.hidden_units
        self.maxlen = params.maxlen
        self.n = params.maxlen + params.output_slots
        self.attention_norm = params.attention_norm
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(self.n, d)
        self.emb_drop = nn.Dropout(params.dropout_rate)
        self.layers = nn.ModuleList(_HSTULayer(params, self.n) for _ in range(params.num_blocks))
        self.uses_time = params.relative_bias == "time_position"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's initialisation (module docstring)."""
        _truncated_normal_(self.item_emb.weight, 0.02)
        nn.init.xavier_normal_(self.pos_emb.weight)
        for layer in self.layers:
            assert isinstance(layer, _HSTULayer)
            nn.init.normal_(layer.uvqk, 0.0, 0.02)
            layer.out.reset_parameters()  # PyTorch's default bias
            nn.init.xavier_uniform_(layer.out.weight)
            if layer.bias is not None:
                nn.init.normal_(layer.bias.pos_w, 0.0, 0.02)
                if layer.bias.ts_w is not None:
                    nn.init.normal_(layer.bias.ts_w, 0.0, 0.02)

    @property
    def n_items(self) -> int:
        return self.item_emb.num_embeddings - 1

    def forward(
        self,
        items: torch.Tensor,
        times: torch.Tensor | None = None,
        query_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Right-padded item indices ``[B, L]`` (:data:`PAD` = -1, ``L <= maxlen``), the
        events' times ``[B, L]`` and the time each position's query is made at (the next
        event's) ``[B, L]`` (both optional, seconds) -> L2-normalised outputs ``[B, L, D]``
        (zero at padding)."""
        batch, length = items.shape
        if length > self.maxlen:
            raise ValueError(f"sequence width {length} > maxlen {self.maxlen}")
        valid = (items >= 0).unsqueeze(-1)  # [B, L, 1]
        scale = math.sqrt(self.item_emb.embedding_dim)
        positions = torch.arange(length, device=items.device)
        x = self.item_emb(items.clamp(min=-1) + 1) * scale + self.pos_emb(positions)
        x = self.emb_drop(x) * valid
        causal = torch.ones(length, length, device=items.device, dtype=x.dtype).tril()
        norm: torch.Tensor | float = float(self.n)
        if self.attention_norm == "length":  # position i attends i + 1 items
            norm = (positions + 1).to(x.dtype).unsqueeze(1)  # [L, 1]
        scale = causal / norm  # [L, L]
        buckets = None  # computed once, read by every layer's time bias
        if self.uses_time and times is not None and query_times is not None:
            # [B, L, L]: bucket of t(after i) - t(j), in int64 seconds before the log
            buckets = time_buckets(query_times.unsqueeze(2) - times.unsqueeze(1))
        index = bias_index(length, self.n, buckets).to(items.device)
        for layer in self.layers:
            x = layer(x, scale, index, buckets is not None) * valid
        return l2_normalize(x) * valid

    def item_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """L2-normalised embeddings ``[stop - start, D]`` of item indices ``start .. stop - 1``."""
        stop = self.n_items if stop is None else stop
        return l2_normalize(self.item_emb.weight[1 + start : 1 + stop])

    def grow_items(self, n_new: int, generator: torch.Generator) -> list[str]:
        """Append ``n_new`` item rows (truncated normal, std 0.02) for fine-tuning."""
        old = self.item_emb.weight.detach()
        rows = torch.empty(n_new, old.shape[1])
        _truncated_normal_(rows, 0.02, generator)
        self.item_emb = grown_table(old, rows)
        return ["item_emb.weight"]


# -------------------------------------------------------------------------------- the model


class HSTU(SequenceTransformer):
    """HSTU on the platform: a :class:`~recsys_pipeline.models.base.SequenceEncoder` that
    reads times (``uses_times``), right padding, causal; training, fine-tuning and the saved
    folder are :class:`~recsys_pipeline.models.sequence_model.SequenceTransformer`'s.

    Training data: one row per event, ``SessionId`` (a session or a user), ``ItemId``, ``Time``
    (seconds; without usable times the relative bias is positional only).
    """

    kind: ClassVar[str] = "hstu"
    params_class: ClassVar[type[ModelParams]] = HSTUParams
    padding: ClassVar[str] = "right"
    uses_times: ClassVar[bool] = True
    prefix_consistent: ClassVar[bool] = True  # positions count from the start
    desc: ClassVar[str] = "hstu"

    params: HSTUParams
    net: HSTUNet | None

    def _new_network(self, n_items: int) -> HSTUNet:
        return HSTUNet(n_items, self.params)

    def _make_batcher(self, data: SessionData, seed: int) -> SequenceBatcher:
        if data.times is None and self.params.relative_bias == "time_position":
            logger.info("HSTU: the data has no timestamps; the relative bias is positional only")
        return self._causal_batcher(data, seed)

    def _make_optimizer(self, net: nn.Module, lr: float, n_steps: int) -> tuple[Any, None]:
        optimizer = torch.optim.AdamW(
            net.parameters(),
            lr=lr,
            betas=(0.9, 0.98),
            weight_decay=self.params.weight_decay,
            fused=self.device.type in ("cpu", "cuda") or None,
        )
        return optimizer, None

    def _loss_function(
        self,
        net: nn.Module,
        generator: torch.Generator,
        history: tuple[torch.Tensor, torch.Tensor],
        support: torch.Tensor,
    ) -> Callable[[SequenceBatch], tuple[torch.Tensor, int]]:
        assert isinstance(net, HSTUNet)
        p = self.params

        def loss_fn(batch: SequenceBatch) -> tuple[torch.Tensor, int]:
            out = net(batch.items, batch.times, batch.target_times)  # [B, L, D]
            labelled = batch.targets != PAD  # [B, L]
            query = out[labelled]  # [N, D]
            positives = batch.targets[labelled]  # [N]
            negatives, _ = uniform_negatives(
                net.n_items, (len(positives), p.n_negatives), generator
            )
            # rows normalised once per step, then gathered (the same values as normalising
            # each gathered copy, without the [N, K, D] copies: losses.table_logits)
            table = net.item_table().float()  # [I, D], L2-normalised
            loss = sampled_softmax_loss(
                query.float(),
                table[positives],
                pos_ids=positives,
                neg_ids=negatives,
                table=table,
                temperature=p.temperature,
            )
            return loss, len(positives)

        return loss_fn

    # ------------------------------------------------------------------------ inference
    @torch.no_grad()
    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """Queries ``[B, L, D]`` (or ``[B, D]``, each row's last item, with ``last_only``) of
        a right-padded batch (its first ``maxlen`` columns: a longer row must be cut by the
        batcher, which keeps the last items). Without ``target_times`` each position's query
        time is its own event's (the leak-free choice)."""
        if batch.padding != "right":
            raise ValueError("HSTU reads right-padded batches")
        net = self._network()
        if batch.items.shape[1] > self.maxlen:
            raise ValueError(f"batch width {batch.items.shape[1]} > maxlen {self.maxlen}")
        items = batch.items.to(self.device)
        times = query = None
        if batch.times is not None:
            times = batch.times.to(self.device)
            query = times if batch.target_times is None else batch.target_times.to(self.device)
        out = net(items, times, query)
        if not last_only:
            return out
        last = (batch.lengths.to(self.device) - 1).clamp(min=0)
        return out[torch.arange(len(last), device=self.device), last]

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[N, stop - start]``: cosine of the (normalised) query and the items."""
        table = self._network().item_table(start, stop)
        return query.to(table.dtype) @ table.T
