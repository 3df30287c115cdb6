"""GRU4Rec (Hidasi et al., ICLR 2016; Hidasi & Karatzoglou, CIKM 2018), faithful to the reference.

The reference is the official PyTorch port ``hidasib/GRU4Rec_PyTorch_Official`` (and, for the
losses and options it lacks, the Theano original ``hidasib/GRU4Rec``). Parameter names and
defaults are the reference's, so parameter strings can be copied (``run.py -ps``)::

    params = GRU4RecParams.from_string("loss=bpr-max,layers=512,batch_size=128,elu_param=1")
    model = GRU4Rec(params).fit(train)          # polars frame: SessionId, ItemId, Time
    query, state = model.step(items, model.initial_state(len(items)))
    scores = model.score(query)                 # [B, n_items]

Network (``H`` = last layer size, ``n`` = number of items)
------------------------------------------------------------
* Input, three modes: *shared* (``constrained_embedding=True``, the default): the output item
  table ``Wy [n, H]`` is also the input embedding; *separate* (``embedding=X``): an input table
  ``E [n, X]``; *none* (``embedding=0``, ``constrained_embedding=False``): the one-hot item goes
  straight into the first GRU layer, whose input weights are then an item-indexed table
  ``[n, 3 * H0]``.
* GRU layers with the reference's gate layout: input weights ``Wx [in, 3H]`` and hidden weights
  ``Wh [H, 3H]`` in blocks (candidate, reset, update), one bias ``Bh [3H]``; like the official
  port (``nn.GRUCell``), the reset gate multiplies the hidden projection::

      r, z = sigmoid(x Wx_r + h Wh_r + b_r), sigmoid(x Wx_z + h Wh_z + b_z)
      c    = hidden_act(x Wx_c + b_c + r * (h Wh_c))
      h'   = (1 - z) * h + z * c

* Dropout (``p`` = probability to DROP) on the input embedding (``dropout_p_embed``) and on the
  output of every GRU layer (``dropout_p_hidden``); in mode *none* the first layer's output takes
  ``dropout_p_embed``, as in the official port. The dropped-out output is also the next state.
* Output: ``score(item) = h . Wy[item] + By[item]``; in training over the mini-batch's targets
  plus ``n_sample`` shared samples (``[B, B + n_sample]``, column ``i`` = target of row ``i``),
  in evaluation over all items (raw scores, no final activation).
* Initialisation: uniform ``+-sqrt(6 / (fan_in + fan_out))`` per gate block (``sigma`` overrides
  the width, ``init_as_normal`` draws from ``N(0, sigma)``), biases zero.

Training: session-parallel mini-batches (one-step truncated backpropagation: the state is
detached after every step), popularity^``sample_alpha`` negatives from a device-side store, the
loss summed over rows and divided by ``batch_size``, and Adagrad with momentum updating only the
touched rows of the item tables (:mod:`recsys_pipeline.training.optim`). Item rows are gathered
once per step for the unique items of the step (inputs, targets and samples), so duplicates share
one row and their gradients are summed exactly as the reference's coalesced sparse gradients.

How a step is computed (:class:`_TrainStep`; same loss, same gradients, same updates as the
plain autograd formulation, checked against it in the tests and, step by step in float64, by
``benchmarks/gru4rec_train_equivalence.py``): the forward pass runs without autograd; the output
layer scores the ``U`` unique items once (``[B, U]``); autograd differentiates only the loss
with respect to these scores (bpr-max and cross-entropy without logQ are computed on the ``U``
distinct columns, each weighted by how often it occurs among the ``B + n_sample`` loss
columns, which is the same sum; the other losses read their ``[B, B + n_sample]`` columns); the
rest of the backward pass is written out (GEMMs into reused gradient buffers, the fused gate
gradients), and each dense parameter is updated as soon as its gradient is complete.

Scheduled retraining (:meth:`GRU4Rec.fine_tune`; not in the reference): training continues on
new events; items seen for the first time are appended to the vocabulary and every item table
grows by rows drawn with the reference initialisation, the old rows untouched. The optimizer
state (Adagrad accumulators, momentum velocities) stays on the model after :meth:`GRU4Rec.fit`,
is saved as ``optimizer.pt`` (tensors by parameter name) and can be carried into fine-tuning
(grown with zeros) or reset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Self

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.models.base import (
    ModelParams,
    Recommender,
    RecommendResult,
    load_saved_params,
    write_model_json,
)
from recsys_pipeline.models.params import convert_value, fine_tune_round
from recsys_pipeline.models.persistence import (
    checked_load,
    load_fine_tune_state,
    load_tensors,
    load_weights,
    read_ids,
    read_json,
    save_fine_tune_state,
    write_ids,
)
from recsys_pipeline.storage import jsonio
from recsys_pipeline.training.device import resolve_device
from recsys_pipeline.training.loop import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    history_from_json,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from recsys_pipeline.training.losses import (
    BPRMaxFunction,
    CrossEntropyFunction,
    bpr_loss,
    bpr_max_loss,
    cross_entropy_loss,
    logq_correction,
    top1_loss,
    top1_max_loss,
    xe_logit_loss,
)
from recsys_pipeline.training.optim import ADAPT_METHODS, IndexedAdagradM, clip_grad_norm
from recsys_pipeline.training.sampler import NegativeSampler
from recsys_pipeline.training.session_iterator import (
    SessionBatch,
    SessionData,
    SessionParallelIterator,
    sessions_from_frame,
)
from recsys_pipeline.training.trainer import EpochStats, run_epoch

if TYPE_CHECKING:
    from recsys_pipeline.training.sequences import SequenceBatch

logger = logging.getLogger(__name__)

__all__ = [
    "LOSSES",
    "GRU4Rec",
    "GRU4RecNetwork",
    "GRU4RecParams",
    "bpr_loss",
    "bpr_max_loss",
    "cross_entropy_loss",
    "logq_correction",
    "make_activation",
    "top1_loss",
    "top1_max_loss",
    "xe_logit_loss",
]

LOSSES = ("cross-entropy", "bpr-max", "top1", "bpr", "top1-max", "xe_logit")
State = list[torch.Tensor]  # one [B, H_l] hidden state per layer
_CROSS_ENTROPY = cross_entropy_loss  # the built-in one (see _TrainStep._loss)
_NON_NEGATIVE = (
    "n_sample n_epochs embedding momentum sample_alpha lmbd grad_cap sigma logq elu_param "
    "sample_store_size"
).split()
_CPU_SAMPLE_STORE = 2**20  # bulk size only matters on accelerators; keeps CPU setup ~0.1 s

# --------------------------------------------------------------------------------- parameters


@dataclass
class GRU4RecParams(ModelParams):
    """Hyperparameters, with the reference's names and defaults (official PyTorch port).

    ``final_act="auto"`` picks the reference's activation for the loss: softmax for
    cross-entropy, softmax_logit for xe_logit, ``elu-<elu_param>`` for bpr-max (linear when
    ``elu_param`` is 0), linear otherwise. ``constrained_embedding`` wins over ``embedding``.
    ``sample_store_size`` is run.py's ``-ss`` (on the CPU at most 2**20 ids are drawn at once).
    ``device`` (``auto``, ``cpu``, ``cuda:N``) and ``seed`` (weights, samples, dropout, session
    order) are ours. In mode *none*, ``dropout_p_embed`` applies to the first layer's output.
    """

    model_name: ClassVar[str] = "GRU4Rec"
    shape_fields: ClassVar[tuple[str, ...]] = (
        "layers",
        "loss",
        "constrained_embedding",
        "embedding",
    )

    layers: list[int] = field(default_factory=lambda: [100])
    loss: str = "cross-entropy"
    final_act: str = "auto"
    elu_param: float = 0.5
    hidden_act: str = "tanh"
    constrained_embedding: bool = True
    embedding: int = 0
    batch_size: int = 64
    dropout_p_embed: float = 0.0
    dropout_p_hidden: float = 0.0
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048
    sample_alpha: float = 0.5
    bpreg: float = 1.0
    logq: float = 0.0
    n_epochs: int = 10
    adapt: str = "adagrad"
    lmbd: float = 0.0
    grad_cap: float = 0.0
    sigma: float = 0.0
    init_as_normal: bool = False
    train_random_order: bool = False
    time_sort: bool = True
    sample_store_size: int = 10_000_000
    device: str = "auto"
    seed: int = 42

    def __post_init__(self) -> None:
        self.layers = [int(x) for x in self.layers]
        errors = []
        if not self.layers or min(self.layers) < 1:
            errors.append(f"layers must be a non-empty list of positive sizes, got {self.layers}")
        if self.loss not in LOSSES:
            errors.append(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("dropout_p_embed", "dropout_p_hidden"):
            if not 0.0 <= getattr(self, name) < 1.0:
                errors.append(f"{name} is a drop probability in [0, 1), got {getattr(self, name)}")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            errors.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.adapt not in ADAPT_METHODS:
            errors.append(f"adapt must be one of {ADAPT_METHODS}, got {self.adapt!r}")
        try:
            make_activation(self.hidden_act)
        except ValueError as err:
            errors.append(f"hidden_act: {err}")
        final = self.resolved_final_act
        if self.loss == "cross-entropy" and final != "softmax":
            errors.append(f"loss=cross-entropy needs final_act=softmax (or auto), got {final!r}")
        elif self.loss == "xe_logit" and final != "softmax_logit":
            errors.append(f"loss=xe_logit needs final_act=softmax_logit (or auto), got {final!r}")
        elif self.loss not in ("cross-entropy", "xe_logit"):
            try:
                make_activation(final)
            except ValueError as err:
                errors.append(f"final_act: {err}")
        if errors:
            raise ValueError("invalid GRU4Rec parameters: " + "; ".join(errors))

    @property
    def resolved_final_act(self) -> str:
        """The final activation actually used (``final_act`` with ``auto`` resolved)."""
        if self.final_act != "auto":
            return self.final_act
        if self.loss == "cross-entropy":
            return "softmax"
        if self.loss == "xe_logit":
            return "softmax_logit"
        if self.loss == "bpr-max" and self.elu_param > 0:
            return f"elu-{self.elu_param:g}"
        return "linear"

    def study_tag(self) -> str:
        """Loss and embedding mode: fixed within a tuning study, as the reference advises."""
        return f"{self.loss}-{self.embedding_mode}"

    @property
    def embedding_mode(self) -> str:
        """``"shared"``, ``"separate"`` or ``"none"``."""
        if self.constrained_embedding:
            return "shared"
        return "separate" if self.embedding > 0 else "none"

    @classmethod
    def _normalise(cls, values: dict[str, Any]) -> dict[str, Any]:
        """The reference shorthand ``embedding=layersize``: the size of the first layer."""
        if values.get("embedding") == "layersize":
            layers = values.get("layers", cls().layers)
            hint = typing.get_type_hints(cls)["layers"]
            values = {**values, "embedding": convert_value("GRU4Rec", "layers", layers, hint)[0]}
        return values


# ------------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class Activation:
    """An activation ``fn`` with its derivative expressed through its output ``y = fn(x)``."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    grad_from_output: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def make_activation(name: str) -> Activation:
    """The activation ``name``: linear, relu, tanh, leaky-X, elu-X, selu-X-Y (X = lambda, Y =
    alpha), as in the Theano original."""
    if name == "linear":
        return Activation(name, _identity, torch.ones_like)
    if name == "relu":
        return Activation(name, torch.relu, lambda y: (y > 0).to(y.dtype))
    if name == "tanh":
        return Activation(name, torch.tanh, lambda y: 1.0 - y * y)
    kind, _, args = name.partition("-")
    try:
        numbers = [float(x) for x in args.split("-")] if args else []
    except ValueError:
        numbers = []
    # every one is monotone with f(0) = 0, so the sign of the output is the sign of the input
    if kind == "leaky" and len(numbers) == 1:
        slope = numbers[0]
        return Activation(
            name,
            partial(F.leaky_relu, negative_slope=slope),
            lambda y: torch.where(y > 0, 1.0, slope).to(y.dtype),
        )
    if kind == "elu" and len(numbers) == 1:
        alpha = numbers[0]
        return Activation(
            name, partial(F.elu, alpha=alpha), lambda y: torch.where(y > 0, 1.0, y + alpha)
        )
    if kind == "selu" and len(numbers) == 2:
        scale, alpha = numbers
        return Activation(
            name,
            partial(_selu, scale=scale, alpha=alpha),
            lambda y: torch.where(y > 0, scale, y + scale * alpha),
        )
    raise ValueError(
        f"unknown activation {name!r}; use linear, relu, tanh, leaky-X, elu-X or selu-X-Y"
    )


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _selu(x: torch.Tensor, scale: float, alpha: float) -> torch.Tensor:
    return scale * F.elu(x, alpha=alpha)


