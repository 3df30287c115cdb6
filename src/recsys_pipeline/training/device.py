"""Device selection shared by every trainable model.

``resolve_device("auto")`` picks the first CUDA device when one is available and the CPU
otherwise; ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` (and any other string ``torch.device``
accepts, e.g. ``"mps"``) are taken literally, after checking that the device exists.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The ``torch.device`` meant by ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    Raises:
        ValueError: the string is no device name.
        RuntimeError: a CUDA device was asked for but is not available.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        resolved = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
            ) from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here")
        index = 0 if resolved.index is None else resolved.index
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
        resolved = torch.device("cuda", index)
    logger.debug("device %r resolved to %s", device, resolved)
    return resolved
