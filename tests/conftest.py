"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module")
def single_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a test module (``pytestmark = usefixtures(...)``).

    Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine spinning
    OpenMP workers only steal time from the main thread (steps became 100x slower); results
    also stay bit-identical between runs.
    """
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n_threads)
