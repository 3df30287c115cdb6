"""The last-item protocol of the transformer papers (SASRec, BERT4Rec, XLNet-MLM, HSTU): per
user (or session) only the **last** event is a target, predicted from the events before it.

Input: one row per event (``user_key``, ``item_key``, ``time_key``), every user's sequence in
time order (the frame's row order breaks equal times). For every user:

* **target**: its last event (``targets="last"``, the leave-one-out test item), or the user's
  row of a ``targets`` frame (one row per user; the user's ``sequences`` rows are then all
  input).
* **input**: the events before the target, then the user's rows of ``append`` (in time order,
  placed after the history and before the target whatever their times: the SASRec / BERT4Rec
  rule that the validation item is part of the test input). So the test of a leave-one-out
  split is ``evaluate_last_item(model, concat(train, test), append=valid)`` (or, equivalently
  when the times are in order, ``evaluate_last_item(model, concat(train, valid, test))``) and
  the validation ``evaluate_last_item(model, concat(train, valid))``.
* **unknown items**: input events whose item the model does not know are dropped; a user whose
  target the model does not know is not scored (``n_unknown_targets``), nor a user left without
  any input event (``n_no_input``; e.g. a user with a single event).
* the model reads at most its ``maxlen`` last input items (``model.maxlen``, ``None`` = all).

Queries (``path``):

* ``"batched"`` (the default for models with ``encode``: every
  :class:`~recsys_pipeline.models.base.SequenceEncoder`): rows of
  :func:`~recsys_pipeline.training.sequences.last_item_inputs` (padded on ``model.padding``'s
  side) through ``model.encode(batch, last_only=True)``, one forward pass per batch of users.
  ``mask`` builds the rows of masked-item models: ``"append"`` (BERT4Rec: a mask slot after the
  last ``maxlen - 1`` input items), ``"last"`` (XLNet-MLM evaluation: the target itself at the
  last position with ``batch.mask`` True there, replaced in place by the model) or ``"none"``
  (causal models); by default the model's ``last_item_mask`` attribute, else ``"none"``.
* ``"step"`` (the default for models with only the step interface: GRU4Rec's native path, the
  baselines, :class:`~recsys_pipeline.models.base.EncoderStepAdapter`): every user's input is
  fed through ``initial_state`` / ``step`` and the query after its last input item is ranked.
  GRU4Rec gives the same ranks on both paths.

**Times** (models with ``uses_times``, e.g. HSTU; batched path only: the step interface carries
no times): ``batch.times`` are the input events' times; the time the query is made at
(``batch.target_times`` at the last input position, or the time of an appended / in-place mask
slot) is set by ``query_time``: ``"last_event"`` (default: the last input event's own time, the
leak-free choice a served model has) or ``"target"`` (the target's time, as
generative-recommenders' evaluation has it in the sequence: use it to reproduce HSTU's
figures). Named in the label of models that read times.

**Ranking** (``ranking``):

* ``"full"`` (default): the target against all ``model.n_items`` items, scored in chunks of
  ``item_chunk`` items, tie ``mode`` of :data:`~recsys_pipeline.evaluation.metrics.TIE_MODES`,
  metrics ``recall@k`` (= HR@k: one target per user), ``mrr@k``, ``ndcg@k``. With
  ``exclude_history`` (default ``True`` = ``"all"``, as generative-recommenders and Klenitskiy &
  Vasilev 2023) every item of the user's known input (history and appended items, the whole of
  it, not only the model's window) other than the target is left out of the ranking;
  ``"window"`` leaves out only the items the model reads (its last ``maxlen`` input items:
  generative-recommenders masks its ``past_ids``, which are truncated to the model's maximum
  length); ``False`` leaves nothing out. A target that itself occurs in the excluded items (a
  repeat) cannot be hit: as generative-recommenders (which masks the history, target included)
  and ``evaluate(exclude_seen=True)``, its rank is ``inf`` and it counts as a miss.
* ``"sampled"`` (**LEGACY**, only to compare with published sampled numbers; Hidasi & Czapp
  2023 show they are biased): the target against ``n_negatives`` items drawn per user without
  replacement from the items the user never interacted with (its whole known sequence: input,
  appended and target items), ``negatives="uniform"`` (the SASRec paper; the NCF sampler
  :func:`recsys_pipeline.preprocessing.ncf.sample_negatives`) or ``"popularity"`` (BERT4Rec;
  probability proportional to ``support``: the argument, else the model's ``support``
  attribute, else the item counts of the input events). The metrics carry the legacy names
  ``sampled{n}_hr@k``, ``sampled{n}_mrr@k``, ``sampled{n}_ndcg@k`` so they never pass for
  full-ranking ones. The pmixer/SASRec reference draws with replacement and excludes only the
  training items; here the draw is without replacement, from outside the whole sequence.

``max_users``: score a seeded uniform sample of that many users (the SASRec reference samples
10,000 users when there are more). The sample is drawn among the users that can be scored
(known target, some input), so exactly ``max_users`` are scored; the reference samples among
all users and skips the unscorable ones afterwards (the same when every user has >= 3 events).

Determinism: the user sample, the negatives and the ``tiebreaking`` uniforms derive from
``seed`` and the data only (not from ``batch_size``, ``item_chunk`` or ``path``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import torch

from recsys_pipeline.evaluation.evaluate import EvaluationResult, NoTargetsError, item_index_map
from recsys_pipeline.evaluation.metrics import MetricAccumulator, check_mode
from recsys_pipeline.evaluation.ranking import batch_ranks, score_checked, seen_before
from recsys_pipeline.evaluation.user_ranking import candidate_ranks, sampled_metric_names
from recsys_pipeline.models.base import NextItemModel
from recsys_pipeline.training.progress import progress_bar
from recsys_pipeline.training.sequences import SequenceBatch, last_item_inputs
from recsys_pipeline.training.session_iterator import SessionData, event_seconds

logger = logging.getLogger(__name__)

__all__ = [
    "GR_MAX_RANK",
    "LastItemData",
    "LastItemResult",
    "capped_rank_metrics",
    "draw_negatives",
    "evaluate_last_item",
    "prepare",
]

#: generative-recommenders' evaluation keeps the top 2,500 items: a target below is rank 2,501
GR_MAX_RANK = 2500

Exclusion = Literal["all", "window", "none"]

# purpose tags of the generators derived from ``seed``
_USERS, _NEGATIVES, _TIES = 1, 2, 3
# popularity draws: rows per torch.multinomial call, about this many weights at once
_DRAW_BUDGET = 2**22


class LastItemResult(EvaluationResult):
    """An :class:`~recsys_pipeline.evaluation.evaluate.EvaluationResult` of the last-item
    protocol: metric name -> float (``recall@k``, ``mrr@k``, ``ndcg@k``, or the legacy
    ``sampled{n}_hr@k``, ``sampled{n}_mrr@k``, ``sampled{n}_ndcg@k``; plus ``n_targets``,
    ``n_users``, ``n_unknown_targets``, ``n_no_input``, ``n_dropped_events``, ``seconds``,
    ``targets_per_s``).

    Attributes (besides the inherited ``mode``, ``cutoffs``, ``ranks``; ``exclude_seen`` is
    True when anything is excluded, ``sequence_aware`` is False):
        ranking: ``"full"`` or ``"sampled"``.
        exclude_history: ``"all"``, ``"window"`` or ``"none"`` (full ranking).
        n_negatives: negatives per user (sampled ranking).
        negatives: ``"uniform"`` or ``"popularity"`` (sampled ranking).
        appended: whether an ``append`` frame was part of the input.
        n_scorable: users that could be scored; ``n_targets`` of them were (``max_users``).
        query_time: ``"last_event"`` or ``"target"``; ``None`` when the model reads no times.
        mask: how the batched rows were built (``"none"``, ``"append"``, ``"last"``).
        path: ``"batched"`` or ``"step"``.
        unknown_targets: ``"skip"`` or ``"miss"`` (``n_missed`` of ``n_targets`` are misses
            of unknown targets, not in ``ranks``).
        users: ``[n_targets]`` raw user ids in the order of ``ranks`` (ascending user id), or
            ``None`` unless ``return_ranks``.
    """

    ranking: str
    exclude_history: str
    n_negatives: int
    negatives: str
    appended: bool
    n_scorable: int
    query_time: str | None
    mask: str
    path: str
    users: np.ndarray | None
    unknown_targets: str = "skip"

    def label(self) -> str:
        """The whole protocol, e.g. ``"last item, full ranking, history excluded,
        mode=standard"`` or ``"last item, LEGACY sampled ranking (100 uniform negatives per
        user), 10,000 of 22,363 users, mode=standard"``."""
        if self.ranking == "sampled":
            parts = [
                "last item",
                f"LEGACY sampled ranking ({self.n_negatives} {self.negatives} negatives per user)",
            ]
        else:
            excluded = {
                "all": "history excluded",
                "window": "input window excluded",
                "none": "history not excluded",
            }
            parts = ["last item", "full ranking", excluded[self.exclude_history]]
        if self.appended:
            parts.append("appended items in the input")
        if self.unknown_targets == "miss":
            parts.append("unknown targets count as misses")
        n = int(self["n_targets"])
        if n < self.n_scorable:
            parts.append(f"{n:,} of {self.n_scorable:,} users")
        if self.query_time is not None:
            parts.append(f"query time={self.query_time.replace('_', ' ')}")
        parts.append(f"mode={self.mode}")
        return ", ".join(parts)


