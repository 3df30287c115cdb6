"""PeakMemory: the peak RSS of a stretch of work, not of the whole process so far.

The checks run in a fresh interpreter: in a long test session the allocator keeps freed pages
resident, so a new 64 MiB tensor may reuse them and leave the RSS where it was (seen in CI).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from recsys_pipeline.training.memory import PeakMemory

    with PeakMemory() as first:
        buffer = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched (filled with ones)
    del buffer
    with PeakMemory() as second:
        small = torch.ones(1024)
    print(json.dumps({
        "first": first.rss_mib - first.rss_at_start_mib,
        "second": second.rss_mib - second.rss_at_start_mib,
        "small": float(small.sum()),
        "cuda_none": first.cuda_mib is None,
        "cuda": torch.cuda.is_available(),
    }))
    """
)


def test_peak_rss_sees_an_allocation_and_the_next_stretch_starts_afresh() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["first"] >= 48  # the exit sample sees the 64 MiB at least
    assert got["small"] == 1024
    # ru_maxrss would still report the first peak; a new stretch measures from its own start
    assert got["second"] < 48
    assert got["cuda_none"] == (not got["cuda"])
