"""Seeded synthetic e-commerce event logs in the raw formats of six public session datasets.

The generator produces one *canonical* event log (:func:`generate_events`) and writes it in the
exact raw file layout of a public dataset (:func:`write_raw`): ``rees46``, ``yoochoose`` /
``rsc15`` (RecSys Challenge 2015), ``coveo`` (SIGIR eCom 2021), ``retailrocket`` and
``diginetica`` (CIKM Cup 2016). Everything is derived from ``SyntheticConfig.seed``: the same
config always gives the same bytes.

Structure of the data
---------------------
* **Items** have Zipf-like popularity ``pop[i] ∝ (rank[i] + 1) ** -zipf_exponent`` where
  ``rank`` is a seeded permutation of the internal item indices (so popularity is not monotone
  in the item id).
* **Sequential signal**: each item ``i`` has ``n_successors`` distinct successor items (never
  ``i`` itself, drawn from a flattened popularity) with fixed probabilities ``probs[i]`` (sorted
  descending). Within a session the next *viewed* item is drawn from the successors of the
  previous viewed item with probability ``p_follow``, otherwise from ``pop``. The first item of a
  session is drawn from ``pop``. Hence, exactly,
  ``P(next = j | prev = i) = p_follow * probs[i, k] * [j == successors[i, k]]
  + (1 - p_follow) * pop[j]``, which :class:`GroundTruth` exposes.
* **Sessions** have length ``geometric(1 / mean_session_length)`` (capped at
  ``20 * mean_session_length``), so about ``1 / mean_session_length`` of them hold one view.
  Views inside a session are seconds to minutes apart (log-normal, median 30 s, at most 20 min;
  3 % are 0 ms apart, i.e. equal timestamps). Immediate (``i i``) and non-immediate (``i j i``)
  repeats come from the popularity component.
* **Users** (log-normal activity) own several sessions that never overlap in time. Most
  consecutive sessions of a user are more than one hour apart; about 15 % follow the previous
  one after 3 to 56 minutes ("bursts"). Session starts are uniform over the window, so some
  sessions cross midnight.
* **Other events** (``cart``, ``remove_from_cart``, ``purchase``) are mixed in: each view spawns
  ``Poisson(other_event_rate / (1 - other_event_rate))`` events on the same item, placed after
  the view and before the next view of the session.

``n_events`` counts **all canonical events** (views and other events): the canonical frame has
``≈ n_events`` rows, of which ``≈ (1 - other_event_rate) * n_events`` are views (the number of
views is exact unless sessions had to be dropped to fit the window, which is logged). Raw files
can hold fewer rows (formats without some event kinds drop them) or slightly more (``coveo``
adds product-less page views and search clicks).

Raw item ids (internal index ``i`` in ``0 .. n_items - 1``)
----------------------------------------------------------
=============  ==============================================================================
format         raw item id
=============  ==============================================================================
rees46         ``product_id = 1_000_000 + i``
yoochoose      ``item = 214_000_000 + i`` (same for ``rsc15``)
retailrocket   ``itemid = 100_000 + i``
diginetica     ``itemId = 1 + i``
coveo          ``product_skus_hash = hex_hash(i, COVEO_SKU_SALT)`` (64 lowercase hex chars)
=============  ==============================================================================

:func:`raw_item_ids` returns this mapping as an array indexed by ``i``; :class:`GroundTruth`
also carries it (``item_ids``) and maps back with :meth:`GroundTruth.index_of`.

Per format (canonical ``user`` ``u``, ``session`` ``s``)
------------------------------------------------------
* rees46: all four event kinds; ``user_id = 500_000_000 + u``; ``user_session`` = UUID-like
  hash of ``s``; rows sorted by time, one file per UTC month.
* yoochoose / rsc15 (identical files): clicks = views, ``session = s + 1``; about 10 % of the
  sessions go to the test file; buys = purchases of clicks sessions; carts/removals dropped.
* coveo: view -> ``pageview``/``detail``, cart -> ``event``/``add``, removal ->
  ``event``/``remove``, purchase -> ``event``/``purchase``; plus a product-less page view after
  about 12 % of views and a search ``click`` on the same sku just before about 4 % of views.
  About 10 % of a user's sessions reuse the hash of the user's previous session.
* retailrocket: ``visitorid = u``; view / addtocart / transaction (removals dropped);
  ``transactionid`` = 1 + rank of the session among the sessions with a purchase.
* diginetica: views only; ``sessionId = s + 1``; ``userId = u + 1`` for about 15 % of the users
  (logged in), ``NA`` otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

logger = logging.getLogger(__name__)

FORMATS = ("rees46", "yoochoose", "rsc15", "coveo", "retailrocket", "diginetica")

#: Canonical event kinds; the ``event`` column of :func:`generate_events` is ``pl.Enum`` of these.
EVENT_KINDS = ("view", "cart", "remove_from_cart", "purchase")
EVENT_DTYPE = pl.Enum(list(EVENT_KINDS))
_OTHER_KIND_WEIGHTS = np.array([0.6, 0.15, 0.25])  # cart, remove_from_cart, purchase

#: Raw item id = offset + internal index, for every format except coveo (hashes).
ITEM_ID_OFFSETS: dict[str, int] = {
    "rees46": 1_000_000,
    "yoochoose": 214_000_000,
    "rsc15": 214_000_000,
    "retailrocket": 100_000,
    "diginetica": 1,
}
#: Salts of the coveo hashes: ``hex_hash(i, COVEO_SKU_SALT)`` is the sku hash of item ``i``.
COVEO_SKU_SALT = 11
COVEO_SESSION_SALT = 12
COVEO_URL_SALT = 13
REES46_SESSION_SALT = 21
REES46_USER_OFFSET = 500_000_000

_DEFAULT_WINDOWS: dict[str, tuple[datetime, timedelta]] = {
    "rees46": (datetime(2019, 10, 1, tzinfo=UTC), timedelta(days=61)),
    "yoochoose": (datetime(2014, 4, 1, tzinfo=UTC), timedelta(days=30)),
    "rsc15": (datetime(2014, 4, 1, tzinfo=UTC), timedelta(days=30)),
    "coveo": (datetime(2018, 11, 15, tzinfo=UTC), timedelta(days=30)),
    "retailrocket": (datetime(2015, 8, 1, tzinfo=UTC), timedelta(days=48, hours=3)),
    "diginetica": (datetime(2016, 1, 1, tzinfo=UTC), timedelta(days=150)),
}

_MS_MINUTE = 60_000
_MS_HOUR = 3_600_000
_MS_DAY = 86_400_000
_MAX_DWELL_MS = 20 * _MS_MINUTE  # never a gap >= 30 min inside a generated session
_MEDIAN_DWELL_MS = 30_000.0
_DWELL_SIGMA = 1.1
_P_ZERO_DWELL = 0.03
_P_BURST = 0.15  # share of a user's sessions that follow the previous one within an hour
_BURST_GAP_MS = (2 * _MS_MINUTE, 55 * _MS_MINUTE)
_MIN_GAP_MS = 61 * _MS_MINUTE
_OTHER_SLACK_MS = _MS_MINUTE  # other events land at most this long after their view
_CSV_CHUNK_ROWS = 2_000_000
_MONTH_ABBR = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# Independent random streams: np.random.default_rng([seed, tag]).
_TAG_ITEMS = 1
_TAG_SESSIONS = 2
_TAG_USERS = 3
_TAG_TIMES = 4
_TAG_CHAINS = 5
_TAG_OTHERS = 6
_TAG_FORMAT = {fmt: 100 + k for k, fmt in enumerate(FORMATS)}

_REES46_CATEGORY_CODES = (
    "electronics.smartphone",
    "electronics.audio.headphone",
    "electronics.video.tv",
    "electronics.clocks",
    "computers.notebook",
    "computers.desktop",
    "computers.peripherals.printer",
    "appliances.kitchen.refrigerators",
    "appliances.kitchen.washer",
    "appliances.environment.vacuum",
    "apparel.shoes",
    "apparel.shoes.keds",
    "furniture.living_room.sofa",
    "furniture.bedroom.bed",
    "kids.toys",
    "auto.accessories.player",
    "construction.tools.drill",
    "sport.bicycle",
    "accessories.bag",
    "country_yard.furniture.hammok",
)
_REES46_BRANDS = (
    "samsung",
    "apple",
    "xiaomi",
    "huawei",
    "lucente",
    "bosch",
    "lg",
    "sony",
    "acer",
    "lenovo",
    "hp",
    "asus",
    "indesit",
    "midea",
    "respect",
    "artel",
    "elenberg",
    "cordiant",
    "nike",
    "adidas",
)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic event log.

    Attributes:
        n_events: Approximate number of canonical events (views plus other events).
        n_items: Number of distinct items.
        n_users: Number of distinct users (some may stay inactive).
        start: ISO date or datetime (UTC when naive) of the window start; ``None`` uses the
            format's default window.
        n_days: Window length in days; ``None`` uses the format's default length.
        seed: Non-negative seed of every random draw.
        zipf_exponent: Exponent of the Zipf-like item popularity.
        n_successors: Successor items per item in the transition structure.
        p_follow: Probability that the next view follows the transition structure of the
            previous view.
        p_skip: Probability that the next view follows the transition structure of the view
            *two* steps back (a second-order signal that a last-item model cannot see; from the
            third view of a session on; 0 disables it). ``p_follow + p_skip <= 1``; the rest
            of the mass goes to popularity.
        mean_session_length: Mean number of views per session (>= 1).
        other_event_rate: Share of non-view events among all events, in ``[0, 1)``.
    """

    n_events: int = 50_000
    n_items: int = 2_000
    n_users: int = 5_000
    start: str | None = None
    n_days: int | None = None
    seed: int = 42
    zipf_exponent: float = 1.1
    n_successors: int = 3
    p_follow: float = 0.8
    p_skip: float = 0.0
    mean_session_length: float = 5.0
    other_event_rate: float = 0.1

    def __post_init__(self) -> None:
        """Validate the parameters."""
        if self.n_events < 1:
            raise ValueError(f"n_events must be >= 1, got {self.n_events}")
        if self.n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if self.n_successors < 1:
            raise ValueError(f"n_successors must be >= 1, got {self.n_successors}")
        if self.n_items <= self.n_successors:
            raise ValueError(
                f"n_items ({self.n_items}) must exceed n_successors ({self.n_successors})"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.n_days is not None and self.n_days < 1:
            raise ValueError(f"n_days must be >= 1, got {self.n_days}")
        if not 0.0 <= self.p_follow <= 1.0:
            raise ValueError(f"p_follow must be in [0, 1], got {self.p_follow}")
        if self.p_skip < 0.0 or self.p_follow + self.p_skip > 1.0:
            raise ValueError(f"p_skip must be >= 0 with p_follow + p_skip <= 1, got {self.p_skip}")
        if self.mean_session_length < 1.0:
            raise ValueError(f"mean_session_length must be >= 1, got {self.mean_session_length}")
        if not 0.0 <= self.other_event_rate < 1.0:
            raise ValueError(f"other_event_rate must be in [0, 1), got {self.other_event_rate}")
        if self.zipf_exponent < 0.0:
            raise ValueError(f"zipf_exponent must be >= 0, got {self.zipf_exponent}")


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The generating next-item distribution, in the item ids of one format.

    Row ``r`` of every array belongs to the item whose raw id is ``item_ids[r]`` (``r`` is the
    internal item index).

    Attributes:
        successors: ``[n_items, n_successors]`` raw ids of each item's successors.
        probs: ``[n_items, n_successors]`` successor probabilities (rows sum to 1, descending).
        p_follow: Probability that a transition follows ``successors`` / ``probs`` of the
            previous item.
        popularity: ``[n_items]`` probability of each item under the popularity component.
        item_ids: ``[n_items]`` raw id of each internal index (int64, or str for coveo).
        successor_index: ``[n_items, n_successors]`` internal indices of the successors.
    """

    successors: np.ndarray
    probs: np.ndarray
    p_follow: float
    popularity: np.ndarray
    item_ids: np.ndarray
    successor_index: np.ndarray = field(repr=False)
    #: probability that a transition follows the successors of the item two steps back
    p_skip: float = 0.0

    @cached_property
    def _index(self) -> dict[Any, int]:
        return {raw: k for k, raw in enumerate(self.item_ids.tolist())}

    @property
    def n_items(self) -> int:
        """Number of items."""
        return int(self.popularity.shape[0])

    def index_of(self, item: Any) -> int:
        """Internal index of a raw item id (raises ``KeyError`` for unknown ids)."""
        return self._index[item.item() if isinstance(item, np.generic) else item]

    def next_item_probs(self, item: Any, before: Any | None = None) -> np.ndarray:
        """``P(next = item_ids[j] | prev = item, the one before = before)`` for every ``j``.

        Without ``before`` (a session's second view, or ``p_skip == 0``) the skip component
        follows ``item`` too, as the generator does at a session's second view.
        """
        idx = self.index_of(item)
        dist = (1.0 - self.p_follow - self.p_skip) * self.popularity
        follow = self.p_follow + (self.p_skip if before is None else 0.0)
        dist[self.successor_index[idx]] += follow * self.probs[idx]
        if before is not None and self.p_skip > 0:
            back = self.index_of(before)
            np.add.at(dist, self.successor_index[back], self.p_skip * self.probs[back])
        return dist

    def next_item_distribution(self, item: Any, min_prob: float = 0.0) -> dict[Any, float]:
        """Next-item distribution after viewing ``item``, as ``{raw item id: probability}``.

        Args:
            item: Raw id of the previously viewed item.
            min_prob: Leave out items whose probability is not above this (0 keeps all items
                with a positive probability).
        """
        dist = self.next_item_probs(item)
        keep = np.flatnonzero(dist > min_prob)
        return dict(zip(self.item_ids[keep].tolist(), dist[keep].tolist(), strict=True))

    def top_k(self, item: Any, k: int) -> list[Any]:
        """The ``k`` most probable next items after ``item`` (raw ids, most probable first)."""
        dist = self.next_item_probs(item)
        order = np.argsort(-dist, kind="stable")[:k]
        return self.item_ids[order].tolist()


# ----------------------------------------------------------------------------------- helpers


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag])


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (a bijection of uint64), vectorised."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _hex_chars(ids: np.ndarray, salt: int, n_hex: int) -> np.ndarray:
    """``[len(ids), n_hex]`` uint8 array of lowercase hex ASCII, a keyed hash of each id."""
    ids64 = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([salt], dtype=np.uint64))[0]
        base = _splitmix64(ids64 ^ key)  # bijective in the id: distinct ids, distinct hashes
        n_words = -(-n_hex // 16)
        words = np.empty((ids64.size, n_words), dtype=">u8")
        for w in range(n_words):
            words[:, w] = base if w == 0 else _splitmix64(base + np.uint64(w) * key)
    raw = words.view(np.uint8).reshape(ids64.size, n_words * 8)
    nibbles = np.empty((ids64.size, n_words * 16), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 15
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    return lut[nibbles[:, :n_hex]]


def _chars_to_series(name: str, chars: np.ndarray) -> pl.Series:
    chars = np.ascontiguousarray(chars)
    return pl.Series(name, chars.view(f"S{chars.shape[1]}").ravel()).cast(pl.String)


def hex_hash(ids: np.ndarray | int, salt: int, n_hex: int = 64) -> np.ndarray:
    """Deterministic lowercase hex strings (``n_hex`` chars) of integer ids, as a numpy array.

    Distinct ids give distinct strings for a given salt (the first 16 hex digits are a bijection
    of the id). Used for the coveo hashes, e.g. ``hex_hash(i, COVEO_SKU_SALT)`` is the sku hash
    of internal item ``i``.
    """
    chars = np.ascontiguousarray(_hex_chars(np.atleast_1d(np.asarray(ids)), salt, n_hex))
    return chars.view(f"S{n_hex}").ravel().astype(f"U{n_hex}")


def _uuid_series(name: str, ids: np.ndarray, salt: int) -> pl.Series:
    """UUID-like strings ``8-4-4-4-12`` (lowercase hex) of integer ids."""
    hexc = _hex_chars(ids, salt, 32)
    out = np.full((hexc.shape[0], 36), ord("-"), dtype=np.uint8)
    out[:, 0:8] = hexc[:, 0:8]
    out[:, 9:13] = hexc[:, 8:12]
    out[:, 14:18] = hexc[:, 12:16]
    out[:, 19:23] = hexc[:, 16:20]
    out[:, 24:36] = hexc[:, 20:32]
    return _chars_to_series(name, out)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def raw_item_ids(fmt: str, n_items: int) -> np.ndarray:
    """Raw item id of every internal index ``0 .. n_items - 1`` in format ``fmt``."""
    _check_format(fmt)
    idx = np.arange(n_items, dtype=np.int64)
    if fmt == "coveo":
        return hex_hash(idx, COVEO_SKU_SALT)
    return idx + ITEM_ID_OFFSETS[fmt]


def event_window(config: SyntheticConfig, fmt: str = "rees46") -> tuple[int, int]:
    """``[start, end)`` of the event window in UTC epoch milliseconds."""
    _check_format(fmt)
    default_start, default_length = _DEFAULT_WINDOWS[fmt]
    if config.start is None:
        start = default_start
    else:
        start = datetime.fromisoformat(config.start)
        start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    length = default_length if config.n_days is None else timedelta(days=config.n_days)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + int(length.total_seconds() * 1000)


def _item_model(config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Popularity ``[n]``, successor indices ``[n, k]`` and successor probabilities ``[n, k]``."""
    rng = _rng(config.seed, _TAG_ITEMS)
    n, k = config.n_items, config.n_successors
    rank = rng.permutation(n).astype(np.float64)
    popularity = (rank + 1.0) ** -config.zipf_exponent
    popularity /= popularity.sum()
    # successors come from a flattened popularity: popular items are likelier successors
    succ_dist = _Categorical((rank + 1.0) ** (-0.5 * config.zipf_exponent))
    successors = succ_dist.draw(rng, (n, k))
    own = np.arange(n)[:, None]
    for attempt in range(1000):
        bad = successors == own
        for a in range(k):
            for b in range(a + 1, k):
                bad[:, b] |= successors[:, b] == successors[:, a]
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        if attempt < 100:
            successors[bad] = succ_dist.draw(rng, n_bad)
        else:  # pathological tiny catalogues: fall back to uniform draws
            successors[bad] = rng.integers(0, n, n_bad)
    else:  # pragma: no cover - needs n_items barely above n_successors and bad luck
        raise RuntimeError("could not draw distinct successors")
    weights = 0.5 ** np.arange(k) * rng.uniform(0.8, 1.2, (n, k))
    probs = -np.sort(-weights, axis=1)
    probs /= probs.sum(axis=1, keepdims=True)
    return popularity, successors.astype(np.int64), probs


def _ground_truth(config: SyntheticConfig, item_ids: np.ndarray) -> GroundTruth:
    popularity, successors, probs = _item_model(config)
    return GroundTruth(
        successors=item_ids[successors],
        probs=probs,
        p_follow=config.p_follow,
        popularity=popularity,
        item_ids=item_ids,
        successor_index=successors,
        p_skip=config.p_skip,
    )


def ground_truth(config: SyntheticConfig, fmt: str) -> GroundTruth:
    """Ground-truth transition structure of ``config`` in the raw item ids of ``fmt``."""
    return _ground_truth(config, raw_item_ids(fmt, config.n_items))


class _Categorical:
    """Inverse-CDF sampler with a guide table (a few vectorised steps per draw, any size)."""

    def __init__(self, weights: np.ndarray) -> None:
        cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
        cdf /= cdf[-1]
        cdf[-1] = 1.0
        self.cdf = cdf
        self.n_buckets = 2 * cdf.size
        edges = np.arange(self.n_buckets + 1, dtype=np.float64) / self.n_buckets
        self.guide = np.minimum(np.searchsorted(cdf, edges, side="right"), cdf.size - 1)

    def draw(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        """``size`` independent draws of an index (int64)."""
        u = rng.random(size)
        shape = u.shape
        u = u.ravel()
        bucket = np.minimum((u * self.n_buckets).astype(np.int64), self.n_buckets - 1)
        lo = self.guide[bucket]
        hi = self.guide[bucket + 1]
        active = np.flatnonzero(lo < hi)
        while active.size:  # first index in [lo, hi] whose cdf exceeds u
            a_lo, a_hi, a_u = lo[active], hi[active], u[active]
            mid = (a_lo + a_hi) >> 1
            right = self.cdf[mid] <= a_u
            a_lo = np.where(right, mid + 1, a_lo)
            a_hi = np.where(right, a_hi, mid)
            lo[active] = a_lo
            hi[active] = a_hi
            active = active[a_lo < a_hi]
        return lo.reshape(shape)


# ------------------------------------------------------------------------------ simulation


def _session_lengths(config: SyntheticConfig, n_views: int) -> np.ndarray:
    rng = _rng(config.seed, _TAG_SESSIONS)
    mean = config.mean_session_length
    cap = max(1, math.ceil(20 * mean))
    chunks: list[np.ndarray] = []
    total = 0
    while total < n_views:
        size = int((n_views - total) / mean * 1.1) + 16
        chunk = np.minimum(rng.geometric(1.0 / mean, size=size), cap).astype(np.int64)
        chunks.append(chunk)
        total += int(chunk.sum())
    lengths = np.concatenate(chunks)
    cum = np.cumsum(lengths)
    n_sessions = int(np.searchsorted(cum, n_views)) + 1
    lengths = lengths[:n_sessions]
    lengths[-1] -= int(cum[n_sessions - 1]) - n_views
    return lengths


def _segmented_cummax(values: np.ndarray, group_id: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` restarting at each group (groups are contiguous, and the
    first value of each group is its finite minimum-bounded start; smaller placeholders are ok)."""
    floor = values[first].min() if values.size else 0
    clipped = np.maximum(values, floor)
    width = int(clipped.max()) - int(floor) + 1 if values.size else 1
    n_groups = int(group_id[-1]) + 1 if values.size else 0
    if n_groups * width < 2**62:
        shifted = (clipped - floor) + group_id * width
        return np.maximum.accumulate(shifted) - group_id * width + floor
    frame = pl.DataFrame({"g": group_id, "v": clipped})  # pragma: no cover - huge ranges
    return frame.select(pl.col("v").cum_max().over("g"))["v"].to_numpy()


def _sorted_uniforms(rng: np.random.Generator, group_sizes: np.ndarray) -> np.ndarray:
    """Uniform(0, 1) draws, sorted within each contiguous group (normalised exponential
    spacings, so no sort is needed)."""
    n_groups = group_sizes.size
    n = int(group_sizes.sum())
    spacings = rng.exponential(1.0, n + n_groups)
    cum = np.cumsum(spacings)
    group_start = np.cumsum(group_sizes) - group_sizes
    block_start = group_start + np.arange(n_groups)  # each group owns size + 1 spacings
    before = cum[block_start] - spacings[block_start]
    total = cum[block_start + group_sizes] - before
    group_id = np.repeat(np.arange(n_groups), group_sizes)
    values = (cum[np.arange(n) + group_id] - before[group_id]) / total[group_id]
    return np.clip(values, 0.0, np.nextafter(1.0, 0.0))


def _place_sessions(
    config: SyntheticConfig, durations: np.ndarray, window: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign users and start times (ms) to sessions; returns (kept, user, start).

    ``kept`` holds the indices of the sessions that fit into the window, ordered by start time
    (ties by index); ``user`` and ``start`` are aligned with ``kept``. Sessions are exchangeable
    (their attributes are i.i.d.), so users are handed out in nondecreasing order of the session
    index and each user's desired start times are drawn already sorted: no sort is needed
    before the non-overlap recurrence.
    """
    rng = _rng(config.seed, _TAG_USERS)
    w0, w1 = window
    span = w1 - w0
    n = durations.size
    activity = rng.lognormal(0.0, 1.0, config.n_users)
    user_cdf = np.cumsum(activity)
    user_cdf /= user_cdf[-1]
    user = np.searchsorted(user_cdf, _sorted_uniforms(rng, np.array([n])), side="right")
    user = np.minimum(user, config.n_users - 1)
    first = np.ones(n, dtype=bool)
    first[1:] = user[1:] != user[:-1]
    group_start = np.flatnonzero(first)
    group_sizes = np.diff(np.append(group_start, n))
    group_id = np.cumsum(first) - 1
    room = np.maximum(span - durations - _OTHER_SLACK_MS, 1)
    desired = w0 + np.floor(_sorted_uniforms(rng, group_sizes) * room).astype(np.int64)
    burst = rng.random(n) < _P_BURST
    gap = np.where(burst, rng.integers(_BURST_GAP_MS[0], _BURST_GAP_MS[1], n), _MIN_GAP_MS)

    step = np.zeros(n, dtype=np.int64)  # distance from the previous session's start
    step[1:] = durations[:-1] + _OTHER_SLACK_MS + gap[1:]
    step[first] = 0
    cum = np.cumsum(step)
    cum -= cum[group_start][group_id]
    # start[k] = max(desired[k], start[k-1] + step[k]), bursts: start[k] = start[k-1] + step[k]
    free = np.where(first | ~burst, desired - cum, np.iinfo(np.int64).min // 4)
    start = cum + _segmented_cummax(free, group_id, first)
    # shift a user's timeline back when its last session would run past the window
    end = start + durations + _OTHER_SLACK_MS
    last_end = np.maximum.reduceat(end, group_start)[group_id]
    start -= np.maximum(last_end - (w1 - 1), 0)
    fits = start >= w0
    if not fits.all():
        logger.info("dropped %d of %d sessions that did not fit the window", (~fits).sum(), n)
    kept = np.flatnonzero(fits)
    by_time = kept[np.argsort(start[kept], kind="stable")]
    return by_time, user[by_time], start[by_time]


def _draw_items(
    config: SyntheticConfig,
    lengths: np.ndarray,
    offsets: np.ndarray,
    *,
    popularity: np.ndarray,
    successors: np.ndarray,
    probs: np.ndarray,
) -> np.ndarray:
    """Item chains of all sessions, looping over positions (vectorised across sessions)."""
    rng = _rng(config.seed, _TAG_CHAINS)
    pop = _Categorical(popularity)
    succ_cdf = np.cumsum(probs, axis=1)
    succ_cdf[:, -1] = 1.0
    k = successors.shape[1]
    items = np.empty(int(lengths.sum()), dtype=np.int64)
    if lengths.size == 0:
        return items
    by_len = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[by_len]
    sorted_off = offsets[by_len]
    neg_len = -sorted_len
    prev = pop.draw(rng, by_len.size)
    items[sorted_off] = prev
    prev2 = prev.copy()  # the view two steps back (unused before the third view)

    def successor_of(sources: np.ndarray) -> np.ndarray:
        slot = (rng.random(sources.size)[:, None] >= succ_cdf[sources]).sum(axis=1)
        return successors[sources, np.minimum(slot, k - 1)]

    for pos in range(1, int(sorted_len[0])):
        n_active = int(np.searchsorted(neg_len, -pos, side="left"))  # sessions longer than pos
        cur = prev[:n_active]
        u = rng.random(n_active)
        follow = u < config.p_follow
        skip = (u >= config.p_follow) & (u < config.p_follow + config.p_skip)
        if pos == 1:  # no view two steps back yet: the skip mass follows the previous view
            follow |= skip
            skip[:] = False
        nxt = np.empty(n_active, dtype=np.int64)
        f_idx = np.flatnonzero(follow)
        nxt[f_idx] = successor_of(cur[f_idx])
        s_idx = np.flatnonzero(skip)
        nxt[s_idx] = successor_of(prev2[:n_active][s_idx])
        p_idx = np.flatnonzero(~(follow | skip))
        nxt[p_idx] = pop.draw(rng, p_idx.size)
        items[sorted_off[:n_active] + pos] = nxt
        prev2 = cur
        prev = nxt
    return items


def _simulate(config: SyntheticConfig, window: tuple[int, int]) -> pl.DataFrame:
    popularity, successors, probs = _item_model(config)
    n_views_target = max(1, round(config.n_events * (1.0 - config.other_event_rate)))
    lengths0 = _session_lengths(config, n_views_target)
    offsets0 = np.cumsum(lengths0) - lengths0

    # dwell[e] = ms since the previous view of the session (0 for a session's first view)
    t_rng = _rng(config.seed, _TAG_TIMES)
    dwell0 = t_rng.lognormal(np.log(_MEDIAN_DWELL_MS), _DWELL_SIGMA, n_views_target)
    dwell0 = np.minimum(dwell0, _MAX_DWELL_MS, out=dwell0).astype(np.int64)
    dwell0[t_rng.random(n_views_target) < _P_ZERO_DWELL] = 0
    dwell0[offsets0] = 0
    durations = np.add.reduceat(dwell0, offsets0)

    kept, user, start = _place_sessions(config, durations, window)
    lengths = lengths0[kept]
    offsets = np.cumsum(lengths) - lengths
    n_views = int(lengths.sum())
    gather = np.repeat(offsets0[kept] - offsets, lengths)
    gather += np.arange(n_views, dtype=np.int64)
    ts = dwell0[gather]  # dwells in the final session order ...
    del dwell0, gather
    # ... turned in place into timestamps: a running sum whose first entry in each session
    # jumps from the previous session's last view to this session's start
    session_end = start + durations[kept]
    ts[offsets] = start - np.concatenate((np.zeros(1, dtype=np.int64), session_end[:-1]))
    np.cumsum(ts, out=ts)
    items = _draw_items(
        config, lengths, offsets, popularity=popularity, successors=successors, probs=probs
    )

    # other events: Poisson(lam) per view, on the viewed item, before the session's next view
    o_rng = _rng(config.seed, _TAG_OTHERS)
    lam = config.other_event_rate / (1.0 - config.other_event_rate)
    counts = o_rng.poisson(lam, n_views) if lam > 0 else np.zeros(n_views, dtype=np.int64)
    src = np.repeat(np.arange(n_views, dtype=np.int64), counts)
    last_view = np.zeros(n_views, dtype=bool)
    last_view[offsets + lengths - 1] = True
    following = np.minimum(src + 1, n_views - 1)
    limit = np.where(
        last_view[src], _OTHER_SLACK_MS, np.minimum(ts[following] - ts[src], _OTHER_SLACK_MS)
    )
    delta = np.floor(o_rng.random(src.size) * limit).astype(np.int64)
    kinds = 1 + _Categorical(_OTHER_KIND_WEIGHTS).draw(o_rng, src.size)
    within = np.argsort(src * (_OTHER_SLACK_MS + 1) + delta, kind="stable")
    src, delta, kinds = src[within], delta[within], kinds[within]
    # output row of other event j (sorted by source view): its view's row (src + number of
    # other events of earlier views) + 1 + its rank among its siblings = src + 1 + j
    other_pos = src + 1 + np.arange(src.size, dtype=np.int64)

    total = n_views + src.size
    is_other = np.zeros(total, dtype=bool)
    is_other[other_pos] = True
    is_view = ~is_other

    def interleave(view_values: np.ndarray, other_values: np.ndarray) -> np.ndarray:
        out = np.empty(total, dtype=view_values.dtype)
        out[is_view] = view_values
        out[is_other] = other_values
        return out

    out_lengths = lengths + np.add.reduceat(counts, offsets) if n_views else lengths
    out_user = np.repeat(user.astype(np.int64), out_lengths)
    out_session = np.repeat(np.arange(lengths.size, dtype=np.int64), out_lengths)
    out_item = interleave(items, items[src])
    out_ts = interleave(ts, ts[src] + delta)
    out_kind = interleave(np.zeros(n_views, dtype=np.uint32), kinds.astype(np.uint32))
    frame = pl.DataFrame(
        {
            "user": out_user,
            "session": out_session,
            "item": out_item,
            "ts_ms": out_ts,
            "event": pl.Series(out_kind).cat.to(EVENT_DTYPE),
        }
    )
    logger.info("generated %d events (%d views) in %d sessions", total, n_views, lengths.size)
    return frame


def generate_events(
    config: SyntheticConfig, fmt: str | None = None
) -> tuple[pl.DataFrame, GroundTruth]:
    """Generate the canonical event log and its ground truth (internal item ids).

    Args:
        config: Generator parameters.
        fmt: Format whose default window is used when ``config.start`` / ``config.n_days`` is
            ``None`` (``None`` means ``"rees46"``: 2019-10-01, 61 days). Only the window depends
            on it.

    Returns:
        ``(events, truth)``. ``events`` has columns ``user`` (Int64), ``session`` (Int64, the
        generated session, numbered ``0..`` in order of session start), ``item`` (Int64,
        internal index ``0 .. n_items - 1``), ``ts_ms`` (Int64, UTC epoch ms) and ``event``
        (``pl.Enum(EVENT_KINDS)``), sorted by session and then time. ``truth`` is the
        :class:`GroundTruth` with ``item_ids == arange(n_items)``.
    """
    window = event_window(config, fmt or "rees46")
    events = _simulate(config, window)
    return events, _ground_truth(config, np.arange(config.n_items, dtype=np.int64))


# ------------------------------------------------------------------------------- writers


def _ts_column(ts_ms: pl.Expr) -> pl.Expr:
    return ts_ms.cast(pl.Datetime("ms"))


def _string_lookup(
    rng: np.random.Generator, values: tuple[str, ...], size: int, p_null: float
) -> pl.Series:
    """Per-row value from ``values`` (null with probability ``p_null``), as a pl.Enum series."""
    codes = rng.integers(0, len(values), size).astype(np.uint32)
    present = rng.random(size) >= p_null
    series = pl.Series("v", codes).cat.to(pl.Enum(list(values)))
    return _mask(series, present)


def _mask(series: pl.Series, keep: np.ndarray) -> pl.Series:
    """``series`` with nulls where ``keep`` is False."""
    frame = pl.DataFrame({"v": series, "k": keep})
    return frame.select(pl.when(pl.col("k")).then(pl.col("v")).alias(series.name)).to_series()


def _format_seconds(ts_ms: np.ndarray, fmt: str) -> pl.Series:
    """``strftime(fmt)`` of whole UTC seconds; sorted input with more rows than distinct
    seconds is formatted once per second of its range and gathered (faster)."""
    seconds = ts_ms // 1000
    lo, hi = (int(seconds[0]), int(seconds[-1])) if seconds.size else (0, -1)
    if 0 <= hi - lo < seconds.size and bool((seconds[1:] >= seconds[:-1]).all()):
        table = pl.Series(np.arange(lo, hi + 1, dtype=np.int64) * 1000)
        table = table.cast(pl.Datetime("ms")).dt.strftime(fmt)
        return table.gather(seconds - lo)
    return pl.Series(seconds * 1000).cast(pl.Datetime("ms")).dt.strftime(fmt)


def _write_rees46(events: pl.DataFrame, config: SyntheticConfig, out_dir: Path) -> list[Path]:
    rng = _rng(config.seed, _TAG_FORMAT["rees46"])
    n_items = config.n_items
    n_categories = max(1, min(1_000, n_items // 10))
    category_ids = (2_053_013_552_000_000_000 + np.arange(n_categories) * 9_176_171_233).astype(
        np.int64
    )
    item_category = _Categorical(1.0 / (np.arange(n_categories) + 1.0)).draw(rng, n_items)
    codes_per_category = _string_lookup(rng, _REES46_CATEGORY_CODES, n_categories, 0.3)
    item_code = codes_per_category.gather(item_category)
    item_brand = _string_lookup(rng, _REES46_BRANDS, n_items, 0.15)
    cents = np.rint(np.clip(rng.lognormal(4.0, 1.2, n_items), 0.5, 5000.0) * 100).astype(np.int64)
    item_price = pl.select(
        pl.format(
            "{}.{}",
            pl.lit(cents // 100),
            pl.lit(cents % 100).cast(pl.String).str.zfill(2),
        )
    ).to_series()
    n_sessions = int(events["session"].max()) + 1 if events.height else 0
    session_uuid = _uuid_series("user_session", np.arange(n_sessions), REES46_SESSION_SALT)

    ordered = events.sort("ts_ms", maintain_order=True)
    ts = ordered["ts_ms"].to_numpy()
    paths: list[Path] = []
    if ordered.height == 0:
        return paths
    first = datetime.fromtimestamp(int(ts[0]) / 1000, tz=UTC)
    month = datetime(first.year, first.month, 1, tzinfo=UTC)
    while int(month.timestamp() * 1000) <= int(ts[-1]):
        nxt = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        lo_row, hi_row = np.searchsorted(
            ts, [int(month.timestamp() * 1000), int(nxt.timestamp() * 1000)], side="left"
        )
        part = ordered.slice(int(lo_row), int(hi_row - lo_row))
        path = out_dir / f"{month.year}-{_MONTH_ABBR[month.month - 1]}.csv"
        month = nxt
        if part.height == 0:
            continue
        with path.open("wb") as handle:
            for lo in range(0, part.height, _CSV_CHUNK_ROWS):
                chunk = part.slice(lo, _CSV_CHUNK_ROWS)
                item = chunk["item"].to_numpy()
                frame = pl.DataFrame(
                    {
                        "event_time": _format_seconds(
                            chunk["ts_ms"].to_numpy(), "%Y-%m-%d %H:%M:%S UTC"
                        ),
                        "event_type": chunk["event"],
                        "product_id": item + ITEM_ID_OFFSETS["rees46"],
                        "category_id": category_ids[item_category[item]],
                        "category_code": item_code.gather(item),
                        "brand": item_brand.gather(item),
                        "price": item_price.gather(item),
                        "user_id": chunk["user"] + REES46_USER_OFFSET,
                        "user_session": session_uuid.gather(chunk["session"]),
                    }
                )
                frame.write_csv(handle, include_header=lo == 0)
        paths.append(path)
    return paths


def _write_yoochoose(
    events: pl.DataFrame, config: SyntheticConfig, out_dir: Path, fmt: str
) -> list[Path]:
    rng = _rng(config.seed, _TAG_FORMAT["yoochoose"])  # rsc15 = same files
    n_items = config.n_items
    draw = rng.random(n_items)
    small = rng.integers(2, 14, n_items)
    cat_codes = np.where(draw < 0.7, 0, np.where(draw < 0.8, 1, small)).astype(np.uint32)
    item_category = pl.Series("category", cat_codes).cat.to(
        pl.Enum(["0", "S", *[str(c) for c in range(1, 13)]])
    )
    item_price = np.where(rng.random(n_items) < 0.3, 0, rng.integers(300, 30_000, n_items))
    n_sessions = int(events["session"].max()) + 1 if events.height else 0
    is_test = rng.random(n_sessions) < 0.1
    offset = ITEM_ID_OFFSETS[fmt]

    frame = events.with_columns(
        (pl.col("session") + 1).alias("session_id"),
        _ts_column(pl.col("ts_ms")).alias("timestamp"),
        (pl.col("item") + offset).alias("item_id"),
        pl.Series("_test", is_test).gather(events["session"]),
    )
    views = frame.filter(pl.col("event") == "view")
    views = views.with_columns(item_category.gather(views["item"]))
    columns = ["session_id", "timestamp", "item_id", "category"]
    paths: list[Path] = []
    fmt_ts = "%Y-%m-%dT%H:%M:%S%.3fZ"
    for name, part in (
        ("yoochoose-clicks.dat", views.filter(~pl.col("_test"))),
        ("yoochoose-test.dat", views.filter(pl.col("_test"))),
    ):
        path = out_dir / name
        part.select(columns).write_csv(path, include_header=False, datetime_format=fmt_ts)
        paths.append(path)
    buys = frame.filter((pl.col("event") == "purchase") & ~pl.col("_test"))
    quantity = rng.integers(1, 4, buys.height)
    buys = buys.with_columns(
        pl.Series("price", item_price[buys["item"].to_numpy()]),
        pl.Series("quantity", np.where(buys["item"].to_numpy() % 5 == 0, 0, quantity)),
    )
    path = out_dir / "yoochoose-buys.dat"
    buys.select(["session_id", "timestamp", "item_id", "price", "quantity"]).write_csv(
        path, include_header=False, datetime_format=fmt_ts
    )
    paths.append(path)
    return paths


def _write_coveo(events: pl.DataFrame, config: SyntheticConfig, out_dir: Path) -> list[Path]:
    rng = _rng(config.seed, _TAG_FORMAT["coveo"])
    n_items = config.n_items
    n_pages = max(10, n_items // 4)
    session = events["session"].to_numpy()
    ts = events["ts_ms"].to_numpy()
    n_rows = events.height

    # coveo sessions: usually one generated session, sometimes a user's consecutive sessions
    # share one hash (then gaps of more than an hour can occur inside it)
    first_rows = np.flatnonzero(np.r_[True, session[1:] != session[:-1]]) if n_rows else []
    sess_user = events["user"].to_numpy()[first_rows]
    sess_start = ts[first_rows]
    by_user = np.lexsort((sess_start, sess_user))
    merge = rng.random(by_user.size) < 0.1
    same_user = np.r_[False, sess_user[by_user][1:] == sess_user[by_user][:-1]]
    group_sorted = np.cumsum(~(merge & same_user)) - 1
    group = np.empty_like(group_sorted)
    group[by_user] = group_sorted

    # extra rows derived from views: product-less page views and search-result clicks
    is_view = (events["event"] == "view").to_numpy()
    next_gap = np.full(n_rows, _OTHER_SLACK_MS, dtype=np.int64)
    if n_rows > 1:
        same = session[1:] == session[:-1]
        next_gap[:-1] = np.where(same, ts[1:] - ts[:-1], _OTHER_SLACK_MS)
    draw = rng.random(n_rows)
    extra_page = np.flatnonzero(is_view & (draw < 0.12))
    extra_click = np.flatnonzero(is_view & (draw >= 0.12) & (draw < 0.16))
    page_delta = np.floor(
        rng.random(extra_page.size) * np.minimum(next_gap[extra_page], _OTHER_SLACK_MS)
    ).astype(np.int64)

    kind = events["event"].to_physical().to_numpy().astype(np.int64)
    event_type_of = np.array([0, 1, 1, 1])  # view -> pageview, others -> event
    action_of = np.array([0, 1, 2, 3])  # detail, add, remove, purchase
    row = np.arange(n_rows, dtype=np.int64)
    item = events["item"].to_numpy()
    parts = {
        "_group": [group[session], group[session[extra_page]], group[session[extra_click]]],
        "_ts": [ts, ts[extra_page] + page_delta, ts[extra_click]],
        "_key": [4 * row + 1, 4 * extra_page + 2, 4 * extra_click],
        "_type": [
            event_type_of[kind],
            np.zeros(extra_page.size, np.int64),
            np.ones(extra_click.size, np.int64),
        ],
        "_action": [
            action_of[kind],
            np.full(extra_page.size, -1, np.int64),
            np.full(extra_click.size, 4, np.int64),
        ],
        "_item": [item, np.full(extra_page.size, -1, np.int64), item[extra_click]],
        "_url": [item, n_items + rng.integers(0, n_pages, extra_page.size), item[extra_click]],
    }
    frame = pl.DataFrame({k: np.concatenate(v) for k, v in parts.items()}).sort(
        ["_group", "_ts", "_key"]
    )
    sku_hash = _chars_to_series("sku", _hex_chars(np.arange(n_items), COVEO_SKU_SALT, 64))
    url_hash = _chars_to_series("url", _hex_chars(np.arange(n_items + n_pages), COVEO_URL_SALT, 64))
    n_groups = int(group.max()) + 1 if group.size else 0
    sess_hash = _chars_to_series("s", _hex_chars(np.arange(n_groups), COVEO_SESSION_SALT, 64))
    item_col = frame["_item"].to_numpy()
    has_item = item_col >= 0
    sku = sku_hash.gather(np.where(has_item, item_col, 0))
    action = frame["_action"].to_numpy()
    action_series = pl.Series(np.where(action >= 0, action, 0).astype(np.uint32)).cat.to(
        pl.Enum(["detail", "add", "remove", "purchase", "click"])
    )
    out = pl.DataFrame(
        {
            "session_id_hash": sess_hash.gather(frame["_group"]),
            "event_type": pl.Series(frame["_type"].to_numpy().astype(np.uint32)).cat.to(
                pl.Enum(["pageview", "event"])
            ),
            "product_action": action_series,
            "product_skus_hash": sku,
            "server_timestamp_epoch_ms": frame["_ts"],
            "hashed_url": url_hash.gather(frame["_url"]),
        }
    ).with_columns(
        _mask(action_series, action >= 0).alias("product_action"),
        _mask(sku, has_item).alias("product_skus_hash"),
    )
    path = out_dir / "release_10_23_2020.csv"
    out.write_csv(path)
    return [path]


def _write_retailrocket(events: pl.DataFrame, config: SyntheticConfig, out_dir: Path) -> list[Path]:
    kept = events.with_row_index("_row").filter(pl.col("event") != "remove_from_cart")
    is_tx = (kept["event"] == "purchase").to_numpy()
    session = kept["session"].to_numpy()
    tx_sessions = np.unique(session[is_tx])
    tx_id = np.searchsorted(tx_sessions, session) + 1
    frame = (
        kept.with_columns(
            pl.Series("transactionid", tx_id),
            pl.Series("_tx", is_tx),
        )
        .select(
            pl.col("ts_ms").alias("timestamp"),
            pl.col("user").alias("visitorid"),
            pl.col("event")
            .cast(pl.String)
            .replace_strict({"view": "view", "cart": "addtocart", "purchase": "transaction"})
            .alias("event"),
            (pl.col("item") + ITEM_ID_OFFSETS["retailrocket"]).alias("itemid"),
            pl.when(pl.col("_tx")).then(pl.col("transactionid")).alias("transactionid"),
            pl.col("_row"),
        )
        .sort(["timestamp", "_row"])
        .drop("_row")
    )
    path = out_dir / "events.csv"
    frame.write_csv(path)
    return [path]


def _write_diginetica(events: pl.DataFrame, config: SyntheticConfig, out_dir: Path) -> list[Path]:
    rng = _rng(config.seed, _TAG_FORMAT["diginetica"])
    logged_in = rng.random(config.n_users) < 0.15
    views = events.filter(pl.col("event") == "view")
    known = pl.Series("_known", logged_in[views["user"].to_numpy()])
    day_ms = pl.col("ts_ms") // _MS_DAY * _MS_DAY
    frame = views.with_columns(known).select(
        (pl.col("session") + 1).alias("sessionId"),
        pl.when(pl.col("_known")).then(pl.col("user") + 1).alias("userId"),
        (pl.col("item") + ITEM_ID_OFFSETS["diginetica"]).alias("itemId"),
        (pl.col("ts_ms") - day_ms.first().over("session")).alias("timeframe"),
        _ts_column(pl.col("ts_ms")).dt.date().alias("eventdate"),
    )
    path = out_dir / "train-item-views.csv"
    frame.write_csv(path, separator=";", null_value="NA", date_format="%Y-%m-%d")
    return [path]


def write_raw(
    fmt: str, out_dir: str | Path, config: SyntheticConfig = SyntheticConfig()
) -> list[Path]:
    """Write the raw files of format ``fmt`` into ``out_dir`` (created if missing).

    Files, named as in the public datasets:

    * ``rees46``: ``2019-Oct.csv``, ``2019-Nov.csv`` (one file per UTC month of the window,
      named ``%Y-%b.csv``).
    * ``yoochoose`` / ``rsc15``: ``yoochoose-clicks.dat``, ``yoochoose-test.dat`` (about 10 % of
      the sessions) and ``yoochoose-buys.dat`` (purchases of the clicks sessions), no header.
    * ``coveo``: ``release_10_23_2020.csv``.
    * ``retailrocket``: ``events.csv``.
    * ``diginetica``: ``train-item-views.csv`` (``;``-separated).

    The ground truth in the raw item ids of the files is :func:`ground_truth`.

    Returns:
        Paths of the written files.
    """
    _check_format(fmt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events, _ = generate_events(config, fmt)
    if fmt == "rees46":
        paths = _write_rees46(events, config, out)
    elif fmt in ("yoochoose", "rsc15"):
        paths = _write_yoochoose(events, config, out, fmt)
    elif fmt == "coveo":
        paths = _write_coveo(events, config, out)
    elif fmt == "retailrocket":
        paths = _write_retailrocket(events, config, out)
    else:
        paths = _write_diginetica(events, config, out)
    logger.info("wrote %s files: %s", fmt, ", ".join(p.name for p in paths))
    return paths
