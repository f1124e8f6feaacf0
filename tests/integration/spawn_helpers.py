"""Spawned torch.distributed ranks on this machine, without Ray: what test_strategy.py and
test_strategy_peft.py share (a free port, each rank's gloo group set up as Ray Train would,
the spawn, and a join that fails a hang instead of waiting on it).

Imported by those modules by name (pytest puts this folder on sys.path; the spawned ranks
inherit it), so its functions are picklable for `start_method="spawn"`.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_rank(rank: int, world_size: int, port: int):
    """Inside a spawned rank: gloo set up the way Ray Train would (env://), DeepSpeed's CPU
    accelerator and its JIT cache (<repo>/.cache/torch_extensions), one thread per rank."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
    )
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    torch.set_num_threads(1)  # 2 ranks on 2 cores
    warnings.filterwarnings("ignore", category=FutureWarning)  # DeepSpeed's deprecated c10d calls
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    try:
        yield
    finally:
        dist.destroy_process_group()


def spawn(worker, nprocs: int, args: tuple):
    """`worker(rank, nprocs, *args)` in `nprocs` spawned processes; returns at once."""
    return mp.start_processes(worker, args=(nprocs, *args), nprocs=nprocs, join=False, start_method="spawn")


def join(ctx, deadline: float, timeout_s: float) -> None:
    """Wait for the ranks until `deadline` (time.monotonic()); past it, kill them and fail."""
    # join() raises if a rank failed (and then stops the others); False means still running.
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
                proc.join(10)
            pytest.fail(f"spawned ranks still running after {timeout_s} s (hang?)")
