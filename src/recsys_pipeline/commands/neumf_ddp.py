"""Data-parallel NeuMF training with ``torch.distributed`` (start it with ``torchrun``)::

    torchrun --nproc_per_node=2 -m recsys_pipeline.commands.neumf_ddp \\
        --train train.parquet --valid valid.parquet --valid-negatives valid_negatives.parquet \\
        --out model_dir --params "factors=64,layers=256/256/128/64,batch_size=1048576"

Every rank reads the same parquet files (so all ranks build the same user/item vocabulary), joins
the process group (``gloo`` on the CPU, ``nccl`` on CUDA; ``--backend`` overrides), takes the
device ``cuda:LOCAL_RANK`` when CUDA is used, and calls :meth:`NeuMF.fit`, which wraps the network
in ``DistributedDataParallel`` and trains each rank on its shard of every epoch. Rank 0 saves the
model and logs; ``--rank-dump DIR`` makes every rank write its final ``state_dict`` to
``DIR/rank<r>.pt`` (to check that the replicas agree). Without ``torchrun`` (no ``WORLD_SIZE``)
it trains in one process.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import polars as pl
import torch
import torch.distributed as dist

from recsys_pipeline.models.neumf import NeuMF, NeuMFParams

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m recsys_pipeline.commands.neumf_ddp", description=__doc__
    )
    ap.add_argument("--train", required=True, help="parquet: UserId, ItemId[, Time]")
    ap.add_argument("--valid", help="parquet: one row per user (NCF split)")
    ap.add_argument("--valid-negatives", help="parquet: UserId, ItemId, 100 rows per user")
    ap.add_argument("--out", required=True, help="output model directory (rank 0 writes)")
    ap.add_argument("--params", default="", help='NeuMF parameters, "name=value,..."')
    ap.add_argument(
        "--backend", default="auto", help="auto (gloo on CPU, nccl on CUDA), gloo, nccl"
    )
    ap.add_argument("--rank-dump", help="every rank writes its state_dict to DIR/rank<r>.pt")
    return ap


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s %(message)s",
    )
    params = NeuMFParams.from_string(args.params)
    device = params.device
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    backend = args.backend
    if backend == "auto":
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if world > 1:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend)
    try:
        train = pl.read_parquet(args.train)
        valid = pl.read_parquet(args.valid) if args.valid else None
        negatives = pl.read_parquet(args.valid_negatives) if args.valid_negatives else None
        model = NeuMF(params, device=device).fit(train, valid, negatives, progress=rank == 0)
        if args.rank_dump:
            Path(args.rank_dump).mkdir(parents=True, exist_ok=True)
            torch.save(model.net.state_dict(), Path(args.rank_dump) / f"rank{rank}.pt")
        if rank == 0:
            model.save(args.out)
            logger.info("saved the model to %s", args.out)
        if world > 1:
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
