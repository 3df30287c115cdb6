"""XLNet trained with masked-item prediction, as NVIDIA Transformers4Rec builds it (Moreira et
al., RecSys 2021; ``transformers4rec`` 23.12: ``TabularSequenceFeatures`` + ``masking="mlm"`` +
``XLNetConfig.build(attn_type="bi")`` + ``NextItemPredictionTask(weight_tying=True)``), on the
model platform. The transformer is Hugging Face ``transformers``' ``XLNetModel``, as in the
reference: relative sinusoidal positions, post-LN layers, bidirectional attention.

Network (``maxlen`` = N sessions' last items, ``item_dim`` = E, ``d_model`` = D)::

    items [B, L] (right padded, PAD = -1); mask [B, L] True where the mask vector goes
    e = item_emb(items)                                   # [B, L, E], normal(0, init_std)
    x = ReLU(W_in LayerNorm(dropout(e)) + b_in)           # [B, L, D]: T4R's per-feature
                                                          # dropout + layer norm, MLPBlock([D])
    x = where(mask, mask_vector, x)                       # the trainable [D] mask vector
    h = XLNet(inputs_embeds=x, attention_mask=real)       # [B, L, D], attn_type "bi"
    z = W_out h + b_out                                   # [B, L, E]: back to the table width
    score(item j) = z . item_emb[j]                       # tied, no output bias

Training: each position of a session (its last ``maxlen`` items; sessions of one item give no
row, as the reference trains nothing on them) is selected with probability
``mlm_probability``, plus one uniform position in every row, and a row with every position
selected loses one (at least one, never all: the reference's rules), replaced by the mask
vector; label-smoothed cross-entropy over the items at the selected positions; AdamW.

Test time, as the reference after its 2023 fix: **evaluation** replaces the last item of the
session in place by the mask and ranks the items for it (``last_item_mask = "last"``: the
shared last-item evaluation builds these rows); **inference** (``recommend``, serving, a
step-path query) appends the mask after the session's newest ``maxlen - 1`` items
(``inference_mask = "append"``).

Where this differs from the reference (each on purpose, ``tests/models/test_xlnet_mlm.py``):

* Padding is masked out of the attention (``attend_padding=False``): the reference passes no
  mask, so every position attends the padding, whose input (the random padding row through
  dropout, layer norm, projection and ReLU) is not zero and the output depends on how much
  padding the batch has. ``attend_padding=True`` reproduces that (batches then pad to
  ``maxlen``, as the reference's).
* Padding is never a candidate: the reference's softmax, label smoothing and ranking include
  the padding row.
* Inference keeps ``maxlen`` positions (the newest ``maxlen - 1`` items and the mask); the
  reference appends a ``maxlen + 1``-th position to a full session.
"""

from __future__ import annotations

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
    grown_table,
)
from recsys_pipeline.training.losses import full_softmax_cross_entropy
from recsys_pipeline.training.optim import warmup_linear_decay
from recsys_pipeline.training.sequences import PAD, SequenceBatch, SequenceBatcher
from recsys_pipeline.training.session_iterator import SessionData

logger = logging.getLogger(__name__)

__all__ = ["XLNetMLM", "XLNetMLMNet", "XLNetMLMParams"]

SCHEDULES = ("constant", "linear")


