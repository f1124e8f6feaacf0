"""ZeRO-3 without a whole model on any rank: the student built partitioned and filled one
tensor at a time from its safetensors files (`load_zero3`), and the full state dict gathered
one module at a time onto rank 0 (`gather_zero3_state_dict`)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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


def load_zero3(name_or_path: str, *, ds_config: dict, dtype: torch.dtype, attn_implementation: str, tokenizer,
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


def gather_zero3_state_dict(module: nn.Module, *, is_main: bool) -> dict[str, torch.Tensor] | None:
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
