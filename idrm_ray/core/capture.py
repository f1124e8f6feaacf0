"""Capture post-RoPE Q and K of the student's top-N attention blocks (METHOD.md §5).

Nothing is recomputed and the attention implementation is left alone (sdpa stays sdpa):
forward hooks keep the outputs of `self_attn.q_proj` / `k_proj` (of `q_norm` / `k_norm`
where the attention has them, as in Qwen3), a forward pre-hook keeps the
`position_embeddings` (cos, sin) the block receives, and `result()` applies the family's
own `apply_rotary_pos_emb` to them: the same ops on the same tensors as the model's
attention, so the captured Q/K are its attention logits' inputs and carry gradients into
W_Q, W_K and everything below (METHOD.md §6 "Cost", "Gradients").

Gradient checkpointing: a recomputation in backward re-runs the hooked blocks, but only
hooks firing while the backbone's own forward is running are recorded, so nothing is
appended twice. Reentrant checkpointing runs the forward without grad, so Q/K would carry
no gradient: that is refused with an error (use `use_reentrant=False`, HF's default).

    with capture_qk(model, top_n=2) as cap:
        out = model(input_ids, attention_mask=mask)
        qk = cap.result()  # CapturedQK, k=0 the top block

Across steps, keep one `QKCapture` attached and call `reset()` before each forward.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from idrm_ray.core.types import CapturedQK

__all__ = [
    "AttentionLayout",
    "QKCapture",
    "attention_layout",
    "capture_qk",
    "check_top_n",
    "decoder_layers",
    "head_dim",
    "num_blocks",
    "num_heads",
    "num_kv_heads",
]


@dataclass(frozen=True)
class AttentionLayout:
    """What the simulated maps need to know about the student's attention."""

    num_blocks: int  # M, decoder blocks
    num_heads: int  # H, query heads
    num_kv_heads: int  # H_kv; GQA key head of query head h is h // (H // H_kv)
    head_dim: int  # d
    scaling: float  # the model's own logit scale, 1/sqrt(d) for the supported families


