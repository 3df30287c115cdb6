"""Padded sequence batches for sequence models (SASRec, BERT4Rec, XLNet-MLM, HSTU, ...).

A *sequence* is one session or one user's whole history of a :class:`SessionData` (build the
latter with ``sessions_from_frame(frame, session_key="UserId")``). :class:`SequenceBatcher` turns
the sequences into *samples* (rows), shuffles them per epoch and yields padded
:class:`SequenceBatch` es ``[B, L]``:

* **causal** (next item, SASRec / HSTU / GRU-style): for a sequence ``x_0 .. x_{n-1}`` the inputs
  are ``x_0 .. x_{n-2}`` and the targets ``x_1 .. x_{n-1}`` at the same positions (each position's
  target is the next item). With ``maxlen`` the row keeps the last ``maxlen`` inputs, i.e. the
  last ``maxlen + 1`` items (the SASRec reference's train sample).
* **masked** (Cloze, BERT4Rec / XLNet-MLM): the inputs are the whole (last ``maxlen`` items of
  the) sequence; ``targets`` holds the original item at the selected positions and :data:`PAD`
  elsewhere, and ``mask`` says where the model substitutes its mask token / vector.

Long sequences (``long=``): ``"last"`` keeps only the newest window (the references);
``"split"`` cuts a sequence into several rows:

* causal: windows of ``maxlen`` inputs whose last targets are ``x_{n-1}``, ``x_{n-1-stride}``,
  ...; a window labels only its last ``stride`` targets (the others are :data:`PAD`: a newer
  window trains them), the oldest window starts at ``x_0`` and labels all of its targets. So
  every target is trained exactly once per epoch, and the context of a target is the items of
  its own window only: at least ``maxlen - stride`` items (or all earlier items when fewer). With
  the default ``stride = maxlen`` the windows do not overlap and the first target of a window
  sees a single item; a smaller stride buys context with more rows.
* masked: windows of ``maxlen`` items starting at ``n - maxlen``, ``n - maxlen - stride``, ...,
  and a last one at ``x_0`` (BERT4Rec's sliding windows); each window is masked independently.

Masking (masked mode, redrawn for every batch of every epoch, i.e. BERT4Rec's static "dupe
factor" instances become dynamic re-masking): ``mask_count="bernoulli"`` selects every position
with probability ``mask_prob`` (Transformers4Rec), ``"fixed"`` exactly
``round(n * mask_prob)`` positions, capped by ``max_masked`` (BERT4Rec). A row always has at
least one and, when ``n >= 2``, never all positions selected: an empty draw gets one uniform
position (``min_one="if_none"``; ``"always"`` adds one uniform position to every Bernoulli draw,
as Transformers4Rec does, which raises the effective rate on short rows), a full draw loses one
uniform position. ``min_one="never"`` keeps the plain Bernoulli draw, bounds off: a row may select
none of its positions (it trains nothing) or all of them (Klenitskiy & Vasilev's BERT4Rec). A
**length-1 row** (only with ``min_length=1``) has its only item selected: "at least one" wins over
"never all" (BERT4Rec's rule; Transformers4Rec would train nothing on it). With probability
``mask_last_prob`` a row instead selects only its last item (BERT4Rec's "mask last" instances).
``replace="mask"``: every selected position gets ``mask`` True (BERT4Rec,
Transformers4Rec); ``"80/10/10"``: 80 % get ``mask`` True, 10 % get a uniformly random item in
``items`` (``mask`` False), 10 % keep their item (``mask`` False); all selected positions are
targets. So *targets* are ``targets != PAD``, and ``mask`` marks only where to substitute.

Determinism: the sample order of an epoch comes from ``(seed, epoch)`` and the random draws of
batch ``b`` from ``(seed, epoch, b)``, so ``batcher.epoch(e)`` is the same whenever it is called
(a resumed run reproduces an uninterrupted one, also from a batch in the middle of an epoch).

Padding: ``"left"`` puts the last real position at column ``L - 1`` (the SASRec reference);
``"right"`` puts the first at column 0 (generative-recommenders' HSTU and Transformers4Rec pad on
the right). With ``fixed_length=False`` the width ``L`` of a batch is its longest row, so with
left padding the column of the first item changes from batch to batch: a model with absolute
positions counted from the start should pad right (or use ``fixed_length=True``). Real
positions are ``batch.valid`` (from ``lengths``); :data:`PAD` marks exactly the padding of a
training batch (an appended mask slot of :func:`last_item_inputs` is the one exception).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from recsys_pipeline.training.session_iterator import SessionData

logger = logging.getLogger(__name__)

__all__ = [
    "PAD",
    "Histories",
    "SequenceBatch",
    "SequenceBatcher",
    "last_item_batches",
    "last_item_inputs",
]

PAD = -1  # item index of padding positions (models map it, e.g. `items + 1` -> 0 = their pad row)

Padding = Literal["left", "right"]
Mode = Literal["causal", "masked"]

# purpose tags of the seed sequences (all of the same length, see _rng)
_ORDER, _BATCH = 1, 2


@dataclass(frozen=True)
class SequenceBatch:
    """One padded batch of ``B`` rows (sequences or windows of sequences) of width ``L``.

    Attributes:
        items: ``[B, L]`` long, input item indices, :data:`PAD` at padding.
        lengths: ``[B]`` long, number of real positions per row.
        targets: ``[B, L]`` long, the label per position, :data:`PAD` where there is none.
        times: ``[B, L]`` long seconds of the input events (``None`` when the data has no
            times), 0 at padding.
        mask: ``[B, L]`` bool, masked-item training: positions replaced by the mask (``None`` in
            causal batches).
        padding: ``"left"`` or ``"right"``.
        target_times: ``[B, L]`` long seconds of the event *after* each input position (causal
            batches: the target's time; HSTU measures time differences against it), 0 at
            padding and ``None`` when there are no times or in masked batches.
        sequence: ``[B]`` long, index of each row's sequence in the :class:`SessionData`
            (e.g. for negatives outside the user's history, :class:`Histories`).
    """

    items: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    times: torch.Tensor | None
    mask: torch.Tensor | None
    padding: str
    target_times: torch.Tensor | None = None
    sequence: torch.Tensor | None = None

    @property
    def valid(self) -> torch.Tensor:
        """``[B, L]`` bool, True at real positions (from ``lengths`` and ``padding``)."""
        width = self.items.shape[1]
        columns = torch.arange(width, device=self.items.device)
        if self.padding == "left":
            return columns >= width - self.lengths[:, None]
        return columns < self.lengths[:, None]

    @property
    def n_targets(self) -> int:
        """Number of labelled positions (``targets != PAD``)."""
        return int((self.targets != PAD).sum())

    @classmethod
    def from_numpy(
        cls,
        items: np.ndarray,
        lengths: np.ndarray,
        targets: np.ndarray,
        times: np.ndarray | None,
        mask: np.ndarray | None,
        padding: str,
        *,
        target_times: np.ndarray | None = None,
        sequence: np.ndarray | None = None,
    ) -> SequenceBatch:
        """A CPU batch from numpy arrays (ints as long, bools as bool; ``None`` stays)."""

        def tensor(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else _tensor(array)

        return cls(
            items=_tensor(items),
            lengths=_tensor(lengths),
            targets=_tensor(targets),
            times=tensor(times),
            mask=tensor(mask),
            padding=padding,
            target_times=tensor(target_times),
            sequence=tensor(sequence),
        )

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The batch with every tensor on ``device`` (non-blocking from pinned host memory)."""
        device = torch.device(device)

        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None or tensor.device == device:
                return tensor
            if device.type == "cuda" and tensor.device.type == "cpu":
                return tensor.pin_memory().to(device, non_blocking=True)
            return tensor.to(device)

        return replace(
            self,
            items=move(self.items),
            lengths=move(self.lengths),
            targets=move(self.targets),
            times=move(self.times),
            mask=move(self.mask),
            target_times=move(self.target_times),
            sequence=move(self.sequence),
        )


@dataclass(frozen=True)
class _Samples:
    """The rows of an epoch before shuffling (``M`` of them), as positions into the data.

    Attributes:
        start: ``[M]`` int64, index into ``data.items`` of each row's first input event.
        length: ``[M]`` int64, number of input positions.
        skip: ``[M]`` int64, leading positions without a target (causal split windows).
        sequence: ``[M]`` int64, the sequence each row comes from.
    """

    start: np.ndarray
    length: np.ndarray
    skip: np.ndarray
    sequence: np.ndarray


def _rng(seed: int, epoch: int, purpose: int, index: int = 0) -> np.random.Generator:
    """A generator for ``(seed, epoch, purpose, index)``; fixed-length entropy avoids collisions."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, purpose, index]))


def _columns(length: np.ndarray, width: int, padding: str) -> tuple[np.ndarray, np.ndarray]:
    """Position inside its row of every column, ``[B, width]`` int64, and where it is real."""
    column = np.arange(width, dtype=np.int64)[None, :]
    offset = column - (width - length)[:, None] if padding == "left" else column
    valid = (offset >= 0) & (offset < length[:, None])
    return np.broadcast_to(offset, valid.shape), valid


def _gather(source: np.ndarray, index: np.ndarray, valid: np.ndarray, fill: int) -> np.ndarray:
    """``source[index]`` where ``valid``, ``fill`` elsewhere (index may be out of range there)."""
    return np.where(valid, source.take(index, mode="clip"), fill)


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(starts[i], starts[i] + lengths[i])``, ``[lengths.sum()]`` int64."""
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)


def _window_index(counts: np.ndarray) -> np.ndarray:
    """``0 .. counts[i] - 1`` for every ``i``, concatenated."""
    return _ragged(np.zeros(len(counts), dtype=np.int64), counts)


def _tensor(array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if tensor.dtype == torch.bool else tensor.long()


class SequenceBatcher:
    """Yields the padded :class:`SequenceBatch` es of every epoch over a :class:`SessionData`.

    Args:
        data: the sequences (items in time order per sequence); ``data.times`` is carried along.
        batch_size: rows per batch (the last batch of an epoch may be smaller).
        maxlen: most input positions per row (the window keeps the newest ones).
        mode: ``"causal"`` (next-item targets at every position) or ``"masked"``.
        padding: ``"left"`` (last item at column ``L - 1``) or ``"right"``.
        fixed_length: pad every batch to ``maxlen`` (SASRec reference) instead of its longest row.
        long: ``"last"`` (one row per sequence, its newest window) or ``"split"`` (see module).
        stride: step between split windows, ``1 .. maxlen`` (default ``maxlen``).
        min_length: sequences with fewer items give no row (default 2; causal needs >= 2).
        shuffle: ``True``: a new random row order every epoch; ``False``: the stored order;
            ``"once"``: pmixer/SASRec.pytorch 9f6a02b's sampler, one random order drawn once and
            read as an endless stream in batches of exactly ``batch_size`` (an epoch goes on
            where the last one stopped; every epoch sees the rows in nearly the same order).
        bucket: sort rows by length within chunks of ``bucket`` batches, then shuffle the order of
            the batches (less padding); 0 or 1 = off.
        drop_last: drop the last, smaller batch of an epoch.
        mask_prob: masked mode: selection probability (``"bernoulli"``) or proportion
            (``"fixed"``) of positions.
        mask_count: ``"bernoulli"`` (Transformers4Rec) or ``"fixed"`` (BERT4Rec).
        max_masked: ``"fixed"`` only: at most this many selected positions per row (BERT4Rec's
            ``max_predictions_per_seq``); ``None`` = no cap.
        min_one: ``"if_none"``, ``"always"`` (Transformers4Rec) or ``"never"`` (no bounds: a
            row may select none or all), ``"bernoulli"`` only; see the module docstring.
        mask_last_prob: probability that a row selects only its last item.
        replace: ``"mask"`` (every selected position masked) or ``"80/10/10"``.
        seed: non-negative seed; with the epoch number it fixes every order and draw.
        device: where the yielded batches live.

    ``epoch(e)`` iterates epoch ``e``; ``n_batches``, ``n_targets(e)`` and ``n_tokens(e)`` size
    progress bars.
    """

    def __init__(
        self,
        data: SessionData,
        *,
        batch_size: int,
        maxlen: int,
        mode: Mode = "causal",
        padding: Padding = "left",
        fixed_length: bool = False,
        long: Literal["last", "split"] = "last",
        stride: int | None = None,
        min_length: int = 2,
        shuffle: bool | Literal["once"] = True,
        bucket: int = 0,
        drop_last: bool = False,
        mask_prob: float = 0.2,
        mask_count: Literal["bernoulli", "fixed"] = "bernoulli",
        max_masked: int | None = None,
        min_one: Literal["if_none", "always", "never"] = "if_none",
        mask_last_prob: float = 0.0,
        replace: Literal["mask", "80/10/10"] = "mask",
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        stride = maxlen if stride is None else stride
        _check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
        _check(maxlen >= 1, f"maxlen must be >= 1, got {maxlen}")
        _check(mode in ("causal", "masked"), f"unknown mode {mode!r}")
        _check(padding in ("left", "right"), f"unknown padding {padding!r}")
        _check(long in ("last", "split"), f"unknown long {long!r}")
        _check(1 <= stride <= maxlen, f"stride must be in 1..maxlen={maxlen}, got {stride}")
        _check(
            min_length >= (2 if mode == "causal" else 1),
            f"min_length must be >= {2 if mode == 'causal' else 1} in {mode} mode",
        )
        _check(0.0 < mask_prob <= 1.0, f"mask_prob must be in (0, 1], got {mask_prob}")
        _check(mask_count in ("bernoulli", "fixed"), f"unknown mask_count {mask_count!r}")
        _check(max_masked is None or max_masked >= 1, "max_masked must be >= 1")
        _check(min_one in ("if_none", "always", "never"), f"unknown min_one {min_one!r}")
        _check(
            min_one == "if_none" or mask_count == "bernoulli",
            f"min_one={min_one!r} needs mask_count='bernoulli' (a fixed count is always bounded)",
        )
        _check(0.0 <= mask_last_prob <= 1.0, "mask_last_prob must be in [0, 1]")
        _check(replace in ("mask", "80/10/10"), f"unknown replace {replace!r}")
        _check(seed >= 0, f"seed must be >= 0, got {seed}")
        _check(
            shuffle in (True, False, "once"),
            f"shuffle must be True, False or 'once', got {shuffle!r}",
        )
        _check(
            shuffle != "once" or (bucket <= 1 and not drop_last),
            "shuffle='once' streams full batches: no bucket, no drop_last",
        )
        self.data = data
        self.batch_size = batch_size
        self.maxlen = maxlen
        self.mode = mode
        self.padding = padding
        self.fixed_length = fixed_length
        self.long = long
        self.stride = stride
        self.min_length = min_length
        self.shuffle = shuffle
        self.bucket = bucket
        self.drop_last = drop_last
        self.mask_prob = mask_prob
        self.mask_count = mask_count
        self.max_masked = max_masked
        self.min_one = min_one
        self.mask_last_prob = mask_last_prob
        self.replace = replace
        self.seed = seed
        self.device = torch.device(device)
        self._items = np.asarray(data.items, dtype=np.int64)
        self._times = None if data.times is None else np.asarray(data.times, dtype=np.int64)
        self.samples = self._make_samples()
        self._order_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._targets_cache: dict[int, int] = {}
        logger.debug(
            "%s batcher: %d sequences -> %d rows, %d batches of %d",
            mode,
            data.n_sessions,
            self.n_rows,
            self.n_batches,
            batch_size,
        )

    # ------------------------------------------------------------------------------ planning

    def _make_samples(self) -> _Samples:
        offsets = np.asarray(self.data.offsets, dtype=np.int64)
        n = np.diff(offsets)
        sequence = np.flatnonzero(n >= self.min_length)
        n, first = n[sequence], offsets[sequence]
        top = self.maxlen
        if self.mode == "causal":
            # windows w = 0 (newest) ..: last target index e, first input index a (in-sequence)
            count = (
                1 + -(-np.maximum(n - 1 - top, 0) // self.stride)
                if self.long == "split"
                else np.ones_like(n)
            )
            w = _window_index(count)
            n_rep = np.repeat(n, count)
            e = n_rep - 1 - w * self.stride
            a = np.maximum(e - top, 0)
            oldest = w == np.repeat(count, count) - 1
            skip = np.where(oldest, 0, np.maximum(e - self.stride - a, 0))
            start, length = np.repeat(first, count) + a, e - a
        else:
            count = (
                1 + -(-np.maximum(n - top, 0) // self.stride)
                if self.long == "split"
                else np.ones_like(n)
            )
            w = _window_index(count)
            n_rep = np.repeat(n, count)
            oldest = w == np.repeat(count, count) - 1
            a = np.maximum(n_rep - top - w * self.stride, 0)
            a = np.where(oldest & (self.long == "split"), 0, a)
            start, length = np.repeat(first, count) + a, np.minimum(n_rep, top)
            skip = np.zeros_like(length)
        return _Samples(
            start=start.astype(np.int64),
            length=length.astype(np.int64),
            skip=skip.astype(np.int64),
            sequence=np.repeat(sequence, count).astype(np.int64),
        )

    @property
    def n_rows(self) -> int:
        """Rows (samples) per epoch before ``drop_last``."""
        return len(self.samples.length)

    @property
    def n_batches(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.n_rows // self.batch_size
        return -(-self.n_rows // self.batch_size)

    def order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of epoch ``epoch`` in batch order ``[M']`` and batch boundaries ``[n_batches + 1]``.

        Batch ``b`` holds rows ``order[bounds[b]:bounds[b + 1]]`` (indices into the samples).
        """
        if self._order_cache is not None and self._order_cache[0] == epoch:
            return self._order_cache[1], self._order_cache[2]
        m, size = self.n_rows, self.batch_size
        if self.shuffle == "once":  # one order, read on from where the last epoch stopped
            n = self.n_batches * size
            stream = (max(epoch - 1, 0) * n + np.arange(n)) % max(m, 1)
            order = _rng(self.seed, 0, _ORDER).permutation(m)[stream] if m else stream[:0]
            bounds = np.arange(0, n + 1, size, dtype=np.int64)
            self._order_cache = (epoch, order, bounds)
            return order, bounds
        rng = _rng(self.seed, epoch, _ORDER)
        order = rng.permutation(m) if self.shuffle else np.arange(m)
        if self.bucket > 1:
            chunk = np.arange(m) // (self.bucket * size)
            longest = int(self.samples.length.max(initial=0))
            key = chunk * (longest + 1) + (longest - self.samples.length[order])
            order = order[np.argsort(key, kind="stable")]
        n_full = m // size
        sizes = np.full(n_full, size, dtype=np.int64)
        if m % size and not self.drop_last:
            sizes = np.r_[sizes, m % size]
        order = order[: int(sizes.sum())]
        if self.bucket > 1:  # shuffle whole batches, keep each batch's rows together
            batch_order = rng.permutation(len(sizes))
            firsts = np.cumsum(sizes) - sizes
            order = order[_ragged(firsts[batch_order], sizes[batch_order])]
            sizes = sizes[batch_order]
        bounds = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        self._order_cache = (epoch, order, bounds)
        return order, bounds

    def _epoch_rows(self, epoch: int) -> np.ndarray | slice:
        """The rows an epoch uses (all of them once, unless ``drop_last`` or ``shuffle="once"``)."""
        streamed = self.drop_last or self.shuffle == "once"
        return self.order(epoch)[0] if streamed else slice(None)

    def n_tokens(self, epoch: int = 0) -> int:
        """Real input positions of epoch ``epoch`` (depends on ``epoch`` only with drop_last)."""
        return int(self.samples.length[self._epoch_rows(epoch)].sum())

    def n_targets(self, epoch: int = 0) -> int:
        """Labelled positions of epoch ``epoch`` (exact; masked mode draws the epoch's masks)."""
        if self.mode == "causal":
            rows = self._epoch_rows(epoch)
            return int((self.samples.length[rows] - self.samples.skip[rows]).sum())
        if epoch not in self._targets_cache:
            order, bounds = self.order(epoch)
            total = 0
            for b in range(len(bounds) - 1):
                rows = order[bounds[b] : bounds[b + 1]]
                selected, _ = self._select(_rng(self.seed, epoch, _BATCH, b), rows)
                total += int(selected.sum())
            self._targets_cache = {epoch: total}
        return self._targets_cache[epoch]

    # ------------------------------------------------------------------------------ batches

    def epoch(self, epoch: int, start: int = 0) -> Iterator[SequenceBatch]:
        """Iterate the batches of epoch ``epoch`` from batch ``start`` (to resume mid-epoch)."""
        order, bounds = self.order(epoch)
        for b in range(start, len(bounds) - 1):
            yield self.batch(epoch, b, order[bounds[b] : bounds[b + 1]])

    def __len__(self) -> int:
        return self.n_batches

    def batch(self, epoch: int, index: int, rows: np.ndarray | None = None) -> SequenceBatch:
        """Batch ``index`` of epoch ``epoch`` (``rows``: its sample indices, if known)."""
        if rows is None:
            order, bounds = self.order(epoch)
            rows = order[bounds[index] : bounds[index + 1]]
        s = self.samples
        start, length = s.start[rows], s.length[rows]
        width = self.maxlen if self.fixed_length else int(length.max(initial=1))
        offset, valid = _columns(length, width, self.padding)
        position = start[:, None] + offset
        items = _gather(self._items, position, valid, PAD)
        times = target_times = mask = None
        if self._times is not None:
            times = _gather(self._times, position, valid, 0)
        if self.mode == "causal":
            labelled = valid & (offset >= s.skip[rows][:, None])
            targets = _gather(self._items, position + 1, labelled, PAD)
            if self._times is not None:
                target_times = _gather(self._times, position + 1, valid, 0)
        else:
            rng = _rng(self.seed, epoch, _BATCH, index)
            selected, in_window = self._select(rng, rows)
            # window coordinates [B, W] -> columns [B, width]
            index = np.clip(offset, 0, selected.shape[1] - 1)
            chosen = np.take_along_axis(selected, index, axis=1) & valid
            targets = np.where(chosen, items, PAD)
            mask = chosen
            if self.replace == "80/10/10":
                u = np.take_along_axis(rng.random(in_window.shape), index, axis=1)
                mask = chosen & (u < 0.8)
                random_item = chosen & (u >= 0.8) & (u < 0.9)
                items = items.copy()
                items[random_item] = rng.integers(0, self.data.n_items, int(random_item.sum()))
        batch = SequenceBatch.from_numpy(
            items,
            length,
            targets,
            times,
            mask,
            self.padding,
            target_times=target_times,
            sequence=s.sequence[rows],
        )
        return batch if self.device.type == "cpu" else batch.to(self.device)

    def _select(self, rng: np.random.Generator, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masked positions of ``rows`` in window coordinates: (selected, real) ``[B, W]`` bool.

        Column ``j`` of a row is its ``j``-th item, so the draw is independent of the padding
        and the batch width. The first draws of a batch's generator, always the same count.
        """
        n = self.samples.length[rows]
        n_rows, width = len(n), int(n.max(initial=1))
        real = np.arange(width)[None, :] < n[:, None]
        rows_ = np.arange(n_rows)
        u = rng.random((n_rows, width))
        if self.mask_count == "bernoulli":
            selected = (u < self.mask_prob) & real
            extra = (rng.random(n_rows) * n).astype(np.int64)
            # all selected: any is selected; drawn under every rule so the streams stay aligned
            drop = (rng.random(n_rows) * n).astype(np.int64)
            if self.min_one == "always":
                selected[rows_, extra] = True
            elif self.min_one == "if_none":
                none = ~selected.any(axis=1)
                selected[rows_[none], extra[none]] = True
            if self.min_one != "never":
                full = (selected.sum(axis=1) == n) & (n >= 2)
                selected[rows_[full], drop[full]] = False
        else:
            k = np.round(n * self.mask_prob).astype(np.int64)
            if self.max_masked is not None:
                k = np.minimum(k, self.max_masked)
            k = np.clip(k, 1, np.maximum(n - 1, 1))
            rank = np.argsort(np.argsort(np.where(real, u, 2.0), axis=1), axis=1)
            selected = rank < k[:, None]
        if self.mask_last_prob > 0:
            last = rng.random(n_rows) < self.mask_last_prob
            selected[last] = np.arange(width)[None, :] == (n[last] - 1)[:, None]
        return selected, real


# ---------------------------------------------------------------------------------- evaluation


def last_item_inputs(
    data: SessionData,
    maxlen: int,
    padding: Padding = "left",
    *,
    sequences: np.ndarray | None = None,
    hold_out_last: bool = False,
    mask: Literal["none", "last", "append"] = "none",
    fixed_length: bool = False,
    device: torch.device | str = "cpu",
) -> SequenceBatch:
    """Evaluation / inference rows: per sequence, its newest items as input.

    Row ``i`` is sequence ``sequences[i]`` (default: every sequence, in stored order); its
    *history* is the sequence, or all but its last item with ``hold_out_last`` (the last item is
    then the *target*, e.g. the test item of a leave-one-out sequence).

    * ``mask="none"``: input = the last ``maxlen`` history items. ``targets`` is :data:`PAD`
      except, with ``hold_out_last``, at the last real position, which holds the target (the
      causal convention: a position's target is the next item). The lead protocol adds its
      target itself when ``hold_out_last`` is False.
    * ``mask="last"``: (XLNet-MLM evaluation, replaced in place) input = the last ``maxlen``
      items of the sequence, ``mask`` True at the last position, whose target is that item;
      ``hold_out_last`` must be False.
    * ``mask="append"``: (BERT4Rec test, masked-model inference) input = the last
      ``maxlen - 1`` history items plus one slot after them with ``mask`` True, item :data:`PAD`
      (the model puts its mask there; the slot counts in ``lengths`` and ``valid``), target =
      the held-out item with ``hold_out_last``, else :data:`PAD`.

    ``times`` are the input events' times (the appended slot: the target's time with
    ``hold_out_last``, else the last event's). ``target_times`` (with times, ``mask="none"``)
    hold the next event's time at every position, and at the last position the target's time
    with ``hold_out_last`` (generative-recommenders' evaluation, where the target's time is in
    the sequence) or the last event's own time without it (the leak-free query time).

    Args:
        data: the sequences.
        maxlen: most positions per row (including an appended slot).
        padding: ``"left"`` or ``"right"``.
        sequences: which sequences, ``[R]`` int64 (each needs >= 1 history item and, with
            ``hold_out_last``, >= 2 items: ``ValueError`` otherwise).
        hold_out_last: the last item of each sequence is its target, not an input.
        mask: ``"none"``, ``"last"`` or ``"append"`` (above).
        fixed_length: width ``maxlen`` instead of the longest row.
        device: where the tensors go.

    Returns:
        A :class:`SequenceBatch` ``[R, L]`` with ``sequence`` = the sequence indices. The grids
        are dense: for many sequences use :func:`last_item_batches` (chunks of rows).
    """
    _check(maxlen >= (2 if mask == "append" else 1), f"maxlen too small: {maxlen}")
    _check(padding in ("left", "right"), f"unknown padding {padding!r}")
    _check(mask in ("none", "last", "append"), f"unknown mask {mask!r}")
    _check(not (hold_out_last and mask == "last"), "mask='last' masks the last item itself")
    offsets = np.asarray(data.offsets, dtype=np.int64)
    if sequences is None:
        sequences = np.arange(data.n_sessions, dtype=np.int64)
    sequences = np.asarray(sequences, dtype=np.int64)
    end = offsets[sequences + 1] - int(hold_out_last)  # end of the history (exclusive)
    history = end - offsets[sequences]
    if len(history) and int(history.min()) < 1:
        raise ValueError(
            f"{int((history < 1).sum())} sequences have no history item"
            + (" (hold_out_last needs >= 2 items)" if hold_out_last else "")
        )
    slot = int(mask == "append")
    n_input = np.minimum(history, maxlen - slot)
    length = n_input + slot
    width = maxlen if fixed_length else int(length.max(initial=1))
    offset, valid = _columns(length, width, padding)
    position = (end - n_input)[:, None] + offset
    is_input = valid & (offset < n_input[:, None])
    is_slot = valid & (offset == n_input[:, None]) if slot else np.zeros_like(valid)
    is_last = valid & (offset == (length - 1)[:, None])
    items = np.asarray(data.items, dtype=np.int64)
    item_grid = _gather(items, position, is_input, PAD)
    target_item = np.where(hold_out_last, items.take(end, mode="clip"), PAD)
    if mask == "last":
        targets = np.where(is_last, item_grid, PAD)
    elif hold_out_last:
        targets = np.where(is_last, target_item[:, None], PAD)
    else:
        targets = np.full_like(item_grid, PAD)
    mask_grid = None if mask == "none" else (is_last if mask == "last" else is_slot)
    times = target_times = None
    if data.times is not None:
        all_times = np.asarray(data.times, dtype=np.int64)
        slot_time = all_times.take(end - int(not hold_out_last), mode="clip")
        times = np.where(is_slot, slot_time[:, None], _gather(all_times, position, is_input, 0))
        if mask == "none":
            next_time = _gather(all_times, position + 1, valid, 0)
            target_times = np.where(is_last, slot_time[:, None], next_time)
    batch = SequenceBatch.from_numpy(
        item_grid,
        length,
        targets,
        times,
        mask_grid,
        padding,
        target_times=target_times,
        sequence=sequences,
    )
    return batch.to(device)


def last_item_batches(
    data: SessionData,
    maxlen: int,
    padding: Padding = "left",
    *,
    batch_size: int,
    sequences: np.ndarray | None = None,
    hold_out_last: bool = False,
    mask: Literal["none", "last", "append"] = "none",
    fixed_length: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[SequenceBatch]:
    """:func:`last_item_inputs` in chunks of ``batch_size`` sequences (same arguments)."""
    if sequences is None:
        sequences = np.arange(data.n_sessions, dtype=np.int64)
    for first in range(0, len(sequences), batch_size):
        yield last_item_inputs(
            data,
            maxlen,
            padding,
            sequences=sequences[first : first + batch_size],
            hold_out_last=hold_out_last,
            mask=mask,
            fixed_length=fixed_length,
            device=device,
        )


class Histories:
    """The items of every sequence, for history exclusion and negatives outside the history.

    Args:
        data: the sequences.
        hold_out_last: leave each sequence's last item out (its held-out target).
        device: where the lookup table and the returned tensors live.
    """

    def __init__(
        self,
        data: SessionData,
        *,
        hold_out_last: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        offsets = np.asarray(data.offsets, dtype=np.int64)
        length = np.diff(offsets) - int(hold_out_last)
        length = np.maximum(length, 0)
        self._offsets = offsets
        self._length = length
        self._items = np.asarray(data.items, dtype=np.int64)
        self.n_items = data.n_items
        self.device = torch.device(device)
        events = _ragged(offsets[:-1], length)
        owner = np.repeat(np.arange(data.n_sessions, dtype=np.int64), length)
        keys = np.unique(owner * self.n_items + self._items[events])
        self._keys = torch.from_numpy(keys).to(self.device)

    def contains(self, sequence: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether ``items[b, ...]`` is in the history of sequence ``sequence[b]``.

        Args:
            sequence: ``[B]`` long sequence indices.
            items: ``[B, ...]`` long item indices (:data:`PAD` is never contained).

        Returns:
            ``[B, ...]`` bool.
        """
        items = items.to(self._keys.device)
        if not len(self._keys):
            return torch.zeros_like(items, dtype=torch.bool)
        shape = (-1,) + (1,) * (items.dim() - 1)
        key = sequence.to(self._keys.device).view(shape) * self.n_items + items
        where = torch.searchsorted(self._keys, key.reshape(-1)).clamp_max(len(self._keys) - 1)
        found = (self._keys[where] == key.reshape(-1)).view(key.shape)
        return found & (items >= 0)

    def pairs(self, sequences: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, items)`` ``[P]`` long: every history item of row ``i`` = ``sequences[i]``.

        ``scores[rows, items] = -inf`` excludes the histories from a ``[R, n_items]`` ranking
        (an item repeated in a history appears once per event).
        """
        if isinstance(sequences, torch.Tensor):
            sequences = sequences.cpu().numpy()
        sequences = np.asarray(sequences, dtype=np.int64)
        length = self._length[sequences]
        events = _ragged(self._offsets[sequences], length)
        rows = np.repeat(np.arange(len(sequences), dtype=np.int64), length)
        return (
            torch.from_numpy(rows).to(self.device),
            torch.from_numpy(self._items[events]).to(self.device),
        )


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
