"""The strategy's shared interface (`Strategy`: rank, world size, all-reduce, the student's
load) and the device and precision helpers both halves use. The halves: `strategy_torch.py`
(plain torch / DDP) and `strategy_deepspeed.py` (a ZeRO engine); `strategy.py` picks one.

Both reuse a process group that already exists (Ray Train's TorchTrainer creates one) and
both follow DeepSpeed's accumulation contract: call `backward(loss)` then `step()` on every
micro-batch; the loss is divided by `grad_accum_steps`, and clipping, the optimizer and
scheduler steps and zeroing happen only at the accumulation boundary.
"""
from __future__ import annotations

import contextlib
import os
import socket

import torch
import torch.distributed as dist
from torch import nn

from idrm_ray.core.devices import DTYPES, auto_precision

PRECISIONS = ("bf16", "fp16", "fp32")
CLIENT_KEY = "idrm_client_state"  # our extra state inside a checkpoint
STATE_TAG = "state"  # one fixed tag: a state directory holds exactly one training state


# ----------------------------------------------------------------------------- helpers


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(rank_on_node: int | None = None) -> torch.device:
    """cuda:<local rank> when CUDA is available, else cpu."""
    if torch.cuda.is_available():
        index = local_rank() if rank_on_node is None else rank_on_node
        return torch.device("cuda", index % torch.cuda.device_count())
    return torch.device("cpu")


def default_precision(device: torch.device | str) -> str:
    """bf16 on GPU, fp32 on CPU (bf16 on CPU is slow and lossy for the tiny test models)."""
    return auto_precision(device)


def torch_dtype(precision: str) -> torch.dtype:
    check_precision(precision)
    return DTYPES[precision]


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the interface


class Strategy:
    """Shared part: rank/world size from the existing process group, all-reduce."""

    kind = "base"

    def __init__(self, *, grad_accum_steps: int = 1, max_grad_norm: float | None = 1.0, precision: str = "fp32"):
        check_precision(precision)
        if grad_accum_steps < 1:
            raise ValueError("grad_accum_steps must be >= 1")
        self.grad_accum_steps = grad_accum_steps
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.model: nn.Module | None = None

    @property
    def rank(self) -> int:
        return dist.get_rank() if dist_ready() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if dist_ready() else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if dist_ready():
            dist.barrier()

    def all_reduce_mean(self, value: torch.Tensor | float) -> torch.Tensor | float:
        """Mean over ranks; a float comes back as a float, a tensor as a tensor on its device."""
        if self.world_size == 1:
            return value
        comm_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        if isinstance(value, torch.Tensor):
            t = value.detach().to(comm_device, copy=True)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            return (t / self.world_size).to(value.device)
        t = torch.tensor(float(value), dtype=torch.float64, device=comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.world_size

    def all_reduce_sum(self, value: float) -> float:
        """Sum of a float over ranks (fp64, so pair counts stay exact)."""
        if self.world_size == 1:
            return float(value)
        comm_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(float(value), dtype=torch.float64, device=comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item()

    def all_reduce_sums(self, values) -> list[float]:
        """Sums over ranks of several floats in ONE collective (fp64): the per-step counters
        and a log window's metrics travel together instead of one all-reduce each."""
        values = [float(v) for v in values]
        if self.world_size == 1:
            return values
        comm_device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass (only the torch path with bf16 needs one)."""
        return contextlib.nullcontext()

    def load_reward_model(self, name_or_path: str, *, dtype: torch.dtype, attn_implementation: str, tokenizer=None):
        """The student as this strategy holds it: a plain load here; under ZeRO-3 partitioned
        as it loads, so no rank ever holds the whole model (DESIGN.md decision 10)."""
        from idrm_ray.core.reward_model import load_reward_model

        return load_reward_model(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                 tokenizer=tokenizer)

    def unwrap(self) -> nn.Module:
        """The underlying HF model (under ZeRO-3 its parameters are partitioned)."""
        # DeepSpeed's engine and DDP both keep the wrapped model as `.module`.
        return getattr(self.model, "module", self.model)