# ----------------------------------------------------------------------------------- network


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Inverted dropout: each unit is zeroed with probability ``p``, survivors scaled 1/(1-p)."""
    mask = _dropout_mask(x, p, generator)
    return x if mask is None else x * mask


def _dropout_mask(
    x: torch.Tensor, p: float, generator: torch.Generator | None
) -> torch.Tensor | None:
    """The factor :func:`_dropout` multiplies ``x`` with (0 or ``1/(1-p)``), ``None`` if ``p <= 0``."""
    if p <= 0.0:
        return None
    return torch.empty_like(x).bernoulli_(1.0 - p, generator=generator).div_(1.0 - p)


def _gates_forward(
    gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, activation: Activation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h', rz, candidate)`` of a GRU step (see :class:`_GRUGates`)."""
    size = h.shape[1]
    rz = torch.add(gx[:, size:], gh[:, size:]).sigmoid_()
    candidate = activation(torch.addcmul(gx[:, :size], rz[:, :size], gh[:, :size]))
    return torch.lerp(h, candidate, rz[:, size:]), rz, candidate  # (1 - z) h + z candidate


def _gates_backward(
    grad: torch.Tensor,
    rz: torch.Tensor,
    candidate: torch.Tensor,
    gh: torch.Tensor,
    h: torch.Tensor,
    activation: Activation,
    need_h: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients ``(gx, gh, h)`` of a GRU step from the gradient ``grad [B, H]`` of ``h'``."""
    size = h.shape[1]
    r, z = rz[:, :size], rz[:, size:]
    grad_gx = torch.empty_like(gh)
    grad_gh = torch.empty_like(gh)
    d_cand = grad_gx[:, :size]  # d loss / d (pre-activation of the candidate)
    torch.mul(grad, z, out=d_cand).mul_(activation.grad_from_output(candidate))
    torch.mul(d_cand, r, out=grad_gh[:, :size])
    d_r = grad_gx[:, size : 2 * size]
    torch.mul(d_cand, gh[:, :size], out=d_r).mul_(r * (1.0 - r))
    d_z = grad_gx[:, 2 * size :]
    torch.sub(candidate, h, out=d_z).mul_(grad).mul_(z * (1.0 - z))
    grad_gh[:, size:] = grad_gx[:, size:]
    grad_h = grad * (1.0 - z) if need_h else None
    return grad_gx, grad_gh, grad_h


class _GRUGates(torch.autograd.Function):
    """The element-wise part of a GRU step, fused into one autograd node.

    Inputs ``gx [B, 3H]`` (input projection + bias), ``gh [B, 3H]`` (hidden projection) and
    ``h [B, H]``, all in blocks (candidate, reset, update); output ``h' [B, H]``. The backward
    pass writes the gradients of ``gx`` and ``gh`` directly instead of going through six slice
    nodes, which saves a dozen full-size temporaries per step.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, gx: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, activation: Activation
    ) -> torch.Tensor:
        out, rz, candidate = _gates_forward(gx, gh, h, activation)
        ctx.save_for_backward(rz, candidate, gh, h)
        ctx.activation = activation
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        rz, candidate, gh, h = ctx.saved_tensors
        grad_gx, grad_gh, grad_h = _gates_backward(
            grad, rz, candidate, gh, h, ctx.activation, ctx.needs_input_grad[2]
        )
        return grad_gx, grad_gh, grad_h, None


class _LayerCache(NamedTuple):
    """What the hand-written backward pass needs of one GRU layer's forward step."""

    x: torch.Tensor  # the layer's input (after input dropout; mode *none*, layer 0: Wx rows)
    h: torch.Tensor  # the previous state
    gh: torch.Tensor  # h Wh
    rz: torch.Tensor  # reset and update gates
    candidate: torch.Tensor
    mask_in: torch.Tensor | None  # input dropout factor (layer 0)
    mask_out: torch.Tensor | None  # output dropout factor


class GRULayer(nn.Module):
    """One GRU layer: ``Wx [n_in, 3H]``, ``Wh [H, 3H]``, ``Bh [3H]`` in blocks (cand., reset,
    update). In embedding mode *none* the first layer's ``Wx`` is the item-indexed table."""

    def __init__(self, n_in: int, size: int, activation: Activation) -> None:
        super().__init__()
        self.size = size
        self.activation = activation
        self.Wx = nn.Parameter(torch.empty(n_in, 3 * size))
        self.Wh = nn.Parameter(torch.empty(size, 3 * size))
        self.Bh = nn.Parameter(torch.zeros(3 * size))

    def cell(self, gx: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """New state ``[B, H]`` from the input projection ``gx [B, 3H]`` (bias included) and
        the previous state ``h [B, H]``."""
        return _GRUGates.apply(gx, torch.mm(h, self.Wh), h, self.activation)


def _reference_init(
    shape: tuple[int, ...] | torch.Size,
    fan_in: int,
    fan_out: int,
    sigma: float,
    init_as_normal: bool,
    generator: torch.Generator | None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Values ``shape`` (on the CPU) drawn by the reference rule: uniform
    ``+-sqrt(6 / (fan_in + fan_out))`` (``sigma > 0`` overrides the width), or ``N(0, width)``
    with ``init_as_normal``."""
    width = sigma if sigma > 0 else math.sqrt(6.0 / (fan_in + fan_out))
    values = torch.empty(shape, dtype=dtype)
    if init_as_normal:
        return values.normal_(0.0, width, generator=generator)
    return values.uniform_(-width, width, generator=generator)


class GRU4RecNetwork(nn.Module):
    """The GRU4Rec network: item tables, GRU layers, output ``Wy [n, H]`` and ``By [n]``."""

    def __init__(self, n_items: int, params: GRU4RecParams) -> None:
        super().__init__()
        self.n_items = n_items
        self.mode = params.embedding_mode
        self.dropout_p_embed = params.dropout_p_embed
        self.dropout_p_hidden = params.dropout_p_hidden
        layers = params.layers
        activation = make_activation(params.hidden_act)
        if self.mode == "separate":
            self.E = nn.Parameter(torch.empty(n_items, params.embedding))
        n_input = {"shared": layers[-1], "separate": params.embedding, "none": n_items}[self.mode]
        self.gru = nn.ModuleList(
            GRULayer(layers[i - 1] if i > 0 else n_input, size, activation)
            for i, size in enumerate(layers)
        )
        self.Wy = nn.Parameter(torch.empty(n_items, layers[-1]))
        self.By = nn.Parameter(torch.zeros(n_items))

    @property
    def input_table(self) -> torch.Tensor:
        """The item table the inputs are read from (``Wy``, ``E`` or the first ``Wx``)."""
        return {"shared": self.Wy, "separate": getattr(self, "E", None), "none": self.gru[0].Wx}[
            self.mode
        ]

    @property
    def item_tables(self) -> list[torch.Tensor]:
        """Parameters indexed by item (updated row-wise)."""
        tables = [self.Wy, self.By]
        return tables if self.mode == "shared" else [self.input_table, *tables]

    @torch.no_grad()
    def reset_parameters(
        self,
        sigma: float = 0.0,
        init_as_normal: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        """Reference initialisation (on the CPU generator ``generator``, then copied)."""

        def init(param: torch.Tensor, fan_in: int, fan_out: int) -> None:
            param.copy_(
                _reference_init(
                    param.shape, fan_in, fan_out, sigma, init_as_normal, generator, param.dtype
                )
            )

        if self.mode == "separate":
            init(self.E, *self.E.shape)
        for layer in self.gru:
            init(layer.Wx, layer.Wx.shape[0], layer.size)  # per gate block [n_in, H]
            init(layer.Wh, layer.size, layer.size)
            layer.Bh.zero_()
        init(self.Wy, *self.Wy.shape)
        self.By.zero_()

    def initial_state(self, batch_size: int) -> State:
        device = self.Wy.device
        return [torch.zeros(batch_size, layer.size, device=device) for layer in self.gru]

    def hidden_step(
        self,
        x: torch.Tensor,
        state: State,
        *,
        training: bool = False,
        generator: torch.Generator | None = None,
        cache: list[_LayerCache] | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Feed the input rows ``x`` (``[B, D]`` embeddings; mode *none*: ``[B, 3 H0]`` rows of
        the first ``Wx``) through the GRU layers; returns the output ``[B, H]`` and new state.

        ``cache``: a list that receives one :class:`_LayerCache` per layer, for a hand-written
        backward pass (:class:`_TrainStep`); call it under ``torch.no_grad()`` then."""
        new_state: State = []
        for i, layer in enumerate(self.gru):
            p_out = self.dropout_p_hidden
            mask_in = None
            if i == 0 and self.mode == "none":
                gx = x + layer.Bh  # one-hot input: x Wx is a row of Wx
                p_out = self.dropout_p_embed
            else:
                if i == 0 and training:
                    mask_in = _dropout_mask(x, self.dropout_p_embed, generator)
                    x = x if mask_in is None else x * mask_in
                gx = torch.addmm(layer.Bh, x, layer.Wx)
            h = state[i]
            if cache is None:
                out = layer.cell(gx, h)
            else:
                gh = torch.mm(h, layer.Wh)
                out, rz, candidate = _gates_forward(gx, gh, h, layer.activation)
            mask_out = _dropout_mask(out, p_out, generator) if training else None
            if mask_out is not None:
                out = out * mask_out
            if cache is not None:
                cache.append(_LayerCache(x, h, gh, rz, candidate, mask_in, mask_out))
            x = out
            new_state.append(out)
        return x, new_state

    def score(self, h: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[B, stop - start]`` of items ``start .. stop - 1`` for outputs ``h [B, H]``."""
        return torch.addmm(self.By[start:stop], h, self.Wy[start:stop].T)


# ---------------------------------------------------------------------------------- training


class _TrainStep:
    """One optimisation step on a :class:`SessionBatch`; holds the hidden state across steps.

    The forward pass runs without autograd (:meth:`GRU4RecNetwork.hidden_step` with a cache);
    autograd only differentiates the loss (final activation and loss, see :meth:`_loss`) with
    respect to the ``[B, U]`` scores of the unique output items, and the rest of the backward
    pass is written out: three GEMMs for the output layer, the fused gate gradients and three
    GEMMs per GRU layer, with no leaf copies, no transposed-gradient copies and no gradient of
    the (detached) previous state.
    """

    def __init__(
        self,
        net: GRU4RecNetwork,
        params: GRU4RecParams,
        optimizer: IndexedAdagradM,
        sampler: NegativeSampler | None,
        log_support: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        self.net, self.params, self.optimizer = net, params, optimizer
        self.sampler, self.log_support, self.generator = sampler, log_support, generator
        self.final_activation: Callable[[torch.Tensor], torch.Tensor] = (
            make_activation(params.resolved_final_act)
            if params.loss not in ("cross-entropy", "xe_logit")
            else _identity
        )
        self.dense = [p for p in net.parameters() if all(p is not t for t in net.item_tables)]
        self.state: State = net.initial_state(params.batch_size)
        self.skipped = 0
        # Gradient buffers reused every step: a fresh multi-MiB tensor per step costs page
        # faults (the allocator hands large blocks back to the OS), often more than its GEMM.
        self._dense_grads = {id(p): torch.empty_like(p) for p in self.dense}
        self._row_grads = torch.empty(0, net.Wy.shape[1], device=net.Wy.device)

    def __call__(self, batch: SessionBatch) -> tuple[torch.Tensor, int]:
        net, params = self.net, self.params
        state = self.state
        if batch.reset is not None:
            state = [h.masked_fill(batch.reset.unsqueeze(1), 0.0) for h in state]
        if batch.keep is not None:
            state = [h.index_select(0, batch.keep) for h in state]
        inputs, targets = batch.inputs, batch.targets
        n_rows = len(inputs)
        samples = self.sampler.next() if self.sampler is not None else None
        if n_rows + (0 if samples is None else len(samples)) < 2:  # no negative at all
            self.state, self.skipped = state, self.skipped + 1
            return torch.zeros((), device=inputs.device), 0
        outputs = targets if samples is None else torch.cat([targets, samples])
        shared = net.mode == "shared"

        with torch.no_grad():
            # One row per unique item [U, H] (duplicated samples share a row): the output layer
            # scores the U rows once, the loss reads its B + n_sample columns from them, and the
            # gradients come out summed per unique row: the reference's coalesced sparse
            # gradient. In mode shared the input rows are among them too.
            if shared:
                rows, inverse = torch.unique(torch.cat([inputs, outputs]), return_inverse=True)
                x_inverse, out_inverse = inverse[:n_rows], inverse[n_rows:]
            else:
                rows, out_inverse = torch.unique(outputs, return_inverse=True)
            out_rows = net.Wy.index_select(0, rows)  # [U, H]
            bias_rows = net.By.index_select(0, rows)  # [U]
            x = (
                out_rows.index_select(0, x_inverse)
                if shared
                else net.input_table.index_select(0, inputs)
            )
            cache: list[_LayerCache] = []
            h, new_state = net.hidden_step(
                x, state, training=True, generator=self.generator, cache=cache
            )
            scores = torch.addmm(bias_rows, h, out_rows.T)  # [B, U]

        with torch.enable_grad():
            scores.requires_grad_()
            loss = self._loss(scores, out_inverse, targets, samples)
            (grad,) = torch.autograd.grad(loss, scores)

        with torch.no_grad():
            # Without gradient clipping every dense parameter is updated as soon as its
            # gradient is complete (and no longer needed), while the gradient is still in cache.
            eager = params.grad_cap <= 0
            out_grad, bias_grad, input_grad, dense_grads = self._backward(
                grad, h, out_rows, cache, eager
            )
            if shared:  # the inputs' rows are output rows too
                out_grad.index_add_(0, x_inverse, input_grad)
            # (table, rows, gradient, current values of the rows or None); the rows read in
            # the forward pass are updated in place and copied back
            row_grads = [(net.Wy, rows, out_grad, out_rows)]
            if shared:  # By is read at the outputs only: update only those rows
                is_output = torch.zeros(len(rows), dtype=torch.bool, device=rows.device)
                is_output[out_inverse] = True
                row_grads.append(
                    (net.By, rows[is_output], bias_grad[is_output], bias_rows[is_output])
                )
            else:
                row_grads.append((net.By, rows, bias_grad, bias_rows))
                in_rows, in_inverse = torch.unique(inputs, return_inverse=True)
                in_grad = input_grad.new_zeros(len(in_rows), input_grad.shape[1])
                in_grad.index_add_(0, in_inverse, input_grad)
                row_grads.append((net.input_table, in_rows, in_grad, None))
            if not eager:
                clip_grad_norm(
                    [g for _, g in dense_grads] + [g for _, _, g, _ in row_grads], params.grad_cap
                )
                for param, dense_grad in dense_grads:
                    self.optimizer.step_param(param, dense_grad)
            for table, table_rows, row_grad, current in row_grads:
                self.optimizer.step_rows(table, table_rows, row_grad, current)
        self.state = new_state
        return loss.detach(), n_rows

    def _backward(
        self,
        grad: torch.Tensor,
        h: torch.Tensor,
        out_rows: torch.Tensor,
        cache: list[_LayerCache],
        update: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Gradients from ``grad [B, U]`` (of the scores): ``(output rows [U, H], biases [U],
        input rows [B, D] (mode none: [B, 3 H0]), [(dense parameter, gradient), ...])``;
        ``update``: apply the optimizer to each dense parameter as soon as it is done with."""
        net, optimizer = self.net, self.optimizer
        n_rows = grad.shape[1]
        if len(self._row_grads) < n_rows:
            self._row_grads = grad.new_empty(max(n_rows, 2 * len(self._row_grads)), h.shape[1])
        out_grad = torch.mm(grad.T, h, out=self._row_grads[:n_rows])  # [U, H]
        bias_grad = grad.sum(dim=0)
        grad_h = torch.mm(grad, out_rows)  # [B, H]
        dense: list[tuple[torch.Tensor, torch.Tensor]] = []
        buffers = self._dense_grads

        def done(param: torch.Tensor, param_grad: torch.Tensor) -> None:
            dense.append((param, param_grad))
            if update:
                optimizer.step_param(param, param_grad)

        for i in range(len(net.gru) - 1, -1, -1):
            layer, c = net.gru[i], cache[i]
            if c.mask_out is not None:
                grad_h = grad_h * c.mask_out
            grad_gx, grad_gh, _ = _gates_backward(
                grad_h, c.rz, c.candidate, c.gh, c.h, layer.activation
            )
            done(layer.Wh, torch.mm(c.h.T, grad_gh, out=buffers[id(layer.Wh)]))
            done(layer.Bh, torch.sum(grad_gx, dim=0, out=buffers[id(layer.Bh)]))
            if i == 0 and net.mode == "none":
                grad_h = grad_gx  # the rows of the first Wx: an item table
                break
            grad_x = torch.mm(grad_gx, layer.Wx.T)  # before Wx is updated
            done(layer.Wx, torch.mm(c.x.T, grad_gx, out=buffers[id(layer.Wx)]))
            grad_h = grad_x if c.mask_in is None else grad_x.mul_(c.mask_in)
        return out_grad, bias_grad, grad_h, dense

    def _loss(
        self,
        scores: torch.Tensor,
        columns: torch.Tensor,
        targets: torch.Tensor,
        samples: torch.Tensor | None,
    ) -> torch.Tensor:
        """The loss from the scores ``[B, U]`` of the unique items; ``columns [B + n_sample]``
        picks the loss's columns (targets, then samples) among them."""
        p = self.params
        n_rows = len(targets)
        if p.loss == "cross-entropy" and p.logq <= 0 and cross_entropy_loss is _CROSS_ENTROPY:
            # the built-in loss on the distinct columns, each weighted by its count (same loss
            # and gradient); a replaced cross_entropy_loss gets the [B, B + n_sample] scores
            count = torch.bincount(columns, minlength=scores.shape[1])
            return CrossEntropyFunction.apply(scores, columns[:n_rows], count) / p.batch_size
        if p.loss in ("cross-entropy", "xe_logit"):
            scores = scores.index_select(1, columns)  # [B, B + n_sample]
            correction = None
            if p.logq > 0:
                correction = logq_correction(
                    self.log_support, targets, samples, p.logq, p.sample_alpha
                )
            fn = cross_entropy_loss if p.loss == "cross-entropy" else xe_logit_loss
            return fn(scores, p.batch_size, correction)
        # element-wise: the activation of a column does not depend on where it is read from
        scores = self.final_activation(scores)
        if p.loss == "bpr-max":  # on the distinct columns, each weighted by its count
            count = torch.bincount(columns, minlength=scores.shape[1])
            loss = BPRMaxFunction.apply(scores, p.bpreg, columns[:n_rows], count)
            return loss / p.batch_size
        scores = scores.index_select(1, columns)
        if p.loss == "top1-max":
            return top1_max_loss(scores, p.batch_size)
        if p.loss == "top1":
            return top1_loss(scores, p.batch_size)
        return bpr_loss(scores, p.batch_size)


# ------------------------------------------------------------------------------------- model


class GRU4Rec(Recommender):
    """The trainable GRU4Rec model: a :class:`~recsys_pipeline.models.base.Recommender` of task
    ``next_item`` with the native step path (:class:`~recsys_pipeline.models.base.NextItemModel`)
    and the batched path (:meth:`encode`, the GRU run over padded sequences).

    Args:
        params: hyperparameters (default: the reference defaults).
        **overrides: parameter values replacing those of ``params``.
    """

    kind: ClassVar[str] = "gru4rec"
    task: ClassVar[str] = "next_item"
    params_class: ClassVar[type[ModelParams]] = GRU4RecParams
    #: batched path: the whole prefix is read (no window), sequences right-padded, no times
    maxlen: ClassVar[int | None] = None
    padding: ClassVar[str] = "right"
    uses_times: ClassVar[bool] = False
    prefix_consistent: ClassVar[bool] = True

    def __init__(self, params: GRU4RecParams | None = None, **overrides: Any) -> None:
        params = params or GRU4RecParams()
        self.params = dataclasses.replace(params, **overrides) if overrides else params
        self.item_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.net: GRU4RecNetwork | None = None
        self.history: list[EpochStats] = []
        #: one dict per :meth:`fine_tune` round (saved as ``fine_tune.json``)
        self.fine_tune_rounds: list[dict[str, Any]] = []
        self._optimizer: IndexedAdagradM | None = None
        self._device = resolve_device(self.params.device)

    # -- NextItemModel -----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._device

    def initial_state(self, batch_size: int) -> State:
        """Zero hidden states, one ``[batch_size, H_l]`` per layer."""
        return self._network().initial_state(batch_size)

    def reset_state(self, state: State, finished: torch.Tensor) -> State:
        """Zero the slots where ``finished [B]`` (bool) is True."""
        mask = finished.to(self._device).unsqueeze(1)
        return [h.masked_fill(mask, 0.0) for h in state]

    def keep_state(self, state: State, keep: torch.Tensor) -> State:
        """Keep the slots ``keep [B']`` (long indices)."""
        keep = keep.to(self._device)
        return [h.index_select(0, keep) for h in state]

    @torch.no_grad()
    def step(self, items: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Feed ``items [B]``; returns the query (last layer output ``[B, H]``) and new state."""
        net = self._network()
        x = net.input_table.index_select(0, items.to(self._device))
        return net.hidden_step(x, state, training=False)

    @torch.no_grad()
    def score(self, query: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Scores ``[B, stop - start]`` of items ``start .. stop - 1`` (``h . Wy + By``)."""
        return self._network().score(query, start, stop)

    @classmethod
    def prepare_training_data(cls, train: pl.DataFrame) -> SessionData:
        """The events grouped into sessions once (:func:`sessions_from_frame`)."""
        return sessions_from_frame(train)

    @torch.no_grad()
    def encode(self, batch: SequenceBatch, last_only: bool = False) -> torch.Tensor:
        """The batched path: queries ``[B, L, H]`` (last layer output after each position of
        the right-padded ``batch.items [B, L]``), or ``[B, H]`` at each row's last item. The
        same computation as :meth:`step` applied position by position (one GRU step over the
        ``B`` rows per position), so the ranks equal the step path's."""
        if batch.padding != "right":
            raise ValueError("GRU4Rec.encode needs right-padded batches")
        net = self._network()
        items = batch.items.to(self._device)
        n_rows, width = items.shape
        state = net.initial_state(n_rows)
        table = net.input_table
        outputs = []
        for t in range(width):
            x = table.index_select(0, items[:, t].clamp_min(0))
            h, state = net.hidden_step(x, state, training=False)
            outputs.append(h)
        if not outputs:
            return torch.zeros(n_rows, 0, net.Wy.shape[1], device=self._device)
        queries = torch.stack(outputs, dim=1)  # [B, L, H]
        if last_only:
            last = (batch.lengths.to(self._device) - 1).clamp_min(0)
            return queries[torch.arange(n_rows, device=self._device), last]
        return queries

    def recommend(
        self, inputs: Any, k: int = 20, *, exclude_seen: bool = False, **kwargs: Any
    ) -> RecommendResult:
        """Top-``k`` next items after each session (raw item ids); see
        :func:`recsys_pipeline.serving.recommend.recommend`."""
        from recsys_pipeline.serving.recommend import recommend

        return recommend(self, inputs, k=k, exclude_seen=exclude_seen, **kwargs)

    # -- training ----------------------------------------------------------------------------
    def fit(
        self,
        train: pl.DataFrame | SessionData,
        valid: pl.DataFrame | None = None,
        *,
        session_key: str = "SessionId",
        item_key: str = "ItemId",
        time_key: str = "Time",
        progress: bool = True,
        callback: Callable[[EpochStats], None] | None = None,
        checkpoint_dir: str | Path | None = None,
    ) -> Self:
        """Train from scratch on ``train`` (one row per event, or prepared :class:`SessionData`).

        ``checkpoint_dir``: write a checkpoint after every epoch (weights, optimizer state,
        random generators, the negative-sample store, history; ``torch.load(...,
        weights_only=True)``) and, when a checkpoint of the same parameters and data is there,
        continue after its epoch instead of starting over: a killed run resumes and ends with
        the weights of an uninterrupted run. The checkpoint is removed when training ends.

        ``valid`` is not used: GRU4Rec trains for ``n_epochs`` as the reference does, without a
        validation split (a warning says so if one is given); ``callback`` can evaluate after
        every epoch, as the tune pipeline does.

        The item vocabulary is the set of training items (ascending raw ids). ``callback`` is
        called after every epoch with its :class:`EpochStats` (e.g. for pruning). The optimizer
        (its Adagrad accumulators and velocities) stays on the model for :meth:`fine_tune` and
        is saved with it.

        Raises:
            FloatingPointError: the loss became NaN/inf (the model is left untrained).
        """
        p = self.params
        if valid is not None:
            logger.warning("GRU4Rec.fit: valid is not used (the reference has no validation)")
        data = (
            train
            if isinstance(train, SessionData)
            else sessions_from_frame(
                train, session_key=session_key, item_key=item_key, time_key=time_key
            )
        )
        if data.n_targets == 0:
            raise ValueError("no training targets: every session has fewer than 2 events")
        self.item_ids = data.item_ids
        init_generator = torch.Generator().manual_seed(p.seed)
        net = GRU4RecNetwork(data.n_items, p)
        net.reset_parameters(p.sigma, p.init_as_normal, init_generator)
        self.net = net.to(self._device)
        self.history = []
        self.fine_tune_rounds = []
        self._optimizer = self._new_optimizer(p.learning_rate)
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
        self._train(
            data,
            n_epochs=p.n_epochs,
            seed=p.seed + 1,
            progress=progress,
            callback=callback,
            checkpoint=checkpoint,
        )
        if checkpoint is not None:
            remove_checkpoint(checkpoint)
        return self

    def _new_optimizer(self, learning_rate: float) -> IndexedAdagradM:
        """A fresh optimizer (zero accumulators and velocities) over the network's parameters."""
        p = self.params
        return IndexedAdagradM(
            self._network().parameters(),
            lr=learning_rate,
            momentum=p.momentum,
            lmbd=p.lmbd,
            adapt=p.adapt,
        )

    def _train(
        self,
        data: SessionData,
        *,
        n_epochs: int,
        seed: int,
        progress: bool,
        callback: Callable[[EpochStats], None] | None,
        checkpoint: Path | None = None,
    ) -> None:
        """Run ``n_epochs`` epochs on ``data`` (indexed by :attr:`item_ids`) with the model's
        network and optimizer, appending to :attr:`history` (epoch numbers continue).

        ``seed`` seeds the device generator (samples, dropout); ``seed + 1`` the session order.
        The negative sampler's popularity is the support of ``data``. ``checkpoint``: the file
        of :meth:`fit`'s per-epoch checkpoints (resumed from when it matches).
        """
        p, net, optimizer, device = self.params, self._network(), self._optimizer, self._device
        assert optimizer is not None
        device_generator = torch.Generator(device=device).manual_seed(seed)
        support = data.support()
        sampler = None
        if p.n_sample > 0:
            store = p.sample_store_size
            if device.type == "cpu":
                store = min(store, _CPU_SAMPLE_STORE)
            sampler = NegativeSampler(
                support,
                p.n_sample,
                p.sample_alpha,
                store_size=store,
                device=device,
                generator=device_generator,
            )
        log_support = torch.log(torch.as_tensor(np.maximum(support, 1), dtype=torch.float32))
        step = _TrainStep(net, p, optimizer, sampler, log_support.to(device), device_generator)
        iterator = SessionParallelIterator(data.items, data.offsets, p.batch_size, device=device)
        base_order = data.session_order(p.time_sort)
        order_rng = np.random.default_rng(seed + 1)
        logger.info(
            "GRU4Rec: %d items, %d sessions, %d targets/epoch, device %s",
            data.n_items,
            data.n_sessions,
            iterator.n_targets,
            device,
        )
        logger.debug("GRU4Rec parameters: %s", p.to_string())
        first_epoch = self.history[-1].epoch + 1 if self.history else 1
        last_epoch = first_epoch + n_epochs - 1
        fingerprint = _fingerprint(p, data, seed) if checkpoint is not None else ""
        if checkpoint is not None:
            saved = read_checkpoint(checkpoint, fingerprint)
            if saved is not None:
                net.load_state_dict(saved["net"])
                _load_optimizer_state(net, optimizer, saved["optimizer"])
                device_generator.set_state(saved["generator"])
                if sampler is not None:
                    sampler.load_state_dict(saved["sampler"])
                order_rng.bit_generator.state = json.loads(saved["order_rng"])
                self.history = history_from_json(saved["history"])
                step.skipped = int(saved["skipped"])
                first_epoch = self.history[-1].epoch + 1
                logger.info(
                    "GRU4Rec: resuming from %s, continuing at epoch %d of %d",
                    checkpoint,
                    first_epoch,
                    last_epoch,
                )
        for epoch in range(first_epoch, last_epoch + 1):
            order = order_rng.permutation(base_order) if p.train_random_order else base_order
            plan = iterator.plan(order)
            step.state = net.initial_state(plan.n_slots)
            try:
                stats = run_epoch(
                    iterator.epoch(order),
                    step,
                    epoch=epoch,
                    device=device,
                    total=plan.n_steps,
                    progress=progress,
                    desc="GRU4Rec",
                )
            except FloatingPointError:
                self.net = None  # never leave a diverged model behind
                self._optimizer = None
                raise
            self.history.append(stats)
            if checkpoint is not None:
                write_checkpoint(
                    checkpoint,
                    {
                        "format": CHECKPOINT_FORMAT,
                        "fingerprint": fingerprint,
                        "epoch": epoch,
                        "net": net.state_dict(),
                        "optimizer": _optimizer_state_dict(net, optimizer),
                        "generator": device_generator.get_state(),
                        "sampler": {} if sampler is None else sampler.state_dict(),
                        "order_rng": json.dumps(order_rng.bit_generator.state),
                        "history": json.dumps([s.to_dict() for s in self.history]),
                        "skipped": step.skipped,
                    },
                )
            if callback is not None:
                callback(stats)
        if step.skipped:
            logger.warning("%d mini-batches without any negative were skipped", step.skipped)

    # -- fine-tuning (scheduled retraining) ----------------------------------------------------
    def fine_tune(
        self,
        new_train: pl.DataFrame | SessionData,
        *,
        n_epochs: int | None = None,
        learning_rate: float | None = None,
        optimizer_state: str = "carry",
        session_key: str = "SessionId",
        item_key: str = "ItemId",
        time_key: str = "Time",
        progress: bool = True,
        callback: Callable[[EpochStats], None] | None = None,
    ) -> Self:
        """Continue training the fitted model on ``new_train`` (e.g. the latest days of events).

        * Vocabulary: the old items keep their indices and rows; the items of ``new_train``
          that are not in it are appended in ascending raw-id order (a :class:`SessionData`
          must already be indexed by the grown vocabulary, see :meth:`grow_items`). Every
          item-indexed table grows (:meth:`grow_items`).
        * Optimizer: ``"carry"`` continues with the Adagrad accumulators and velocities of the
          previous training (fit or fine-tune, or as loaded from ``optimizer.pt``), grown with
          zero rows for the new items; ``"reset"`` starts from zero state (as :meth:`fit` does).
          A model without optimizer state (saved before it was persisted) needs ``"reset"``.
        * Negative samples: the popularity is the support in ``new_train`` only; items that do
          not occur in it have support 0 and are never sampled as negatives in this round;
          as they are no inputs or targets either, their rows do not change (the optimizer
          updates only the rows a step touches).
        * Randomness: round ``k`` (1, 2, ... over the model's lifetime, saved with it) seeds
          the new rows with ``seed + 3k``, samples and dropout with ``seed + 3k + 1`` and the
          session order with ``seed + 3k + 2`` (:meth:`fit` uses ``seed .. seed + 2``).
        * History: the new epochs are appended, their numbers continuing the old ones; the
          round is recorded in :attr:`fine_tune_rounds`.

        Args:
            new_train: the new events (columns ``session_key``, ``item_key``, ``time_key``).
            n_epochs: epochs of this round (default ``params.n_epochs``; 0 only grows).
            learning_rate: learning rate of this round (default ``params.learning_rate``).
            optimizer_state: ``"carry"`` or ``"reset"``.
            progress: show a progress bar.
            callback: called with the :class:`EpochStats` of every epoch.

        Raises:
            RuntimeError: the model is not fitted, or ``"carry"`` without optimizer state.
            ValueError: a bad argument, or ``new_train`` has no training target.
            FloatingPointError: the loss became NaN/inf; the model is then left unusable
                (``net`` is None): reload the saved model.
        """
        p = self.params
        self._network()
        n_epochs, learning_rate = fine_tune_round(
            p, n_epochs, learning_rate, optimizer_state, self._optimizer is not None
        )
        if isinstance(new_train, SessionData):
            data = new_train
            if not np.array_equal(data.item_ids[: self.n_items], self.item_ids):
                raise ValueError("SessionData.item_ids must start with the model's item_ids")
            new_ids = data.item_ids[self.n_items :]
        else:
            new_ids = self.new_item_ids(new_train.get_column(item_key))
            vocab = self._extended_item_ids(new_ids)
            data = sessions_from_frame(
                new_train.with_columns(new_train.get_column(item_key).cast(vocab.dtype)),
                item_ids=vocab.to_numpy(),
                session_key=session_key,
                item_key=item_key,
                time_key=time_key,
            )
        if data.n_targets == 0:  # checked before anything changes
            raise ValueError("no training targets: every session has fewer than 2 events")
        round_index = len(self.fine_tune_rounds) + 1
        seed = p.seed + 3 * round_index
        n_old = self.n_items
        self.grow_items(new_ids, generator=torch.Generator().manual_seed(seed))
        if optimizer_state == "reset":
            self._optimizer = self._new_optimizer(learning_rate)
        else:
            assert self._optimizer is not None
            self._optimizer.lr = learning_rate
        first_epoch = self.history[-1].epoch + 1 if self.history else 1
        logger.info(
            "GRU4Rec fine-tune round %d: %d old + %d new items, %d epochs from epoch %d, "
            "lr %g, optimizer %s",
            round_index,
            n_old,
            self.n_items - n_old,
            n_epochs,
            first_epoch,
            learning_rate,
            optimizer_state,
        )
        self._train(data, n_epochs=n_epochs, seed=seed + 1, progress=progress, callback=callback)
        self.fine_tune_rounds.append(
            {
                "round": round_index,
                "n_old_items": n_old,
                "n_new_items": self.n_items - n_old,
                "n_epochs": n_epochs,
                "first_epoch": first_epoch,
                "learning_rate": learning_rate,
                "optimizer_state": optimizer_state,
                "n_events": data.n_events,
                "n_sessions": data.n_sessions,
            }
        )
        return self

    def new_item_ids(self, ids: np.ndarray | pl.Series | list[Any]) -> np.ndarray:
        """The distinct ids of ``ids`` outside the vocabulary, ascending ``[n_new]``."""
        series = pl.Series(ids) if not isinstance(ids, pl.Series) else ids
        vocab = pl.Series(self.item_ids)
        distinct = series.cast(vocab.dtype).unique().sort()  # strict cast: foreign ids fail
        return distinct.filter(~distinct.is_in(vocab)).to_numpy()

    def _extended_item_ids(self, new_ids: np.ndarray) -> pl.Series:
        """The vocabulary followed by ``new_ids`` (cast to the vocabulary's type)."""
        vocab = pl.Series(self.item_ids)
        return pl.concat([vocab, pl.Series(new_ids).cast(vocab.dtype)])

    @torch.no_grad()
    def grow_items(
        self, new_ids: np.ndarray | list[Any], *, generator: torch.Generator | None = None
    ) -> Self:
        """Append the items ``new_ids [n_new]`` (not in the vocabulary) to the vocabulary.

        Every item-indexed parameter grows by ``n_new`` rows (``Wy [n, H]``, ``By [n]``, and
        ``E [n, X]`` or the first ``Wx [n, 3 H0]`` in modes *separate* / *none*); the old rows
        are kept bit for bit, so the scores of old items do not change. The new rows follow the
        reference rule of :meth:`GRU4RecNetwork.reset_parameters` for the grown table (width
        ``sqrt(6 / (n_total + d))`` with ``d`` the row size, per gate block for ``Wx``, or
        ``sigma``; biases zero), drawn from ``generator`` in the order ``E``/``Wx``, ``Wy``.
        The optimizer state (if any) grows with zero rows.
        """
        net = self._network()
        new_ids = np.asarray(new_ids)
        if len(new_ids) == 0:
            return self
        if np.isin(new_ids, self.item_ids).any() or len(np.unique(new_ids)) != len(new_ids):
            raise ValueError("new item ids must be distinct and outside the vocabulary")
        optimizer_state = (
            None if self._optimizer is None else _optimizer_state_dict(net, self._optimizer)
        )
        n_total = self.n_items + len(new_ids)
        _grow_item_tables(net, self.params, n_total, generator)
        self.item_ids = self._extended_item_ids(new_ids).to_numpy()
        if optimizer_state is not None:
            assert self._optimizer is not None
            grown = _grow_optimizer_state(net, optimizer_state)
            self._optimizer = self._new_optimizer(self._optimizer.lr)
            _load_optimizer_state(net, self._optimizer, grown)
        return self

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path, *, optimizer: bool = True) -> Path:
        """Write ``weights.pt`` (state_dict), ``model.json`` (kind, format version, params),
        ``item_ids.json`` and ``history.json`` into the directory ``path``; ``optimizer.pt`` (Adagrad accumulators
        and velocities by parameter name, see :meth:`optimizer_state_dict`) when the model has
        optimizer state and ``optimizer`` is True (``False``: e.g. for serving); and
        ``fine_tune.json`` (the rounds of :meth:`fine_tune`) once the model was fine-tuned."""
        net = self._network()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), directory / "weights.pt")
        write_model_json(directory, self)
        write_ids(directory / "item_ids.json", self.item_ids)
        (directory / "history.json").write_text(
            jsonio.dumps([s.to_dict() for s in self.history], indent=2)
        )
        keep = optimizer and self._optimizer is not None
        state = self.optimizer_state_dict() if keep else None
        save_fine_tune_state(directory, state, self.fine_tune_rounds)
        return directory

    @classmethod
    @checked_load
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> GRU4Rec:
        """Load a model written by :meth:`save` (tensors with ``weights_only=True``); a folder
        without ``optimizer.pt`` loads without optimizer state (fine-tune it with ``reset``).
        Folders written before ``model.json`` existed (``params.json`` instead) load too."""
        directory = Path(path)
        params = load_saved_params(directory, cls.kind, GRU4RecParams)
        if device is not None:
            params = dataclasses.replace(params, device=str(device))
        model = cls(params)
        model.item_ids = read_ids(directory / "item_ids.json")
        net = GRU4RecNetwork(len(model.item_ids), params)
        weights = directory / "weights.pt"
        load_weights(net, load_tensors(weights, model.device), weights)
        model.net = net.to(model.device)
        history = directory / "history.json"
        if history.exists():
            model.history = [
                EpochStats(**{k: v for k, v in s.items() if k in EpochStats.__dataclass_fields__})
                for s in read_json(history)
            ]
        state, model.fine_tune_rounds = load_fine_tune_state(directory, model.device)
        if state is not None:
            model._optimizer = model._new_optimizer(params.learning_rate)
            _load_optimizer_state(net, model._optimizer, state)
        return model

    def optimizer_state_dict(self) -> dict[str, torch.Tensor]:
        """The optimizer state: ``acc.<parameter name>`` (Adagrad accumulators) and
        ``velocity.<parameter name>`` (momentum), each shaped like its parameter (empty
        ``{}`` without optimizer state; keys absent when ``adapt="sgd"`` / ``momentum=0``)."""
        if self._optimizer is None:
            return {}
        return _optimizer_state_dict(self._network(), self._optimizer)

    def to(self, device: str | torch.device) -> Self:
        """Move the model (and its optimizer state) to ``device``."""
        self._device = resolve_device(device)
        if self.net is not None:
            self.net.to(self._device)
        if self.net is not None and self._optimizer is not None:  # its state follows
            state = {k: v.to(self._device) for k, v in self.optimizer_state_dict().items()}
            self._optimizer = self._new_optimizer(self._optimizer.lr)
            _load_optimizer_state(self.net, self._optimizer, state)
        return self

    def _network(self) -> GRU4RecNetwork:
        if self.net is None:
            raise RuntimeError("the model is not trained: call fit() or GRU4Rec.load() first")
        return self.net


def _fingerprint(params: GRU4RecParams, data: SessionData, seed: int) -> str:
    """What a checkpoint must match to be resumed: the parameters (device aside), the seed and
    the training data (items, session boundaries, vocabulary)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({**params.to_dict(), "device": None, "seed_used": seed}).encode())
    for array in (data.items, data.offsets, data.first_time):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps(np.asarray(data.item_ids).tolist(), default=str).encode())
    return digest.hexdigest()


# ------------------------------------------------------- fine-tuning: item growth, optimizer state
# The optimizer state is exchanged as a flat ``{"acc.<name>" | "velocity.<name>": tensor}`` dict
# over the network's parameter names (``optimizer.pt``), so that it survives parameters being
# replaced (item growth) or moved, and loads with ``torch.load(..., weights_only=True)``.


def _item_table_names(net: GRU4RecNetwork) -> set[str]:
    """Names of the item-indexed parameters (first dimension ``n_items``)."""
    names = {"Wy", "By"}
    if net.mode == "separate":
        names.add("E")
    elif net.mode == "none":
        names.add("gru.0.Wx")
    return names


@torch.no_grad()
def _grow_item_tables(
    net: GRU4RecNetwork,
    params: GRU4RecParams,
    n_total: int,
    generator: torch.Generator | None,
) -> None:
    """Grow every item table of ``net`` from ``net.n_items`` to ``n_total`` rows (new
    :class:`~torch.nn.Parameter` objects; old rows copied). New rows: the reference rule for a
    ``[n_total, d]`` table (as in :meth:`GRU4RecNetwork.reset_parameters`), biases zero."""
    n_new = n_total - net.n_items
    if n_new <= 0:
        return

    def grown(param: torch.Tensor, fan_out: int | None) -> nn.Parameter:
        shape = (n_new, *param.shape[1:])
        if fan_out is None:  # a bias: zero, as reset_parameters
            rows = torch.zeros(shape, dtype=param.dtype)
        else:
            rows = _reference_init(
                shape, n_total, fan_out, params.sigma, params.init_as_normal, generator, param.dtype
            )
        return nn.Parameter(torch.cat([param.detach(), rows.to(param.device)]))

    if net.mode == "separate":
        net.E = grown(net.E, net.E.shape[1])
    elif net.mode == "none":
        first = net.gru[0]
        first.Wx = grown(first.Wx, first.size)  # per gate block [n, H0]
    net.Wy = grown(net.Wy, net.Wy.shape[1])
    net.By = grown(net.By, None)
    net.n_items = n_total


def _optimizer_state_dict(
    net: GRU4RecNetwork, optimizer: IndexedAdagradM
) -> dict[str, torch.Tensor]:
    """``{"acc.<name>": [shape of the parameter], "velocity.<name>": ...}`` of ``optimizer``."""
    state: dict[str, torch.Tensor] = {}
    for name, param in net.named_parameters():
        if param in optimizer.acc:
            state[f"acc.{name}"] = optimizer.acc[param]
        if param in optimizer.velocity:
            state[f"velocity.{name}"] = optimizer.velocity[param]
    return state


@torch.no_grad()
def _load_optimizer_state(
    net: GRU4RecNetwork, optimizer: IndexedAdagradM, state: dict[str, torch.Tensor]
) -> None:
    """Copy ``state`` (from :func:`_optimizer_state_dict`) into a fresh ``optimizer`` over
    ``net``'s parameters; the keys and shapes must match exactly.

    Raises:
        ValueError: missing or unexpected keys, or a shape mismatch.
    """
    expected = _optimizer_state_dict(net, optimizer)
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(
            f"optimizer state does not fit the model (adapt={optimizer.adapt}, "
            f"momentum={optimizer.momentum}): missing {missing}, unexpected {extra}"
        )
    for key, target in expected.items():
        value = state[key]
        if value.shape != target.shape:
            raise ValueError(
                f"optimizer state {key}: shape {tuple(value.shape)}, the model needs "
                f"{tuple(target.shape)}"
            )
        target.copy_(value)


def _grow_optimizer_state(
    net: GRU4RecNetwork, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with the item tables' accumulators/velocities padded with zero rows up to the
    (grown) ``net``'s tables; the other entries unchanged."""
    shapes = {name: param.shape for name, param in net.named_parameters()}
    items = _item_table_names(net)
    out = {}
    for key, value in state.items():
        name = key.split(".", 1)[1]
        pad = shapes[name][0] - value.shape[0]
        grown = value
        if name in items and pad > 0:
            grown = torch.cat([value, value.new_zeros((pad, *value.shape[1:]))])
        out[key] = grown
    return out
