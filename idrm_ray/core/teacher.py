"""The frozen NLI cross-encoder teacher (METHOD.md §4, Eq. 4-5): one no-grad forward per
pair over `[CLS] x y_w [SEP] x y_l [SEP]`, and the unit-level maps of its top-N blocks.

A plain class (torch + transformers only). Ray Data wraps it as an actor-pool stage,
`ds.map_batches(TeacherAttention, fn_constructor_kwargs=..., ...)` (DESIGN.md §2); tests
and the embedded default call it in-process. The map math is in `teacher_maps`.

Capture: forward hooks on the top-N self-attention modules keep only those N maps,
head-meaned in the hook, instead of `output_attentions=True` keeping all N_T layers.
BERT's eager attention always returns its probabilities; DeBERTa's
`DisentangledSelfAttention` returns them only when asked, so a pre-hook sets its
`output_attentions` flag for the hooked layers only. Unknown encoders fall back to
`output_attentions=True`. DeBERTa's probabilities already include c2p/p2c (METHOD.md §4).
"""
from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from idrm_ray.core.teacher_maps import (
    MAP_FORMATS,
    TeacherInputs,
    block_maps_from_rows,
    head_mean,
    joint_unit_maps,
    key_groups,
    maps_to_rows,
    pad_teacher_rows,
    renorm_mode,
    teacher_block_maps,
)
from idrm_ray.core.types import BlockMaps, PairEncoding

__all__ = ["TeacherAttention", "block_maps_from_rows", "teacher_block_maps"]

_ROW_COLUMNS = ("teacher_ids", "teacher_type_ids", "teacher_unit", "unit_valid_w", "unit_valid_l")


def default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device, dtype: torch.dtype | None) -> torch.dtype:
    """bf16 on GPU (fp16 where bf16 is unsupported), fp32 on CPU; an explicit dtype wins."""
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def encoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The encoder's block list, or a clear error when the model is not a bidirectional encoder."""
    cfg = model.config
    name = f"{type(model).__name__} (model_type={getattr(cfg, 'model_type', '?')!r})"
    if getattr(cfg, "is_encoder_decoder", False) or getattr(cfg, "is_decoder", False):
        raise ValueError(f"teacher must be an encoder cross-encoder (BERT/MiniLM/DeBERTa); {name} is a decoder")
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"teacher must be an encoder cross-encoder with `base_model.encoder.layer` (BERT/MiniLM/DeBERTa); "
            f"got {name}, which looks decoder-only or unsupported"
        )
    return layers


def _self_attention(layer: nn.Module) -> nn.Module | None:
    """The module that computes the softmax probabilities inside one encoder block."""
    return next((m for m in layer.modules() if type(m).__name__.endswith("SelfAttention")), None)


