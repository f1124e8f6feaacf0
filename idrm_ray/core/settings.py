"""The objective's knobs as plain values (no torch): what a method asks of the worker's loss
(`core/objective.py` consumes them). Config and method modules import these, so reading a
config or a data file never loads torch or transformers (`idrm-ray --help`, data errors).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IDSettings:
    """Interaction-distillation knobs as plain values (METHOD.md §5-§6 flags)."""

    lam: float = 1.0  # λ of Eq. 3
    top_n: int = 1  # N of Eq. 8, top-aligned layer pairing
    distance: str = "frobenius"  # frobenius (default) | mse | kl
    intra: bool = True  # Eq. 6 terms (ablation: False)
    inter: bool = True  # Eq. 7 terms (ablation: False)
    inter_keys: str = "post_rope"  # post_rope | pre_rope keys for the inter maps
    mode: str = "separate"  # separate softmaxes (default) | joint
    response_only_inter: bool = False  # restrict L_inter to response units
    block_reduction: str = "sum"  # Eq. 8 sums the block terms; "mean" averages them
    chunk_rows: int | None = None  # query rows per chunk of the simulated maps (None: auto)
    teacher_head_renorm: bool = False  # teacher side only (TeacherAttention): per-head renorm before the head mean


@dataclass(frozen=True)
class BTSettings:
    """Per-pair preference-loss knobs of the baselines (METHOD.md §10)."""

    label_smoothing: float = 0.0  # LF-RM's α (0: Eq. 2)
    ib_beta: float = 0.0  # InfoRM's β on the KL term (needs an IBRewardHead in the forward)
    kl_form: str = "dim_mean"  # InfoRM's KL as its code computes it | per_dim