@dataclass(frozen=True)
class LastItemData:
    """The users to score, laid out as sequences: row ``r`` is
    ``data.items[data.offsets[r]:data.offsets[r + 1]]``, its known input items in order, then
    its target (so every row has >= 2 items).

    Attributes:
        data: the rows (``times`` in seconds when asked for and readable, else ``None``).
        users: ``[R]`` raw user id of every row, ascending.
        n_users: users with a target in the input.
        n_unknown_targets: users whose target the model does not know.
        n_no_input: users with a known target but no known input event.
        n_dropped_events: input events (of users with a known target) of unknown items.
        n_scorable: users that can be scored (``R`` before any ``max_users`` sample).
        n_missed: ``unknown_targets="miss"``: users of the evaluated set the model cannot
            answer (unknown target, or no known input item), each counted as a miss (0
            otherwise).
    """

    data: SessionData
    users: np.ndarray
    n_users: int
    n_unknown_targets: int
    n_no_input: int
    n_dropped_events: int
    n_scorable: int
    n_missed: int = 0

    @property
    def n_rows(self) -> int:
        return self.data.n_sessions

    @property
    def n_inputs(self) -> np.ndarray:
        """``[R]`` number of input items of every row."""
        return np.diff(self.data.offsets) - 1

    @property
    def targets(self) -> np.ndarray:
        """``[R]`` target item index of every row."""
        return self.data.items[self.data.offsets[1:] - 1]