class TeacherAttention:
    """Frozen cross-encoder -> per pair the unit-level maps of its top-N blocks (k=0 the top).

    `__call__` is the Ray Data entry point (numpy batch in, batch + `teacher_maps` out);
    `maps_for_encodings` is the in-process one. `forward_count` counts pairs processed,
    `forward_calls` model forwards.
    """

    def __init__(
        self,
        name_or_path: str,
        *,
        top_n: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        renormalize: bool | str = True,
        head_renorm: bool = False,
        micro_batch_size: int | None = None,
        map_format: str = "fp16",
    ):
        dev = default_device(device)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, attn_implementation="eager", dtype=default_dtype(dev, dtype)
        )
        self._setup(model, top_n=top_n, device=dev, dtype=dtype, renormalize=renormalize, head_renorm=head_renorm,
                    micro_batch_size=micro_batch_size, map_format=map_format)

    @classmethod
    def from_model(
        cls,
        model: PreTrainedModel,
        *,
        top_n: int = 1,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        renormalize: bool | str = True,
        head_renorm: bool = False,
        micro_batch_size: int | None = None,
        map_format: str = "fp16",
    ) -> "TeacherAttention":
        """Wrap an already-built model (it is frozen and set to eval in place)."""
        teacher = cls.__new__(cls)
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        teacher._setup(model, top_n=top_n, device=dev, dtype=dtype, renormalize=renormalize, head_renorm=head_renorm,
                       micro_batch_size=micro_batch_size, map_format=map_format)
        return teacher

    def _setup(self, model, *, top_n, device, dtype, renormalize, head_renorm, micro_batch_size, map_format) -> None:
        if map_format not in MAP_FORMATS:
            raise ValueError(f"map_format must be one of {MAP_FORMATS}, got {map_format!r}")
        self.map_format = map_format  # shipped rows: fp16, or u8 at half the bytes (`encode_map`)
        layers = encoder_layers(model)
        if not 1 <= top_n <= len(layers):
            raise ValueError(f"top_n={top_n} but the teacher {type(model).__name__} has {len(layers)} blocks")
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if model.config._attn_implementation != "eager" and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")  # sdpa/flash never return probabilities
        if dtype is not None:
            model.to(device=device, dtype=dtype)
        else:
            model.to(device)
        model.eval().requires_grad_(False)
        self.model, self.top_n, self.renormalize = model, top_n, renorm_mode(renormalize)
        self.head_renorm = bool(head_renorm)  # per-head renormalisation before the head mean (`head_mean`)
        if self.head_renorm and self.renormalize == "none":
            raise ValueError("head_renorm needs renormalize='separate' or 'joint'")
        self._groups: torch.Tensor | None = None  # (B, G, n_t) key groups of the running forward
        self.device, self.micro_batch_size = device, micro_batch_size
        # k=0 is the top block (METHOD.md Eq. 8, top-aligned).
        self._attn_modules = [_self_attention(layers[len(layers) - 1 - k]) for k in range(top_n)]
        self.capture = "hooks" if all(m is not None for m in self._attn_modules) else "output_attentions"
        self.pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
        self.forward_count = 0  # pairs processed
        self.forward_calls = 0  # model forwards (micro-batches)

    # ------------------------------------------------------------------ capture

    @contextmanager
    def _hooks(self, store: list):
        handles = []
        for k, module in enumerate(self._attn_modules):
            params = list(inspect.signature(module.forward).parameters)
            if "output_attentions" in params:  # DeBERTa: ask this layer (only) for its probabilities
                pos = params.index("output_attentions")

                def force(mod, args, kwargs, pos=pos):
                    if len(args) > pos:
                        args = args[:pos] + (True,) + args[pos + 1 :]
                    else:
                        kwargs["output_attentions"] = True
                    return args, kwargs

                handles.append(module.register_forward_pre_hook(force, with_kwargs=True))

            def keep(mod, args, output, k=k):
                probs = output[1] if isinstance(output, tuple) and len(output) > 1 else None
                # Head-mean in fp32 right away: keeps (B, n, n) per block, not (B, H, n, n).
                store[k] = head_mean(probs, self._groups) if torch.is_tensor(probs) and probs.dim() == 4 else None

            handles.append(module.register_forward_hook(keep))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @torch.inference_mode()
    def top_attention(self, inputs: TeacherInputs) -> list[torch.Tensor]:
        """One forward; the head-mean probabilities of the top-N blocks, each (B, n_t, n_t) fp32."""
        self._check_length(inputs.input_ids.shape[1])
        types = inputs.token_type_ids if getattr(self.model.config, "type_vocab_size", 2) > 1 else None
        kwargs = dict(
            input_ids=inputs.input_ids.to(self.device),
            attention_mask=inputs.attention_mask.to(self.device),
            token_type_ids=types.to(self.device) if types is not None else None,
        )
        self.forward_calls += 1
        self.forward_count += inputs.input_ids.shape[0]
        self._groups = None
        if self.head_renorm:  # the key sets each head's rows are renormalised over
            valid = torch.cat([inputs.valid_w, inputs.valid_l], dim=1).to(self.device)
            unit = inputs.teacher_unit.to(self.device)
            self._groups = key_groups(unit, valid, inputs.valid_w.shape[1], self.renormalize)
        if self.capture == "output_attentions":
            out = self.model.base_model(**kwargs, output_attentions=True)
            return [head_mean(out.attentions[-1 - k], self._groups) for k in range(self.top_n)]
        store: list = [None] * self.top_n
        with self._hooks(store):
            self.model.base_model(**kwargs)
        if any(a is None for a in store):
            raise RuntimeError(
                f"{type(self._attn_modules[0]).__name__} returned no attention probabilities; "
                "load the teacher with attn_implementation='eager'"
            )
        return store

    def _check_length(self, n_t: int) -> None:
        cfg = self.model.config
        limit = getattr(cfg, "max_position_embeddings", None)
        if limit and getattr(cfg, "position_biased_input", True) and n_t > limit:
            raise ValueError(
                f"teacher input of {n_t} tokens exceeds the teacher's {limit} positions; "
                "truncate each half to the teacher window first (METHOD.md §6, Truncation)"
            )

    # ------------------------------------------------------------------ entry points

    def unit_map_rows(
        self,
        teacher_ids: Sequence[np.ndarray],
        teacher_type_ids: Sequence[np.ndarray],
        teacher_unit: Sequence[np.ndarray],
        unit_valid_w: Sequence[np.ndarray],
        unit_valid_l: Sequence[np.ndarray],
    ) -> list[np.ndarray]:
        """Per pair a (N, U_w+U_l, U_w+U_l) joint map ([[ww, wl], [lw, ll]]) in `map_format`
        (fp16; u8 adds two columns, `teacher_maps.encode_map`).
        Pairs are sorted by length into micro-batches so padding stays small."""
        B = len(teacher_ids)
        if B == 0:
            return []
        order = np.argsort([len(x) for x in teacher_ids], kind="stable")
        step = self.micro_batch_size or max(B, 1)
        rows: list = [None] * B
        for start in range(0, B, step):
            idx = order[start : start + step]
            cols = [[col[i] for i in idx] for col in (teacher_ids, teacher_type_ids, teacher_unit, unit_valid_w, unit_valid_l)]
            inputs = pad_teacher_rows(*cols, pad_id=self.pad_id)
            attn = torch.stack(self.top_attention(inputs), dim=1)  # (b, N, n_t, n_t)
            valid = torch.cat([inputs.valid_w, inputs.valid_l], dim=1).to(attn.device)  # (b, U_w+U_l)
            joint = joint_unit_maps(
                attn, inputs.teacher_unit.to(attn.device), valid, inputs.valid_w.shape[1], renormalize=self.renormalize
            )  # (b, N, U_w+U_l, U_w+U_l)
            for i, row in zip(idx, maps_to_rows(joint, inputs.n_units_w, inputs.n_units_l, fmt=self.map_format)):
                rows[i] = row
        return rows

    def __call__(self, batch: dict) -> dict:
        """Ray Data `map_batches` entry: ragged numpy columns in; the batch plus
        `teacher_maps` (per row (N, U_w+U_l, U_w+U_l) fp16, or u8 (N, U, U + 2)) and `teacher_map_bytes` out."""
        missing = [c for c in _ROW_COLUMNS if c not in batch]
        if missing:
            raise KeyError(f"teacher batch lacks columns {missing}; it needs {list(_ROW_COLUMNS)}")
        rows = self.unit_map_rows(*(list(batch[c]) for c in _ROW_COLUMNS))
        maps = np.empty(len(rows), dtype=object)  # object array: rows differ in shape
        maps[:] = rows
        out = dict(batch)
        out["teacher_maps"] = maps
        out["teacher_map_bytes"] = np.array([r.nbytes for r in rows], dtype=np.int64)
        return out

    def maps_for_encodings(self, encodings: Sequence[PairEncoding], *, dtype: torch.dtype = torch.float32) -> BlockMaps:
        """In-process path with the same numbers as the Ray path (fp16 rows, then collate)."""
        cols = [[getattr(e, c) for e in encodings] for c in _ROW_COLUMNS]
        rows = self.unit_map_rows(*cols)
        return block_maps_from_rows(
            rows, [e.n_units_w for e in encodings], cols[3], cols[4], dtype=dtype
        )
