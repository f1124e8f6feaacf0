"""The student reward model (METHOD.md Eq. 1) in OpenRLHF's checkpoint layout.

A `*ForSequenceClassification` with one label is exactly OpenRLHF's reward model on disk
(`openrlhf/models/model.py`, `_get_reward_model`): the backbone under the base-model
prefix `model.*`, a bias-free `Linear(hidden, 1)` value head named by `value_head_prefix`
(`score`), and `config.json` carrying `value_head_prefix`, `mean`, `std` and
`normalize_reward` (set by `cli/train_rm.py` and `trainer/rm_trainer.py`). So a saved
directory loads with plain `AutoModelForSequenceClassification` and with OpenRLHF's
`get_llm_for_sequence_regression(path, "reward")` alike.

The reward is read at the last position whose attention mask is 1 (OpenRLHF's rule), from
the backbone alone (no vocabulary-sized logits), so capture hooks (`capture.py`) fire
during this one forward.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from idrm_ray.core.hf_save import save_pretrained

__all__ = [
    "META_FILE",
    "VALUE_HEAD_PREFIX",
    "RewardStats",
    "backbone",
    "cached_tokenizer",
    "compute_rewards",
    "last_hidden_state",
    "last_token_index",
    "load_reward_model",
    "load_student_tokenizer",
    "finish_reward_model",
    "normalize",
    "read_metadata",
    "reward_stats",
    "save_reward_model",
    "value_head",
]

VALUE_HEAD_PREFIX = "score"  # OpenRLHF's default `value_head_prefix`; HF's head name too
META_FILE = "idrm_meta.json"


@dataclass(frozen=True)
class RewardStats:
    """Reward normalisation stats as OpenRLHF keeps them in `config.json`."""

    mean: float = 0.0
    std: float = 1.0
    normalize_reward: bool = False  # OpenRLHF applies (r - mean) / std in eval when True

    @classmethod
    def from_config(cls, config) -> "RewardStats":
        return cls(
            mean=float(getattr(config, "mean", 0.0)),
            std=float(getattr(config, "std", 1.0)),
            normalize_reward=bool(getattr(config, "normalize_reward", False)),
        )


def reward_stats(model_or_config) -> RewardStats:
    return RewardStats.from_config(getattr(model_or_config, "config", model_or_config))


def normalize(rewards: torch.Tensor, stats) -> torch.Tensor:
    """(r - mean) / std, unconditionally; `stats` is a RewardStats, config or model.
    Callers decide when (OpenRLHF: in eval, when `normalize_reward`)."""
    stats = stats if isinstance(stats, RewardStats) else reward_stats(stats)
    return (rewards - stats.mean) / stats.std


# -- model access ---------------------------------------------------------------------------


def backbone(model: PreTrainedModel) -> nn.Module:
    """The decoder without any head (`model.model` for Llama/Qwen2/Mistral)."""
    return model.base_model


def value_head(model: PreTrainedModel) -> nn.Linear:
    head = getattr(model, VALUE_HEAD_PREFIX, None)
    if not isinstance(head, nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(model).__name__} has no 1-output `{VALUE_HEAD_PREFIX}` Linear head")
    return head


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last position whose mask is 1; works for left and right padding."""
    n = attention_mask.shape[1]
    return n - 1 - attention_mask.long().fliplr().argmax(dim=1)


