"""Distributed training strategy: the one module that touches DeepSpeed (STYLE.md item 4).

Two implementations behind one small interface, picked by `make_strategy`:
- `TorchStrategy`: plain torch (DistributedDataParallel when world_size > 1, nothing when 1);
  serves CPU runs and is the reference the DeepSpeed path is tested against.
- `DeepSpeedStrategy`: a DeepSpeed ZeRO engine built from `build_ds_config` with the torch
  optimizer and scheduler we pass (declaring one in the config would JIT-compile fused_adam).

Both reuse a process group that already exists (Ray Train's TorchTrainer creates one) and
both follow DeepSpeed's accumulation contract: call `backward(loss)` then `step()` on every
micro-batch; the loss is divided by `grad_accum_steps`, and clipping, the optimizer and
scheduler steps and zeroing happen only at the accumulation boundary.

`deepspeed` is imported lazily, so the torch path works where DeepSpeed is not installed.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from idrm_ray.core.devices import DTYPES, auto_precision

PRECISIONS = ("bf16", "fp16", "fp32")
_CLIENT_KEY = "idrm_client_state"  # our extra state inside a DeepSpeed checkpoint
_TAG = "state"  # one fixed tag: a state directory holds exactly one training state


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
    _check_precision(precision)
    return DTYPES[precision]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- DS config


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
    _check_precision(precision)
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


# ----------------------------------------------------------------------------- strategies


class Strategy:
    """Shared part: rank/world size from the existing process group, all-reduce."""

    kind = "base"

    def __init__(self, *, grad_accum_steps: int = 1, max_grad_norm: float | None = 1.0, precision: str = "fp32"):
        _check_precision(precision)
        if grad_accum_steps < 1:
            raise ValueError("grad_accum_steps must be >= 1")
        self.grad_accum_steps = grad_accum_steps
        self.max_grad_norm = max_grad_norm
        self.precision = precision
        self.model: nn.Module | None = None

    @property
    def rank(self) -> int:
        return dist.get_rank() if _dist_ready() else 0

    @property
    def world_size(self) -> int:
        return dist.get_world_size() if _dist_ready() else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if _dist_ready():
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
                _CLIENT_KEY: client_state or {},
            }
            torch.save(state, Path(directory) / f"{_TAG}.pt")
        self.barrier()

    def load_state(self, directory: str | os.PathLike) -> dict:
        """Restore what save_state wrote (after prepare); returns the client state."""
        # weights_only: client_state must hold plain Python values and tensors.
        state = torch.load(Path(directory) / f"{_TAG}.pt", map_location=self.device, weights_only=True)
        self.unwrap().load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps, self.global_steps = state["micro_steps"], state["global_steps"]
        return state[_CLIENT_KEY]


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
        safetensors files (`_stream_zero3_weights`), so a rank's peak is its partition plus one
        gathered tensor. transformers 5.15's own ZeRO-3 `from_pretrained` merges every shard
        into one state dict on every rank first (measured: 1.5-2x the fp32 model on rank 0,
        `python -m idrm_ray.bench.zero3_load`), which is what an 8B model cannot afford."""
        if self.zero_stage != 3:
            return super().load_reward_model(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                             tokenizer=tokenizer)
        from transformers.integrations import HfDeepSpeedConfig

        self._hf_ds_config = HfDeepSpeedConfig(self.config)  # transformers' own ZeRO-3 code paths (save, resize)
        return _load_zero3(name_or_path, ds_config=self.config, dtype=dtype, attn_implementation=attn_implementation,
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
            return _gather_zero3_state_dict(self.engine.module, is_main=self.is_main)
        if not self.is_main:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.module.state_dict().items()}

    def save_state(self, directory: str | os.PathLike, client_state: dict | None = None) -> None:
        """Full resumable state (DeepSpeed's sharded checkpoint). Collective."""
        self.engine.save_checkpoint(str(directory), tag=_TAG, client_state={_CLIENT_KEY: client_state or {}})
        self.barrier()

    def load_state(self, directory: str | os.PathLike) -> dict:
        """Restore what save_state wrote (after prepare); returns the client state. Collective."""
        path, client = self.engine.load_checkpoint(
            str(directory), tag=_TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return (client or {}).get(_CLIENT_KEY, {})


def _ensure_deepspeed_distributed() -> None:
    """Reuse the existing process group (Ray Train's); only create one when there is none
    (a single process without a launcher gets a 1-rank group on a free local port)."""
    import deepspeed

    if not _dist_ready():
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    else:
        # Registers DeepSpeed's comm wrapper around the existing group; creates nothing.
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)


