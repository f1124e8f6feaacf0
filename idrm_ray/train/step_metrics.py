"""Per-step metric accumulation on a worker: sums between log points, means over pairs,
throughput and the share of time spent waiting for teacher maps."""
from __future__ import annotations

import time
from collections import defaultdict


class StepAccumulator:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.pairs = 0
        self.steps = 0
        self.wait_s = 0.0
        self.busy_s = 0.0
        self.t0 = time.perf_counter()

    def add(self, metrics: dict, *, pairs: int, wait_s: float, busy_s: float) -> None:
        for key, value in metrics.items():
            self.sums[key] += float(value) * pairs if pairs else 0.0  # a filler's NaN must not leak in
        self.pairs += pairs
        self.steps += 1
        self.wait_s += wait_s
        self.busy_s += busy_s

    def flush(self, strategy, *, step: int, lr: float | None) -> dict:
        """Means over all ranks' pairs since the last flush (a collective: every rank calls it,
        with the same keys; one packed all-reduce for the whole window)."""
        keys = sorted(self.sums)
        *sums, pairs, wait, busy = strategy.all_reduce_sums(
            [self.sums[k] for k in keys] + [float(self.pairs), self.wait_s, self.busy_s])
        row = {k: v / max(pairs, 1.0) for k, v in zip(keys, sums)}
        elapsed = time.perf_counter() - self.t0
        row.update(
            step=step,
            lr=lr,
            pairs=int(pairs),
            pairs_per_s=pairs / max(elapsed, 1e-9),
            step_time_s=elapsed / max(self.steps, 1),
            teacher_wait_fraction=wait / max(wait + busy, 1e-9),
            teacher_wait_s=wait / strategy.world_size,  # seconds per rank spent waiting for maps
        )
        self.reset()
        return row