def last_hidden_state(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, d) backbone output at each sequence's last real token (the reward token).

    Position ids count real tokens only (OpenRLHF, issue #217), so left and right padding
    give the same rewards and each sequence's RoPE positions start at 0.
    """
    position_ids = attention_mask.long().cumsum(-1) - 1  # (B, n)
    position_ids.masked_fill_(attention_mask == 0, 1)
    out = backbone(model)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    hidden = out.last_hidden_state  # (B, n, d)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask).to(hidden.device)]  # (B, d)


def compute_rewards(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """METHOD.md Eq. 1: r = h_last W_r, as a (B,) fp32 tensor (`last_hidden_state` rules)."""
    h_last = last_hidden_state(model, input_ids, attention_mask)  # (B, d)
    head = value_head(model)
    if head.weight.numel() == 0:
        # ZeRO-3 partitioned weight: only the module call gathers it; fp32 after the head.
        return head(h_last).squeeze(-1).float()
    bias = None if head.bias is None else head.bias.float()
    return F.linear(h_last.float(), head.weight.float(), bias).squeeze(-1)  # (B,)


# -- load -----------------------------------------------------------------------------------


def _whole(param: torch.Tensor):
    """The full parameter for the block: a ZeRO-3 partition (`ds_id`) is gathered, modified on
    rank 0 and scattered back; a plain parameter needs nothing (deepspeed imported only then)."""
    if not hasattr(param, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([param], modifier_rank=0)


def _resolve_pad_id(model: PreTrainedModel, name_or_path: str, tokenizer) -> int | None:
    if tokenizer is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError):
            tokenizer = None
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:  # OpenRLHF's get_tokenizer falls back to EOS the same way
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        pad = model.config.eos_token_id
    if isinstance(pad, list):
        pad = pad[0]
    return pad


def load_student_tokenizer(name_or_path: str | os.PathLike, **kwargs):
    """A student's tokenizer, ready to pad: a tokenizer without a pad token (Llama-3,
    SmolLM2, most base LMs) pads with its EOS, as OpenRLHF's `get_tokenizer` does. The reward
    is read at the last real token by attention mask, never at a pad id, so the choice only
    has to be consistent; it is saved with every checkpoint. No EOS at all is an error: the
    reward is read at the EOS that ends each sequence."""
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), **kwargs)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name_or_path}: the tokenizer has no EOS token; the reward is read at the EOS that "
                         "ends each sequence, so set one (tokenizer.eos_token) and save the tokenizer again")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@functools.lru_cache(maxsize=8)
def cached_tokenizer(path: str):
    """The student tokenizer of a checkpoint or model directory (`load_student_tokenizer`:
    pad = EOS where it has none), loaded once per process and path."""
    return load_student_tokenizer(path)


def load_reward_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    tokenizer=None,
    init_value_head: bool | None = None,
) -> PreTrainedModel:
    """A reward model from a saved RM or a plain causal-LM checkpoint.

    `dtype`: None keeps transformers' default ("auto": the checkpoint's dtype).
    `tokenizer`: source of the pad id when the config has none (else the tokenizer saved
    next to the weights, else EOS).
    `init_value_head`: None re-initialises the head only when the checkpoint has none (a
    causal LM), True always (OpenRLHF's `train_rm` does), False never. The init is
    OpenRLHF's: normal, std = 1/(hidden_size+1). `config.mean/std/normalize_reward/
    value_head_prefix` are always present afterwards (defaults 0, 1, False, "score"); read
    them with `reward_stats(model)`.
    """
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, info = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=1, attn_implementation=attn_implementation, output_loading_info=True, **kwargs
    )
    head_missing = f"{VALUE_HEAD_PREFIX}.weight" in set(info.get("missing_keys", ()))
    return finish_reward_model(model, name_or_path, head_missing=head_missing, tokenizer=tokenizer,
                               init_value_head=init_value_head)


def finish_reward_model(model: PreTrainedModel, name_or_path, *, head_missing: bool, tokenizer=None,
                        init_value_head: bool | None = None) -> PreTrainedModel:
    """What every loader does after the weights are in (`load_reward_model`, the ZeRO-3
    streaming loader in train/strategy_zero3.py): the value head (re-)initialised as OpenRLHF does
    where it is missing, the pad id, and OpenRLHF's reward fields in the config."""
    prefix = getattr(model.config, "value_head_prefix", VALUE_HEAD_PREFIX)
    if prefix != VALUE_HEAD_PREFIX:
        raise ValueError(f"value_head_prefix={prefix!r} is not supported; only {VALUE_HEAD_PREFIX!r} (HF's name)")
    head = value_head(model)
    if init_value_head or (init_value_head is None and head_missing):
        hidden = model.config.get_text_config().hidden_size
        with torch.no_grad(), _whole(head.weight):
            head.weight.normal_(mean=0.0, std=1.0 / (hidden + 1))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = _resolve_pad_id(model, str(name_or_path), tokenizer)
    stats = RewardStats.from_config(model.config)
    model.config.value_head_prefix = VALUE_HEAD_PREFIX
    model.config.mean, model.config.std = stats.mean, stats.std
    model.config.normalize_reward = stats.normalize_reward
    model.config.use_cache = False
    return model


# -- save -----------------------------------------------------------------------------------


@contextmanager
def _config_fields(config, fields: Mapping[str, object]) -> Iterator[None]:
    """Set config attributes for the duration of a save, then restore them."""
    missing = object()
    old = {k: getattr(config, k, missing) for k in fields}
    for k, v in fields.items():
        setattr(config, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is missing:
                delattr(config, k)
            else:
                setattr(config, k, v)


def save_reward_model(
    model: PreTrainedModel,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    mean: float = 0.0,
    std: float = 1.0,
    normalize_reward: bool = False,
    metadata: dict | None = None,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write an HF directory OpenRLHF and plain transformers both load: safetensors weights
    (`model.*`, `score.weight`), tokenizer, config with OpenRLHF's reward fields, and
    `idrm_meta.json` with `metadata`.

    `state_dict`: a consolidated state dict (ZeRO-3 gather) to write instead of the
    module's own; its keys must cover the model's, as OpenRLHF's `save_model` asserts.
    """
    if not std > 0:
        raise ValueError(f"std must be > 0, got {std}")
    if value_head(model).bias is not None or model.config.num_labels != 1:
        raise ValueError("the reward head must be a bias-free Linear(hidden, 1) with config.num_labels == 1")
    if state_dict is not None:
        missing = set(model.state_dict()) - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {len(missing)} model keys, e.g. {sorted(missing)[:3]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = dict(
        value_head_prefix=VALUE_HEAD_PREFIX, mean=float(mean), std=float(std), normalize_reward=bool(normalize_reward)
    )
    with _config_fields(model.config, fields):
        save_pretrained(model, out, state_dict=None if state_dict is None else dict(state_dict))
    tokenizer.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps(metadata or {}, indent=2, sort_keys=True, default=str) + "\n")
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """The `idrm_meta.json` of a saved reward model ({} when absent)."""
    meta = Path(path) / META_FILE
    return json.loads(meta.read_text()) if meta.exists() else {}
