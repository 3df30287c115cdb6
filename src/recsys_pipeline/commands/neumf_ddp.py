"""Data-parallel NeuMF training with ``torch.distributed``.

One machine (every socket on the loopback interface)::

    recsys-neumf-ddp --nproc-per-node 2 \\
        --train train.parquet --valid valid.parquet --valid-negatives valid_negatives.parquet \\
        --out model_dir --params "factors=64,layers=256/256/128/64,batch_size=1048576"

starts the processes with ``torch.multiprocessing.spawn``; the rendezvous store (a
``torch.distributed.TCPStore`` in this process, on a socket bound to 127.0.0.1) and gloo's /
NCCL's sockets (``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` = the loopback interface
unless set) listen on loopback only. Several machines: start it on each with ``torchrun``
(``--nnodes``, ``--rdzv-backend=c10d --rdzv-endpoint=<host>:<port>``): then torch's elastic
agent runs the store, and it listens on every interface (torch's TCPStore has no bind address;
keep such ports behind a firewall).

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
import datetime
import logging
import os
import socket
from pathlib import Path
from typing import Any

import polars as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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
    ap.add_argument(
        "--nproc-per-node", type=int, default=1,
        help="processes on this machine (started here, sockets on loopback only); ignored "
        "under torchrun",
    )  # fmt: skip
    return ap


def _loopback_interface() -> str | None:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in names if n in ("lo", "lo0")), None)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        _spawn(args)
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _train(args, rank, local_rank, world, None)


def _spawn(args: argparse.Namespace) -> None:
    """One machine, ``args.nproc_per_node`` processes; the store listens on 127.0.0.1 only."""
    n = args.nproc_per_node
    loopback = _loopback_interface()
    if loopback is not None:  # gloo / NCCL bind their sockets to this interface
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", loopback)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        store = dist.TCPStore(  # noqa: F841 - serves the ranks while they run
            "127.0.0.1", port, n, is_master=True, wait_for_workers=False,
            master_listen_fd=listener.fileno(),
        )  # fmt: skip
        mp.spawn(_spawned, args=(args, port, n), nprocs=n, join=True)


def _spawned(local_rank: int, args: argparse.Namespace, port: int, n: int) -> None:
    store = dist.TCPStore(
        "127.0.0.1", port, n, is_master=False, timeout=datetime.timedelta(minutes=10)
    )
    _train(args, local_rank, local_rank, n, store)


def _train(args: argparse.Namespace, rank: int, local_rank: int, world: int, store: Any) -> None:
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
        if store is None:  # torchrun: its environment names the store
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world)
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
