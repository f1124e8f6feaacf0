"""Is a folder a reward checkpoint that OpenRLHF and `idrm-ray serve` can load? Read from
`config.json` and the safetensors headers only (no weights loaded): OpenRLHF's
`get_llm_for_sequence_regression` builds the base model under `base_model_prefix` plus a
bias-free `Linear(hidden, 1)` named `value_head_prefix` and reads `mean`/`std` from the
config (`openrlhf/models/model.py`). Used by the server before it starts and by the PPO
launch checks (`ppo/checks.py`); each failure is one line saying how to fix it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckError", "CheckpointInfo", "check_reward_checkpoint", "is_local"]


class CheckError(ValueError):
    """A launch that cannot work; the message says what to change."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: str
    value_head_prefix: str
    base_model_prefix: str
    hidden_size: int
    mean: float
    std: float
    normalize_reward: bool
    num_tensors: int


def is_local(path: str) -> bool:
    return bool(path) and Path(path).expanduser().exists()


def _weight_shapes(root: Path) -> dict[str, list[int]]:
    from safetensors import safe_open

    index = root / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    if not files and (root / "model.safetensors").exists():
        files = ["model.safetensors"]
    if not files:
        raise CheckError(f"{root}: no model.safetensors (or sharded index) found; save with save_reward_model")
    shapes = {}
    for name in files:
        with safe_open(str(root / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = list(f.get_slice(key).get_shape())
    return shapes


def _base_model_prefix(root: Path, config: dict) -> str:
    from transformers import AutoConfig, AutoModel

    try:
        hf_config = AutoConfig.from_pretrained(str(root))
        return AutoModel._model_mapping[type(hf_config)].base_model_prefix  # what OpenRLHF instantiates
    except (KeyError, ValueError, OSError) as exc:
        raise CheckError(f"{root}: model_type {config.get('model_type')!r} has no transformers base model ({exc})")


def check_reward_checkpoint(path: str) -> CheckpointInfo:
    """The checkpoint loads as OpenRLHF's reward model (layout only; no weights read)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckError(f"reward checkpoint {path} is not a directory")
    cfg_file = root / "config.json"
    if not cfg_file.exists():
        raise CheckError(f"{path}: no config.json; is this a saved reward model (a run's model/ folder)?")
    config = json.loads(cfg_file.read_text())
    prefix = config.get("value_head_prefix", "score")
    base = _base_model_prefix(root, config)
    shapes = _weight_shapes(root)
    text_cfg = config.get("text_config") or config
    hidden = int(text_cfg.get("hidden_size", 0))
    head = shapes.get(f"{prefix}.weight")
    if head is None:
        raise CheckError(f"{path}: no value head `{prefix}.weight` in the weights; OpenRLHF would init it at "
                         "random. Save the reward model with save_reward_model")
    if head != [1, hidden]:
        raise CheckError(f"{path}: value head `{prefix}.weight` has shape {head}, expected [1, {hidden}]")
    if f"{prefix}.bias" in shapes:
        raise CheckError(f"{path}: value head has a bias; OpenRLHF's head is Linear(hidden, 1, bias=False)")
    if not any(k.startswith(base + ".") for k in shapes):
        raise CheckError(f"{path}: no backbone weights under `{base}.`, where OpenRLHF loads them")
    if not ((root / "tokenizer.json").exists() or (root / "tokenizer_config.json").exists()):
        raise CheckError(f"{path}: no tokenizer saved; OpenRLHF loads the reward tokenizer from this folder")
    std = float(config.get("std", 1.0))
    if not std > 0:
        raise CheckError(f"{path}: config std={std} must be > 0 (used by reward normalisation)")
    return CheckpointInfo(
        path=str(root), value_head_prefix=prefix, base_model_prefix=base, hidden_size=hidden,
        mean=float(config.get("mean", 0.0)), std=std, normalize_reward=bool(config.get("normalize_reward", False)),
        num_tensors=len(shapes),
    )
