"""WARM (METHOD.md §10): M members from the same init (seeds, data orders, learning rates;
bt members, id members for id+warm) averaged into one reward model; variant `checkpoints`:
the last K checkpoints of one run. The average is an ordinary reward-model checkpoint."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from idrm_ray import console
from idrm_ray.configtree.base import param, require
from idrm_ray.configtree.loader import derive
from idrm_ray.methods.base import MethodRun
from idrm_ray.methods.strength import member_summary


@dataclass(frozen=True)
class WARMConfig:
    """WARM (METHOD.md §10): average M reward models fine-tuned from the same init."""

    variant: Literal["members", "checkpoints"] = param(
        "members", "members: M runs with diverse seeds / data orders / learning rates, averaged; "
                   "checkpoints: the cheap variant, the average of the last checkpoints along one run.")
    lr_multipliers: tuple[float, ...] = param((1.0, 0.7, 1.4), "Member i trains with lr x multipliers[i % len].")
    checkpoints: int = param(5, "Checkpoints averaged by the `checkpoints` variant (evenly spaced over the run).")

    def __post_init__(self):
        require(self, len(self.lr_multipliers) >= 1 and all(m > 0 for m in self.lr_multipliers),
                "lr_multipliers", "give at least one positive multiplier, e.g. [1.0, 0.7, 1.4]")
        require(self, self.checkpoints >= 1, "checkpoints", "must be >= 1")


def worker_asks(m) -> dict:
    """The final model is an average, not a run: its members ask as bt (or id) runs."""
    return {}


def run(r: MethodRun) -> list[dict]:
    cfg, warm, kind = r.cfg, r.cfg.method.warm, r.kind.member_kind
    t0 = time.perf_counter()
    if warm.variant == "checkpoints":
        every = max(1, r.plan.total_steps // warm.checkpoints)
        row = r.tools.train_one(derive(cfg, {"run.keep_checkpoints": warm.checkpoints}), r.plan, method=kind,
                                train=r.train, out_name=f"{r.name}/run", keep_checkpoints=True,
                                spec_overrides=dict(checkpoint_every=every), **r.common)
        sources, rows = row["checkpoints"], [row]
    else:
        rows = r.members.get(kind) or r.tools.train_members(cfg, r.plan, kind=kind, folder=f"{r.name}/members",
                                                            train=r.train, **r.common)
        sources = [x["checkpoint"] for x in rows]
    out = r.run_dir / r.name / "checkpoint"
    r.tools.average_checkpoints(cfg, sources, out, metadata={"method": r.method, "variant": warm.variant})
    metrics = r.tools.evaluate_checkpoint(cfg, str(out), r.evals)
    console.info(f"[idrm] {r.name}: averaged {len(sources)} models -> {out} "
                 f"(eval accuracy {metrics['eval_accuracy']:.3f})")
    return [{"method": r.method, **metrics, "checkpoint": str(out), "averaged_models": len(sources),
             "wall_time_s": time.perf_counter() - t0, "steps": rows[0].get("steps"), **member_summary(rows)}]
