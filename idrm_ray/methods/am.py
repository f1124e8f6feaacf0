"""AM-RM (METHOD.md §10): loss -log σ(Δr - m) with a per-pair margin m, from the data's
rating field or from a bt ensemble's strength max(μ̂, 0); then one run on the margined pairs."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from idrm_ray.configtree.base import param, require
from idrm_ray.core.types import PreferenceExample
from idrm_ray.methods.base import MethodRun
from idrm_ray.methods.strength import member_summary, strength, write_strength


@dataclass(frozen=True)
class AMConfig:
    """AM-RM (METHOD.md §10): loss -log σ(Δr - m) with a per-pair margin m."""

    source: Literal["auto", "rating", "ensemble"] = param(
        "auto", "Margin from the data's rating field (`margin`), from the ensemble preference strength "
                "max(μ̂, 0), or auto: the rating when every training pair has one, else the ensemble.")
    scale: float = param(1.0, "Multiply every margin by this (Llama-2's `Margin Small` is 1/3 of `Large`).")

    def __post_init__(self):
        require(self, self.scale >= 0, "scale", "must be >= 0 (0 turns AM into BT)")


def worker_asks(m) -> dict:
    return {"use_margin": True}


def run(r: MethodRun) -> list[dict]:
    train, extra = margined(r)
    return [{**r.train_once(train), **extra}]


def margined(r: MethodRun) -> tuple[list[PreferenceExample], dict]:
    """The training pairs with their margins, and the row's margin fields."""
    am, train = r.cfg.method.am, r.train
    rated = all(e.margin is not None for e in train)
    source = am.source if am.source != "auto" else ("rating" if rated else "ensemble")
    if source == "rating":
        if not rated:
            missing = sum(e.margin is None for e in train)
            raise ValueError(f"method.am.source=rating but {missing} of {len(train)} training pairs have no "
                             "`margin` field: use method.am.source=ensemble (or auto)")
        import torch

        margins = torch.tensor([float(e.margin) for e in train]) * am.scale
        extra = {"margin_source": "rating"}
    else:
        mu, sigma, rows = strength(r)
        from idrm_ray.core.baselines import am_margins

        margins = am_margins(mu, scale=am.scale)
        write_strength(r.run_dir / r.name, train, mu, sigma, flipped=None, margins=margins)
        extra = {"margin_source": "ensemble", **member_summary(rows)}
    extra.update(margin_mean=float(margins.mean()), margin_zero_fraction=float((margins == 0).float().mean()))
    return [replace(e, margin=float(m)) for e, m in zip(train, margins)], extra
