"""LF-RM (METHOD.md §10, Secrets-II recipe): a bt ensemble's strength μ̂ per pair, swap
chosen/rejected where μ̂ is below the threshold, then one run with label smoothing α."""
from __future__ import annotations

from dataclasses import dataclass, replace

from idrm_ray import console
from idrm_ray.configtree.base import param, require
from idrm_ray.core.types import PreferenceExample
from idrm_ray.methods.base import MethodRun
from idrm_ray.methods.strength import member_summary, strength, write_strength


@dataclass(frozen=True)
class LFConfig:
    """LF-RM (METHOD.md §10, Secrets-II recipe): swap chosen/rejected where the ensemble's
    mean reward gap μ̂ is below `threshold`, then train with label smoothing α."""

    smoothing: float = param(0.1, "Label smoothing α of the final RM (0: plain BT on the flipped data).")
    threshold: float = param(0.0, "Flip pairs whose mean ensemble gap μ̂ is below this.")
    max_flip_fraction: float = param(1.0, "Flip at most this fraction of pairs (the lowest μ̂; Secrets-II: 0.2).")

    def __post_init__(self):
        require(self, 0 <= self.smoothing < 1, "smoothing", "α must be in [0, 1)")
        require(self, 0 <= self.max_flip_fraction <= 1, "max_flip_fraction", "must be in [0, 1]")


def worker_asks(m) -> dict:
    return {"bt": {"label_smoothing": m.lf.smoothing}}


def run(r: MethodRun) -> list[dict]:
    train, extra = flipped(r)
    return [{**r.train_once(train), **extra}]


def flipped(r: MethodRun) -> tuple[list[PreferenceExample], dict]:
    """The training pairs with the weak ones flipped, and the row's flip fields."""
    lf, train, name = r.cfg.method.lf, r.train, r.name
    mu, sigma, rows = strength(r)
    from idrm_ray.core.baselines import flip_mask

    flips = flip_mask(mu, threshold=lf.threshold, max_fraction=lf.max_flip_fraction)
    write_strength(r.run_dir / name, train, mu, sigma, flipped=flips, margins=None)
    out = [replace(e, chosen=e.rejected, rejected=e.chosen) if f else e for e, f in zip(train, flips.tolist())]
    console.info(f"[idrm] {name}: flipped {int(flips.sum())} of {len(train)} pairs (μ̂ < {lf.threshold}; "
                 f"{float((mu < 0).double().mean()):.1%} have μ̂ < 0)")
    return out, {"flipped_pairs": int(flips.sum()), "flipped_fraction": float(flips.double().mean()),
                 "negative_strength_fraction": float((mu < 0).double().mean()),
                 "label_smoothing": lf.smoothing, **member_summary(rows)}