def _weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        return [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{path}: ZeRO-3 loading reads safetensors weights; no model.safetensors(.index.json)")
    return [single]


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_entries(file: Path):
    """(key, read_into) per tensor of a safetensors file: `read_into(dest)` fills `dest` with
    that tensor's bytes alone, straight into its storage when dtype and shape agree (else via
    one converted copy). Not mmap: touched pages of a mapping stay resident (and in the RSS)
    for as long as the file is open, which would hold the whole shard."""
    import json

    with open(file, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    base = 8 + size
    for key, entry in header.items():
        if key == "__metadata__":
            continue

        def read_into(dest: torch.Tensor, entry=entry) -> None:
            start, end = entry["data_offsets"]
            dtype, shape = _ST_DTYPES[entry["dtype"]], torch.Size(entry["shape"])
            if dest.shape != shape:
                raise ValueError(f"{file}: {key} has shape {tuple(shape)}, the model {tuple(dest.shape)}")
            with open(file, "rb") as f:
                f.seek(base + start)
                if dest.dtype == dtype and dest.is_contiguous() and dest.device.type == "cpu":
                    f.readinto(memoryview(dest.view(torch.uint8).numpy()))  # no intermediate copy
                    return
                data = bytearray(f.read(end - start))
            dest.copy_(torch.frombuffer(data, dtype=dtype).reshape(shape))

        yield key, read_into


def _release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc malloc_trim): the gathered full tensors of a
    ZeRO-3 load are freed one by one, but malloc keeps their pages unless told."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _load_zero3(name_or_path: str, *, ds_config: dict, dtype: torch.dtype, attn_implementation: str, tokenizer,
                is_main: bool) -> nn.Module:
    """A reward model built partitioned and filled one tensor at a time (rank 0 reads each
    tensor, `GatheredParameters(modifier_rank=0)` scatters it). Checkpoint keys map onto the
    model's parameters by name (a causal LM's `model.*` backbone; its `lm_head` is dropped);
    a missing value head is initialised as OpenRLHF does."""
    import deepspeed
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from idrm_ray.core.reward_model import VALUE_HEAD_PREFIX, finish_reward_model

    path = Path(name_or_path)
    config = AutoConfig.from_pretrained(path, num_labels=1)
    pad_id, config.pad_token_id = config.pad_token_id, None  # zero.Init + pad_token_id fails (STACK_NOTES.md)
    # No `dtype=`: DeepSpeed 0.19.6 reads `dtype or half if fp16-capable else bf16`, which on a CPU
    # accelerator gives bf16 whatever is passed; from the config it is bf16 / fp16 / fp32 as trained.
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = AutoModelForSequenceClassification.from_config(config, dtype=dtype,
                                                               attn_implementation=attn_implementation)
    model.config.pad_token_id = pad_id
    params = dict(model.named_parameters())
    loaded = set()
    _release_freed_memory()  # the full tensors each module held before zero.Init partitioned it
    for file in _weight_files(path):
        for key, read_into in _safetensors_entries(file):
            if key not in params:
                continue  # e.g. a causal LM's lm_head: the reward model has a value head instead
            param = params[key]
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                if is_main:
                    with torch.no_grad():
                        read_into(param.data)
            loaded.add(key)
    _release_freed_memory()
    missing = sorted(set(params) - loaded)
    if [k for k in missing if k != f"{VALUE_HEAD_PREFIX}.weight"]:
        raise ValueError(f"{path}: weights missing for {len(missing)} parameters, e.g. {missing[:3]}")
    return finish_reward_model(model, name_or_path, head_missing=bool(missing), tokenizer=tokenizer)


def _gather_zero3_state_dict(module: nn.Module, *, is_main: bool) -> dict[str, torch.Tensor] | None:
    """Gather ZeRO-3 partitions one module at a time (bounded memory) into CPU copies on
    rank 0, in nn.Module.state_dict order, keeping tied parameters tied."""
    import deepspeed

    state: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}

    def visit(mod: nn.Module, prefix: str) -> None:
        params = list(mod.parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if is_main:
                for name, p in mod.named_parameters(recurse=False):
                    pid = getattr(p, "ds_id", id(p))
                    if pid in seen:
                        state[prefix + name] = state[seen[pid]]
                    else:
                        state[prefix + name] = p.detach().to("cpu", copy=True)
                        seen[pid] = prefix + name
                for name, b in mod.named_buffers(recurse=False):
                    if name not in mod._non_persistent_buffers_set:
                        state[prefix + name] = b.detach().to("cpu", copy=True)
        for name, child in mod.named_children():
            visit(child, prefix + name + ".")

    visit(module, "")
    return state if is_main else None


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
