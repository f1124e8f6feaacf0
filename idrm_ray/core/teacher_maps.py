"""Teacher-side map math: from the top-N attention probabilities of the NLI cross-encoder
to the comparable unit-level target Ã of METHOD.md §6, and the padding helpers that move
those maps through Ray Data as one ragged fp16 array per pair.

Pure torch/numpy (no model, no transformers, no ray), so the train worker's collate can
import it cheaply and tests can check every step by hand.

Layout used throughout: the *joint* map of one pair is (N, U_w+U_l, U_w+U_l) with the four
blocks of METHOD.md Eq. 5 as quadrants  [[ww, wl], [lw, ll]].  In a padded batch the
rejected half starts at column U_w = the batch maximum, so `teacher_unit` in batched
tensors offsets rejected units by that padded U_w (`pad_teacher_rows` re-offsets them).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from idrm_ray.core.types import BlockMaps


class TeacherInputs(NamedTuple):
    """A padded teacher batch (right padding)."""

    input_ids: torch.Tensor  # (B, n_t) int64
    token_type_ids: torch.Tensor  # (B, n_t) int64
    attention_mask: torch.Tensor  # (B, n_t) int64, 1 on real tokens
    teacher_unit: torch.Tensor  # (B, n_t) int64 in [-1, U_w+U_l); rejected units offset by the padded U_w
    valid_w: torch.Tensor  # (B, U_w) bool, padded units False
    valid_l: torch.Tensor  # (B, U_l) bool
    n_units_w: list[int]  # each pair's own U_w
    n_units_l: list[int]


def pad_teacher_rows(
    teacher_ids: Sequence[np.ndarray],
    teacher_type_ids: Sequence[np.ndarray],
    teacher_unit: Sequence[np.ndarray],
    unit_valid_w: Sequence[np.ndarray],
    unit_valid_l: Sequence[np.ndarray],
    *,
    pad_id: int,
) -> TeacherInputs:
    """Pad ragged per-pair arrays (as `PairEncoding` holds them) into one batch. Each pair
    numbers its rejected units from its own U_w; here they move to the batch's padded U_w."""
    n_w = [len(v) for v in unit_valid_w]
    n_l = [len(v) for v in unit_valid_l]
    B, n_t = len(teacher_ids), max(len(x) for x in teacher_ids)
    U_w, U_l = max(n_w), max(n_l)
    ids = np.full((B, n_t), pad_id, dtype=np.int64)
    types = np.zeros((B, n_t), dtype=np.int64)
    mask = np.zeros((B, n_t), dtype=np.int64)
    unit = np.full((B, n_t), -1, dtype=np.int64)
    valid_w = np.zeros((B, U_w), dtype=bool)
    valid_l = np.zeros((B, U_l), dtype=bool)
    for b in range(B):  # loop over pairs only; the per-token work is vectorised
        n = len(teacher_ids[b])
        u = np.asarray(teacher_unit[b], dtype=np.int64)
        if len(teacher_type_ids[b]) != n or len(u) != n:
            raise ValueError(f"pair {b}: teacher_ids/teacher_type_ids/teacher_unit lengths differ")
        if u.size and u.max() >= n_w[b] + n_l[b]:
            raise ValueError(f"pair {b}: teacher_unit {u.max()} >= U_w+U_l = {n_w[b] + n_l[b]}")
        ids[b, :n], types[b, :n], mask[b, :n] = teacher_ids[b], teacher_type_ids[b], 1
        unit[b, :n] = np.where(u >= n_w[b], u + (U_w - n_w[b]), u)
        valid_w[b, : n_w[b]], valid_l[b, : n_l[b]] = unit_valid_w[b], unit_valid_l[b]
    t = torch.from_numpy
    return TeacherInputs(t(ids), t(types), t(mask), t(unit), t(valid_w), t(valid_l), n_w, n_l)


RENORMALIZE = ("separate", "joint", "none")


