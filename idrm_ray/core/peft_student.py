"""Parameter-efficient students: top-block training and LoRA (issue 14 §1).

Two ways to train only part of a reward model, both set up right after it loads and before
the optimizer sees it (the optimizer takes only parameters with `requires_grad`, so frozen
ones never get gradients or Adam state):

- `train_top_blocks = K`: the top K decoder blocks, the final norm and the value head train;
  the embeddings and the blocks below are frozen.
- LoRA (`lora_r > 0`): `peft` injects low-rank adapters into the blocks' `target_modules` in
  place (the HF model object stays the same, so the Q/K capture's hooks on `q_proj`/`k_proj`
  see the adapted projections); the value head trains in full. With K > 0 as well, adapters
  go into the top K blocks only (peft's `layers_to_transform`) and the final norm stays frozen.

Saving (`merge_lora_state`, `adapter_state`): the checkpoint is an ordinary merged reward
model, W + (alpha / r) B A, so nothing downstream needs peft; the adapter is written beside
it in peft's own format, loadable with `PeftModel.from_pretrained` over the initial student.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import set_zero3_state

from idrm_ray.core.capture import decoder_layers
from idrm_ray.core.reward_model import VALUE_HEAD_PREFIX, backbone, value_head

__all__ = [
    "ADAPTER_DIR",
    "DEFAULT_TARGETS",
    "PeftSettings",
    "adapter_state",
    "apply_peft",
    "check_distilled_trained",
    "freeze_below_top",
    "lora_config",
    "merge_lora_state",
    "plain_skeleton",
    "save_adapter",
    "trainable_counts",
]

ADAPTER_DIR = "adapter"  # the adapter alone, inside the checkpoint's model directory
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ADAPTER = "default"  # peft's adapter name; removed from the keys in its saved format


@dataclass(frozen=True)
class PeftSettings:
    """Which parameters of the student train (student.train_top_blocks, student.lora.*)."""

    train_top_blocks: int = 0  # 0: all blocks; K: the top K, the final norm and the value head
    lora_r: int = 0  # 0: no LoRA
    lora_alpha: float = 16.0  # scaling alpha / r (OpenRLHF's --lora_alpha default)
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = DEFAULT_TARGETS

    @property
    def lora(self) -> bool:
        return self.lora_r > 0

    @property
    def active(self) -> bool:
        return self.lora or self.train_top_blocks > 0

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_r

    def to_metadata(self) -> dict:
        """What `idrm_meta.json` records under "peft"."""
        meta = {"train_top_blocks": self.train_top_blocks, "lora_r": self.lora_r}
        if self.lora:
            meta.update(lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                        lora_target_modules=list(self.lora_target_modules))
        return meta


def check_distilled_trained(settings: PeftSettings, *, top_n: int) -> None:
    """ID steers the top N blocks' Q/K: they must be among the trained ones (METHOD.md Eq. 8)."""
    k = settings.train_top_blocks
    if k and top_n > k:
        raise ValueError(f"method.id.top_n={top_n} distills blocks that student.train_top_blocks={k} freezes: "
                         f"set student.train_top_blocks >= {top_n} (or 0 to train all blocks)")


def _top_indices(num_blocks: int, k: int) -> list[int]:
    if not 1 <= k <= num_blocks:
        raise ValueError(f"train_top_blocks={k} must be in [1, {num_blocks}]: the student has {num_blocks} blocks")
    return list(range(num_blocks - k, num_blocks))


def freeze_below_top(model: PreTrainedModel, k: int) -> None:
    """Only the top `k` decoder blocks, the final norm and the value head keep requires_grad."""
    layers = decoder_layers(model)
    top = _top_indices(len(layers), k)
    for p in model.parameters():
        p.requires_grad_(False)
    norm = getattr(backbone(model), "norm", None)  # the final norm (Llama, Qwen2, Mistral)
    trained = [layers[i] for i in top] + [value_head(model)] + ([norm] if isinstance(norm, nn.Module) else [])
    for module in trained:
        for p in module.parameters():
            p.requires_grad_(True)


