"""``python -m recsys_pipeline.gru4rec_cli``: the GRU4Rec command line tool (official run.py's
options and output lines); see :mod:`recsys_pipeline.cli.gru4rec` and ``docs/gru4rec_cli.md``."""

from __future__ import annotations

import sys

from recsys_pipeline.cli.gru4rec import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
