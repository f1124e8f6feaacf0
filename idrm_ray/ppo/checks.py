"""What can be checked before a PPO launch, each failure one line saying how to fix it.

- the reward checkpoint's layout, read from `config.json` and the safetensors headers only
  (no weights loaded): OpenRLHF's `get_llm_for_sequence_regression` builds the base model
  under `base_model_prefix` plus a bias-free `Linear(hidden, 1)` named `value_head_prefix`
  and reads `mean`/`std` from the config (`openrlhf/models/model.py`);
- in-cluster, the reward model receives the policy's token ids, so both tokenizers must map
  text to the same ids;
- the command itself, with the installed OpenRLHF's parser (`openrlhf_cli.py`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CheckError", "CheckpointInfo", "check_render", "check_reward_checkpoint", "check_tokenizers_match", "is_local",
]

PROBE_TEXT = "Human: Héllo, what's 2+2?\n\nAssistant: It is 4. 日本 🙂</s>"


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


def check_render(reward_path: str, *, apply_chat_template: bool) -> str:
    """The reward model must read PPO's queries the way it was trained (DESIGN.md decision 9):
    OpenRLHF's `--data.apply_chat_template` renders the policy's prompts with the chat template,
    so a reward model trained on raw prompt + response would score text it never saw (and the
    other way round). Refuses a mismatch with `CheckError`; returns a note otherwise."""
    from idrm_ray.core.reward_model import read_metadata

    render = read_metadata(reward_path).get("render")
    if render is None:
        return "reward checkpoint records no render setting (trained before it was saved): chat template not checked"
    trained_chat = bool(render.get("chat_template"))
    if trained_chat != apply_chat_template:
        how = "with its tokenizer's chat template" if trained_chat else "on raw prompt + response (no chat template)"
        fix = ("data.apply_chat_template=true" if trained_chat else
               "data.apply_chat_template=false, or train the reward model with student.chat_template=true")
        raise CheckError(f"{reward_path} was trained {how}, but PPO would send it "
                         f"{'chat-templated' if apply_chat_template else 'raw'} queries "
                         f"(data.apply_chat_template={str(apply_chat_template).lower()}): set {fix}")
    return f"reward model and PPO queries agree on the chat template ({'on' if trained_chat else 'off'})"


def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def check_tokenizers_match(reward_path: str, policy_path: str) -> str | None:
    """Raise `CheckError` when the reward model's tokenizer differs from the policy's.
    Returns a note instead when a tokenizer is not available locally (checked on the cluster
    by nobody: say so rather than pretend)."""
    try:
        reward, policy = _load_tokenizer(reward_path), _load_tokenizer(policy_path)
    except (OSError, ValueError) as exc:
        return f"tokenizer match not checked (not available locally: {str(exc).splitlines()[0][:120]})"
    problems = []
    rv, pv = reward.get_vocab(), policy.get_vocab()
    if rv != pv:
        diff = len(set(rv.items()) ^ set(pv.items()))
        problems.append(f"vocabularies differ ({len(rv)} vs {len(pv)} tokens, {diff} entries not shared)")
    for name in ("eos_token_id", "bos_token_id"):
        if getattr(reward, name) != getattr(policy, name):
            problems.append(f"{name} {getattr(reward, name)} vs {getattr(policy, name)}")
    if not problems:
        a = reward(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        b = policy(PROBE_TEXT, add_special_tokens=False)["input_ids"]
        if a != b:
            problems.append("the same text tokenizes to different ids")
    if problems:
        raise CheckError(
            f"reward tokenizer ({reward_path}) differs from the policy's ({policy_path}): {'; '.join(problems)}. "
            "In-cluster, OpenRLHF feeds the policy's token ids to the reward model: train the RM from the policy's "
            "tokenizer, or serve it (idrm-ray serve) and set reward.url instead of reward.checkpoint")
    return None
