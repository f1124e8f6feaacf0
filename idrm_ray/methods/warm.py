"""WARM (METHOD.md §10): M members from the same init (seeds, data orders, learning rates;
bt members, id members for id+warm) averaged into one reward model; variant `checkpoints`:
the last K checkpoints of one run. The average is an ordinary reward-model checkpoint."""
from __future__ import annotations

import time

from idrm_ray import console
from idrm_ray.config import derive
from idrm_ray.methods.base import MethodRun
from idrm_ray.methods.strength import member_summary


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
