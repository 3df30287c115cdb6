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
(:mod:`recsys_pipeline.neumf_ddp`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recsys_pipeline.evaluation.user_ranking import sampled_ranking
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
class NeuMFParams:
    """Hyperparameters; names and defaults follow NVIDIA's NCF example (``ncf.py``) except
    ``batch_size`` (reference ``2**20`` on a GPU; ``2**14`` suits a CPU) and ``n_epochs``
    (reference 30). ``batch_size`` is global: each of ``W`` data-parallel ranks takes
    ``batch_size // W``. ``grad_accumulation`` steps are summed (losses divided by it) before an
    optimizer step. ``amp`` (CUDA only; ``auto`` = bf16 where supported, else fp16),
    ``negative_mode`` (``approximate`` as the reference, or ``exact``), ``alpha`` (pretraining
    mix), ``device`` and ``seed`` are ours."""

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

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NeuMFParams:
        """From a mapping (e.g. YAML); values may be typed or strings (lists: ``256/128``).

        Raises:
            ValueError: an unknown name (the message lists the valid ones) or a bad value.
        """
        valid = cls.field_names()
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown NeuMF parameter(s) {unknown}; valid names: {', '.join(valid)}"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{k: _convert(k, v, hints[k]) for k, v in values.items()})

    @classmethod
    def from_string(cls, text: str) -> NeuMFParams:
        """From ``name=value,name=value`` (``/`` separates list items)."""
        values: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"parameter {item!r} is not of the form name=value")
            values[name.strip()] = value.strip()
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_string(self) -> str:
        def fmt(v: Any) -> str:
            return "/".join(map(str, v)) if isinstance(v, list) else str(v)

        return ",".join(f"{k}={fmt(v)}" for k, v in self.to_dict().items())


def _convert(name: str, value: Any, hint: Any) -> Any:
    try:
        if typing.get_origin(hint) is list:
            if isinstance(value, str):
                value = value.split("/")
            elif isinstance(value, int | float):
                value = [value]
            return [_as_int(x) for x in value]
        if hint is int:
            return _as_int(value)
        return float(value) if hint is float else str(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad value for NeuMF parameter {name!r}: {err}") from err


def _as_int(value: Any) -> int:
    number = float(value) if isinstance(value, str) else value
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"not an integer: {value!r}")
    return int(number)


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