def prepare(
    item_ids: np.ndarray,
    sequences: pl.DataFrame,
    *,
    targets: Literal["last"] | pl.DataFrame = "last",
    append: pl.DataFrame | None = None,
    with_times: bool = False,
    max_users: int | None = None,
    seed: int = 0,
    user_key: str = "UserId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    unknown_targets: Literal["skip", "miss"] = "skip",
) -> LastItemData:
    """Targets and inputs of every user (module docstring), as :class:`LastItemData`.

    Args:
        item_ids: ``[n_items]`` the model's raw item id of every item index.
        sequences: the users' events (``user_key``, ``item_key``, ``time_key``).
        targets: ``"last"`` (each user's last event) or a frame with one row per user.
        append: events placed after the history, before the target (users without a target
            are ignored).
        with_times: fill ``data.times`` (seconds) when the time column can be read as such.
        max_users: keep a seeded uniform sample of this many scorable users (with
            ``unknown_targets="miss"``: of the scorable users and those with an unknown target).
        seed: seeds the sample.
        unknown_targets: ``"skip"`` (users whose target the model does not know are not
            evaluated) or ``"miss"`` (they, and users without a known input item, are
            evaluated as misses: ``n_missed``).

    Raises:
        ValueError: a missing column, or a ``targets`` frame with two rows for a user.
    """
    cols = [user_key, item_key, time_key]
    frames = {"sequences": sequences, "append": append}
    if isinstance(targets, pl.DataFrame):
        frames["targets"] = targets
    elif targets != "last":
        raise ValueError(f"targets must be 'last' or a DataFrame, got {targets!r}")
    for name, frame in frames.items():
        if frame is not None and (missing := [c for c in cols if c not in frame.columns]):
            raise ValueError(f"{name} frame has no column(s) {missing} (columns: {frame.columns})")
    schema = sequences.select(cols).schema

    def part(frame: pl.DataFrame, number: int) -> pl.DataFrame:
        out = frame.select(cols).with_row_index("_row").with_columns(pl.lit(number).alias("_part"))
        return out.cast({c: schema[c] for c in cols}, strict=False)

    history = part(sequences, 0).sort([user_key, time_key, "_row"])
    if isinstance(targets, pl.DataFrame):
        target = part(targets, 2)
        if target[user_key].is_duplicated().any():
            raise ValueError("the targets frame must hold one row per user")
    else:
        is_last = pl.int_range(pl.len()).over(user_key) == pl.len().over(user_key) - 1
        history = history.with_columns(pl.when(is_last).then(2).otherwise(0).alias("_part"))
        target = history.filter(pl.col("_part") == 2)
        history = history.filter(pl.col("_part") == 0)
    parts = [history, target] + ([part(append, 1)] if append is not None else [])
    users_with_target = target.select(user_key)
    events = (
        pl.concat(parts, how="vertical_relaxed")
        .join(users_with_target, on=user_key, how="semi")
        .sort([user_key, "_part", time_key, "_row"])
    )
    mapping = item_index_map(np.asarray(item_ids), events.schema[item_key], item_key)
    events = events.join(mapping, on=item_key, how="left", maintain_order="left")

    user = events.select(pl.col(user_key).rle_id()).to_series().to_numpy().astype(np.int64)
    n_users = int(user[-1]) + 1 if len(user) else 0
    idx = events["_idx"].fill_null(-1).to_numpy().astype(np.int64)
    is_target = events["_part"].to_numpy() == 2
    known_target = np.zeros(n_users, dtype=bool)
    known_target[user[is_target]] = idx[is_target] >= 0
    is_input = ~is_target & known_target[user]
    n_dropped = int((is_input & (idx < 0)).sum())
    keep_input = is_input & (idx >= 0)
    n_input = np.bincount(user[keep_input], minlength=n_users)
    scorable = known_target & (n_input > 0)
    n_scorable = int(scorable.sum())
    if unknown_targets not in ("skip", "miss"):
        raise ValueError(f"unknown_targets must be 'skip' or 'miss', got {unknown_targets!r}")
    # "miss": a user the model cannot answer (unknown target, or no known input item) is a miss
    missed = ~scorable if unknown_targets == "miss" else np.zeros(n_users, dtype=bool)
    pool = scorable | missed
    if max_users is not None and max_users < int(pool.sum()):
        rng = np.random.default_rng([seed, _USERS])
        chosen = np.flatnonzero(pool)[np.sort(rng.choice(int(pool.sum()), max_users, False))]
        sampled = np.zeros(n_users, dtype=bool)
        sampled[chosen] = True
        scorable, missed = scorable & sampled, missed & sampled
    keep = (keep_input | is_target) & scorable[user]  # the target is each row's last event
    kept_user = user[keep]
    lengths = np.bincount(kept_user, minlength=n_users)[scorable]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    times = None
    if with_times:
        times = event_seconds(events[time_key].filter(pl.Series(keep)))
        if times is None:
            logger.warning("column %r is not readable as seconds: no times", time_key)
    first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if len(user) else user
    data = SessionData(
        items=idx[keep],
        offsets=offsets,
        first_time=np.zeros(len(lengths), dtype=np.int64),
        item_ids=np.asarray(item_ids),
        times=times,
    )
    return LastItemData(
        data=data,
        users=events[user_key].to_numpy()[first][scorable],
        n_users=n_users,
        n_unknown_targets=int(n_users - known_target.sum()),
        n_no_input=int((known_target & (n_input == 0)).sum()),
        n_dropped_events=n_dropped,
        n_scorable=n_scorable,
        n_missed=int(missed.sum()),
    )


