"""NeuMF (He et al., WWW 2017, "Neural Collaborative Filtering"), with the training recipe of
NVIDIA's NCF example (DeepLearningExamples/PyTorch/Recommendation/NCF)::

    params = NeuMFParams.from_string("factors=64,layers=256/256/128/64,n_epochs=20")
    model = NeuMF(params).fit(train, valid, valid_negatives)   # polars: UserId, ItemId, (Time)
    scores = model.score_all(torch.arange(10))                   # [10, n_items] logits
    ids, scores = model.recommend(raw_user_ids, k=10)            # training items excluded

Network (``F`` = ``factors``, ``L_0 .. L_m`` = ``layers``; ``u`` user, ``i`` item)
--------------------------------------------------------------------------------
* GMF branch: ``g = P_u * Q_i`` with embeddings ``P [n_users, F]``, ``Q [n_items, F]``.
* MLP branch: ``x_0 = [U_u ; V_i]`` with separate embeddings ``U [n_users, L_0 / 2]``,
  ``V [n_items, L_0 / 2]`` (``L_0`` is the width of the concatenation, as in NVIDIA's
  ``--layers``), then ``x_l = dropout(relu(W_l x_{l-1} + b_l))`` for ``l = 1 .. m``.
* Output: ``logit = h . [g ; x_m] + b``, ``prediction = sigmoid(logit)``. Training uses
  BCE-with-logits; ranking uses the logits (same order as the probabilities).
* ``model=gmf`` / ``model=mlp`` keep one branch (the paper's GMF and MLP models).
* Initialisation (NVIDIA's choice): embeddings ``N(0, 0.01)``; MLP weights Glorot (Xavier)
  uniform; the output layer LeCun uniform ``U(+-sqrt(3 / fan_in))``; biases zero.
* Pretraining (paper, Sec. 3.4.1): ``fit(..., pretrained=(gmf, mlp))`` copies the embeddings and
  MLP layers of a trained GMF and a trained MLP model and sets ``h = [alpha h_GMF ; (1 - alpha)
  h_MLP]``, ``b = alpha b_GMF + (1 - alpha) b_MLP`` (``alpha = 0.5``). The paper then trains with
  plain SGD; we keep Adam (set a lower ``learning_rate`` if the pretrained model degrades).

Training: every positive plus ``negative_samples`` negatives per positive, drawn on the device in
bulk for the whole epoch (:mod:`recsys_pipeline.training.interactions`), shuffled, mini-batches of
``batch_size`` (global: split over data-parallel ranks), Adam(betas 0.25/0.5), optional gradient
accumulation, AMP (bf16/fp16) and fused Adam on CUDA only, early stop when the sampled validation
HR@10 reaches ``threshold``. Inside a ``torch.distributed`` process group (``torchrun``) the network
is wrapped in ``DistributedDataParallel`` and every rank trains on its shard of each epoch
(:mod:`recsys_pipeline.commands.neumf_ddp`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.evaluation.user_ranking import sampled_ranking
from recsys_pipeline.models.base import (
    ModelParams,
    Recommender,
    RecommendResult,
    load_saved_params,
    write_model_json,
)
from recsys_pipeline.models.params import fine_tune_round
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
from recsys_pipeline.training.interactions import (
    NEGATIVE_MODES,
    PositiveSet,
    UserItemData,
    check_exact_possible,
    epoch_samples,
    iterate_batches,
)
from recsys_pipeline.training.trainer import run_epoch

logger = logging.getLogger(__name__)

__all__ = ["AMP_MODES", "MODELS", "NeuMF", "NeuMFNetwork", "NeuMFParams"]

MODELS = ("neumf", "gmf", "mlp")
AMP_MODES = ("auto", "off", "bf16", "fp16")
_SCORE_ELEMENTS = 2**24  # [U, C, L_1] activations per item chunk of score_all

# --------------------------------------------------------------------------------- parameters


@dataclass
class NeuMFParams(ModelParams):
    """Hyperparameters; names and defaults follow NVIDIA's NCF example (``ncf.py``) except
    ``batch_size`` (reference ``2**20`` on a GPU; ``2**14`` suits a CPU) and ``n_epochs``
    (reference 30). ``batch_size`` is global: each of ``W`` data-parallel ranks takes
    ``batch_size // W``. ``grad_accumulation`` steps are summed (losses divided by it) before an
    optimizer step. ``amp`` (CUDA only; ``auto`` = bf16 where supported, else fp16),
    ``negative_mode`` (``approximate`` as the reference, or ``exact``), ``alpha`` (pretraining
    mix), ``device`` and ``seed`` are ours."""

    model_name: ClassVar[str] = "NeuMF"
    shape_fields: ClassVar[tuple[str, ...]] = ("model", "factors", "layers")

    def study_tag(self) -> str:
        """The architecture (``neumf``, ``gmf`` or ``mlp``): fixed within a tuning study."""
        return self.model

    model: str = "neumf"
    factors: int = 64
    layers: list[int] = field(default_factory=lambda: [256, 256, 128, 64])
    dropout: float = 0.5
    negative_samples: int = 4
    negative_mode: str = "approximate"
    learning_rate: float = 0.0045
    beta1: float = 0.25
    beta2: float = 0.5
    eps: float = 1e-8
    batch_size: int = 2**14
    grad_accumulation: int = 1
    n_epochs: int = 30
    threshold: float = 1.0
    alpha: float = 0.5
    amp: str = "auto"
    device: str = "auto"
    seed: int = 42

    def __post_init__(self) -> None:
        self.layers = [int(x) for x in self.layers]
        errors = []
        if self.model not in MODELS:
            errors.append(f"model must be one of {MODELS}, got {self.model!r}")
        if self.factors < 1:
            errors.append(f"factors must be >= 1, got {self.factors}")
        if not self.layers or min(self.layers) < 1 or self.layers[0] % 2:
            errors.append(f"layers must be positive sizes, the first even, got {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout is a drop probability in [0, 1), got {self.dropout}")
        if self.negative_mode not in NEGATIVE_MODES:
            errors.append(f"negative_mode must be one of {NEGATIVE_MODES}")
        if self.amp not in AMP_MODES:
            errors.append(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        for name in ("batch_size", "grad_accumulation", "n_epochs"):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.negative_samples < 0 or self.learning_rate <= 0 or not 0 <= self.alpha <= 1:
            errors.append("need negative_samples >= 0, learning_rate > 0, 0 <= alpha <= 1")
        if errors:
            raise ValueError("invalid NeuMF parameters: " + "; ".join(errors))


# ------------------------------------------------------------------------------------ network


class NeuMFNetwork(nn.Module):
    """GMF and/or MLP branch and the output layer (see the module docstring)."""

    def __init__(self, n_users: int, n_items: int, params: NeuMFParams) -> None:
        super().__init__()
        self.kind = params.model
        self.n_items = n_items
        width = 0
        if self.kind in ("neumf", "gmf"):
            self.mf_user = nn.Embedding(n_users, params.factors)  # P [n_users, F]
            self.mf_item = nn.Embedding(n_items, params.factors)  # Q [n_items, F]
            width += params.factors
        if self.kind in ("neumf", "mlp"):
            half = params.layers[0] // 2
            self.mlp_user = nn.Embedding(n_users, half)  # U [n_users, L_0 / 2]
            self.mlp_item = nn.Embedding(n_items, half)  # V [n_items, L_0 / 2]
            sizes = params.layers
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
            self.dropout = nn.Dropout(params.dropout)
            width += sizes[-1]
        self.final = nn.Linear(width, 1)  # h [1, width], b [1]

    @property
    def has_gmf(self) -> bool:
        return self.kind in ("neumf", "gmf")

    @property
    def has_mlp(self) -> bool:
        return self.kind in ("neumf", "mlp")

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """NVIDIA's initialisation: N(0, 0.01) embeddings, Glorot MLP, LeCun output layer."""
        with torch.no_grad():
            for emb in self._embeddings():
                nn.init.normal_(emb.weight, 0.0, 0.01, generator=generator)
            for layer in self.mlp if self.has_mlp else []:
                nn.init.xavier_uniform_(layer.weight, generator=generator)
                layer.bias.zero_()
            bound = math.sqrt(3.0 / self.final.in_features)
            nn.init.uniform_(self.final.weight, -bound, bound, generator=generator)
            self.final.bias.zero_()

    def _embeddings(self) -> list[nn.Embedding]:
        out = [self.mf_user, self.mf_item] if self.has_gmf else []
        return out + ([self.mlp_user, self.mlp_item] if self.has_mlp else [])

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits ``[B]`` of the pairs ``(users [B], items [B])``."""
        parts = []
        if self.has_gmf:
            parts.append(self.mf_user(users) * self.mf_item(items))  # [B, F]
        if self.has_mlp:
            x = torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=1)  # [B, L_0]
            for layer in self.mlp:
                x = self.dropout(F.relu(layer(x)))  # [B, L_l]
            parts.append(x)
        return self.final(torch.cat(parts, dim=1)).squeeze(1)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits ``[U, n_items]`` for ``users [U]`` (call in eval mode, without autograd).

        The first MLP layer is split into its user and item halves, computed once each
        (``[U, L_1]`` and ``[n_items, L_1]``) and added per pair; items go in chunks so that at
        most about ``2**24`` activations ``[U, C, L_1]`` are held.
        """
        w, b = self.final.weight[0], self.final.bias[0]
        scores = torch.full((users.shape[0], self.n_items), float(b), device=users.device)
        f = 0
        if self.has_gmf:
            f = self.mf_user.embedding_dim
            scores += (self.mf_user(users) * w[:f]) @ self.mf_item.weight.t()  # [U, n_items]
        if not self.has_mlp:
            return scores
        w_mlp = w[f:]
        pu, qi = self.mlp_user(users), self.mlp_item.weight  # [U, L_0/2], [n_items, L_0/2]
        if len(self.mlp) == 0:  # no hidden layer: the output is linear in [U_u ; V_i]
            half = pu.shape[1]
            return scores + (pu @ w_mlp[:half]).unsqueeze(1) + qi @ w_mlp[half:]
        first = self.mlp[0]
        half = pu.shape[1]
        user_part = pu @ first.weight[:, :half].t() + first.bias  # [U, L_1]
        item_part = qi @ first.weight[:, half:].t()  # [n_items, L_1]
        chunk = max(1, _SCORE_ELEMENTS // max(1, users.shape[0] * first.out_features))
        for a in range(0, self.n_items, chunk):
            x = F.relu(user_part.unsqueeze(1) + item_part[a : a + chunk].unsqueeze(0))
            for layer in self.mlp[1:]:
                x = F.relu(layer(x))  # [U, C, L_l]
            scores[:, a : a + chunk] += x @ w_mlp
        return scores


def init_from_pretrained(
    net: NeuMFNetwork, gmf: NeuMFNetwork, mlp: NeuMFNetwork, alpha: float = 0.5
) -> None:
    """Initialise a NeuMF ``net`` from a trained GMF and MLP network (NCF paper, Sec. 3.4.1)."""
    if net.kind != "neumf" or gmf.kind != "gmf" or mlp.kind != "mlp":
        raise ValueError("pretraining needs a neumf network, a gmf and an mlp network")
    with torch.no_grad():
        for name in ("mf_user", "mf_item"):
            getattr(net, name).weight.copy_(getattr(gmf, name).weight)
        for name in ("mlp_user", "mlp_item"):
            getattr(net, name).weight.copy_(getattr(mlp, name).weight)
        for mine, theirs in zip(net.mlp, mlp.mlp, strict=True):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
        f = gmf.final.in_features
        net.final.weight[:, :f] = alpha * gmf.final.weight
        net.final.weight[:, f:] = (1.0 - alpha) * mlp.final.weight
        net.final.bias.copy_(alpha * gmf.final.bias + (1.0 - alpha) * mlp.final.bias)


# ------------------------------------------------------------------------------------- model


class NeuMF(Recommender):
    """Trainable NeuMF / GMF / MLP: a :class:`~recsys_pipeline.models.base.Recommender` of task
    ``user_item`` (and a :class:`~recsys_pipeline.evaluation.user_ranking.UserModel`).

    Args:
        params: hyperparameters (default: :class:`NeuMFParams`).
        **overrides: parameter values replacing those of ``params``.
    """

    kind: ClassVar[str] = "neumf"
    task: ClassVar[str] = "user_item"
    params_class: ClassVar[type[ModelParams]] = NeuMFParams

    def __init__(self, params: NeuMFParams | None = None, **overrides: Any) -> None:
        params = params or NeuMFParams()
        self.params = dataclasses.replace(params, **overrides) if overrides else params
        self.user_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.item_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.train_indptr = np.zeros(1, dtype=np.int64)  # training items per user, CSR
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.net: NeuMFNetwork | None = None
        self.history: list[dict[str, float]] = []
        #: one dict per :meth:`fine_tune` round (saved as ``fine_tune.json``)
        self.fine_tune_rounds: list[dict[str, Any]] = []
        #: Adam of the last training (fit / fine_tune / optimizer.pt), for :meth:`fine_tune`
        self._optimizer: torch.optim.Adam | None = None
        self._device = resolve_device(self.params.device)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def device(self) -> torch.device:
        return self._device

    # -- scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits of ``items [U]`` or ``[U, C]`` for ``users [U]`` (user/item indices)."""
        net = self._network()
        users, items = users.to(self._device), items.to(self._device)
        flat_users = users.unsqueeze(1).expand_as(items).reshape(-1) if items.dim() == 2 else users
        with _eval_mode(net):
            return net(flat_users, items.reshape(-1)).float().reshape(items.shape)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Logits ``[U, n_items]`` of every item for ``users [U]`` (user indices)."""
        net = self._network()
        with _eval_mode(net):
            return net.score_all(users.to(self._device)).float()

    def recommend(
        self,
        inputs: Sequence[Any] | np.ndarray,
        k: int = 10,
        exclude_train: bool = True,
        **kwargs: Any,
    ) -> RecommendResult:
        """Top-``k`` raw item ids ``[U, k]`` and their logits ``[U, k]`` for the raw user ids
        ``inputs`` (unpacks as ``ids, scores``); ``exclude_train`` leaves each user's training
        items out.

        Raises:
            ValueError: a user is not in the training data.
        """
        if kwargs:
            raise TypeError(f"NeuMF.recommend got unexpected arguments {sorted(kwargs)}")
        idx = _index_of(self.user_ids, np.asarray(inputs))  # vocab is unsorted after fine_tune
        if self.n_users == 0 or (idx < 0).any():
            raise ValueError("recommend() got user ids that are not in the training data")
        scores = self.score_all(torch.from_numpy(idx.astype(np.int64)))
        if exclude_train:
            starts, stops = self.train_indptr[idx], self.train_indptr[idx + 1]
            rows = np.repeat(np.arange(len(idx)), stops - starts)
            cols = np.concatenate([self.train_indices[a:b] for a, b in zip(starts, stops)] or [[]])
            scores[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = -math.inf
        top = scores.topk(min(k, self.n_items), dim=1)
        indices = top.indices.cpu().numpy()
        return RecommendResult(
            self.item_ids[indices], top.values.cpu().numpy(), indices, exclude_train
        )

    # -- training ----------------------------------------------------------------------------
    def fit(
        self,
        train: pl.DataFrame,
        valid: pl.DataFrame | None = None,
        valid_negatives: pl.DataFrame | None = None,
        *,
        pretrained: tuple[NeuMF, NeuMF] | None = None,
        user_key: str = "UserId",
        item_key: str = "ItemId",
        progress: bool = True,
        callback: Callable[[dict[str, float]], None] | None = None,
    ) -> Self:
        """Train from scratch (or from ``pretrained = (gmf, mlp)``) on ``train``.

        ``valid`` + ``valid_negatives`` (NCF split) give the sampled validation HR@10 logged
        after every epoch and used for the early stop at ``threshold``. Inside an initialised
        ``torch.distributed`` process group the network is trained data-parallel.

        Raises:
            FloatingPointError: the loss became NaN/inf (the model is left untrained).
        """
        p = self.params
        data = UserItemData.from_frame(train, user_key, item_key)
        if p.negative_mode == "exact":
            check_exact_possible(data)
        rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        device = self._device
        self.user_ids, self.item_ids = data.user_ids, data.item_ids
        self.train_indptr, self.train_indices = data.csr()
        net = NeuMFNetwork(data.n_users, data.n_items, p)
        net.reset_parameters(torch.Generator().manual_seed(p.seed))
        if pretrained is not None:
            self._check_pretrained(*pretrained)
            init_from_pretrained(net, pretrained[0]._network(), pretrained[1]._network(), p.alpha)
        self.net = net.to(device)
        self.history = []
        self.fine_tune_rounds = []
        self._optimizer = self._new_optimizer(p.learning_rate)
        logger.info(
            "NeuMF (%s): %d users, %d items, %d positives, %d samples/epoch, rank %d/%d, "
            "device %s, %s",
            p.model, data.n_users, data.n_items, data.n_positives,
            data.n_positives * (1 + p.negative_samples), rank, world, device, p.to_string(),
        )  # fmt: skip
        positives = (
            PositiveSet(data.users, data.items, data.n_items, device)
            if p.negative_mode == "exact"
            else None
        )
        self._train(
            data.users, data.items, positives, n_epochs=p.n_epochs, seed=p.seed + 1,
            first_epoch=1, valid=valid, valid_negatives=valid_negatives, user_key=user_key,
            item_key=item_key, progress=progress, callback=callback,
        )  # fmt: skip
        return self

    def _new_optimizer(self, learning_rate: float) -> torch.optim.Adam:
        """A fresh Adam (zero moments) over the network's parameters (fused on CUDA)."""
        p = self.params
        return torch.optim.Adam(
            self._network().parameters(),
            lr=learning_rate,
            betas=(p.beta1, p.beta2),
            eps=p.eps,
            fused=self._device.type == "cuda",
        )

    def _train(
        self,
        users: np.ndarray,
        items: np.ndarray,
        positives: PositiveSet | None,
        *,
        n_epochs: int,
        seed: int,
        first_epoch: int,
        valid: pl.DataFrame | None,
        valid_negatives: pl.DataFrame | None,
        user_key: str,
        item_key: str,
        progress: bool,
        callback: Callable[[dict[str, float]], None] | None,
    ) -> None:
        """``n_epochs`` epochs over the positive pairs ``(users [N], items [N])`` (indices) with
        the model's network and optimizer, appending to :attr:`history` (epochs numbered from
        ``first_epoch``). Negatives and the epoch order are drawn from ``seed``, dropout masks
        from ``seed + 1``."""
        p, net, optimizer = self.params, self._network(), self._optimizer
        assert optimizer is not None
        rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
        device = self._device
        train_net: nn.Module = net
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            train_net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        cuda = device.type == "cuda"
        amp_dtype = _amp_dtype(p.amp, device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        users_t = torch.from_numpy(users).to(device)
        items_t = torch.from_numpy(items).to(device)
        n_items = self.n_items
        sample_gen = torch.Generator(device=device).manual_seed(seed)
        local_batch = max(1, p.batch_size // world)
        logger.info("NeuMF training: amp %s, epochs %d from %d", amp_dtype, n_epochs, first_epoch)
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.manual_seed(seed + 1)  # dropout masks
            for epoch in range(first_epoch, first_epoch + n_epochs):
                samples = epoch_samples(
                    users_t, items_t, n_items, p.negative_samples, p.negative_mode,
                    positives, sample_gen, rank, world,
                )  # fmt: skip
                n_batches = math.ceil(len(samples) / local_batch)
                step = _TrainStep(train_net, optimizer, scaler, amp_dtype, p, n_batches, world)
                net.train()
                try:
                    stats = run_epoch(
                        iterate_batches(samples, local_batch), step, epoch=epoch, device=device,
                        total=n_batches, progress=progress and rank == 0, desc="NeuMF",
                    )  # fmt: skip
                except FloatingPointError:
                    self.net = None  # never leave a diverged model behind
                    self._optimizer = None
                    raise
                record = {**stats.to_dict(), "loss": _mean_over_ranks(stats.loss, device, world)}
                record["samples_per_s"] = record["targets_per_s"] * world
                if valid is not None and valid_negatives is not None:
                    result = sampled_ranking(self, valid, valid_negatives, (10,), user_key=user_key, item_key=item_key)  # fmt: skip
                    record.update({k: v for k, v in result.items() if "@" in k})
                hr = next((v for k, v in record.items() if k.endswith("_hr@10")), math.nan)
                self.history.append(record)
                logger.info(
                    "NeuMF epoch %d: loss %.5f, %.2f s, %.0f samples/s, valid sampled HR@10 %.4f",
                    epoch, record["loss"], stats.seconds, record["samples_per_s"], hr,
                )  # fmt: skip
                if callback is not None:
                    callback(record)
                if hr >= p.threshold:
                    logger.info("valid HR@10 %.4f >= threshold %.4f: stop", hr, p.threshold)
                    break
        net.eval()

    def _check_pretrained(self, gmf: NeuMF, mlp: NeuMF) -> None:
        p = self.params
        if p.model != "neumf" or gmf.params.model != "gmf" or mlp.params.model != "mlp":
            raise ValueError("pretrained=(gmf, mlp) needs model=neumf, a gmf and an mlp model")
        if gmf.params.factors != p.factors or mlp.params.layers != p.layers:
            raise ValueError("pretrained models need the same factors / layers")
        for other in (gmf, mlp):
            if not (
                np.array_equal(other.user_ids, self.user_ids)
                and np.array_equal(other.item_ids, self.item_ids)
            ):
                raise ValueError("pretrained models were trained on other users/items")

    # -- fine-tuning (scheduled retraining; not in the reference) -----------------------------
    def fine_tune(
        self,
        new_train: pl.DataFrame,
        valid: pl.DataFrame | None = None,
        valid_negatives: pl.DataFrame | None = None,
        *,
        n_epochs: int | None = None,
        learning_rate: float | None = None,
        optimizer_state: str = "carry",
        user_key: str = "UserId",
        item_key: str = "ItemId",
        progress: bool = True,
        callback: Callable[[dict[str, float]], None] | None = None,
    ) -> Self:
        """Continue training the fitted model on ``new_train`` (e.g. the latest interactions).

        * Vocabularies: old users/items keep their indices and rows; those first seen in
          ``new_train`` are appended in ascending raw-id order (so ``user_ids`` / ``item_ids``
          are no longer sorted once an appended id is below an old one). Every embedding table
          grows (:meth:`grow`).
        * Training: the epochs run over the positives of ``new_train`` only (negatives drawn
          over all items; ``exact`` mode excludes every known positive, old and new). Adam
          updates every row (dense gradients and moments), as in :meth:`fit`.
        * Optimizer: ``"carry"`` continues with the Adam moments and step counts of the
          previous training (fit, fine-tune, or ``optimizer.pt``), the moments grown with zero
          rows for the new users/items; ``"reset"`` starts a fresh Adam (as :meth:`fit`). A
          model loaded without ``optimizer.pt`` needs ``"reset"``.
        * ``recommend(exclude_train=True)`` then excludes the union of old and new positives.
        * Randomness: round ``k`` (1, 2, ... over the model's lifetime, saved with it) draws
          the new rows from ``seed + 3k``, negatives/order from ``seed + 3k + 1`` and dropout
          from ``seed + 3k + 2`` (:meth:`fit` uses ``seed .. seed + 2``).
        * History: the new epochs are appended, their numbers continuing the old ones; the
          round is recorded in :attr:`fine_tune_rounds`.

        Args:
            new_train: the new interactions (columns ``user_key``, ``item_key``).
            valid, valid_negatives: as in :meth:`fit` (sampled HR@10 per epoch, early stop).
            n_epochs: epochs of this round (default ``params.n_epochs``; 0 only grows).
            learning_rate: learning rate of this round (default ``params.learning_rate``).
            optimizer_state: ``"carry"`` or ``"reset"``.
            progress: show a progress bar.
            callback: called with every epoch's record.

        Raises:
            RuntimeError: the model is not fitted, or ``"carry"`` without optimizer state.
            ValueError: a bad argument or an empty / malformed ``new_train`` (nothing changed).
            FloatingPointError: the loss became NaN/inf; ``net`` is then None (reload).
        """
        p = self.params
        self._network()
        n_epochs, learning_rate = fine_tune_round(
            p, n_epochs, learning_rate, optimizer_state, self._optimizer is not None
        )
        for col in (user_key, item_key):
            if col not in new_train.columns:
                raise ValueError(f"frame has no column {col!r} (columns: {new_train.columns})")
        if new_train.height == 0:
            raise ValueError("empty interaction frame")
        # everything is computed and checked before the model changes
        raw_users = new_train.get_column(user_key).to_numpy()
        raw_items = new_train.get_column(item_key).to_numpy()
        new_users = _new_ids(self.user_ids, raw_users)
        new_items = _new_ids(self.item_ids, raw_items)
        user_ids = np.concatenate([self.user_ids, new_users])
        item_ids = np.concatenate([self.item_ids, new_items])
        n_items = len(item_ids)
        keys = np.unique(_index_of(user_ids, raw_users) * n_items + _index_of(item_ids, raw_items))
        users, items = keys // n_items, keys % n_items  # new positives, by user then item
        old_users = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.train_indptr))
        union = np.union1d(old_users * n_items + self.train_indices.astype(np.int64), keys)
        union_data = UserItemData(user_ids, item_ids, union // n_items, union % n_items)
        if p.negative_mode == "exact":
            check_exact_possible(union_data)

        round_index = len(self.fine_tune_rounds) + 1
        seed = p.seed + 3 * round_index
        n_old_users, n_old_items = self.n_users, self.n_items
        self.grow(new_users, new_items, generator=torch.Generator().manual_seed(seed))
        self.train_indptr, self.train_indices = union_data.csr()
        if optimizer_state == "reset":
            self._optimizer = self._new_optimizer(learning_rate)
        else:
            assert self._optimizer is not None
            for group in self._optimizer.param_groups:
                group["lr"] = learning_rate
        for name, ids in (("user_ids", self.user_ids), ("item_ids", self.item_ids)):
            if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
                logger.warning(
                    "NeuMF %s are no longer ascending after fine-tuning: look them up by value "
                    "(not with searchsorted on the vocabulary)",
                    name,
                )
        first_epoch = int(self.history[-1]["epoch"]) + 1 if self.history else 1
        logger.info(
            "NeuMF fine-tune round %d: %d + %d users, %d + %d items, %d positives, %d epochs "
            "from epoch %d, lr %g, optimizer %s",
            round_index, n_old_users, len(new_users), n_old_items, len(new_items), len(keys),
            n_epochs, first_epoch, learning_rate, optimizer_state,
        )  # fmt: skip
        positives = (
            PositiveSet(union_data.users, union_data.items, n_items, self._device)
            if p.negative_mode == "exact"
            else None
        )
        self._train(
            users, items, positives, n_epochs=n_epochs, seed=seed + 1, first_epoch=first_epoch,
            valid=valid, valid_negatives=valid_negatives, user_key=user_key, item_key=item_key,
            progress=progress, callback=callback,
        )  # fmt: skip
        self.fine_tune_rounds.append(
            {
                "round": round_index,
                "n_old_users": n_old_users,
                "n_new_users": len(new_users),
                "n_old_items": n_old_items,
                "n_new_items": len(new_items),
                "n_epochs": n_epochs,
                "first_epoch": first_epoch,
                "learning_rate": learning_rate,
                "optimizer_state": optimizer_state,
                "n_positives": len(keys),
            }
        )
        return self

    @torch.no_grad()
    def grow(
        self,
        new_user_ids: np.ndarray | Sequence[Any] = (),
        new_item_ids: np.ndarray | Sequence[Any] = (),
        *,
        generator: torch.Generator | None = None,
    ) -> Self:
        """Append users / items (distinct, outside the vocabularies) in the given order.

        Every user table (``P``, ``U``) grows by ``len(new_user_ids)`` rows and every item table
        (``Q``, ``V``) by ``len(new_item_ids)``, drawn ``N(0, 0.01)`` as
        :meth:`NeuMFNetwork.reset_parameters` from ``generator`` (on the CPU, in the order
        ``P``, ``Q``, ``U``, ``V``); the old rows are kept bit for bit, so old users' scores of
        old items do not change. The new users have no training items. The Adam state (if any)
        grows with zero moment rows (the per-parameter step counts are kept).
        """
        net = self._network()
        new_users, new_items = np.asarray(new_user_ids), np.asarray(new_item_ids)
        for ids, vocab, what in ((new_users, self.user_ids, "user"), (new_items, self.item_ids, "item")):  # fmt: skip
            if np.isin(ids, vocab).any() or len(np.unique(ids)) != len(ids):
                raise ValueError(f"new {what} ids must be distinct and outside the vocabulary")
        if len(new_users) == 0 and len(new_items) == 0:
            return self
        state = None if self._optimizer is None else _optimizer_state_dict(net, self._optimizer)
        lr = None if self._optimizer is None else self._optimizer.param_groups[0]["lr"]
        _grow_tables(net, len(new_users), len(new_items), generator)
        self.user_ids = _concat_ids(self.user_ids, new_users)
        self.item_ids = _concat_ids(self.item_ids, new_items)
        last = self.train_indptr[-1]
        self.train_indptr = np.concatenate(
            [self.train_indptr, np.full(len(new_users), last, dtype=self.train_indptr.dtype)]
        )
        if state is not None:
            self._optimizer = self._new_optimizer(lr)
            _load_optimizer_state(net, self._optimizer, _grow_optimizer_state(net, state))
        return self

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path, *, optimizer: bool = True) -> Path:
        """Write ``weights.pt`` (state dict), ``model.json``, ``user_ids.json``,
        ``item_ids.json``, ``history.json`` and ``train_items.npz`` (training items per user,
        CSR, for ``recommend``) into the directory ``path``; ``optimizer.pt`` (Adam state by
        parameter name, see :meth:`optimizer_state_dict`) when the model has optimizer state
        and ``optimizer`` is True; ``fine_tune.json`` once the model was fine-tuned."""
        net = self._network()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), directory / "weights.pt")
        write_model_json(directory, self)
        write_ids(directory / "user_ids.json", self.user_ids)
        write_ids(directory / "item_ids.json", self.item_ids)
        (directory / "history.json").write_text(jsonio.dumps(self.history, indent=2))
        np.savez(
            directory / "train_items.npz", indptr=self.train_indptr, indices=self.train_indices
        )
        keep = optimizer and self._optimizer is not None
        state = self.optimizer_state_dict() if keep else None
        save_fine_tune_state(directory, state, self.fine_tune_rounds)
        return directory

    @classmethod
    @checked_load
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> NeuMF:
        """Load a model written by :meth:`save` (tensors with ``weights_only=True``); a folder
        without ``optimizer.pt`` loads without optimizer state (fine-tune it with ``reset``).
        Folders written before ``model.json`` existed (``params.json`` instead) load too."""
        directory = Path(path)
        params = load_saved_params(directory, cls.kind, NeuMFParams)
        if device is not None:
            params = dataclasses.replace(params, device=str(device))
        model = cls(params)
        model.user_ids = read_ids(directory / "user_ids.json")
        model.item_ids = read_ids(directory / "item_ids.json")
        net = NeuMFNetwork(model.n_users, model.n_items, params)
        weights = directory / "weights.pt"
        load_weights(net, load_tensors(weights, model.device), weights)
        model.net = net.to(model.device).eval()
        with np.load(directory / "train_items.npz", allow_pickle=False) as csr:
            model.train_indptr, model.train_indices = csr["indptr"], csr["indices"]
        history = directory / "history.json"
        if history.exists():
            model.history = read_json(history)
        state, model.fine_tune_rounds = load_fine_tune_state(directory, model.device)
        if state is not None:
            model._optimizer = model._new_optimizer(params.learning_rate)
            _load_optimizer_state(model.net, model._optimizer, state)
        return model

    def optimizer_state_dict(self) -> dict[str, torch.Tensor]:
        """The Adam state by parameter name: ``exp_avg.<name>``, ``exp_avg_sq.<name>`` (shaped
        like the parameter) and ``step.<name>`` (scalar); ``{}`` without optimizer state."""
        if self._optimizer is None:
            return {}
        return _optimizer_state_dict(self._network(), self._optimizer)

    def _network(self) -> NeuMFNetwork:
        if self.net is None:
            raise RuntimeError("the model is not trained: call fit() or NeuMF.load() first")
        return self.net


