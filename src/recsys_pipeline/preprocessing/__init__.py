"""The GRU4Rec data protocol on polars frames; see :mod:`recsys_pipeline.preprocessing.protocol`."""

from recsys_pipeline.preprocessing.protocol import ProtocolConfig, ProtocolResult, run_protocol

__all__ = ["ProtocolConfig", "ProtocolResult", "run_protocol"]
