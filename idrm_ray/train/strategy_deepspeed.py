"""The DeepSpeed strategy: a ZeRO engine built from `build_ds_config` with the torch optimizer
and scheduler we pass (declaring one in the config would JIT-compile fused_adam). With
`strategy_zero3.py`, the only code that touches DeepSpeed (STYLE.md item 4); `deepspeed` is
imported lazily, so the torch path works where DeepSpeed is not installed.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from idrm_ray.train.strategy_base import CLIENT_KEY, STATE_TAG, Strategy, check_precision, dist_ready, free_port
from idrm_ray.train.strategy_zero3 import gather_zero3_state_dict, load_zero3


def build_ds_config(
    *,
    zero_stage: int,
    precision: str,
    micro_batch_size: int,
    grad_accum_steps: int,
    world_size: int,
    max_grad_norm: float | None,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> dict:
    """A DeepSpeed config with no optimizer or scheduler section (torch ones are passed in).

    `micro_batch_size` is per rank; DeepSpeed checks train_batch_size = micro * accum * world.
    `max_grad_norm` None or <= 0 disables clipping (the norm is still computed)."""
    check_precision(precision)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0..3, got {zero_stage}")
    if offload_params and zero_stage != 3:
        raise ValueError("offload_params needs ZeRO stage 3")
    if offload_optimizer and zero_stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage >= 1")
    pin = torch.cuda.is_available()  # pinning host memory needs CUDA
    zero: dict[str, Any] = {"stage": zero_stage}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    if zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "train_batch_size": micro_batch_size * grad_accum_steps * world_size,
        "gradient_clipping": float(max_grad_norm) if max_grad_norm and max_grad_norm > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        # Accumulate bf16 gradients in fp32 (as OpenRLHF does).
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if offload_optimizer:
        # A torch optimizer with offload works, only slower than DeepSpeedCPUAdam (whose JIT
        # build takes about 60 s); DeepSpeed refuses it unless told.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


class DeepSpeedStrategy(Strategy):
    """A DeepSpeed engine; gradient accumulation, clipping and zeroing are the engine's."""

    kind = "deepspeed"

    def __init__(
        self,
        *,
        zero_stage: int = 3,
        micro_batch_size: int,
        offload_optimizer: bool = False,
        offload_params: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _ensure_deepspeed_distributed()
        self.zero_stage = zero_stage
        self.config = build_ds_config(
            zero_stage=zero_stage,
            precision=self.precision,
            micro_batch_size=micro_batch_size,
            grad_accum_steps=self.grad_accum_steps,
            world_size=self.world_size,
            max_grad_norm=self.max_grad_norm,
            offload_optimizer=offload_optimizer,
            offload_params=offload_params,
        )
        from deepspeed.accelerator import get_accelerator

        self.device = torch.device(get_accelerator().current_device_name())
        self.engine = None
        self._hf_ds_config = None  # kept alive: transformers reads ZeRO-3 state through a weak reference

    def load_reward_model(self, name_or_path: str, *, dtype: torch.dtype, attn_implementation: str, tokenizer=None):
        """ZeRO-3: built empty under `deepspeed.zero.Init` and filled tensor by tensor from the
        safetensors files (`strategy_zero3.load_zero3`), so a rank's peak is its partition plus one
        gathered tensor. transformers 5.15's own ZeRO-3 `from_pretrained` merges every shard
        into one state dict on every rank first (measured: 1.5-2x the fp32 model on rank 0,
        `python -m idrm_ray.bench.zero3_load`), which is what an 8B model cannot afford."""
        if self.zero_stage != 3:
            return super().load_reward_model(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                             tokenizer=tokenizer)
        from transformers.integrations import HfDeepSpeedConfig

        self._hf_ds_config = HfDeepSpeedConfig(self.config)  # transformers' own ZeRO-3 code paths (save, resize)
        return load_zero3(name_or_path, ds_config=self.config, dtype=dtype, attn_implementation=attn_implementation,
                           tokenizer=tokenizer, is_main=self.is_main)

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler=None) -> nn.Module:
        import deepspeed

        engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.config
        )
        self.engine = self.model = engine
        self.device = engine.device
        return engine

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)  # divides by grad_accum_steps itself

    def step(self, *, skip: bool = False) -> bool | None:
        """DeepSpeed's step. Its own overflow check drops a whole window with non-finite
        gradients under fp16, and under bf16 with ZeRO-1/2; fp32 and bf16 ZeRO-3 have no such
        check, so there a window with a skipped (non-finite) micro-batch steps on the others."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        skipped_before = self.engine.skipped_steps
        self.engine.step()
        if not boundary:
            return None
        return self.engine.skipped_steps == skipped_before

    def is_accumulation_boundary(self) -> bool:
        return self.engine.is_gradient_accumulation_boundary()

    def zero_grad(self) -> None:
        """Drop pending gradients; call at a boundary only (engine.step() already zeroes)."""
        self.engine.zero_grad()

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    @property
    def global_steps(self) -> int:
        return self.engine.global_steps

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full state dict on rank 0 (None elsewhere); the weights in the module's dtype (fp32
        when training fp32, 16-bit otherwise). Collective: call on every rank."""
        if self.zero_stage == 3:
            return gather_zero3_state_dict(self.engine.module, is_main=self.is_main)
        if not self.is_main:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.module.state_dict().items()}

    def save_state(self, directory: str | os.PathLike, client_state: dict | None = None) -> None:
        """Full resumable state (DeepSpeed's sharded checkpoint). Collective."""
        self.engine.save_checkpoint(str(directory), tag=STATE_TAG, client_state={CLIENT_KEY: client_state or {}})
        self.barrier()

    def load_state(self, directory: str | os.PathLike) -> dict:
        """Restore what save_state wrote (after prepare); returns the client state. Collective."""
        path, client = self.engine.load_checkpoint(
            str(directory), tag=STATE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return (client or {}).get(CLIENT_KEY, {})


def without_cpu_inference_comm_op() -> None:
    """On the CPU accelerator, DeepSpeed's comm backend JIT-compiles a shared-memory all-reduce
    op when it starts (g++, 25-45 s per machine the first time; a failed start where there is no
    compiler). Only DeepSpeed-Inference's tensor parallelism calls it (`inference_all_reduce`);
    ZeRO training and evaluation use torch.distributed's collectives, so it is not built here.
    Call before `deepspeed.init_distributed`; a no-op on GPU accelerators."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() == "cpu":
        # By name: the attribute `deepspeed.comm.torch` is the torch package, not this module.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def _ensure_deepspeed_distributed() -> None:
    """Reuse the existing process group (Ray Train's); only create one when there is none
    (a single process without a launcher gets a 1-rank group on a free local port)."""
    import deepspeed

    without_cpu_inference_comm_op()
    if not dist_ready():
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    else:
        # Registers DeepSpeed's comm wrapper around the existing group; creates nothing.
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
