"""Adagrad with momentum, updating item tables only at the rows a step touched.

This is the update rule of GRU4Rec (Theano original and the official PyTorch port's
``IndexedAdagradM``) for a parameter ``p`` with gradient ``g``::

    acc += g ** 2                               (adapt="adagrad"; adapt="sgd": no scaling)
    u    = g / sqrt(acc + eps) + lmbd * p
    v    = momentum * v - lr * u ;  p += v      (momentum > 0)
    p   -= lr * u                               (momentum == 0)

Dense parameters (GRU weights) are updated whole (:meth:`IndexedAdagradM.step`). Item tables
(embeddings, output weights and biases, ``[n_items, ...]``) are updated only at the rows ``rows``
of a step (:meth:`IndexedAdagradM.step_rows`), with the gradient of those rows summed over
duplicates beforehand (the update is non-linear, so the rows must be unique); the accumulator and
the velocity of untouched rows stay as they are (lazy momentum, as in the reference). Everything
is plain ``index_select`` / ``index_copy_`` / ``index_add_`` on the touched rows: no sparse
tensors, no coalescing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)

__all__ = ["ADAPT_METHODS", "IndexedAdagradM", "clip_grad_norm", "warmup_linear_decay"]

ADAPT_METHODS = ("adagrad", "sgd")


class IndexedAdagradM:
    """Dense + row-wise Adagrad with momentum (see the module docstring).

    Args:
        params: every parameter it updates (dense ones and item tables); state is kept for all.
        lr: learning rate.
        momentum: momentum coefficient (0 = none).
        eps: added to the accumulator under the square root.
        lmbd: L2 regularisation coefficient.
        adapt: ``"adagrad"`` or ``"sgd"`` (plain gradient, no accumulator).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        *,
        lr: float,
        momentum: float = 0.0,
        eps: float = 1e-6,
        lmbd: float = 0.0,
        adapt: str = "adagrad",
    ) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        if adapt not in ADAPT_METHODS:
            raise ValueError(f"adapt must be one of {ADAPT_METHODS}, got {adapt!r}")
        self.params = list(params)
        self.lr, self.momentum, self.eps, self.lmbd = lr, momentum, eps, lmbd
        self.adapt = adapt
        self.acc = {p: torch.zeros_like(p) for p in self.params} if adapt == "adagrad" else {}
        self.velocity = {p: torch.zeros_like(p) for p in self.params} if momentum > 0 else {}
        self._denom: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def zero_grad(self) -> None:
        """Drop the gradients of all parameters."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a ``.grad`` (dense update)."""
        for p in self.params:
            if p.grad is not None:
                self._apply(p, p.grad, None)

    @torch.no_grad()
    def step_param(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """Dense update of one parameter with the gradient ``grad`` (instead of ``param.grad``)."""
        self._apply(param, grad, None)

    @torch.no_grad()
    def step_rows(
        self,
        param: torch.Tensor,
        rows: torch.Tensor,
        grad: torch.Tensor,
        current: torch.Tensor | None = None,
    ) -> None:
        """Update the rows ``rows [U]`` (unique, long) of ``param`` with their gradient ``[U, ...]``.

        ``current``: ``param[rows]``, if the caller holds it already (e.g. gathered for the
        forward pass); it is then updated in place and written back with one ``index_copy_``
        (parallel) instead of an ``index_add_`` into ``param`` (single-threaded on the CPU).
        """
        self._apply(param, grad, rows, current)

    def _dense_buffer(self, p: torch.Tensor) -> torch.Tensor:
        """A scratch tensor shaped like ``p`` (a view of one buffer shared by all parameters)."""
        key = (p.device, p.dtype)
        buffer = self._denom.get(key)
        if buffer is None or buffer.numel() < p.numel():
            buffer = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
            self._denom[key] = buffer
        return buffer[: p.numel()].view(p.shape)

    def _apply(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        rows: torch.Tensor | None,
        current: torch.Tensor | None = None,
    ) -> None:
        """One update of ``p`` (``rows is None``) or of its rows ``rows`` with gradient ``g``;
        ``current``: ``p[rows]`` if known (see :meth:`step_rows`)."""

        def select(t: torch.Tensor) -> torch.Tensor:  # the rows (a copy) or the whole tensor
            if rows is None:
                return t
            if t is p and current is not None:
                return current
            return t.index_select(0, rows)

        def write_back(t: torch.Tensor, value: torch.Tensor) -> None:
            if rows is not None:  # whole tensors were updated in place already
                t.index_copy_(0, rows, value)

        def add_to_param(value: torch.Tensor, alpha: float) -> None:
            if rows is None:
                p.add_(value, alpha=alpha)
            elif current is not None:  # the same sum p[rows] + alpha * value, then one copy
                p.index_copy_(0, rows, current.add_(value, alpha=alpha))
            else:
                p.index_add_(0, rows, value, alpha=alpha)

        if self.adapt == "adagrad":
            acc = select(self.acc[p]).addcmul_(g, g)
            write_back(self.acc[p], acc)
            if rows is not None:  # acc is a copy of the rows: reuse it
                denom = acc.add_(self.eps).sqrt_()
            else:  # one buffer shared by the parameters: no large allocation per step
                denom = self._dense_buffer(p)
                torch.add(acc, self.eps, out=denom).sqrt_()
        else:
            denom = torch.ones((), dtype=g.dtype, device=g.device)
        if self.momentum > 0:
            velocity = select(self.velocity[p]).mul_(self.momentum)
            velocity.addcdiv_(g, denom, value=-self.lr)
            if self.lmbd:
                velocity.add_(select(p), alpha=-self.lr * self.lmbd)
            write_back(self.velocity[p], velocity)
            add_to_param(velocity, 1.0)
        elif rows is None and not self.lmbd:
            p.addcdiv_(g, denom, value=-self.lr)
        else:
            update = torch.div(g, denom, out=denom if denom.shape == g.shape else None)
            if self.lmbd:
                update.add_(select(p), alpha=self.lmbd)
            add_to_param(update, -self.lr)


@torch.no_grad()
def clip_grad_norm(grads: list[torch.Tensor], cap: float) -> torch.Tensor:
    """Scale ``grads`` in place so that their joint L2 norm is at most ``cap``; returns the norm.

    As in the reference (``grad_cap``): when the norm is >= ``cap`` every gradient is multiplied
    by ``cap / norm``. No host synchronisation.
    """
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(cap / norm, max=1.0)
    for g in grads:
        g.mul_(scale)
    return norm


def warmup_linear_decay(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int | None
) -> torch.optim.lr_scheduler.LambdaLR:
    """BERT's schedule (``optimization.py``) as a per-step :class:`~torch.optim.lr_scheduler.LambdaLR`:
    ``lr * step / warmup_steps`` during the warm-up, then ``lr * (1 - step / total_steps)``
    (the polynomial decay of power 1 counts from step 0, so it starts just below ``lr``);
    ``total_steps=None``: no decay, ``lr`` after the warm-up."""
    warmup = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        decayed = 1.0 if total_steps is None else max(0.0, 1.0 - step / max(total_steps, 1))
        return step / warmup if step < warmup else decayed

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