def draw_negatives(
    items: np.ndarray,
    offsets: np.ndarray,
    n_items: int,
    n_negatives: int,
    *,
    kind: Literal["uniform", "popularity"] = "uniform",
    support: np.ndarray | None = None,
    seed: int | np.random.SeedSequence = 0,
) -> np.ndarray:
    """``[R, n_negatives]`` int64 item indices: for every row ``r``, distinct items drawn without
    replacement from ``0 .. n_items - 1`` minus the row's items ``items[offsets[r]:offsets[r+1]]``.

    ``kind="uniform"``: each such subset equally likely (the NCF sampler
    :func:`recsys_pipeline.preprocessing.ncf.sample_negatives`, in its draw order).
    ``"popularity"``: successive draws with probability proportional to ``support [n_items]``
    (renormalised over the items not yet drawn; items with support 0 are never drawn), by
    ``torch.multinomial`` without replacement on rows of weights.

    Raises:
        ValueError: a row without items (every row holds at least its target), or a row with
            fewer than ``n_negatives`` items to draw from.
    """
    from recsys_pipeline.preprocessing.ncf import ITEM, USER, sample_negatives

    items = np.asarray(items, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_rows = len(offsets) - 1
    if (np.diff(offsets) < 1).any():
        raise ValueError("every row needs at least one item")
    owner = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(offsets))
    if kind == "uniform":
        positives = pl.DataFrame({USER: owner, ITEM: items})
        drawn = sample_negatives(positives, np.arange(n_items), n_negatives, seed)
        return drawn[ITEM].to_numpy().astype(np.int64).reshape(n_rows, n_negatives)
    if kind != "popularity":
        raise ValueError(f"negatives must be 'uniform' or 'popularity', got {kind!r}")
    if support is None or len(support) != n_items:
        raise ValueError(f"popularity negatives need a support of length {n_items}")
    weights = torch.as_tensor(np.asarray(support, dtype=np.float64)).clamp_min(0.0)
    seed_seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    generator = torch.Generator().manual_seed(int(seed_seq.generate_state(1, np.uint64)[0] >> 1))
    step = max(1, _DRAW_BUDGET // max(n_items, 1))
    out = np.empty((n_rows, n_negatives), dtype=np.int64)
    for a in range(0, n_rows, step):
        b = min(a + step, n_rows)
        w = weights.repeat(b - a, 1)  # [b - a, n_items]
        lo, hi = offsets[a], offsets[b]
        w[torch.from_numpy(owner[lo:hi] - a), torch.from_numpy(items[lo:hi])] = 0.0
        short = (w > 0).sum(dim=1) < n_negatives
        if bool(short.any()):
            raise ValueError(
                f"{int(short.sum())} user(s) have fewer than {n_negatives} items with support "
                "outside their sequence to draw negatives from"
            )
        out[a:b] = torch.multinomial(w, n_negatives, replacement=False, generator=generator)
    return out


def evaluate_last_item(
    model: Any,
    sequences: pl.DataFrame,
    *,
    targets: Literal["last"] | pl.DataFrame = "last",
    append: pl.DataFrame | None = None,
    exclude_history: bool | Exclusion = True,
    ranking: Literal["full", "sampled"] = "full",
    n_negatives: int = 100,
    negatives: Literal["uniform", "popularity"] = "uniform",
    support: np.ndarray | None = None,
    max_users: int | None = None,
    cutoffs: Sequence[int] = (1, 5, 10, 20),
    mode: str = "standard",
    batch_size: int = 256,
    item_chunk: int | None = None,
    path: Literal["auto", "batched", "step"] = "auto",
    mask: Literal["none", "append", "last"] | None = None,
    query_time: Literal["last_event", "target"] = "last_event",
    seed: int = 0,
    user_key: str = "UserId",
    item_key: str = "ItemId",
    time_key: str = "Time",
    progress: bool = False,
    return_ranks: bool = False,
    unknown_targets: Literal["skip", "miss"] = "skip",
    min_targets: int = 1,
) -> LastItemResult:
    """Last-item evaluation of ``model`` on ``sequences`` (protocol: module docstring).

    Args:
        model: a :class:`~recsys_pipeline.models.base.SequenceEncoder` and/or
            :class:`~recsys_pipeline.models.base.NextItemModel`.
        sequences: the users' events, one row per event.
        targets: ``"last"`` or a frame with each user's target row.
        append: events appended to every user's input before its target (the valid item).
        exclude_history: full ranking: ``True``/``"all"``, ``"window"`` or ``False``/``"none"``.
        ranking: ``"full"`` or ``"sampled"`` (legacy).
        n_negatives: sampled ranking: negatives per user.
        negatives: sampled ranking: ``"uniform"`` or ``"popularity"``.
        support: ``[n_items]`` popularity of the negatives (default: ``model.support``, else
            the item counts of the input events).
        max_users: score a seeded sample of this many users.
        cutoffs: the ``k`` of the metrics.
        mode: tie mode (:data:`~recsys_pipeline.evaluation.metrics.TIE_MODES`).
        batch_size: users per forward pass / per step batch (results do not depend on it).
        item_chunk: score this many items at a time (``None``: all at once).
        path: ``"batched"`` (``model.encode``), ``"step"`` (``model.step``) or ``"auto"``
            (batched when the model has ``encode``).
        mask: batched rows of masked models (default: ``model.last_item_mask`` or ``"none"``).
        query_time: ``"last_event"`` or ``"target"`` (models with ``uses_times``).
        seed: seeds the user sample, the negatives and the ``tiebreaking`` uniforms.
        progress: show a progress bar (targets/s).
        return_ranks: attach ``ranks`` (and ``users``) to the result.
        unknown_targets: ``"skip"`` (default: a user whose target item never occurs in the
            model's training data is not evaluated, ``n_unknown_targets``, nor one without a
            known input item, ``n_no_input``) or ``"miss"`` (both are evaluated and miss at
            every cut-off, as in reference implementations that give every item id an
            embedding: the metrics are over ``n_targets`` = scored + missed users;
            ``n_missed``).
        min_targets: fewer targets is a :class:`~recsys_pipeline.evaluation.evaluate.
            NoTargetsError`; 0 allows an empty evaluation (every metric ``nan``).

    Returns:
        :class:`LastItemResult`; ``label()`` names the protocol.
    """
    check_mode(mode)
    exclusion = _exclusion(exclude_history)
    if ranking not in ("full", "sampled"):
        raise ValueError(f"ranking must be 'full' or 'sampled', got {ranking!r}")
    if query_time not in ("last_event", "target"):
        raise ValueError(f"query_time must be 'last_event' or 'target', got {query_time!r}")
    if batch_size < 1 or (item_chunk is not None and item_chunk < 1):
        raise ValueError("batch_size and item_chunk must be positive")
    if ranking == "sampled" and n_negatives < 1:
        raise ValueError(f"n_negatives must be positive, got {n_negatives}")
    if path == "auto":
        path = "batched" if hasattr(model, "encode") else "step"
    if path not in ("batched", "step") or not hasattr(
        model, "encode" if path == "batched" else "step"
    ):
        raise ValueError(f"{type(model).__name__} has no {path!r} path")
    mask = getattr(model, "last_item_mask", "none") if mask is None else mask
    if mask not in ("none", "append", "last"):
        raise ValueError(f"mask must be 'none', 'append' or 'last', got {mask!r}")
    if path == "step":
        mask = "none"
    uses_times = bool(getattr(model, "uses_times", False)) and path == "batched"

    t0 = time.perf_counter()
    prepared = prepare(
        model.item_ids,
        sequences,
        targets=targets,
        append=append,
        with_times=uses_times,
        max_users=max_users,
        seed=seed,
        user_key=user_key,
        item_key=item_key,
        time_key=time_key,
        unknown_targets=unknown_targets,
    )
    if prepared.n_rows + prepared.n_missed < min_targets:
        raise NoTargetsError(
            f"{prepared.n_rows + prepared.n_missed} users to evaluate (at least {min_targets} "
            f"needed): of {prepared.n_users} users with a target, "
            f"{prepared.n_unknown_targets} have a target item the model does not know "
            f"({int(model.n_items)} items) and {prepared.n_no_input} no known input item "
            "(unknown_targets='miss' scores them as misses)"
        )
    n_items = int(model.n_items)
    device = model.device
    data, n_rows = prepared.data, prepared.n_rows
    target_np = prepared.targets
    target_t = torch.from_numpy(target_np).to(device)
    maxlen = getattr(model, "maxlen", None)
    window = None if maxlen is None else maxlen - (mask != "none")  # input items the model reads

    before = candidates = None
    if ranking == "full" and exclusion != "none":
        n_excluded = prepared.n_inputs
        if exclusion == "window" and window is not None:
            n_excluded = np.minimum(n_excluded, window)
        # seen_before reads the number of excluded items before a target at its position
        before = np.zeros(len(data.items), dtype=np.int64)
        before[data.offsets[1:] - 1] = n_excluded
    if ranking == "sampled" and n_rows:
        if negatives == "popularity" and support is None:
            support = getattr(model, "support", None)
            if support is None:
                inputs = np.ones(len(data.items), dtype=bool)
                inputs[data.offsets[1:] - 1] = False
                support = np.bincount(data.items[inputs], minlength=n_items)
        drawn = draw_negatives(
            data.items,
            data.offsets,
            n_items,
            n_negatives,
            kind=negatives,
            support=support,
            seed=np.random.SeedSequence([seed, _NEGATIVES]),
        )
        candidates = torch.from_numpy(np.concatenate([target_np[:, None], drawn], 1)).to(device)
    uniform_all = None
    if mode == "tiebreaking":
        uniform_all = torch.from_numpy(np.random.default_rng([seed, _TIES]).random(n_rows))
        uniform_all = uniform_all.to(device)
    chunk = n_items if item_chunk is None else min(int(item_chunk), n_items)

    acc = MetricAccumulator(cutoffs, device=device)
    all_ranks = torch.full((n_rows,), math.nan, dtype=torch.float64, device=device)
    was_training = isinstance(model, torch.nn.Module) and model.training
    if was_training:
        model.eval()
    bar = progress_bar(n_rows, "evaluate last item", "targets", enabled=progress)
    try:
        with torch.no_grad():
            if path == "batched":
                queries = _batched_queries(
                    model, prepared, batch_size, mask, uses_times, query_time == "target"
                )
            else:
                queries = _step_queries(model, prepared, batch_size, window)
            for query, n_query_rows, sel, rows in queries:
                sel_t = None if sel is None else torch.from_numpy(sel).to(device)
                rows_t = torch.from_numpy(rows).to(device)
                uniform = None if uniform_all is None else uniform_all[rows_t]
                if candidates is not None:
                    scores = _candidate_scores(
                        model, query, n_query_rows, sel_t, candidates[rows_t], chunk
                    )
                    ranks = candidate_ranks(scores, mode, uniform)
                else:
                    seen = repeat = None
                    if before is not None:  # [Bt, W] distinct excluded items, never the target
                        tpos = data.offsets[rows + 1] - 1
                        seen_np, repeat_np = seen_before(data.items, before, tpos)
                        seen = torch.from_numpy(seen_np).to(device)
                        repeat = torch.from_numpy(repeat_np).to(device)
                    ranks = batch_ranks(
                        model,
                        query,
                        n_query_rows,
                        sel_t,
                        target_t[rows_t],
                        chunk,
                        mode,
                        uniform,
                        seen,
                    )
                    if repeat is not None:  # a repeated target cannot be hit: a miss
                        ranks = ranks.masked_fill(repeat, math.inf)
                acc.update(ranks)
                all_ranks[rows_t] = ranks
                bar.update(len(rows))
    finally:
        bar.close()
        if was_training:
            model.train()

    metrics = acc.result()
    n_missed = prepared.n_missed
    if n_missed:  # every metric is a mean over users; a missed user adds 0
        share = n_rows / (n_rows + n_missed)
        metrics = {k: v * share for k, v in metrics.items()}
    if ranking == "sampled":
        metrics = sampled_metric_names(metrics, n_negatives, mrr=True)
    result = LastItemResult(metrics)
    seconds = time.perf_counter() - t0
    result["n_targets"] = float(n_rows + n_missed)
    result["n_missed"] = float(n_missed)
    result["n_users"] = float(prepared.n_users)
    result["n_unknown_targets"] = float(prepared.n_unknown_targets)
    result["n_no_input"] = float(prepared.n_no_input)
    result["n_dropped_events"] = float(prepared.n_dropped_events)
    result["seconds"] = seconds
    result["targets_per_s"] = n_rows / seconds if seconds > 0 else math.nan
    result.mode = mode
    result.cutoffs = tuple(int(k) for k in cutoffs)
    result.sequence_aware = False
    result.exclude_seen = ranking == "full" and exclusion != "none"
    result.ranking = ranking
    result.exclude_history = exclusion if ranking == "full" else "none"
    result.n_negatives = n_negatives if ranking == "sampled" else 0
    result.negatives = negatives if ranking == "sampled" else ""
    result.appended = append is not None
    result.n_scorable = prepared.n_scorable
    result.query_time = query_time if uses_times else None
    result.mask = mask
    result.path = path
    result.unknown_targets = unknown_targets
    result.ranks = all_ranks.cpu().numpy() if return_ranks else None
    result.users = prepared.users if return_ranks else None
    k_max = f"@{max(result.cutoffs)}"
    logger.info(
        "%s: %s (%s), %d targets (%d users: %d unknown targets, %d without input), %.0f targets/s",
        type(model).__name__,
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith(k_max)),
        result.label(),
        n_rows,
        prepared.n_users,
        prepared.n_unknown_targets,
        prepared.n_no_input,
        result["targets_per_s"],
    )
    return result