class NeuMF:
    """Trainable NeuMF / GMF / MLP; a :class:`~recsys_pipeline.evaluation.user_ranking.UserModel`.

    Args:
        params: hyperparameters (default: :class:`NeuMFParams`).
        **overrides: parameter values replacing those of ``params``.
    """

    def __init__(self, params: NeuMFParams | None = None, **overrides: Any) -> None:
        params = params or NeuMFParams()
        self.params = dataclasses.replace(params, **overrides) if overrides else params
        self.user_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.item_ids: np.ndarray = np.empty(0, dtype=np.int64)
        self.train_indptr = np.zeros(1, dtype=np.int64)  # training items per user, CSR
        self.train_indices = np.zeros(0, dtype=np.int64)
        self.net: NeuMFNetwork | None = None
        self.history: list[dict[str, float]] = []
        self._device = resolve_device(self.params.device)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

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
        self, users: Sequence[Any] | np.ndarray, k: int = 10, exclude_train: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` raw item ids ``[U, k]`` and their logits ``[U, k]`` for raw user ids.

        Raises:
            ValueError: a user is not in the training data.
        """
        raw = np.asarray(users)
        idx = np.searchsorted(self.user_ids, raw).clip(0, max(self.n_users - 1, 0))
        if self.n_users == 0 or (self.user_ids[idx] != raw).any():
            raise ValueError("recommend() got user ids that are not in the training data")
        scores = self.score_all(torch.from_numpy(idx.astype(np.int64)))
        if exclude_train:
            starts, stops = self.train_indptr[idx], self.train_indptr[idx + 1]
            rows = np.repeat(np.arange(len(idx)), stops - starts)
            cols = np.concatenate([self.train_indices[a:b] for a, b in zip(starts, stops)] or [[]])
            scores[torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))] = -math.inf
        top = scores.topk(min(k, self.n_items), dim=1)
        return self.item_ids[top.indices.cpu().numpy()], top.values.cpu().numpy()

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
        train_net: nn.Module = net
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            train_net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        cuda = device.type == "cuda"
        optimizer = torch.optim.Adam(
            net.parameters(), lr=p.learning_rate, betas=(p.beta1, p.beta2), eps=p.eps, fused=cuda
        )
        amp_dtype = _amp_dtype(p.amp, device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        users_t = torch.from_numpy(data.users).to(device)
        items_t = torch.from_numpy(data.items).to(device)
        positives = (
            PositiveSet(data.users, data.items, data.n_items, device)
            if p.negative_mode == "exact"
            else None
        )
        sample_gen = torch.Generator(device=device).manual_seed(p.seed + 1)
        local_batch = max(1, p.batch_size // world)
        logger.info(
            "NeuMF (%s): %d users, %d items, %d positives, %d samples/epoch, rank %d/%d, "
            "device %s, amp %s, %s",
            p.model, data.n_users, data.n_items, data.n_positives,
            data.n_positives * (1 + p.negative_samples), rank, world, device, amp_dtype, p.to_string(),
        )  # fmt: skip
        with torch.random.fork_rng(devices=[device] if cuda else []):
            torch.manual_seed(p.seed + 2)  # dropout masks
            for epoch in range(1, p.n_epochs + 1):
                samples = epoch_samples(
                    users_t, items_t, data.n_items, p.negative_samples, p.negative_mode,
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
        return self

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

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``weights.pt`` (state dict), ``params.json``, ``user_ids.json``,
        ``item_ids.json``, ``history.json`` and ``train_items.npz`` (training items per user,
        CSR, for ``recommend``) into the directory ``path``."""
        net = self._network()
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), directory / "weights.pt")
        (directory / "params.json").write_text(json.dumps(self.params.to_dict(), indent=2))
        for name, ids in (("user_ids", self.user_ids), ("item_ids", self.item_ids)):
            dtype = ids.dtype.str if ids.dtype.kind in "iub" else "str"
            values = ids.tolist() if dtype != "str" else [str(x) for x in ids.tolist()]
            (directory / f"{name}.json").write_text(json.dumps({"dtype": dtype, "ids": values}))
        (directory / "history.json").write_text(json.dumps(self.history, indent=2))
        np.savez(
            directory / "train_items.npz", indptr=self.train_indptr, indices=self.train_indices
        )
        return directory

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> NeuMF:
        """Load a model written by :meth:`save` (weights with ``weights_only=True``)."""
        directory = Path(path)
        params = NeuMFParams.from_dict(json.loads((directory / "params.json").read_text()))
        if device is not None:
            params = dataclasses.replace(params, device=str(device))
        model = cls(params)
        for name in ("user_ids", "item_ids"):
            stored = json.loads((directory / f"{name}.json").read_text())
            setattr(model, name, np.asarray(stored["ids"], dtype=stored["dtype"]))
        net = NeuMFNetwork(model.n_users, model.n_items, params)
        state = torch.load(directory / "weights.pt", map_location=model.device, weights_only=True)
        net.load_state_dict(state)
        model.net = net.to(model.device).eval()
        with np.load(directory / "train_items.npz", allow_pickle=False) as csr:
            model.train_indptr, model.train_indices = csr["indptr"], csr["indices"]
        history = directory / "history.json"
        if history.exists():
            model.history = json.loads(history.read_text())
        return model

    def _network(self) -> NeuMFNetwork:
        if self.net is None:
            raise RuntimeError("the model is not trained: call fit() or NeuMF.load() first")
        return self.net


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
