"""The one device and dtype policy (issue 15 §4): names of precisions, and what "auto" means.

"auto" is bf16 on a GPU and fp32 on a CPU: CPU bf16 matmuls are slow and lossy, and the
tiny test models train in fp32. Training, the teacher stage, eval and the reward server
all read a precision name through `torch_dtype` and resolve "auto" through `resolve_dtype`.
"""
from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

__all__ = ["DTYPES", "auto_precision", "resolve_device", "resolve_dtype", "torch_dtype"]


def torch_dtype(name: str) -> torch.dtype:
    """"fp32" | "bf16" | "fp16" -> the torch dtype (ValueError naming the choices otherwise)."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def auto_precision(device: torch.device | str) -> str:
    """What "auto" means on `device`: bf16 on CUDA, fp32 elsewhere."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def resolve_device(device: str | None = "auto") -> torch.device:
    """"auto" (or None): cuda when available, else cpu; anything else as torch reads it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | None, device: torch.device | str) -> torch.dtype:
    """A precision name, or "auto"/None for `auto_precision(device)`."""
    return torch_dtype(auto_precision(device) if dtype in (None, "auto") else dtype)