@dataclass
class XLNetMLMParams(ModelParams):
    """XLNet-MLM's hyperparameters (Transformers4Rec's names; defaults = the paper's REES46
    column of Appendix C; the YOOCHOOSE column is ``xlnet_mlm.yoochoose`` in
    ``conf/base/parameters_models.yml``).

    Attributes:
        maxlen: session length kept (the last items; the reference's 20).
        d_model: the transformer width D.
        item_dim: the item-embedding width E.
        n_layer: XLNet layers.
        n_head: attention heads (``d_model`` divisible by it).
        input_dropout: dropout on the item embeddings (before their layer norm).
        dropout: XLNet's dropout.
        init_std: std of the item embeddings' normal initialisation.
        initializer_range: XLNet's initialisation std (Hugging Face's ``_init_weights``).
        mlm_probability: selection probability of a position.
        label_smoothing: torch's label smoothing of the cross-entropy.
        lr: AdamW's learning rate.
        weight_decay: AdamW's weight decay.
        lr_schedule: ``"constant"`` (the reference driver) or ``"linear"`` decay to 0 (the
            Hugging Face Trainer's default), after ``warmup_steps``.
        warmup_steps: linear warm-up steps.
        batch_size: sessions per batch.
        bucket: sort the rows by length within chunks of ``bucket`` batches (less padding,
            faster); 0 = off. Ignored with ``attend_padding`` (rows padded to ``maxlen``).
        num_epochs: training epochs.
        attend_padding: the reference's attention over the padding (module docstring).
        patience, valid_metric: early stopping on validation targets (``fit(valid=...)``).
        seed, device, amp, cpu_bf16: as every model.
    """

    model_name: ClassVar[str] = "XLNet-MLM"
    epochs_field: ClassVar[str] = "num_epochs"
    shape_fields: ClassVar[tuple[str, ...]] = ("maxlen", "d_model", "item_dim", "n_layer", "n_head")

    maxlen: int = 20
    d_model: int = 192
    item_dim: int = 448
    n_layer: int = 3
    n_head: int = 16
    input_dropout: float = 0.1
    dropout: float = 0.0
    init_std: float = 0.11
    initializer_range: float = 0.02
    mlm_probability: float = 0.3
    label_smoothing: float = 0.0
    lr: float = 6.67e-4
    weight_decay: float = 3.91e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 192
    bucket: int = 0
    num_epochs: int = 10
    attend_padding: bool = False
    patience: int | None = None
    valid_metric: str = "ndcg@20"
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    cpu_bf16: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("maxlen", "d_model", "item_dim", "n_layer", "n_head", "batch_size"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.maxlen < 2:
            errors.append(f"maxlen must be >= 2 (an item and the mask), got {self.maxlen}")
        if self.n_head >= 1 and self.d_model % self.n_head:
            errors.append(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        for name in ("input_dropout", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                errors.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.mlm_probability < 1.0:
            errors.append(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            errors.append(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        if self.lr_schedule not in SCHEDULES:
            errors.append(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.num_epochs < 0:
            errors.append("need lr > 0, weight_decay >= 0, warmup_steps >= 0, num_epochs >= 0")
        if self.init_std <= 0 or self.initializer_range <= 0:
            errors.append("init_std and initializer_range must be > 0")
        if self.bucket < 0:
            errors.append(f"bucket must be >= 0, got {self.bucket}")
        if self.patience is not None and self.patience < 1:
            errors.append(f"patience must be >= 1 or None, got {self.patience}")
        if errors:
            raise ValueError("XLNet-MLM: " + "; ".join(errors))


# ------------------------------------------------------------------------------ the network


class XLNetMLMNet(nn.Module):
    """The network over ``n_items`` items (module docstring). ``item_emb`` has ``n_items + 1``
    rows: row 0 is the padding input (random, as the reference's, never a candidate), item
    index ``i`` is row ``i + 1``."""

    def __init__(self, n_items: int, params: XLNetMLMParams) -> None:
        from transformers import XLNetConfig, XLNetModel

        super().__init__()
        self.maxlen, self.attend_padding = params.maxlen, params.attend_padding
        # padding_idx: the padding input gets no gradient (the reference's), its row is drawn
        # with the others below (not zero, as the reference's)
        self.item_emb = nn.Embedding(n_items + 1, params.item_dim, padding_idx=0)
        self.in_drop = nn.Dropout(params.input_dropout)
        self.in_norm = nn.LayerNorm(params.item_dim)  # torch's eps, as T4R's TabularLayerNorm
        self.project = nn.Linear(params.item_dim, params.d_model)
        self.mask_vector = nn.Parameter(torch.zeros(params.d_model))
        config = XLNetConfig(
            vocab_size=1,  # the reference's: ids are never used, inputs_embeds always
            d_model=params.d_model,
            n_layer=params.n_layer,
            n_head=params.n_head,
            d_inner=4 * params.d_model,
            ff_activation="gelu",
            attn_type="bi",
            dropout=params.dropout,
            layer_norm_eps=1e-12,
            initializer_range=params.initializer_range,
            mem_len=None,  # the reference's mem_len=1 memories are computed and dropped
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
        )
        self.xlnet = XLNetModel(config)  # Hugging Face's own initialisation
        self.out = nn.Linear(params.d_model, params.item_dim)
        with torch.no_grad():
            nn.init.normal_(self.item_emb.weight, 0.0, params.init_std)
            nn.init.normal_(self.mask_vector, 0.0, 0.001)

    @property
    def n_items(self) -> int:
        return self.item_emb.num_embeddings - 1

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Right-padded ``items [B, L]`` (:data:`PAD` = -1) and ``mask [B, L]`` -> ``z [B, L,
        E]``, the outputs projected back to the item-table width (unspecified at padding)."""
        real = (items >= 0) | mask  # [B, L]
        x = self.item_emb((items + 1).clamp(min=0))  # PAD -> row 0
        x = F.relu(self.project(self.in_norm(self.in_drop(x))))
        x = torch.where(mask.unsqueeze(-1), self.mask_vector.to(x.dtype), x)
        if self.attend_padding:  # every row as wide as the batch, padding attended
            h = self.xlnet(inputs_embeds=x, use_mems=False).last_hidden_state
        else:  # padding masked: one call per group of similar-length rows, each cut
            h = encode_by_width(self._xlnet, x, real)
        return self.out(h)

    def _xlnet(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``x [B, W, D]`` -> XLNet's ``[B, W, D]``, padding (``~real``) masked."""
        out = self.xlnet(inputs_embeds=x, attention_mask=real.to(x.dtype), use_mems=False)
        return out.last_hidden_state

    def item_table(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Embeddings ``[stop - start, E]`` of item indices ``start .. stop - 1``."""
        stop = self.n_items if stop is None else stop
        return self.item_emb.weight[1 + start : 1 + stop]

    def grow_items(self, n_new: int, generator: torch.Generator) -> list[str]:
        """Append ``n_new`` item rows drawn as the initialisation (fine-tuning)."""
        old = self.item_emb.weight.detach()
        std = float(old[1:].std()) if old.shape[0] > 2 else 0.1
        rows = torch.randn(n_new, old.shape[1], generator=generator) * std
        self.item_emb = grown_table(old, rows)
        return ["item_emb.weight"]


# -------------------------------------------------------------------------------- the model


class XLNetMLM(SequenceTransformer):
    """XLNet-MLM on the platform (module docstring)."""

    kind: ClassVar[str] = "xlnet_mlm"
    params_class: ClassVar[type[ModelParams]] = XLNetMLMParams
    padding: ClassVar[str] = "right"
    prefix_consistent: ClassVar[bool] = False  # bidirectional: a prefix is its own row
    last_item_mask: ClassVar[str] = "last"  # evaluation: the last item masked in place
    inference_mask: ClassVar[str] = "append"  # recommend / serving: a mask appended
    desc: ClassVar[str] = "xlnet_mlm"

    params: XLNetMLMParams
    net: XLNetMLMNet | None

    def _new_network(self, n_items: int) -> XLNetMLMNet:
        return XLNetMLMNet(n_items, self.params)

    def _make_batcher(self, data: SessionData, seed: int) -> SequenceBatcher:
        p = self.params
        return SequenceBatcher(
            data,
            batch_size=p.batch_size,
            maxlen=p.maxlen,
            mode="masked",
            padding="right",
            fixed_length=p.attend_padding,  # the reference pads every session to maxlen
            long="last",
            bucket=p.bucket,
            min_length=2,
            mask_prob=p.mlm_probability,
            mask_count="bernoulli",
            min_one="always",
            replace="mask",
            seed=seed,
            device=self.device,
        )

    def _make_optimizer(self, net: nn.Module, lr: float, n_steps: int) -> tuple[Any, Any]:
        p = self.params
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=lr, weight_decay=p.weight_decay,
            fused=self.device.type in ("cpu", "cuda") or None,
        )  # fmt: skip
        if p.lr_schedule == "constant" and p.warmup_steps == 0:
            return optimizer, None
        total = n_steps if p.lr_schedule == "linear" else None
        return optimizer, warmup_linear_decay(optimizer, p.warmup_steps, total)

    def _loss_function(
        self,
        net: nn.Module,
        generator: torch.Generator,
        history: tuple[torch.Tensor, torch.Tensor],
        support: torch.Tensor,
    ) -> Callable[[SequenceBatch], tuple[torch.Tensor, int]]:
        assert isinstance(net, XLNetMLMNet)
        smoothing = self.params.label_smoothing

        def loss_fn(batch: SequenceBatch) -> tuple[torch.Tensor, int]:
            assert batch.mask is not None
            z = net(batch.items, batch.mask)  # [B, L, E]
            selected = batch.targets != PAD  # the masked positions only
            logits = z[selected] @ net.item_table().T  # [N, n_items]
            targets = batch.targets[selected]
            loss = full_softmax_cross_entropy(logits.float(), targets, label_smoothing=smoothing)
            return loss, len(targets)

        return loss_fn

    # ------------------------------------------------------------------------ inference
    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """Queries ``[B, L, E]`` / ``[B, E]`` of a right-padded batch: at its mask positions
        (the last item masked in place, or an appended mask), or at a mask appended by the
        shared ``_masked_queries`` for step-path rows (inference). With ``attend_padding``
        rows are padded to ``maxlen``, as the reference's."""
        return self._masked_queries(batch, last_only, pad_to_maxlen=self.params.attend_padding)

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[N, stop - start]``: the tied item table, no bias."""
        table = self._network().item_table(start, stop)
        return query.to(table.dtype) @ table.T
