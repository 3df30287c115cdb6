"""Node writing seeded synthetic raw data in a published raw format."""

from __future__ import annotations

import tempfile
from typing import Any

from recsys_pipeline.kedro_ext.datasets import RawSource
from recsys_pipeline.synthetic.sessions import SyntheticConfig, write_raw


def generate_raw(params: dict[str, Any]) -> RawSource:
    """Write the raw files to a scratch folder; the catalog moves them into place when complete."""
    config = SyntheticConfig(**params.get("config", {}))
    scratch = tempfile.mkdtemp(prefix="recsys-synthetic-")
    paths = write_raw(params["format"], scratch, config)
    return RawSource(params["format"], scratch, [p.name for p in paths])