def lora_config(settings: PeftSettings, num_blocks: int) -> LoraConfig:
    """peft's config; with train_top_blocks the adapters go into the top K blocks only."""
    top = _top_indices(num_blocks, settings.train_top_blocks) if settings.train_top_blocks else None
    return LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                      target_modules=list(settings.lora_target_modules), layers_to_transform=top, bias="none")


def apply_peft(model: PreTrainedModel, settings: PeftSettings) -> PreTrainedModel:
    """Set up the trainable parameters in place (and return the same model)."""
    if settings.lora:
        num_blocks = len(decoder_layers(model))
        inject_adapter_in_model(lora_config(settings, num_blocks), model, adapter_name=_ADAPTER)
        for p in value_head(model).parameters():  # peft froze everything but the adapters
            p.requires_grad_(True)
    elif settings.train_top_blocks:
        freeze_below_top(model, settings.train_top_blocks)
    return model


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts (ZeRO-3 partitions counted by `ds_numel`)."""
    def numel(p):
        return int(getattr(p, "ds_numel", p.numel()))

    params = list(model.parameters())
    return sum(numel(p) for p in params if p.requires_grad), sum(numel(p) for p in params)


# -- saving ---------------------------------------------------------------------------------


def _lora_prefixes(state: dict) -> list[str]:
    suffix = f".lora_A.{_ADAPTER}.weight"
    return [k[: -len(suffix)] for k in state if k.endswith(suffix)]


def merge_lora_state(state: dict[str, torch.Tensor], settings: PeftSettings) -> dict[str, torch.Tensor]:
    """The plain HF state dict of a LoRA-injected model's full state: each adapted
    Linear's weight becomes W + (alpha / r) B A (computed in fp32, stored in W's dtype), its
    `base_layer.` level is dropped and the adapter tensors go. Without adapters: unchanged."""
    prefixes = _lora_prefixes(state)
    if not prefixes:
        return dict(state)
    merged = {k: v for k, v in state.items() if ".lora_" not in k}
    for prefix in prefixes:
        a = state[f"{prefix}.lora_A.{_ADAPTER}.weight"].float()  # (r, in)
        b = state[f"{prefix}.lora_B.{_ADAPTER}.weight"].float()  # (out, r)
        base = merged[f"{prefix}.base_layer.weight"]  # (out, in)
        merged[f"{prefix}.base_layer.weight"] = (base.float() + settings.scaling * (b @ a)).to(base.dtype)
    return {k.replace(".base_layer.", "."): v for k, v in merged.items()}


def adapter_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter in peft's saved layout: `base_model.model.<key>` with the adapter name
    dropped, and the fully trained value head as a `modules_to_save` entry."""
    out = {f"base_model.model.{k.replace(f'.{_ADAPTER}.', '.')}": v.contiguous()
           for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}
    head = f"{VALUE_HEAD_PREFIX}.weight"
    out[f"base_model.model.{head}"] = state[head].contiguous()
    return out


def save_adapter(out_dir: str | Path, state: dict[str, torch.Tensor], settings: PeftSettings, *,
                 num_blocks: int, base_model: str) -> Path:
    """`adapter_config.json` + `adapter_model.safetensors` for `PeftModel.from_pretrained(
    AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1), out_dir)`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = lora_config(settings, num_blocks)
    config.task_type = "SEQ_CLS"  # peft then restores `score` from modules_to_save
    config.modules_to_save = [VALUE_HEAD_PREFIX]
    config.base_model_name_or_path = str(base_model)
    config.save_pretrained(str(out))
    save_file(adapter_state(state), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def plain_skeleton(model: PreTrainedModel) -> PreTrainedModel:
    """The model's plain HF class on the meta device (no memory): what a merged state dict is
    saved through, since the LoRA-injected module has other keys. `set_zero3_state` tells
    transformers' nested `from_config` (the backbone) that ZeRO-3 init is not wanted here."""
    with torch.device("meta"), set_zero3_state():
        return type(model)(copy.deepcopy(model.config))
