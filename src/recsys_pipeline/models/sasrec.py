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

* pmixer/SASRec.pytorch (commit 9f6a02b) pads every row to ``maxlen`` on the left and never
  masks the padding: padding rows enter as zero vectors, pass through every layer norm,
  attention (causal mask only) and feed-forward block like real rows (so after the first block
  they are no longer zero and differ by dropout), and real positions attend them. Its heads get
  ``torch.nn.MultiheadAttention``'s output projection. ``attend_padding=True`` +
  ``out_projection=True`` compute exactly that network. Its positions count from 1 at the first
  column of the fixed-width window, which is the same as ours (the last item at ``maxlen``).
* pmixer initialises every parameter of two or more dimensions with ``xavier_normal_``: the
  Q, K, V projections as one stacked ``[3D, D]`` matrix (a standard deviation sqrt(2) smaller
  than three Glorot ``[D, D]`` kernels), and leaves the feed-forward biases at PyTorch's
  default ``U(-1/sqrt(D), 1/sqrt(D))``: ``init="pmixer"``.
* pmixer's ``l2_emb`` adds the (non-squared) norm; the TF code the squared norm / 2.
* generative-recommenders' SASRec (``research/modeling/sequential/sasrec.py``, commit
  2e81fab; its ML-1M configuration ``sasrec-sampled-softmax-n128-final.gin`` in
  ``conf/generative_recommenders``) has pmixer's block with ``nn.MultiheadAttention`` (output
  projection, ``out_projection=True``), layer norms without gain and bias
  (``norm_affine=False``), **no** LayerNorm after the last block (``final_norm=False``),
  positions counted from the first item of the window (``positions="from_start"``; its rows
  are right padded), truncated-normal tables (``init="gr"``), L2-normalised queries and items
  (``l2_norm``) and a sampled softmax with 128 uniform negatives at temperature 0.05. Its
  padding positions are computed and zeroed after every block, but with right padding under
  a causal mask no real position attends them, so skipping them is the same network.
* Since 2025 pmixer defaults to ``norm_first=False``, a **post-LN** block
  (``x = LN(x + MHA(x)); x = LN(x + FFN(x))``, keys normalised too): our ``norm_first=False``.
  Our ``norm_first=True`` (default) is the original query-only layout above.
* Negatives: the original draws one negative per position uniformly among the items the user
  never interacted with in training (``random_neq``); so does ``loss="bce"`` here, vectorised
  (:func:`~recsys_pipeline.training.losses.uniform_negatives_excluding`) instead of a Python
  sampler process. pmixer 9f6a02b draws batches from three sampler processes, each walking
  its own shuffled order of all users, an epoch being ``ceil(users / batch_size)`` batches of
  whichever process is ready; here every user with >= 2 training items is one row per epoch,
  in a new random order each epoch.

Losses (``loss``): ``"bce"`` (the original; one negative per position), ``"ce"`` (full softmax
over every item, "SASRec+" of Klenitskiy & Vasilev 2023; ``label_smoothing``) and
``"sampled_softmax"`` (``n_negatives`` per position drawn ``negatives="uniform"`` or
``"popularity"`` (``alpha``), ``temperature``, ``logq`` correction, accidental hits masked: the
generative-recommenders / gSASRec family).
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
from recsys_pipeline.models.sequence_model import SequenceTransformer, glorot_rows, grown_table
from recsys_pipeline.training.losses import (
    bce_negative_loss,
    full_softmax_cross_entropy,
    l2_normalize,
    popularity_negatives,
    sampled_softmax_loss,
    uniform_negatives,
    uniform_negatives_excluding,
)
from recsys_pipeline.training.sequences import PAD, SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import SessionData

logger = logging.getLogger(__name__)

__all__ = ["LOSSES", "SASRec", "SASRecNet", "SASRecParams"]

