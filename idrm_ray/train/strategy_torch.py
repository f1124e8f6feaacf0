"""The plain-torch strategy: DistributedDataParallel when world_size > 1, nothing when 1.
It serves CPU runs and is the reference the DeepSpeed path is tested against."""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import torch
from torch import nn

from idrm_ray.train.strategy_base import CLIENT_KEY, STATE_TAG, Strategy, pick_device


class TorchStrategy(Strategy):
    """Plain torch; DDP over the existing group when world_size > 1.

    DDP all-reduces on every micro-step (no `no_sync`): averaging is linear, so the result
    equals syncing once per boundary, and the caller's forward needs no special context."""

    kind = "torch"

    def __init__(self, *, device: torch.device | None = None, **kwargs):
        super().__init__(**kwargs)
        if self.precision == "fp16":
            raise ValueError("the torch strategy supports fp32 and bf16 (autocast); use DeepSpeed for fp16")
        self.device = device or pick_device()
        self.optimizer = self.scheduler = None
        self.micro_steps = 0
        self.global_steps = 0
        self._grad_norm: float | None = None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None) -> nn.Module:
        model.to(self.device)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        return model

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum_steps).backward()

    def is_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum_steps == 0

    def step(self, *, skip: bool = False) -> bool | None:
        """At an accumulation boundary: the optimizer step, or nothing when `skip` (a non-finite
        loss in this window) or when the gradients are non-finite; returns whether it stepped.
        Either way the window's gradients are dropped whole, so a bad micro-batch never leaves
        the others to step alone (silently down-weighted). None between boundaries."""
        boundary = self.is_accumulation_boundary()
        self.micro_steps += 1
        if not boundary:
            return None
        # Same order and formula as DeepSpeed: norm of all grads, clip, step, zero. With DDP the
        # gradients are already averaged, so every rank sees the same norm and decides alike.
        max_norm = self.max_grad_norm if self.max_grad_norm and self.max_grad_norm > 0 else math.inf
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm)) if params and not skip else math.nan
        stepped = not skip and math.isfinite(norm)
        if stepped:
            self._grad_norm = norm
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            self.global_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        return stepped

    def zero_grad(self) -> None:
        """Drop pending gradients (step() already does it after each optimizer step)."""
        self.optimizer.zero_grad(set_to_none=True)

    def grad_norm(self) -> float | None:
        """Pre-clip global gradient norm of the last optimizer step."""
        return self._grad_norm

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full state dict (CPU copies) on rank 0, None elsewhere. Call on every rank."""
        if not self.is_main:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.unwrap().state_dict().items()}

    def save_state(self, directory: str | os.PathLike, client_state: dict | None = None) -> None:
        """Model, optimizer, scheduler and counters to `directory/state.pt` (rank 0 writes)."""
        if self.is_main:
            Path(directory).mkdir(parents=True, exist_ok=True)
            state = {
                "model": self.unwrap().state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "micro_steps": self.micro_steps,
                "global_steps": self.global_steps,
                CLIENT_KEY: client_state or {},
            }
            torch.save(state, Path(directory) / f"{STATE_TAG}.pt")
        self.barrier()

    def load_state(self, directory: str | os.PathLike) -> dict:
        """Restore what save_state wrote (after prepare); returns the client state."""
        # weights_only: client_state must hold plain Python values and tensors.
        state = torch.load(Path(directory) / f"{STATE_TAG}.pt", map_location=self.device, weights_only=True)
        self.unwrap().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps, self.global_steps = state["micro_steps"], state["global_steps"]
        return state[CLIENT_KEY]