# ------------------------------------------------- fine-tuning: vocabulary growth, optimizer state
# The Adam state is exchanged as a flat ``{"exp_avg.<name>" | "exp_avg_sq.<name>" |
# "step.<name>": tensor}`` dict over the network's parameter names (``optimizer.pt``), so that it
# survives parameters being replaced (growth) or moved, and loads with ``weights_only=True``.

_USER_TABLES = ("mf_user", "mlp_user")
_ITEM_TABLES = ("mf_item", "mlp_item")
_ADAM_KEYS = ("exp_avg", "exp_avg_sq", "step")


def _index_of(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of every value in the (not necessarily sorted) ``vocab``, ``-1`` where absent."""
    values = np.asarray(values)
    if len(vocab) == 0:
        return np.full(len(values), -1, dtype=np.int64)
    order = np.argsort(vocab, kind="stable")
    ordered = vocab[order]
    pos = np.searchsorted(ordered, values).clip(0, len(vocab) - 1)
    return np.where(ordered[pos] == values, order[pos], -1).astype(np.int64)


def _new_ids(vocab: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The distinct ``values`` outside ``vocab``, ascending."""
    distinct = np.unique(np.asarray(values))
    return distinct[_index_of(vocab, distinct) < 0]


def _concat_ids(vocab: np.ndarray, new: np.ndarray) -> np.ndarray:
    if len(new) == 0:
        return vocab
    return np.concatenate([vocab, new]) if len(vocab) else np.asarray(new)


@torch.no_grad()
def _grow_tables(
    net: NeuMFNetwork, n_new_users: int, n_new_items: int, generator: torch.Generator | None
) -> None:
    """Append ``N(0, 0.01)`` rows to every embedding table (new ``Parameter`` objects)."""
    for emb in net._embeddings():
        is_user = any(emb is getattr(net, name, None) for name in _USER_TABLES)
        n_new = n_new_users if is_user else n_new_items
        if n_new == 0:
            continue
        old = emb.weight
        rows = torch.empty(n_new, old.shape[1], dtype=old.dtype)
        rows.normal_(0.0, 0.01, generator=generator)
        emb.weight = nn.Parameter(torch.cat([old.detach(), rows.to(old.device)]))
        emb.num_embeddings = emb.weight.shape[0]
    net.n_items += n_new_items


def _optimizer_state_dict(
    net: NeuMFNetwork, optimizer: torch.optim.Adam
) -> dict[str, torch.Tensor]:
    """``{"exp_avg.<name>": ..., "exp_avg_sq.<name>": ..., "step.<name>": ...}`` (detached
    copies) of the parameters that have Adam state."""
    out: dict[str, torch.Tensor] = {}
    for name, param in net.named_parameters():
        state = optimizer.state.get(param, {})
        for key in _ADAM_KEYS:
            if key in state:
                out[f"{key}.{name}"] = state[key].detach().clone()
    return out


@torch.no_grad()
def _load_optimizer_state(
    net: NeuMFNetwork, optimizer: torch.optim.Adam, state: dict[str, torch.Tensor]
) -> None:
    """Put ``state`` (from :func:`_optimizer_state_dict`) into a fresh Adam over ``net``.

    Raises:
        ValueError: unknown keys, an incomplete parameter state, or a shape mismatch.
    """
    params = dict(net.named_parameters())
    names = {key.split(".", 1)[1] for key in state}
    unknown = sorted(k for k in state if k.split(".", 1)[0] not in _ADAM_KEYS)
    unknown += sorted(n for n in names if n not in params)
    if unknown:
        raise ValueError(f"optimizer state does not fit the model: unexpected {unknown}")
    fused = bool(optimizer.param_groups[0].get("fused"))
    for name in names:
        param = params[name]
        missing = [k for k in _ADAM_KEYS if f"{k}.{name}" not in state]
        if missing:
            raise ValueError(f"optimizer state of {name!r} lacks {missing}")
        moments = {k: state[f"{k}.{name}"] for k in ("exp_avg", "exp_avg_sq")}
        for key, value in moments.items():
            if value.shape != param.shape:
                raise ValueError(
                    f"optimizer state {key}.{name}: shape {tuple(value.shape)}, the model needs "
                    f"{tuple(param.shape)}"
                )
        step = state[f"step.{name}"].detach().reshape(())
        optimizer.state[param] = {
            # as torch.optim.Adam keeps it: float32, on the parameter's device only when fused
            "step": step.to(torch.float32).to(param.device if fused else "cpu").clone(),
            **{k: v.to(param.device, param.dtype).clone() for k, v in moments.items()},
        }


def _grow_optimizer_state(
    net: NeuMFNetwork, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state`` with the moments of the (grown) embedding tables padded with zero rows."""
    shapes = {name: param.shape for name, param in net.named_parameters()}
    out = {}
    for key, value in state.items():
        kind, name = key.split(".", 1)
        pad = shapes[name][0] - value.shape[0] if kind != "step" else 0
        zeros = value.new_zeros((max(pad, 0), *value.shape[1:]))
        out[key] = torch.cat([value, zeros]) if pad > 0 else value
    return out


# ---------------------------------------------------------------------------------- training


class _TrainStep:
    """One mini-batch: BCE-with-logits, backward (AMP / accumulation / DDP sync), and an Adam
    step every ``grad_accumulation`` mini-batches and after the epoch's last one."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        amp_dtype: torch.dtype | None,
        params: NeuMFParams,
        n_batches: int,
        world: int,
    ) -> None:
        self.net, self.optimizer, self.scaler, self.amp_dtype = net, optimizer, scaler, amp_dtype
        self.accumulate = params.grad_accumulation
        self.n_batches, self.world = n_batches, world
        self.done = 0

    def __call__(
        self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        users, items, labels = batch
        self.done += 1
        update = self.done % self.accumulate == 0 or self.done == self.n_batches
        sync = contextlib.nullcontext()
        if self.world > 1 and not update:
            sync = self.net.no_sync()  # type: ignore[operator]
        autocast = (
            torch.autocast("cuda", dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with sync:
            with autocast:
                logits = self.net(users, items)  # [B]
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            scaled = loss / self.accumulate
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if update:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), int(labels.shape[0])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _mean_over_ranks(value: float, device: torch.device, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``amp`` on ``device`` (``None``: full precision). CUDA only."""
    if amp == "off" or device.type != "cuda":
        if amp in ("bf16", "fp16") and device.type != "cuda":
            logger.warning("amp=%s ignored: mixed precision is used on CUDA only", amp)
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> typing.Iterator[None]:
    was_training = net.training
    net.eval()
    try:
        yield
    finally:
        net.train(was_training)
