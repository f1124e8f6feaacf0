"""Monitoring: Ray metrics (dashboard / Prometheus) and Weights & Biases.

Metric names (all prefixed `idrm_`), tagged by method:
  teacher: idrm_teacher_pairs (counter), idrm_teacher_map_bytes (counter),
           idrm_teacher_pairs_per_s (gauge)
  student: idrm_student_steps (counter: optimizer steps, from rank 0), idrm_student_pairs_per_s (gauge),
           idrm_loss{component=l_bt|l_id|l_intra|l_inter|loss} (gauge),
           idrm_teacher_wait_s (counter: seconds a student rank waited for maps, mean over ranks),
           idrm_teacher_wait_fraction (gauge)
W&B runs offline unless a project is configured (WANDB_MODE / WANDB_PROJECT).
"""
from __future__ import annotations

import os
import time

LOSS_COMPONENTS = ("loss", "l_bt", "l_id", "l_intra", "l_inter")


def _metrics():
    from ray.util import metrics  # imported lazily: the core never needs Ray

    return metrics


class TeacherMonitor:
    def __init__(self) -> None:
        m = _metrics()
        self.pairs = m.Counter("idrm_teacher_pairs", description="pairs whose teacher maps were computed")
        self.bytes = m.Counter("idrm_teacher_map_bytes", description="bytes of fp16 unit-level maps emitted")
        self.rate = m.Gauge("idrm_teacher_pairs_per_s", description="teacher throughput of this actor")

    def record(self, *, pairs: int, map_bytes: int, seconds: float) -> None:
        self.pairs.inc(pairs)
        self.bytes.inc(map_bytes)
        self.rate.set(pairs / max(seconds, 1e-9))


class StudentMonitor:
    def __init__(self, *, method: str) -> None:
        m = _metrics()
        tags = ("method",)
        self.tags = {"method": method}
        self.steps = m.Counter("idrm_student_steps", description="optimizer steps", tag_keys=tags)
        self.rate = m.Gauge("idrm_student_pairs_per_s", description="student pairs/s", tag_keys=tags)
        self.loss = m.Gauge("idrm_loss", description="loss components", tag_keys=("method", "component"))
        self.wait_s = m.Counter("idrm_teacher_wait_s", description="seconds waited for teacher maps", tag_keys=tags)
        self.wait_frac = m.Gauge("idrm_teacher_wait_fraction", description="share of step time waiting", tag_keys=tags)
        self.last = time.perf_counter()

    def record(self, row: dict, *, steps: int) -> None:
        """One log window's row (already reduced over ranks: call on rank 0 only, or the
        counters count world_size times); `steps` optimizer steps since the last record."""
        self.steps.inc(steps, tags=self.tags)
        self.rate.set(row.get("pairs_per_s", 0.0), tags=self.tags)
        for name in LOSS_COMPONENTS:
            if row.get(name) is not None:
                self.loss.set(float(row[name]), tags={**self.tags, "component": name})
        self.wait_frac.set(float(row.get("teacher_wait_fraction", 0.0)), tags=self.tags)
        self.wait_s.inc(float(row.get("teacher_wait_s", 0.0)), tags=self.tags)


class WandbLogger:
    """Logs rows to W&B; offline unless a project is configured; a no-op when disabled."""

    def __init__(self, *, project: str, mode: str, name: str, config: dict, directory: str) -> None:
        self.run = None
        mode = os.environ.get("WANDB_MODE", mode or ("online" if project else "offline"))
        if mode == "disabled":
            return
        import wandb

        self.run = wandb.init(
            project=project or "idrm_ray", mode=mode, name=name, config=config, dir=directory, reinit="finish_previous"
        )

    def log(self, row: dict, *, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