def renorm_mode(renormalize: bool | str) -> str:
    """The teacher's row renormalisation (METHOD.md §6): "separate" over the kept keys of each
    half (True; the separate softmaxes of Eq. 6-7), "joint" over the kept keys of both halves
    (the joint variant of §5, whose student rows sum to 1 over both halves), "none" (False)."""
    mode = ("separate" if renormalize else "none") if isinstance(renormalize, bool) else renormalize
    if mode not in RENORMALIZE:
        raise ValueError(f"renormalize must be a bool or one of {RENORMALIZE}, got {renormalize!r}")
    return mode


def key_groups(teacher_unit: torch.Tensor, valid: torch.Tensor, n_units_w: int, renormalize: bool | str) -> torch.Tensor:
    """(B, G, n_t) bool: the key sets a row is renormalised over. Kept keys are tokens of valid
    units (specials, padding, dropped units are in no group); "separate": G=2 (chosen, rejected
    half, split at the padded U_w = n_units_w), "joint": G=1. teacher_unit (B, n_t), valid (B, U)."""
    unit = teacher_unit.long()
    keep = (unit >= 0) & valid.bool().gather(1, unit.clamp(min=0))  # (B, n_t)
    mode = renorm_mode(renormalize)
    if mode == "none":
        raise ValueError("per-head renormalisation needs renormalize='separate' or 'joint'")
    if mode == "joint":
        return keep[:, None]
    return torch.stack([keep & (unit < n_units_w), keep & (unit >= n_units_w)], dim=1)