LOSSES = ("bce", "ce", "sampled_softmax")
NEGATIVES = ("uniform", "popularity")
INITS = ("tf", "pmixer", "gr")
POSITIONS = ("from_end", "from_start")
ROW_ORDERS = ("epoch", "once")
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
        l2_norm: L2-normalise the queries and the item embeddings (eps 1e-6) in the loss and
            the scores: cosine scores, generative-recommenders' SASRec setting (with
            ``loss="sampled_softmax"``, 128 negatives, ``temperature`` 0.05).
        norm_first: ``True``: the original query-only pre-LN block; ``False``: post-LN.
        attend_padding: pmixer's network (commit 9f6a02b): every row left padded to
            ``maxlen`` and the padding computed like real positions, attended and attending
            under a causal mask only (module docstring; slower: every layer runs at full
            width). ``False``: the TF masks, padding is never attended and stays zero.
        out_projection: pmixer's ``nn.MultiheadAttention`` output projection after the heads
            (the TF code has none).
        init: ``"tf"``: the TF defaults (Glorot-uniform, zero biases); ``"pmixer"``: the
            port's ``xavier_normal_`` over the stacked Q/K/V matrix and default
            feed-forward biases (module docstring); ``"gr"``: generative-recommenders'
            SASRec (pmixer's blocks, truncated-normal tables).
        positions: ``"from_end"``: the last item always at position ``maxlen - 1`` (the
            original and pmixer); ``"from_start"``: the first item of the window at position
            0 (generative-recommenders' SASRec).
        final_norm: the original's LayerNorm after the last block (generative-recommenders'
            SASRec has none: the last block's output goes to the L2 normalisation).
        norm_affine: learned gain and bias in the layer norms (generative-recommenders:
            none, ``F.layer_norm`` without weights).
        bucket: sort the rows by length within chunks of ``bucket`` batches (less padding,
            faster; changes which sequences share a batch); 0 = off, the reference's batches.
        row_order: ``"epoch"``: a new random order of the users every epoch (the samplers
            derived from the TF reference draw each row's user at random, so their order is
            new every epoch too); ``"once"``:
            pmixer 9f6a02b's ``WarpSampler``, which shuffles the users once (its reshuffle
            test ``counter % usernum == 0`` runs only at batch starts: with Video.txt's
            31,013 users and batches of 128 it holds again after 128 epochs) and streams
            them in that order, full batches across epoch boundaries: every epoch visits
            the users in nearly the same order, which trains slower
            (``benchmarks/sasrec_reference.py``, README).
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
    shape_fields: ClassVar[tuple[str, ...]] = ("maxlen", "hidden_units", "num_blocks", "num_heads")

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
    l2_norm: bool = False
    norm_first: bool = True
    attend_padding: bool = False
    out_projection: bool = False
    init: str = "tf"
    positions: str = "from_end"
    final_norm: bool = True
    norm_affine: bool = True
    bucket: int = 0
    row_order: str = "epoch"
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
        if self.row_order not in ROW_ORDERS:
            errors.append(f"row_order must be one of {ROW_ORDERS}, got {self.row_order!r}")
        elif self.row_order == "once" and self.bucket > 1:
            errors.append("row_order 'once' (pmixer's stream of full batches) takes no bucket")
        if self.init not in INITS:
            errors.append(f"init must be one of {INITS}, got {self.init!r}")
        if self.positions not in POSITIONS:
            errors.append(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.attend_padding and self.positions != "from_end":
            errors.append("attend_padding (pmixer's network) counts positions from the end")
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
        lengths: ``[B]`` real items per row.
        groups: ``(rows [Bg], width W, allowed [Bg, 1, W, W])`` per group: the query column
            may attend the key column (causal, real keys; the diagonal keeps a padding row
            from having no key at all).
    """

    index: torch.Tensor
    batch: int
    length: int
    lengths: torch.Tensor
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
        return cls(index, batch, length, lengths, groups)

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
    projection (``out_projection``: pmixer's, :class:`SASRecParams`)."""

    def __init__(self, dim: int, heads: int, dropout: float, out_projection: bool = False) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim) if out_projection else None

    def forward(self, query: torch.Tensor, keys: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """``query``, ``keys`` ``[T, D]`` (real positions) -> ``[T, D]``."""
        dim = query.shape[-1]
        dropout = self.dropout if self.training else 0.0
        qkv = layout.scatter(torch.cat([self.q(query), self.k(keys), self.v(keys)], dim=-1))
        out = qkv.new_zeros(layout.batch, layout.length, dim)  # [B, L, D]
        for rows, width, allowed in layout.groups:
            part = qkv.index_select(0, rows)[:, layout.length - width :]  # [Bg, W, 3D]
            q, k, v = part.reshape(len(rows), width, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            attended = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout
            )  # [Bg, H, W, D / H]
            attended = attended.transpose(1, 2).reshape(len(rows), width, dim)
            out = out.index_put((rows.unsqueeze(1), torch.arange(
                layout.length - width, layout.length, device=rows.device)), attended)  # fmt: skip
        out = layout.gather(out)
        return out if self.out is None else self.out(out)


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

    def __init__(self, dim: int, params: SASRecParams) -> None:
        super().__init__()
        self.norm_first = params.norm_first
        dropout = params.dropout_rate
        affine = params.norm_affine
        self.attn_norm = nn.LayerNorm(dim, eps=_LN_EPS, elementwise_affine=affine)
        self.attn = _Attention(dim, params.num_heads, dropout, params.out_projection)
        self.ffn_norm = nn.LayerNorm(dim, eps=_LN_EPS, elementwise_affine=affine)
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
    ``maxlen - 1`` whatever the batch width (the reference pads every row to ``maxlen``);
    with ``positions="from_start"`` a row of ``n`` items gets ``c - (L - n)``, its first item
    position 0.
    Padding positions are never computed (their outputs are zero), which equals the
    reference's zeroing of padding rows after every block.
    """

    def __init__(self, n_items: int, params: SASRecParams) -> None:
        super().__init__()
        d = params.hidden_units
        self.maxlen = params.maxlen
        self.port_padding = params.attend_padding
        self.init = params.init
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos_emb = nn.Embedding(params.maxlen, d)
        self.emb_drop = nn.Dropout(params.dropout_rate)
        self.blocks = nn.ModuleList(_Block(d, params) for _ in range(params.num_blocks))
        self.from_start = params.positions == "from_start"
        self.last_norm: nn.Module = (
            nn.LayerNorm(d, eps=_LN_EPS, elementwise_affine=params.norm_affine)
            if params.final_norm
            else nn.Identity()
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``init="tf"``: TF defaults (Glorot-uniform tables and kernels, zero biases, unit LN
        gains). ``"pmixer"``: the port's ``xavier_normal_`` of every matrix as its modules
        hold them (the item and position tables with their padding rows, Q/K/V stacked
        ``[3D, D]``), zero attention biases, PyTorch's default feed-forward biases. ``"gr"``:
        generative-recommenders' SASRec: the same blocks (``xavier_normal_`` of every matrix
        of ``nn.MultiheadAttention`` and the kernel-1 convolutions, default biases), the item
        table truncated normal (std 0.02) and the position table truncated normal
        (std ``1 / sqrt(D)``), both cut at two standard deviations."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if self.init in ("pmixer", "gr"):
            self._pmixer_init()
        if self.init == "gr":  # its blocks are pmixer's; its tables truncated normal
            d = self.item_emb.embedding_dim
            for table, std in ((self.item_emb.weight, 0.02), (self.pos_emb.weight, d**-0.5)):
                nn.init.trunc_normal_(table, 0.0, std, -2 * std, 2 * std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @torch.no_grad()
    def _pmixer_init(self) -> None:
        d = self.item_emb.embedding_dim

        def glorot_normal(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
            weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))

        glorot_normal(self.item_emb.weight, d, self.item_emb.num_embeddings)
        glorot_normal(self.pos_emb.weight, d, self.maxlen + 1)  # the port's has a padding row
        for block in self.blocks:
            assert isinstance(block, _Block)
            for linear in (block.attn.q, block.attn.k, block.attn.v):
                glorot_normal(linear.weight, d, 3 * d)  # one in_proj_weight [3D, D]
            if block.attn.out is not None:
                nn.init.xavier_normal_(block.attn.out.weight)
            for linear in (block.ffn.inner, block.ffn.outer):  # Conv1d(D, D, kernel_size=1)
                nn.init.xavier_normal_(linear.weight)
                nn.init.uniform_(linear.bias, -1 / math.sqrt(d), 1 / math.sqrt(d))

    @property
    def n_items(self) -> int:
        return self.item_emb.num_embeddings - 1

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """Left-padded item indices ``[B, L]`` (:data:`PAD` = -1, ``L <= maxlen``) -> the
        output per position ``[B, L, D]`` (zero at padding)."""
        length = items.shape[1]
        if length > self.maxlen:
            raise ValueError(f"sequence width {length} > maxlen {self.maxlen}")
        if self.port_padding:
            return self._port_forward(items)
        layout = _Layout.of(items)
        index = layout.index
        tokens = items.reshape(-1).index_select(0, index)  # [T]
        if self.from_start:  # the row's first real column is position 0
            positions = index % length - (length - layout.lengths[index // length])
        else:  # the last column is position maxlen - 1
            positions = index % length + (self.maxlen - length)  # [T]
        scale = math.sqrt(self.item_emb.embedding_dim)
        x = self.item_emb(tokens + 1) * scale + self.pos_emb(positions)  # [T, D]
        x = self.emb_drop(x)
        for block in self.blocks:
            x = block(x, layout)
        return layout.scatter(self.last_norm(x))

    def _port_forward(self, items: torch.Tensor) -> torch.Tensor:
        """pmixer 9f6a02b (``attend_padding``): rows left padded to ``maxlen``; a padding
        position enters as a zero vector (item row 0, no position vector) and is computed by
        every layer like a real one, under a causal mask only. ``[B, L]`` -> ``[B, L, D]``
        (the real positions' outputs; zero at padding)."""
        batch, length = items.shape
        width, dim = self.maxlen, self.item_emb.embedding_dim
        padded = F.pad(items, (width - length, 0), value=PAD)  # [B, N]
        real = (padded >= 0).unsqueeze(-1)  # [B, N, 1]
        layout = _Layout.of(torch.zeros_like(padded))  # every position is computed
        x = self.item_emb(padded + 1) * math.sqrt(dim) + self.pos_emb.weight * real  # [B, N, D]
        x = self.emb_drop(x).reshape(batch * width, dim)
        for block in self.blocks:
            x = block(x, layout)
        out = self.last_norm(x).view(batch, width, dim)[:, width - length :]
        return out * real[:, width - length :]

    def item_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Embeddings ``[stop - start, D]`` of item indices ``start .. stop - 1``."""
        stop = self.n_items if stop is None else stop
        return self.item_emb.weight[1 + start : 1 + stop]

    def grow_items(self, n_new: int, generator: torch.Generator) -> list[str]:
        """Append ``n_new`` Glorot-uniform item rows (fine-tuning); the grown parameters."""
        old = self.item_emb.weight.detach()
        rows = glorot_rows(n_new, old.shape[0], old.shape[1], generator)
        self.item_emb = grown_table(old, rows)
        return ["item_emb.weight"]

    def l2_penalty(self) -> torch.Tensor:
        """``sum(w^2) / 2`` of both embedding tables (TF's ``l2_loss``)."""
        return 0.5 * (self.item_emb.weight.square().sum() + self.pos_emb.weight.square().sum())


# -------------------------------------------------------------------------------- the model


class SASRec(SequenceTransformer):
    """SASRec on the platform: a :class:`~recsys_pipeline.models.base.SequenceEncoder`
    (batched evaluation; the step path through
    :class:`~recsys_pipeline.models.base.EncoderStepAdapter`) and a
    :class:`~recsys_pipeline.models.base.Recommender`; training, fine-tuning and the saved
    folder are :class:`~recsys_pipeline.models.sequence_model.SequenceTransformer`'s.

    Training data: one row per event, ``SessionId`` (a session or a user), ``ItemId``, ``Time``;
    a sequence is a session / a user's history in time order.
    """

    kind: ClassVar[str] = "sasrec"
    params_class: ClassVar[type[ModelParams]] = SASRecParams
    padding: ClassVar[str] = "left"
    desc: ClassVar[str] = "sasrec"

    params: SASRecParams
    net: SASRecNet | None

    @property  # type: ignore[override]
    def prefix_consistent(self) -> bool:
        """Positions from the start: a prefix's query is the full row's at that position."""
        return self.params.positions == "from_start"

    def _new_network(self, n_items: int) -> SASRecNet:
        return SASRecNet(n_items, self.params)

    def _make_batcher(self, data: SessionData, seed: int) -> SequenceBatcher:
        once = self.params.row_order == "once"
        return self._causal_batcher(data, seed, shuffle="once" if once else True)

    def _make_optimizer(self, net: nn.Module, lr: float, n_steps: int) -> tuple[Any, None]:
        optimizer = torch.optim.Adam(
            net.parameters(),
            lr=lr,
            betas=(0.9, 0.98),
            eps=1e-8,
            fused=self.device.type in ("cpu", "cuda") or None,  # one kernel: 4x faster on CPU
        )
        return optimizer, None

    def _loss_function(
        self,
        net: nn.Module,
        generator: torch.Generator,
        history: tuple[torch.Tensor, torch.Tensor],
        support: torch.Tensor,
    ) -> Callable[[SequenceBatch], tuple[torch.Tensor, int]]:
        assert isinstance(net, SASRecNet)
        return _loss_function(net, self.params, generator, history, support)

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
        if self.params.l2_norm:
            out = l2_normalize(out) * (items >= 0).unsqueeze(-1)
        return out[:, -1] if last_only else out

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[N, stop - start]``: dot products with the item table (no bias; cosines
        with ``l2_norm``)."""
        table = self._network().item_table(start, stop)
        if self.params.l2_norm:
            table = l2_normalize(table)
        return query.to(table.dtype) @ table.T


# ------------------------------------------------------------------------------- helpers


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
        norm = l2_normalize if p.l2_norm else (lambda x: x)
        query = norm(query)
        if p.loss == "bce":
            assert batch.sequence is not None
            negatives = uniform_negatives_excluding(
                net.n_items,
                batch.targets.shape,
                history,
                generator,
                users=batch.sequence,
            )[labelled]  # [N]: one per position, outside the user's training items
            pos_logits = torch.linalg.vecdot(query, norm(net.item_emb(positives + 1)))
            neg_logits = torch.linalg.vecdot(query, norm(net.item_emb(negatives + 1)))
            loss = bce_negative_loss(pos_logits, neg_logits)
        elif p.loss == "ce":
            logits = query @ norm(net.item_table()).T  # [N, n_items]
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
            table = norm(net.item_table().float())  # [I, D], rows normalised once
            loss = sampled_softmax_loss(
                query.float(),
                table[positives],
                pos_ids=positives,
                neg_ids=negatives,
                table=table,
                temperature=p.temperature,
                pos_log_q=pos_log_q if p.logq else None,
                neg_log_q=log_q if p.logq else None,
            )
        if p.l2_emb > 0:
            loss = loss + p.l2_emb * net.l2_penalty()
        return loss, n

    return loss_fn
