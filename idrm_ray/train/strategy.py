"""Distributed training strategy (STYLE.md item 4): `make_strategy` picks one of two
implementations behind one small interface (`strategy_base.Strategy`):
- `TorchStrategy` (`strategy_torch.py`): plain torch (DistributedDataParallel when
  world_size > 1, nothing when 1); serves CPU runs and is the reference the DeepSpeed path is
  tested against.
- `DeepSpeedStrategy` (`strategy_deepspeed.py`, with the ZeRO-3 load in `strategy_zero3.py`):
  a DeepSpeed ZeRO engine, the only code that touches DeepSpeed.
"""
from __future__ import annotations

import torch

from idrm_ray.train.strategy_base import Strategy, default_precision, pick_device
from idrm_ray.train.strategy_deepspeed import DeepSpeedStrategy
from idrm_ray.train.strategy_torch import TorchStrategy


def make_strategy(
    kind: str = "deepspeed",
    *,
    zero_stage: int = 3,
    precision: str | None = None,
    micro_batch_size: int = 1,
    grad_accum_steps: int = 1,
    max_grad_norm: float | None = 1.0,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    device: torch.device | None = None,
) -> Strategy:
    """`kind`: "deepspeed" or "torch". `precision` None picks bf16 on GPU, fp32 on CPU.
    `micro_batch_size` is per rank (DeepSpeed's batch-size check); `device` is for the torch
    path (DeepSpeed uses its accelerator's current device)."""
    precision = precision or default_precision(device or pick_device())
    common = dict(grad_accum_steps=grad_accum_steps, max_grad_norm=max_grad_norm, precision=precision)
    if kind == "torch":
        return TorchStrategy(device=device, **common)
    if kind == "deepspeed":
        return DeepSpeedStrategy(
            zero_stage=zero_stage,
            micro_batch_size=micro_batch_size,
            offload_optimizer=offload_optimizer,
            offload_params=offload_params,
            **common,
        )
    raise ValueError(f"unknown strategy kind {kind!r}; use 'deepspeed' or 'torch'")
