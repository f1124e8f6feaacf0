"""Resume after a worker failure: two workers under DeepSpeed ZeRO-2 (per-rank optimizer shards
in the checkpoint), `run.max_failures=1`, a checkpoint every 4 steps, and rank 0 failing once
right after step 6. Ray Train must restart the worker group from the step-4 checkpoint; the
run then finishes its 12 steps with the step count continued (not restarted), losing at most
`run.checkpoint_every` steps of work, and its counters and metric history free of the lost
attempt's steps.

The failure is injected without a hook in the product: `driver._loop` is swapped for a loop
that patches `_WorkerRun._after_step` inside the worker (shipped to Ray by value) to log every
completed step with its process id and to raise once, guarded by a marker file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ray import cloudpickle

from idrm_ray.data import bundled_path

cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEPS, CHECKPOINT_EVERY, FAIL_AFTER, GLOBAL_BATCH = 12, 4, 6, 8
FIT_TIMEOUT_S = 360


def _failing_loop(*, marker: str, steps_log: str, fail_after: int):
    def loop(config: dict) -> None:
        import os

        import ray.train

        from idrm_ray.train import worker

        original = worker._WorkerRun._after_step

        def after_step(self) -> None:
            original(self)  # logs, evaluates, checkpoints when due
            if ray.train.get_context().get_world_rank() != 0:
                return
            with open(steps_log, "a") as f:
                f.write(f"{os.getpid()} {self.progress.step}\n")
            if self.progress.step == fail_after and not os.path.exists(marker):
                open(marker, "w").close()
                raise RuntimeError(f"injected worker failure after step {fail_after}")

        worker._WorkerRun._after_step = after_step
        worker.train_loop_per_worker(config)

    return loop


@pytest.fixture(scope="module")
def resumed(ray_session, guard, make_config, tmp_path_factory):
    from idrm_ray.run import driver

    root = tmp_path_factory.mktemp("resume")
    evals = root / "eval32.jsonl"
    evals.write_text("\n".join(bundled_path("pref_eval").read_text(encoding="utf-8").splitlines()[:32]) + "\n")
    marker, steps_log = root / "failed_once", root / "steps.log"
    cfg = make_config(
        root, "resume", "method.name=bt", "data.max_pairs=400", f"data.eval={evals}",
        "resources.num_workers=2", "deepspeed.enabled=true", "deepspeed.zero_stage=2",
        f"optim.global_batch_size={GLOBAL_BATCH}", "optim.micro_batch_size=4", f"optim.max_steps={STEPS}",
        f"run.checkpoint_every={CHECKPOINT_EVERY}", "run.max_failures=1", "run.log_every=1", "run.eval_every=0",
    )
    loop = _failing_loop(marker=str(marker), steps_log=str(steps_log), fail_after=FAIL_AFTER)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "_loop", lambda: loop)
        summary = guard(lambda: driver.run_train(cfg), timeout_s=FIT_TIMEOUT_S, what="run_train with a failure")
    attempts: dict[str, list[int]] = {}
    for line in steps_log.read_text().splitlines():
        pid, step = line.split()
        attempts.setdefault(pid, []).append(int(step))
    run_dir = Path(summary["run_dir"])
    history = [json.loads(line) for line in (run_dir / "bt" / "metrics.jsonl").read_text().splitlines()]
    return {"failed": marker.exists(), "attempts": list(attempts.values()), "run": summary["runs"][0], "history": history}


def test_failure_was_injected_and_the_group_restarted(resumed):
    assert resumed["failed"]
    assert len(resumed["attempts"]) == 2, resumed["attempts"]
    first, second = resumed["attempts"]
    assert first == list(range(1, FAIL_AFTER + 1)), first


def test_resume_continues_from_the_checkpoint(resumed):
    first, second = resumed["attempts"]
    resumed_from = second[0] - 1
    assert resumed_from > 0, f"the second attempt restarted from scratch: {second}"
    assert resumed_from % CHECKPOINT_EVERY == 0 and resumed_from <= FAIL_AFTER, second
    assert FAIL_AFTER - resumed_from <= CHECKPOINT_EVERY, f"lost {FAIL_AFTER - resumed_from} steps"
    assert second == list(range(resumed_from + 1, STEPS + 1)), second


def test_counters_and_history_after_resume(resumed):
    run = resumed["run"]
    assert run["steps"] == STEPS
    assert run["pairs_seen"] == STEPS * GLOBAL_BATCH  # the lost attempt's steps are not counted twice
    steps = [row["step"] for row in resumed["history"] if row.get("pairs")]
    assert steps == list(range(1, STEPS + 1)), steps
    assert resumed["history"][-1]["step"] == STEPS and "eval_accuracy" in resumed["history"][-1]
