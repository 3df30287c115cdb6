"""Progress bars of long work (training epochs, evaluation): tqdm, shown only on a terminal.

When the output goes to a file or a pipe (CI logs, ``kedro run > log``), a tqdm bar cannot
redraw in place and every refresh becomes a line of its own (kilobytes each); there the bars are
off and the one log line per epoch is the record. Units are spelled out (``batches/s``,
``targets/s``, ``users/s``).
"""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(
    total: int | None, desc: str, unit: str, *, enabled: bool = True, leave: bool = True
) -> tqdm:
    """A tqdm bar over ``total`` ``unit`` (plural, e.g. ``"targets"``): off when ``enabled``
    is false or standard error is not a terminal (``disable=None``)."""
    return tqdm(
        total=total,
        desc=desc,
        unit=f" {unit}",
        disable=None if enabled else True,
        leave=leave,
        dynamic_ncols=True,
    )