def _exclusion(value: bool | str) -> str:
    if value is True:
        return "all"
    if value is False:
        return "none"
    if value not in ("all", "window", "none"):
        raise ValueError(
            f"exclude_history must be a bool, 'all', 'window' or 'none', got {value!r}"
        )
    return str(value)


# ----------------------------------------------------------------------------------- queries
# Each yields (query, n_query_rows, sel, rows): ``query`` scores ``n_query_rows`` rows through
# ``model.score``; the rows ``sel [Bt]`` of them (``None``: all) are the users ``rows [Bt]``.


def _batched_queries(
    model: Any,
    prepared: LastItemData,
    batch_size: int,
    mask: str,
    uses_times: bool,
    target_time: bool,
) -> Iterator[tuple[torch.Tensor, int, None, np.ndarray]]:
    """``model.encode(last_only=True)`` on :func:`last_item_inputs` rows, longest rows first."""
    data = prepared.data
    n_inputs = prepared.n_inputs
    slot = int(mask != "none")
    maxlen = getattr(model, "maxlen", None)
    if maxlen is None:
        maxlen = int(n_inputs.max(initial=1)) + slot
    if not uses_times:
        data = dataclasses.replace(data, times=None)
    order = np.argsort(-n_inputs, kind="stable")
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        batch = last_item_inputs(
            data,
            maxlen,
            getattr(model, "padding", "left"),
            sequences=rows,
            hold_out_last=mask != "last",
            mask=mask,
            device=model.device,
        )
        if batch.times is not None and not target_time:
            batch = _query_at_last_event(batch, mask)
        yield model.encode(batch, last_only=True), len(rows), None, rows


