"""PeakMemory: the peak RSS of a stretch of work, not of the whole process so far."""

from __future__ import annotations

import torch

from recsys_pipeline.training.memory import PeakMemory


def test_peak_rss_sees_an_allocation_and_the_next_stretch_starts_afresh() -> None:
    with PeakMemory() as first:
        buffer = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched (filled with ones)
    assert first.rss_mib - first.rss_at_start_mib >= 48  # the exit sample sees it at least
    del buffer
    with PeakMemory() as second:
        small = torch.ones(1024)
    assert small.sum() == 1024
    # ru_maxrss would still report the first peak; a new stretch measures from its own start
    assert second.rss_mib - second.rss_at_start_mib < 48
    assert (first.cuda_mib is None) == (not torch.cuda.is_available())