def _find_layers(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(backbone, layers): the first ModuleList whose blocks all have `.self_attn`, and the
    module that owns it (LlamaModel & co.), found generically (`model.model.layers`,
    `base_model`, PEFT or DeepSpeed wrappers)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0 and all(hasattr(b, "self_attn") for b in module):
            owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            return owner, module
    raise ValueError(
        f"{type(model).__name__}: no decoder layer list found (an nn.ModuleList of blocks with a "
        "`self_attn` attribute, e.g. `model.model.layers`). Supported: Llama-, Qwen2-, Qwen3- and "
        "Mistral-style decoders."
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The student's decoder blocks, bottom to top."""
    return _find_layers(model)[1]


def _rope_fn(attn: nn.Module) -> Callable:
    """The family's `apply_rotary_pos_emb`, taken from the attention class's own module."""
    fn = getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None)
    if fn is None:
        raise ValueError(f"{type(attn).__name__}: its module defines no `apply_rotary_pos_emb`; RoPE attention needed")
    return fn


def _qk_modules(attn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Modules whose outputs are Q and K right before RoPE."""
    if isinstance(getattr(attn, "q_norm", None), nn.Module) and isinstance(getattr(attn, "k_norm", None), nn.Module):
        return attn.q_norm, attn.k_norm  # Qwen3: per-head RMSNorm sits between projection and RoPE
    if hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        return attn.q_proj, attn.k_proj
    raise ValueError(f"{type(attn).__name__}: needs separate `q_proj` and `k_proj` (fused QKV is not supported)")


def attention_layout(model: nn.Module) -> AttentionLayout:
    layers = decoder_layers(model)
    attn = layers[-1].self_attn
    _qk_modules(attn)  # fail early on unsupported attention (fused QKV, no RoPE)
    _rope_fn(attn)
    # The block's own config: `model` may be a wrapper (DeepSpeed engine, PEFT) whose `.config` is not HF's.
    config = getattr(attn, "config", None) or model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(config.num_attention_heads)
    d = int(getattr(attn, "head_dim", 0) or config.hidden_size // heads)
    return AttentionLayout(
        num_blocks=len(layers),
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        head_dim=d,
        scaling=float(getattr(attn, "scaling", d**-0.5)),
    )


def num_blocks(model: nn.Module) -> int:
    return len(decoder_layers(model))


def num_heads(model: nn.Module) -> int:
    return attention_layout(model).num_heads


def num_kv_heads(model: nn.Module) -> int:
    return attention_layout(model).num_kv_heads


def head_dim(model: nn.Module) -> int:
    return attention_layout(model).head_dim


def check_top_n(model: nn.Module, top_n: int) -> None:
    """Config validation: 1 <= N <= M (METHOD.md Eq. 8)."""
    depth = num_blocks(model)
    if not 1 <= top_n <= depth:
        raise ValueError(f"top_n={top_n} must be in [1, {depth}]: the student has {depth} decoder blocks")


def _heads_first(x: torch.Tensor, d: int) -> torch.Tensor:
    """(B, n, H*d) projection output or (B, n, H, d) per-head norm output -> (B, H, n, d)."""
    return x.reshape(*x.shape[:2], -1, d).transpose(1, 2)


class QKCapture:
    """Hooks on the top-N blocks of a decoder; one record per backbone forward.

    `attach()` / `detach()` (or use as a context manager) install and remove the hooks;
    `reset()` drops the records (and the graph they hold) between steps.
    """

    def __init__(self, model: PreTrainedModel, *, top_n: int = 1, keep_pre_rope: bool = False):
        check_top_n(model, top_n)
        self.model = model
        self.top_n = top_n
        self.keep_pre_rope = keep_pre_rope
        self.layout = attention_layout(model)
        self.head_dim = self.layout.head_dim
        self._backbone, layers = _find_layers(model)
        self._attns = [layers[len(layers) - 1 - k].self_attn for k in range(top_n)]  # k=0 the top block
        self._ropes = [_rope_fn(a) for a in self._attns]
        self._handles: list = []
        self._records: list[dict] = []  # per forward: {"q"|"k"|"pe": {k: tensor(s)}, "out": CapturedQK}
        self._active = False  # inside the backbone's forward (not a backward recomputation)
        self._grad_at_entry = False

    # -- hooks ---------------------------------------------------------------------------
    def _on_backbone_enter(self, module, args) -> None:
        self._records.append({"q": {}, "k": {}, "pe": {}})
        self._active, self._grad_at_entry = True, torch.is_grad_enabled()

    def _on_backbone_exit(self, module, args, output) -> None:
        self._active = False

    def _store(self, kind: str, k: int, value) -> None:
        if not self._active:
            return  # a gradient-checkpointing recomputation in backward: already recorded
        if self._grad_at_entry and not torch.is_grad_enabled() and kind != "pe":
            raise RuntimeError(
                "captured Q/K would carry no gradient: the block ran without grad inside a grad-enabled "
                "forward (reentrant gradient checkpointing). Enable checkpointing with "
                "gradient_checkpointing_kwargs={'use_reentrant': False}."
            )
        self._records[-1][kind][k] = value

    def _make_pe_hook(self, k: int):
        def hook(module, args, kwargs):
            pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
            if pe is None:
                raise ValueError(f"{type(module).__name__} got no `position_embeddings` (cos, sin)")
            self._store("pe", k, pe)

        return hook

    def _make_out_hook(self, kind: str, k: int):
        return lambda module, args, output: self._store(kind, k, output)

    # -- lifecycle -------------------------------------------------------------------------
    def attach(self) -> "QKCapture":
        if self._handles:
            return self
        h = self._handles
        h.append(self._backbone.register_forward_pre_hook(self._on_backbone_enter))
        h.append(self._backbone.register_forward_hook(self._on_backbone_exit, always_call=True))
        for k, attn in enumerate(self._attns):
            q_mod, k_mod = _qk_modules(attn)
            h.append(attn.register_forward_pre_hook(self._make_pe_hook(k), with_kwargs=True))
            h.append(q_mod.register_forward_hook(self._make_out_hook("q", k)))
            h.append(k_mod.register_forward_hook(self._make_out_hook("k", k)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._active = False

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "QKCapture":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def reset(self) -> None:
        self._records.clear()

    @property
    def num_forwards(self) -> int:
        return len(self._records)

    # -- results ---------------------------------------------------------------------------
    def result(self, index: int = -1) -> CapturedQK:
        """Q/K of one recorded forward (default: the latest); computed once, then cached."""
        if not self._records:
            raise RuntimeError("no forward recorded: run the model inside the capture (after reset())")
        rec = self._records[index]
        if "out" not in rec:
            rec["out"] = self._build(rec)
        return rec["out"]

    def _build(self, rec: dict) -> CapturedQK:
        qs, ks, q_pre, k_pre = [], [], [], []
        for k in range(self.top_n):
            if not all(k in rec[kind] for kind in ("q", "k", "pe")):
                raise RuntimeError(f"block k={k} (from the top) did not run in the recorded forward")
            q = _heads_first(rec["q"][k], self.head_dim)  # (B, H, n, d)
            kk = _heads_first(rec["k"][k], self.head_dim)  # (B, H_kv, n, d)
            cos, sin = rec["pe"][k]  # (B, n, d) each
            q_rot, k_rot = self._ropes[k](q, kk, cos, sin)  # the model's own RoPE ops
            qs.append(q_rot)
            ks.append(k_rot)
            q_pre.append(q)
            k_pre.append(kk)
        if not self.keep_pre_rope:
            return CapturedQK(q=qs, k=ks, scaling=self.layout.scaling)
        return CapturedQK(q=qs, k=ks, q_pre=q_pre, k_pre=k_pre, scaling=self.layout.scaling)


def capture_qk(model: PreTrainedModel, *, top_n: int = 1, keep_pre_rope: bool = False) -> QKCapture:
    """A detached `QKCapture`; use it as `with capture_qk(model, top_n=N) as cap: ...`."""
    return QKCapture(model, top_n=top_n, keep_pre_rope=keep_pre_rope)