def _query_at_last_event(batch: SequenceBatch, mask: str) -> SequenceBatch:
    """The query made at the last input event's time instead of the target's: the last
    position's ``target_times`` (causal rows) or the mask slot's time (masked rows)."""
    n, width = batch.items.shape
    rows = torch.arange(n, device=batch.items.device)
    last = width - 1 if batch.padding == "left" else batch.lengths - 1
    last = torch.as_tensor(last, device=batch.items.device).expand(n)
    if mask == "none":
        target_times = batch.target_times.clone()
        target_times[rows, last] = batch.times[rows, last]
        return dataclasses.replace(batch, target_times=target_times)
    times = batch.times.clone()
    times[rows, last] = batch.times[rows, (last - 1).clamp_min(0)]
    return dataclasses.replace(batch, times=times)


def _step_queries(
    model: NextItemModel, prepared: LastItemData, batch_size: int, window: int | None
) -> Iterator[tuple[Any, int, np.ndarray, np.ndarray]]:
    """Every user's (last ``window``) input items through ``model.step``, users side by side
    (longest first, the batch shrinks with ``keep_state`` as inputs end); the query after a
    user's last input item is yielded at that step."""
    data = prepared.data
    n_inputs = prepared.n_inputs
    if window is not None:
        n_inputs = np.minimum(n_inputs, window)
    start = data.offsets[1:] - 1 - n_inputs  # first fed event of every row
    order = np.argsort(-n_inputs, kind="stable")
    device = model.device
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        length = n_inputs[rows]  # descending
        steps = np.arange(int(length[0]))
        grid = data.items[np.minimum(start[rows][:, None] + steps, len(data.items) - 1)]
        grid_t = torch.from_numpy(grid).to(device)
        state = model.initial_state(len(rows))
        active = len(rows)
        for t in steps:
            n_t = int((length > t).sum())
            if n_t < active:
                state = model.keep_state(state, torch.arange(n_t, device=device))
                active = n_t
            query, state = model.step(grid_t[:n_t, t], state)
            done = np.flatnonzero(length[:n_t] == t + 1)
            if len(done):
                yield query, n_t, done, rows[done]


