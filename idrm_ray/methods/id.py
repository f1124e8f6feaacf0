"""Interaction distillation (METHOD.md Eq. 3): L_BT + λ·L_ID against the teacher's maps.
`id` alone is id+bt; for id+X the registry adds these asks to X's (composition)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.configtree.base import dump_config, param, require
from idrm_ray.core.settings import IDSettings


@dataclass(frozen=True)
class IDConfig:
    """Interaction distillation (METHOD.md §5-§6); field names match `core.objective.IDSettings`."""

    lam: float = param(1.0, "λ, weight of L_ID in L_BT + λ·L_ID (Eq. 3); the paper finds 0.4-1 stable.")
    top_n: int = param(1, "N, top blocks distilled, top-aligned student/teacher pairing (Eq. 8).")
    distance: Literal["frobenius", "mse", "kl"] = param(
        "frobenius", "D of Eq. 8: length-normalized Frobenius (default), TinyBERT mse, or MiniLM row KL.")
    intra: bool = param(True, "Distil the intra-sequence maps ww, ll (Eq. 6).")
    inter: bool = param(True, "Distil the inter-sequence maps wl, lw (Eq. 7).")
    inter_keys: Literal["post_rope", "pre_rope"] = param(
        "post_rope", "Q/K of the inter maps after RoPE (each half from position 0) or before it.")
    mode: Literal["separate", "joint"] = param(
        "separate", "Separate softmax per block (VIRT, default) or one joint softmax over [y_w; y_l] (§5).")
    response_only_inter: bool = param(False, "Restrict L_inter to response units (drop the prompt copies).")
    block_reduction: Literal["sum", "mean"] = param(
        "sum", "Combine the four block terms as Eq. 8 (sum) or average them (factor 4 folds into λ).")
    chunk_rows: int | None = param(None, "Query rows per chunk of the simulated maps (null: from a memory budget).")
    teacher_head_renorm: bool = param(
        False, "Renormalise each teacher head over the kept keys before the head mean (default: head mean first, "
               "then renormalise, METHOD.md §6); part of the map-cache key.")

    def __post_init__(self):
        require(self, self.lam >= 0, "lam", "λ must be >= 0 (use method.name=bt for no distillation)")
        require(self, self.top_n >= 1, "top_n", "N must be >= 1 (the paper's default is 1)")
        require(self, self.intra or self.inter, "inter",
                "intra and inter are both false, so L_ID is empty: enable one, or use method.name=bt")
        require(self, self.chunk_rows is None or self.chunk_rows >= 1, "chunk_rows", "use null (auto) or >= 1")
        require(self, not (self.mode == "joint" and self.inter_keys == "pre_rope"), "inter_keys",
                "pre_rope keys apply to the separate mode only; set inter_keys=post_rope or mode=separate")


def worker_asks(m) -> dict:
    """The IDSettings of `method.id` (its fields match IDSettings by name)."""
    return {"id_settings": IDSettings(**dump_config(m.id))}
