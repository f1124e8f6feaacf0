"""Losses of ID-RM: Bradley-Terry (METHOD.md Eq. 2), interaction distillation (Eq. 8) and
their sum (Eq. 3). Pure torch: tensors in, `(loss, metrics)` out, metrics detached.

Every loss is a SUM over the local pairs divided by an explicit `num_pairs` (default: the
local pair count). Passing the global pair count makes the per-shard losses add up to the
global loss, whatever the split (STYLE.md 1-2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from idrm_ray.core.baselines import smoothed_bt_terms
from idrm_ray.core.types import BLOCKS, INTER_BLOCKS, INTRA_BLOCKS, BlockMaps

DISTANCES = ("frobenius", "mse", "kl")
_KL_EPS = 1e-8  # clamp for log(P) and log(T) in the KL distance (MiniLM-style)


def bt_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    num_pairs: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """METHOD.md Eq. 2, -log sigma(r_w - r_l - m) per pair (m: AM-RM margin, 0 by default;
    `label_smoothing` α > 0: LF-RM's smoothed form), summed over the (B,) pairs and divided
    by `num_pairs` (default B)."""
    r_chosen, r_rejected = r_chosen.float(), r_rejected.float()
    gap = r_chosen - r_rejected  # (B,)
    shifted = gap if margin is None else gap - margin.to(gap)
    per_pair = smoothed_bt_terms(shifted, alpha=label_smoothing)  # (B,)
    loss = per_pair.sum() / (per_pair.shape[0] if num_pairs is None else num_pairs)
    metrics = {  # local means over the B pairs, whatever num_pairs is
        "l_bt": per_pair.mean().detach(),
        "accuracy": (gap > 0).float().mean().detach(),
        "reward_gap": gap.mean().detach(),
        "reward_chosen": r_chosen.mean().detach(),
        "reward_rejected": r_rejected.mean().detach(),
    }
    return loss, metrics


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with gradient 0 (not inf * 0 = NaN) where x == 0, e.g. when P == T."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).sqrt(), 0.0)


def block_distance(
    P: torch.Tensor,
    T: torch.Tensor,
    row_mask: torch.Tensor,
    col_mask: torch.Tensor,
    *,
    distance: str = "frobenius",
) -> torch.Tensor:
    """Per-pair distance (B,) between unit maps P, T (B, U_q, U_k) over valid rows/cols.

    frobenius (METHOD.md §6 default): sqrt(mean_{valid rows i} ||P_i - T_i||^2), in [0, sqrt 2].
    mse (TinyBERT): mean over valid (row, col) entries of (P - T)^2.
    kl (MiniLM): mean over valid rows of KL(T_i || P_i), logs clamped at 1e-8.
    A pair with no valid row gives 0.
    """
    rows, cols = row_mask.to(P.dtype), col_mask.to(P.dtype)  # (B, U_q), (B, U_k)
    n_rows = rows.sum(-1)  # (B,)
    if distance == "frobenius":
        per_row = ((P - T).square() * cols[:, None, :]).sum(-1)  # (B, U_q)
        return _safe_sqrt((per_row * rows).sum(-1) / n_rows.clamp(min=1.0))
    if distance == "mse":
        per_entry = (P - T).square() * rows[:, :, None] * cols[:, None, :]  # (B, U_q, U_k)
        return per_entry.sum((-1, -2)) / (n_rows * cols.sum(-1)).clamp(min=1.0)
    if distance == "kl":
        log_ratio = T.clamp(min=_KL_EPS).log() - P.clamp(min=_KL_EPS).log()
        per_row = (T * log_ratio * cols[:, None, :]).sum(-1)  # (B, U_q); T = 0 terms vanish
        return (per_row * rows).sum(-1) / n_rows.clamp(min=1.0)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")


def _renormalise(P: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Keep the columns in `cols` (B, U_k) and rescale rows to sum 1 (rows with no mass stay 0):
    METHOD.md §6 drop-and-renormalise, applied to the response-only variant."""
    kept = P * cols[:, None, :].to(P.dtype)
    total = kept.sum(-1, keepdim=True)
    return kept / torch.where(total > 0, total, 1.0)


def _block_masks(
    name: str, valid: dict[str, torch.Tensor], response: dict[str, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row_mask, col_mask) of block `name` ("ww", "wl", ...): query half name[0], key half
    name[1]; inter blocks are restricted to response units when `response` is given."""
    rows, cols = valid[name[0]], valid[name[1]]
    if response is not None and name in INTER_BLOCKS:
        rows, cols = rows & response[name[0]], cols & response[name[1]]
    return rows, cols


def id_loss(
    student: BlockMaps,
    teacher: BlockMaps,
    *,
    distance: str = "frobenius",
    intra: bool = True,
    inter: bool = True,
    block_reduction: str = "sum",
    response_w: torch.Tensor | None = None,
    response_l: torch.Tensor | None = None,
    num_pairs: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """METHOD.md Eq. 8: (1/N) sum_k [D(ww)+D(ll)] + [D(wl)+D(lw)], student block k vs teacher
    block k (both top-aligned). Summed over pairs and divided by `num_pairs` (default B).

    intra / inter switch the two sub-objectives off (ablations). block_reduction="mean"
    averages the enabled block terms instead of summing them (§6 pseudocode; a factor of 4
    with both on). response_w / response_l (B, U) restrict the inter blocks' rows and columns
    to response units, renormalising rows over the kept columns (§6 variant flag).
    Metrics are local means over the B pairs; d_* are measured for switched-off blocks too.
    """
    names = (INTRA_BLOCKS if intra else ()) + (INTER_BLOCKS if inter else ())
    if not names:
        raise ValueError("id_loss needs intra or inter (or both)")
    if block_reduction not in ("sum", "mean"):
        raise ValueError(f"block_reduction must be 'sum' or 'mean', got {block_reduction!r}")
    if student.num_blocks != teacher.num_blocks:
        raise ValueError(f"student has {student.num_blocks} blocks, teacher {teacher.num_blocks}")
    if (response_w is None) != (response_l is None):
        raise ValueError("pass both response_w and response_l, or neither")
    valid = {"w": student.valid_w & teacher.valid_w, "l": student.valid_l & teacher.valid_l}
    response = None if response_w is None else {"w": response_w.bool(), "l": response_l.bool()}
    per_block = {}  # name -> (B,) distances averaged over the N blocks
    for name in BLOCKS:  # switched-off blocks are still measured, without grad, as diagnostics
        with torch.set_grad_enabled(torch.is_grad_enabled() and name in names):
            per_block[name] = _block_term(student, teacher, name, valid, response, distance)
    scale = 1.0 / len(names) if block_reduction == "mean" else 1.0
    zero = torch.zeros_like(per_block["ww"])
    l_intra = scale * (per_block["ww"] + per_block["ll"]) if intra else zero  # (B,)
    l_inter = scale * (per_block["wl"] + per_block["lw"]) if inter else zero  # (B,)
    per_pair = l_intra + l_inter  # (B,)
    loss = per_pair.sum() / (per_pair.shape[0] if num_pairs is None else num_pairs)
    metrics = {"l_id": per_pair.mean(), "l_intra": l_intra.mean(), "l_inter": l_inter.mean()}
    metrics.update({f"d_{n}": per_block[n].mean() for n in BLOCKS})
    return loss, {k: v.detach() for k, v in metrics.items()}


def _block_term(
    student: BlockMaps,
    teacher: BlockMaps,
    name: str,
    valid: dict[str, torch.Tensor],
    response: dict[str, torch.Tensor] | None,
    distance: str,
) -> torch.Tensor:
    """(1/N) sum_k D(student_k, teacher_k) for one block, per pair (B,). The teacher is a frozen
    constant (METHOD.md §3): detached and cast to fp32 (it may arrive in fp16)."""
    rows, cols = _block_masks(name, valid, response)
    P_all, T_all = student.block(name).float(), teacher.block(name).detach().float()  # (B, N, U_q, U_k)
    terms = []
    for k in range(student.num_blocks):
        P, T = P_all[:, k], T_all[:, k]
        if response is not None and name in INTER_BLOCKS:
            P, T = _renormalise(P, cols), _renormalise(T, cols)
        terms.append(block_distance(P, T, rows, cols, distance=distance))
    return torch.stack(terms).mean(0)


def total_loss(l_bt: torch.Tensor, l_id: torch.Tensor, *, lam: float) -> torch.Tensor:
    """METHOD.md Eq. 3: L = L_BT + lambda * L_ID (both already averaged over pairs)."""
    return l_bt + lam * l_id