def _candidate_scores(
    model: Any,
    query: Any,
    n_rows: int,
    rows: torch.Tensor | None,
    candidates: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """Scores ``[Bt, C]`` of the ``candidates [Bt, C]`` of the rows ``rows`` (``None``: all) of
    ``query``, gathered from item chunks of ``chunk`` items."""
    n_items = int(model.n_items)
    out = None
    for a in range(0, n_items, chunk):
        b = min(a + chunk, n_items)
        s = score_checked(model, query, a, b, n_rows)
        s = s if rows is None else s[rows]
        inside = (candidates >= a) & (candidates < b)
        values = s.gather(1, (candidates - a).clamp(0, b - a - 1))
        out = values if out is None else torch.where(inside, values, out)
    return out


def capped_rank_metrics(
    ranks: np.ndarray, cutoffs: Sequence[int], max_rank: int = GR_MAX_RANK
) -> dict[str, float]:
    """generative-recommenders' metrics (``eval_metrics_v2_from_tensors``) of 1-based
    ``ranks`` (``inf`` = never hit): a rank beyond ``max_rank`` counts as ``max_rank + 1``;
    ``ndcg@k`` = ``1 / log2(rank + 1)`` within ``k``, ``hr@k``, ``mrr`` = mean ``1 / rank``
    (capped: the reference's), plus ``mrr_exact`` (uncapped) and ``n_beyond_cap``."""
    exact = np.asarray(ranks, dtype=np.float64)
    capped = np.minimum(exact, max_rank + 1)
    out: dict[str, float] = {}
    for k in sorted({int(k) for k in cutoffs}):
        hit = capped <= k
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(capped + 1), 0.0).mean())
        out[f"hr@{k}"] = float(hit.mean())
    out["mrr"] = float((1.0 / capped).mean())
    out["mrr_exact"] = float((1.0 / exact).mean())
    out["n_beyond_cap"] = float((exact > max_rank).sum())
    return out
