"""Peak memory of a stretch of work (a model's training in the ``compare`` pipeline).

The process's resident set size is sampled by a background thread (``psutil``, every
``interval`` seconds), so the peak is a lower bound that misses spikes shorter than the
interval; ``resource.getrusage``'s ``ru_maxrss`` cannot be used because it never decreases (a
second model would report the first one's peak). On CUDA the peak of torch's allocator
(``torch.cuda.max_memory_allocated``, reset on entry) is exact.
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil
import torch

_MIB = 2**20


class PeakMemory:
    """Context manager measuring the peak RSS (MiB) of this process, and the peak CUDA memory
    torch allocated (MiB, ``None`` without CUDA), between entry and exit.

    >>> with PeakMemory() as peak:
    ...     buffer = bytearray(50 * 2**20)
    >>> peak.rss_mib >= peak.rss_at_start_mib
    True
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.rss_at_start_mib = 0.0
        self.rss_mib = 0.0
        self.cuda_mib: float | None = None
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        rss = self._process.memory_info().rss / _MIB
        self.rss_mib = max(self.rss_mib, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self.rss_at_start_mib = self._process.memory_info().rss / _MIB
        self.rss_mib = self.rss_at_start_mib
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if torch.cuda.is_available():
            self.cuda_mib = torch.cuda.max_memory_allocated() / _MIB
