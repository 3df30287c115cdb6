"""BERT4Rec (Sun et al., CIKM 2019), faithful to the original TensorFlow code
(``FeiSun/BERT4Rec``: ``modeling.py`` = Google's BERT, ``run.py``, ``gen_data_fin.py``,
``optimization.py``), on the model platform.

Network (``maxlen`` = N, ``hidden_units`` = D, ``num_blocks``, ``num_heads``, ``inner_size``)::

    items [B, L] (right padded, PAD = -1; L <= N); mask [B, L] True where [MASK] goes
    x = emb(items | [MASK]) + pos_emb(0 .. L - 1)        # positions from the first item
    x = dropout(LayerNorm(x))                             # BERT's embedding post-processor
    for each block (post-LN, as BERT):                    # bidirectional: every real position
        x = LayerNorm(x + dropout(MHA(x)))                # attends every real position
        x = LayerNorm(x + dropout(W2 GELU(W1 x)))         # (padding keys masked)
    h = LayerNorm(GELU(W_t x))                            # the masked-LM "transform"
    score(item j) = h . item_emb[j] + bias[j]             # tied table + output-only bias
    (head="plain": score(item j) = x . item_emb[j]: no transform, no bias, as the BERT4Rec
    of Klenitskiy & Vasilev's code, whose published figures the benchmark compares against)

Training (``gen_data_fin.py`` + ``run.py``): each row is a user's newest ``maxlen`` items;
a proportion ``mask_prob`` of its positions (at most ``max_predictions``, at least one, never
all) is selected and **all** replaced by [MASK] (``replace="mask"``, the original's
``mask_prob=1.0``; ``"80/10/10"`` is BERT's scheme, an option); with probability
``mask_last_prob`` a row masks only its last item (the original's extra "mask last" instance
per window: ``1 / (dupe_factor + 1)`` = 1/11 of its instances). Loss: full-softmax
cross-entropy over the items at the selected positions only. Optimiser (``optimization.py``):
decoupled weight decay 0.01 (not on LayerNorm parameters nor biases), betas (0.9, 0.999), eps
1e-6 (``adam_eps``), global gradient norm clipped to 1.0, learning rate warmed up linearly over
``warmup_steps`` steps and decayed linearly to 0 at the last step of training.

Test time (``run.py``): [MASK] is **appended** after the whole history (for the test target,
after the validation item too), the window keeps the newest ``maxlen - 1`` items, and the
mask's output ranks the items (``last_item_mask = "append"``: the shared evaluation and
``recommend`` build these rows). A step-path query (``encode(last_only=True)`` on a batch
without mask slots, as the session protocol's per-prefix rows) gets its mask slot appended
here, so every protocol asks the model the same question.

Differences from the original, each deliberate:

* **Dynamic masking**: the original writes ``dupe_factor`` (10) statically masked copies of
  every sliding window to TFRecords once; here the masks are redrawn for every row of every
  epoch (:class:`~recsys_pipeline.training.sequences.SequenceBatcher`, ``mask_count="fixed"``).
  Over 10+ epochs each window sees more distinct masks than the 10 static copies, without the
  10x disk and generation time; RoBERTa found dynamic masking as good or slightly better. The
  sliding windows (``long="split"``, ``stride``) are an option; the default keeps each user's
  newest window, as the original's Beauty setting (``prop_sliding_window`` 0.1 of ``maxlen`` 50
  = step 5) differs from it only for users with more than ``maxlen`` items.
* [MASK] is a separate learned vector, not a vocabulary row, and the softmax runs over the
  items only (the original's also covers [PAD] and [MASK], which it never predicts), so that
  fine-tuning can append items to the table.
* BERT's constant token-type embedding is left out: added to every position, it is absorbed
  by the learned positional table.
* torch's AdamW has Adam's bias correction; BERT's ``AdamWeightDecayOptimizer`` has none
  (with 100 warm-up steps the two differ only over the first few hundred steps).

Initialisation as BERT: truncated normal (std ``initializer_range`` 0.02, cut at 2 std) for
tables and dense kernels, zero biases, unit LayerNorm gains; LayerNorm eps 1e-12; GELU the tanh
approximation of BERT's TF code.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.models.base import ModelParams
from recsys_pipeline.models.sequence_model import (
    SequenceTransformer,
    encode_by_width,
    glorot_rows,
    grown_table,
)
from recsys_pipeline.training.losses import full_softmax_cross_entropy
from recsys_pipeline.training.optim import warmup_linear_decay
from recsys_pipeline.training.sequences import PAD, SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import SessionData

logger = logging.getLogger(__name__)

__all__ = ["BERT4Rec", "BERT4RecNet", "BERT4RecParams"]

_LN_EPS = 1e-12  # BERT's layer_norm
REPLACE = ("mask", "80/10/10")
MASK_COUNTS = ("fixed", "bernoulli")
LONG = ("last", "split")
SCHEDULES = ("linear", "constant")
HEADS = ("transform", "plain")


@dataclass
class BERT4RecParams(ModelParams):
    """BERT4Rec's hyperparameters (names of the original's flags and BERT config where it has
    one; defaults = its Beauty run, ``run_beauty.sh`` + ``bert_config_beauty_64.json``).

    Attributes:
        maxlen: ``max_seq_length`` (50 Beauty, 200 ML-1M): positions per row, the appended
            test-time mask included.
        hidden_units: ``hidden_size`` D.
        num_blocks: ``num_hidden_layers``.
        num_heads: ``num_attention_heads``.
        inner_size: ``intermediate_size`` of the feed-forward (4 D).
        hidden_dropout: ``hidden_dropout_prob`` (embedding, attention output, feed-forward;
            0.5 Beauty, 0.2 ML-1M).
        attention_dropout: ``attention_probs_dropout_prob`` (0.2).
        initializer_range: std of the truncated-normal initialisation.
        head: ``"transform"`` (the original's masked-LM head: dense + GELU + LayerNorm, then
            the tied table plus an output bias) or ``"plain"`` (the encoder's output dotted
            with the tied table, no transform, no bias: the BERT4Rec of Klenitskiy & Vasilev's
            code, Hugging Face's ``BertModel`` under a tied linear layer).
        mask_prob: ``masked_lm_prob``: proportion of a row's positions selected (0.6 Beauty,
            0.2 ML-1M).
        max_predictions: ``max_predictions_per_seq`` (30 Beauty, 40 ML-1M).
        mask_count: ``"fixed"`` (the original: ``round(n * mask_prob)`` positions, at most
            ``max_predictions``) or ``"bernoulli"`` (each position with probability
            ``mask_prob``: Klenitskiy & Vasilev's BERT4Rec, Transformers4Rec).
        mask_bounds: a row selects at least one position and, with two or more, never all
            (True, the original's rule); ``False`` (``"bernoulli"`` only) keeps the plain draw,
            as Klenitskiy & Vasilev's code does: a row may select none of its positions (it adds
            nothing to the loss) or all of them (a batch that selects nothing at all, negligible
            at realistic batch sizes, takes a zero-gradient step). With their setting on
            ``beauty.txt`` the plain draw is what reaches their published figure (README,
            "Published full-ranking targets").
        mask_last_prob: probability that a row masks only its last item (1 / 11).
        replace: ``"mask"`` (the original: every selected position gets [MASK]) or
            ``"80/10/10"`` (BERT's: 80 % [MASK], 10 % a random item, 10 % unchanged).
        long: ``"last"`` (each user's newest window) or ``"split"`` (sliding windows).
        stride: ``"split"``: step between windows (the original: ``prop_sliding_window *
            maxlen``); ``None`` = ``maxlen``.
        lr: peak learning rate (1e-4).
        weight_decay: decoupled weight decay (0.01).
        adam_eps: the optimiser's epsilon (1e-6, the original's; PyTorch's default, 1e-8, in
            Klenitskiy & Vasilev's BERT4Rec).
        warmup_steps: linear warm-up steps (100).
        lr_schedule: after the warm-up, ``"linear"`` decay to 0 at the last step (the
            original) or ``"constant"`` (e.g. Klenitskiy & Vasilev's BERT4Rec: Adam at 1e-3).
        grad_clip: global gradient-norm clip (1.0).
        batch_size: rows per batch (256).
        bucket: sort the rows by length within chunks of ``bucket`` batches (less padding,
            faster; changes which rows share a batch); 0 = off.
        num_epochs: training epochs (the original counts steps: 400,000 of 256 rows).
        patience: early stopping on the validation item (needs ``valid``); ``None``: off.
        valid_metric: the validation metric (``"ndcg@10"``: full ranking, history excluded).
        seed: seeds the initialisation, order, masks and dropout.
        device, amp, cpu_bf16: as every model (``"auto"`` = CUDA when present; AMP on CUDA).
    """

    model_name: ClassVar[str] = "BERT4Rec"
    epochs_field: ClassVar[str] = "num_epochs"
    shape_fields: ClassVar[tuple[str, ...]] = (
        "maxlen",
        "hidden_units",
        "num_blocks",
        "num_heads",
        "inner_size",
    )

    maxlen: int = 50
    hidden_units: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    inner_size: int = 256
    hidden_dropout: float = 0.5
    attention_dropout: float = 0.2
    initializer_range: float = 0.02
    head: str = "transform"
    mask_prob: float = 0.6
    max_predictions: int | None = 30
    mask_count: str = "fixed"
    mask_bounds: bool = True
    mask_last_prob: float = 1.0 / 11.0
    replace: str = "mask"
    long: str = "last"
    stride: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_eps: float = 1e-6
    warmup_steps: int = 100
    lr_schedule: str = "linear"
    grad_clip: float | None = 1.0
    batch_size: int = 256
    bucket: int = 0
    num_epochs: int = 200
    patience: int | None = None
    valid_metric: str = "ndcg@10"
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    cpu_bf16: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("maxlen", "hidden_units", "num_blocks", "num_heads", "inner_size",
                     "batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.maxlen < 2:
            errors.append(f"maxlen must be >= 2 (an item and the mask), got {self.maxlen}")
        if self.num_heads >= 1 and self.hidden_units % self.num_heads:
            errors.append(
                f"hidden_units ({self.hidden_units}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                errors.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.mask_prob <= 1.0:
            errors.append(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if not 0.0 <= self.mask_last_prob <= 1.0:
            errors.append(f"mask_last_prob must be in [0, 1], got {self.mask_last_prob}")
        if self.max_predictions is not None and self.max_predictions < 1:
            errors.append(f"max_predictions must be >= 1 or None, got {self.max_predictions}")
        if self.mask_count not in MASK_COUNTS:
            errors.append(f"mask_count must be one of {MASK_COUNTS}, got {self.mask_count!r}")
        if not self.mask_bounds and self.mask_count != "bernoulli":
            errors.append("mask_bounds=False needs mask_count='bernoulli'")
        if self.head not in HEADS:
            errors.append(f"head must be one of {HEADS}, got {self.head!r}")
        if self.replace not in REPLACE:
            errors.append(f"replace must be one of {REPLACE}, got {self.replace!r}")
        if self.lr_schedule not in SCHEDULES:
            errors.append(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.long not in LONG:
            errors.append(f"long must be one of {LONG}, got {self.long!r}")
        if self.stride is not None and not 1 <= self.stride <= self.maxlen:
            errors.append(f"stride must be in 1..maxlen or None, got {self.stride}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.num_epochs < 0:
            errors.append("need lr > 0, weight_decay >= 0, warmup_steps >= 0, num_epochs >= 0")
        if not 0.0 < self.adam_eps < 1.0:
            errors.append(f"adam_eps must be in (0, 1), got {self.adam_eps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            errors.append(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.bucket < 0:
            errors.append(f"bucket must be >= 0, got {self.bucket}")
        if self.patience is not None and self.patience < 1:
            errors.append(f"patience must be >= 1 or None, got {self.patience}")
        if errors:
            raise ValueError("BERT4Rec: " + "; ".join(errors))


# ------------------------------------------------------------------------------ the network


class BERT4RecNet(nn.Module):
    """The BERT4Rec network over ``n_items`` items (module docstring).

    ``item_emb`` has ``n_items + 1`` rows: row 0 is padding (zero), item index ``i`` is row
    ``i + 1``; ``mask_emb`` ``[D]`` is the [MASK] token; ``out_bias`` ``[n_items]``
    (``head="transform"``; ``None`` with ``head="plain"``, which has no transform either).
    """

    def __init__(self, n_items: int, params: BERT4RecParams) -> None:
        super().__init__()
        d = params.hidden_units
        self.maxlen, self.init_std = params.maxlen, params.initializer_range
        self.item_emb = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.mask_emb = nn.Parameter(torch.zeros(d))
        self.pos_emb = nn.Embedding(params.maxlen, d)
        self.emb_norm = nn.LayerNorm(d, eps=_LN_EPS)
        self.emb_drop = nn.Dropout(params.hidden_dropout)
        gelu = functools.partial(F.gelu, approximate="tanh")
        layer = nn.TransformerEncoderLayer(
            d,
            params.num_heads,
            dim_feedforward=params.inner_size,
            dropout=params.hidden_dropout,
            activation=gelu,
            layer_norm_eps=_LN_EPS,
            batch_first=True,
            norm_first=False,  # post-LN, as BERT
        )
        layer.self_attn.dropout = params.attention_dropout  # BERT's own attention dropout
        self.encoder = nn.TransformerEncoder(
            layer, params.num_blocks, enable_nested_tensor=False
        )  # fmt: skip
        self.transform: nn.Linear | None = None
        self.transform_norm: nn.LayerNorm | None = None
        self.out_bias: nn.Parameter | None = None
        if params.head == "transform":
            self.transform = nn.Linear(d, d)
            self.transform_norm = nn.LayerNorm(d, eps=_LN_EPS)
            self.out_bias = nn.Parameter(torch.zeros(n_items))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's: truncated normal (std ``initializer_range``, cut at 2 std) for tables and
        kernels, zero biases, unit LayerNorm gains."""
        std = self.init_std
        for name, p in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(p) if name.endswith("weight") else nn.init.zeros_(p)
            elif name.endswith("bias") or name == "out_bias":
                nn.init.zeros_(p)
            else:  # tables, kernels (the attention's in/out projections too), the mask vector
                nn.init.trunc_normal_(p, std=std, a=-2 * std, b=2 * std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    @property
    def n_items(self) -> int:
        return self.item_emb.num_embeddings - 1

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Right-padded item indices ``items [B, L]`` (:data:`PAD` = -1, ``L <= maxlen``) and
        ``mask [B, L]`` (True: [MASK] there, whatever ``items`` holds) -> the outputs
        ``h [B, L, D]``, through the transform where the head has one (unspecified at
        padding)."""
        batch, length = items.shape
        if length > self.maxlen:
            raise ValueError(f"sequence width {length} > maxlen {self.maxlen}")
        real = (items >= 0) | mask  # [B, L]
        x = self.item_emb((items + 1).clamp(min=0))
        x = torch.where(mask.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        x = x + self.pos_emb.weight[:length]
        x = self.emb_drop(self.emb_norm(x))
        # padding masked, positions from the start: one call per group of similar-length rows
        x = encode_by_width(lambda x, real: self.encoder(x, src_key_padding_mask=~real), x, real)
        if self.transform is None or self.transform_norm is None:  # head="plain"
            return x
        return self.transform_norm(F.gelu(self.transform(x), approximate="tanh"))

    def item_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Embeddings ``[stop - start, D]`` of item indices ``start .. stop - 1``."""
        stop = self.n_items if stop is None else stop
        return self.item_emb.weight[1 + start : 1 + stop]

    def logits(self, h: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """``h [N, D]`` -> scores ``[N, stop - start]`` (tied table, + output bias)."""
        stop = self.n_items if stop is None else stop
        table = self.item_table(start, stop)
        scores = h.to(table.dtype) @ table.T
        return scores if self.out_bias is None else scores + self.out_bias[start:stop]

    def grow_items(self, n_new: int, generator: torch.Generator) -> list[str]:
        """Append ``n_new`` item rows (Glorot-uniform) and zero output biases (fine-tuning);
        the grown parameters."""
        old = self.item_emb.weight.detach()
        rows = glorot_rows(n_new, old.shape[0], old.shape[1], generator)
        self.item_emb = grown_table(old, rows)
        if self.out_bias is None:
            return ["item_emb.weight"]
        self.out_bias = nn.Parameter(torch.cat([self.out_bias.detach(),
                                                self.out_bias.new_zeros(n_new)]))  # fmt: skip
        return ["item_emb.weight", "out_bias"]


# -------------------------------------------------------------------------------- the model


class BERT4Rec(SequenceTransformer):
    """BERT4Rec on the platform (module docstring): a
    :class:`~recsys_pipeline.models.base.SequenceEncoder` whose last-item rows carry an
    appended mask slot (``last_item_mask = "append"``); training, fine-tuning and the saved
    folder are :class:`~recsys_pipeline.models.sequence_model.SequenceTransformer`'s."""

    kind: ClassVar[str] = "bert4rec"
    params_class: ClassVar[type[ModelParams]] = BERT4RecParams
    padding: ClassVar[str] = "right"
    prefix_consistent: ClassVar[bool] = False  # bidirectional: a prefix is its own row
    last_item_mask: ClassVar[str] = "append"
    desc: ClassVar[str] = "bert4rec"

    params: BERT4RecParams
    net: BERT4RecNet | None

    def _new_network(self, n_items: int) -> BERT4RecNet:
        return BERT4RecNet(n_items, self.params)

    def _make_batcher(self, data: SessionData, seed: int) -> SequenceBatcher:
        p = self.params
        return SequenceBatcher(
            data,
            batch_size=p.batch_size,
            maxlen=p.maxlen,
            mode="masked",
            padding="right",
            long=p.long,  # type: ignore[arg-type]
            stride=p.stride,
            bucket=p.bucket,
            min_length=1,
            mask_prob=p.mask_prob,
            mask_count=p.mask_count,  # type: ignore[arg-type]
            max_masked=p.max_predictions,
            min_one="if_none" if p.mask_bounds else "never",
            mask_last_prob=p.mask_last_prob,
            replace=p.replace,  # type: ignore[arg-type]
            seed=seed,
            device=self.device,
        )

    def _make_optimizer(self, net: nn.Module, lr: float, n_steps: int) -> tuple[Any, Any]:
        decay, no_decay = [], []
        for name, param in net.named_parameters():
            (no_decay if "norm" in name or "bias" in name else decay).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.params.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.999), eps=self.params.adam_eps,
            fused=self.device.type in ("cpu", "cuda") or None,
        )  # fmt: skip
        p = self.params
        total = n_steps if p.lr_schedule == "linear" else None
        return optimizer, warmup_linear_decay(optimizer, p.warmup_steps, total)

    def _grad_clip(self) -> float | None:
        return self.params.grad_clip

    def _loss_function(
        self,
        net: nn.Module,
        generator: torch.Generator,
        history: tuple[torch.Tensor, torch.Tensor],
        support: torch.Tensor,
    ) -> Callable[[SequenceBatch], tuple[torch.Tensor, int]]:
        assert isinstance(net, BERT4RecNet)
        may_be_empty = not self.params.mask_bounds

        def loss_fn(batch: SequenceBatch) -> tuple[torch.Tensor, int]:
            assert batch.mask is not None
            h = net(batch.items, batch.mask)  # [B, L, D]
            selected = batch.targets != PAD  # [B, L]: the masked-LM positions only
            if may_be_empty and not bool(selected.any()):  # the plain draw selected nothing
                return h.sum() * 0.0, 0
            logits = net.logits(h[selected])  # [N, n_items]
            targets = batch.targets[selected]
            return full_softmax_cross_entropy(logits.float(), targets), len(targets)

        return loss_fn

    # ------------------------------------------------------------------------ inference
    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """Queries ``[B, L, D]`` / ``[B, D]`` of a right-padded batch: at its mask positions,
        or at a mask appended by the shared ``_masked_queries`` for step-path rows."""
        return self._masked_queries(batch, last_only)

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[N, stop - start]``: the tied item table (plus the output bias)."""
        return self._network().logits(query, start, stop)