def head_mean(probs: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, n, n) per-head probabilities -> (B, n, n) fp32 head mean (METHOD.md §5 Heads).

    With `groups` (B, G, n) (`key_groups`; teacher_head_renorm), each head's row is first
    renormalised over the keys of each group, keys in no group dropped:
        mean_h A_h[i, j] / sum_{j' in g(j)} A_h[i, j'].
    Without, the plain mean (the default order: renormalise after the mean, §6)."""
    probs = probs.float()
    if groups is None:
        return probs.mean(1)
    tiny = torch.finfo(torch.float32).tiny  # a head with no mass on a group contributes 0, not NaN
    out = probs.new_zeros(probs.shape[0], probs.shape[2], probs.shape[3])
    for g in groups.to(probs.dtype).unbind(1):  # each (B, n)
        mass = probs @ g[:, None, :, None]  # (B, H, n, 1): each head's row mass on the group
        out += (probs / mass.clamp_min(tiny)).mean(1) * g[:, None, :]
    return out


def joint_unit_maps(
    attn: torch.Tensor,
    teacher_unit: torch.Tensor,
    valid: torch.Tensor,
    n_units_w: int,
    *,
    renormalize: bool | str = True,
) -> torch.Tensor:
    """Ã of METHOD.md §6 for all four blocks at once, in the joint layout.

    attn (B, N, n_t, n_t) head-mean probabilities; teacher_unit (B, n_t) global padded
    unit ids; valid (B, U) with U = U_w+U_l. Returns (B, N, U, U) fp32.
    Tokens of specials, padding and invalid units go to a dump slot U and are dropped.
    Renormalising each token row over the kept keys of one half (or of both, `renorm_mode`),
    then summing keys into units, equals summing first and renormalising over those unit columns.
    """
    B, N, n, _ = attn.shape
    U = valid.shape[1]
    attn = attn.float()
    unit = teacher_unit.long()
    keep = (unit >= 0) & valid.gather(1, unit.clamp(min=0))  # (B, n)
    slot = torch.where(keep, unit, torch.full_like(unit, U))  # (B, n) in [0, U]
    key_idx = slot[:, None, None, :].expand(B, N, n, n)
    keys = attn.new_zeros(B, N, n, U + 1).scatter_add_(3, key_idx, attn)[..., :U]  # (B, N, n, U) keys summed
    mode = renorm_mode(renormalize)
    if mode != "none":
        tiny = torch.finfo(torch.float32).tiny  # a zero-mass row has zero numerators: 0 / tiny = 0, no NaN
        parts = (keys[..., :n_units_w], keys[..., n_units_w:]) if mode == "separate" else (keys,)
        keys = torch.cat([h / h.sum(-1, keepdim=True).clamp_min(tiny) for h in parts], dim=-1)
    row_idx = slot[:, None, :, None].expand(B, N, n, U)
    rows = attn.new_zeros(B, N, U + 1, U).scatter_add_(2, row_idx, keys)[:, :, :U]  # (B, N, U, U) rows summed
    count = attn.new_zeros(B, U + 1).scatter_add_(1, slot, torch.ones_like(attn[:, 0, 0]))[:, :U]  # (B, U)
    joint = rows / count.clamp(min=1.0)[:, None, :, None]  # query rows averaged within each unit
    both_valid = valid[:, None, :, None] & valid[:, None, None, :]  # (B, 1, U, U)
    return joint * both_valid  # invalid units have no tokens already; this states it


def split_joint(joint: torch.Tensor, valid_w: torch.Tensor, valid_l: torch.Tensor) -> BlockMaps:
    """(B, N, U_w+U_l, U_w+U_l) joint layout -> the four blocks of METHOD.md Eq. 5."""
    U_w = valid_w.shape[1]
    return BlockMaps(
        ww=joint[:, :, :U_w, :U_w].contiguous(),  # (B, N, U_w, U_w)
        ll=joint[:, :, U_w:, U_w:].contiguous(),  # (B, N, U_l, U_l)
        wl=joint[:, :, :U_w, U_w:].contiguous(),  # (B, N, U_w, U_l)
        lw=joint[:, :, U_w:, :U_w].contiguous(),  # (B, N, U_l, U_w)
        valid_w=valid_w.bool(),
        valid_l=valid_l.bool(),
    )


def teacher_block_maps(
    attn_top: Sequence[torch.Tensor],
    teacher_unit: torch.Tensor,
    valid_w: torch.Tensor,
    valid_l: torch.Tensor,
    *,
    renormalize: bool | str = True,
    head_renorm: bool = False,
) -> BlockMaps:
    """The comparable teacher target Ã (METHOD.md §6) of the top-N blocks, k=0 the top.

    attn_top[k]: (B, H, n_t, n_t) probabilities (or (B, n_t, n_t) already head-meaned).
    teacher_unit (B, n_t): -1 for specials/padding, chosen units in [0, U_w), rejected in
    [U_w, U_w+U_l) with U_w = valid_w.shape[1] (the padded count). valid_w (B, U_w),
    valid_l (B, U_l) bool. `renormalize` (`renorm_mode`): True/"separate" per half, "joint"
    over both halves, False/"none" the raw, specials-dropped mass. `head_renorm` renormalises
    each head before the mean (`head_mean`; needs per-head attn). Returns fp32 BlockMaps.
    """
    if not attn_top:
        raise ValueError("attn_top is empty: pass at least the top block's attention")
    valid = torch.cat([valid_w, valid_l], dim=1).bool().to(attn_top[0].device)  # (B, U_w+U_l)
    groups = None
    if head_renorm:
        if any(a.dim() != 4 for a in attn_top):
            raise ValueError("head_renorm needs per-head attention (B, H, n_t, n_t)")
        groups = key_groups(teacher_unit.to(valid.device), valid, valid_w.shape[1], renormalize)
    maps = [head_mean(a, groups) if a.dim() == 4 else a.float() for a in attn_top]  # each (B, n_t, n_t)
    attn = torch.stack(maps, dim=1)  # (B, N, n_t, n_t)
    if teacher_unit.shape != attn.shape[:1] + attn.shape[-1:]:
        raise ValueError(f"teacher_unit {tuple(teacher_unit.shape)} does not match attention {tuple(attn.shape)}")
    if teacher_unit.numel() and int(teacher_unit.max()) >= valid.shape[1]:
        raise ValueError(f"teacher_unit max {int(teacher_unit.max())} >= U_w+U_l = {valid.shape[1]}")
    joint = joint_unit_maps(attn, teacher_unit.to(attn.device), valid, valid_w.shape[1], renormalize=renormalize)
    return split_joint(joint, valid_w.bool().to(attn.device), valid_l.bool().to(attn.device))


MAP_FORMATS = ("fp16", "u8")


def encode_map(m: np.ndarray, fmt: str = "fp16") -> np.ndarray:
    """One pair's (N, U, U) map in its shipped format. "fp16": (N, U, U) float16. "u8": half the
    bytes, (N, U, U + 2) uint8: per row 8-bit square-root companding against the row max,
    q = round(255 sqrt(p / max)), with the max as fp16 in the row's last two bytes. Small
    probabilities keep finer steps than linear 8 bits (error about sqrt(p * max) / 255); zeros
    stay exactly zero. `decode_map` inverts it."""
    if fmt not in MAP_FORMATS:
        raise ValueError(f"map format must be one of {MAP_FORMATS}, got {fmt!r}")
    if fmt == "fp16":
        return np.ascontiguousarray(m, dtype=np.float16)
    m = np.asarray(m, dtype=np.float32)
    scale = m.max(-1, keepdims=True).clip(min=0).astype(np.float16)  # (N, U, 1)
    s = scale.astype(np.float32)
    x = np.divide(m, s, out=np.zeros_like(m), where=s > 0).clip(0.0, 1.0)  # fp16 rounding may exceed 1
    q = np.rint(np.sqrt(x) * 255.0).astype(np.uint8)  # (N, U, U)
    return np.concatenate([q, scale.view(np.uint8)], axis=-1)  # (N, U, U + 2)


def decode_map(row: np.ndarray) -> np.ndarray:
    """A shipped map (`encode_map`, either format) -> (N, U, U) float32."""
    row = np.asarray(row)
    if row.dtype != np.uint8:
        return row.astype(np.float32)
    scale = np.ascontiguousarray(row[..., -2:]).view(np.float16).astype(np.float32)  # (N, U, 1)
    return np.square(row[..., :-2].astype(np.float32) / 255.0) * scale


def maps_to_rows(
    joint: torch.Tensor, n_units_w: Sequence[int], n_units_l: Sequence[int], *, fmt: str = "fp16"
) -> list[np.ndarray]:
    """Padded joint maps (B, N, U_w+U_l, U_w+U_l) -> per pair a numpy array (N, u_w+u_l,
    u_w+u_l) cut to that pair's own unit counts, same quadrant layout, in format `fmt`
    (`encode_map`: fp16, or u8 with two more columns)."""
    U_w = max(n_units_w)  # the padded count: where the rejected half starts
    dense = joint.to(torch.float16 if fmt == "fp16" else torch.float32).cpu().numpy()
    rows = []
    for b, (uw, ul) in enumerate(zip(n_units_w, n_units_l)):
        sel = np.r_[0:uw, U_w : U_w + ul]
        rows.append(encode_map(dense[b][:, sel][:, :, sel], fmt))
    return rows


def block_maps_from_rows(
    maps: Sequence[np.ndarray],
    n_units_w: Sequence[int],
    valid_w: Sequence[np.ndarray],
    valid_l: Sequence[np.ndarray],
    *,
    dtype: torch.dtype = torch.float32,
) -> BlockMaps:
    """Per-pair joint maps (as `TeacherAttention` emits them, fp16 or u8) -> one padded
    BlockMaps. This is the train worker's collate step; padded rows and columns are zero."""
    B = len(maps)
    N = maps[0].shape[0] if B else 0
    U_w, U_l = max(len(v) for v in valid_w), max(len(v) for v in valid_l)
    joint = np.zeros((B, N, U_w + U_l, U_w + U_l), dtype=np.float32)
    for b, m in enumerate(maps):
        uw, ul = int(n_units_w[b]), len(valid_l[b])
        extra = 2 if m.dtype == np.uint8 else 0  # the u8 format's row scale
        if uw != len(valid_w[b]) or m.shape != (N, uw + ul, uw + ul + extra):
            raise ValueError(f"pair {b}: map {m.shape} does not match N={N}, U_w={len(valid_w[b])}, U_l={ul}")
        pos = np.r_[0:uw, U_w : U_w + ul]  # where this pair's units sit in the padded layout
        joint[b][np.ix_(range(N), pos, pos)] = decode_map(m)
    vw = np.zeros((B, U_w), dtype=bool)
    vl = np.zeros((B, U_l), dtype=bool)
    for b in range(B):
        vw[b, : len(valid_w[b])], vl[b, : len(valid_l[b])] = valid_w[b], valid_l[b]
    return split_joint(torch.from_numpy(joint).to(dtype), torch.from_numpy(vw), torch.from_numpy(vl))
