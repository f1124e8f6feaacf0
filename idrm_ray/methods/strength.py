"""The preference strength of each training pair from a bt ensemble (Secrets-II), shared by
AM's proxy margins and LF's flips, and the records it leaves in the method's folder:
<run>/<method>/strength.jsonl (μ̂, σ̂, flipped / margin per pair)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from idrm_ray.methods.base import MethodRun

if TYPE_CHECKING:
    import torch


def strength(r: MethodRun) -> tuple["torch.Tensor", "torch.Tensor", list[dict]]:
    """μ̂, σ̂ per training pair from the bt ensemble (trained here unless r.members has one)."""
    rows = r.members.get("bt") or r.tools.train_members(r.cfg, r.plan, kind="bt", folder=f"{r.name}/members",
                                                        train=r.train, diverse_lr=False, **r.common)
    import torch  # here, not at import: reading a config loads no torch (core/settings.py)

    from idrm_ray.core.baselines import preference_strength

    gaps = torch.from_numpy(np.stack(r.tools.score_gaps(r.cfg, [x["checkpoint"] for x in rows], r.train)))  # (M, P)
    mu, sigma = preference_strength(gaps)
    return mu, sigma, rows


def member_summary(rows: list[dict]) -> dict:
    accs = [r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None]
    return {"members": len(rows), "member_eval_accuracy": float(np.mean(accs)) if accs else None,
            "member_checkpoints": [r["checkpoint"] for r in rows]}


def write_strength(out: Path, train, mu, sigma, *, flipped, margins) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "strength.jsonl", "w") as f:
        for i in range(len(train)):
            row = {"pair": i, "mu": float(mu[i]), "sigma": float(sigma[i])}
            if flipped is not None:
                row["flipped"] = bool(flipped[i])
            if margins is not None:
                row["margin"] = float(margins[i])
            f.write(json.dumps(row) + "\n")
