"""Recovery without a hook in the product (issue: reliability): the driver dies and is run
again with the same run name and storage; the latest checkpoint is corrupt; losses go
non-finite.

One BT student (plain torch, one worker, 8 pairs per step, a checkpoint every 3 steps, up to
3 kept). `driver._loop` is swapped for instrumented loops shipped to Ray by value (as in
test_cluster.py):

1. The first `run_train` dies after step 7 with `run.max_failures=0`: the fit fails and the
   driver raises, as a killed `ray job submit` driver leaves the run behind (checkpoints at 3
   and 6).
2. The test truncates the step-6 checkpoint's training state (a disk filling up mid-write).
3. The same `run_train` again (same run.name, same storage path): it must resume, not start
   over, and, the latest checkpoint being unreadable, from the previous good one (step 3).
   In this second run the loss of two micro-steps is made NaN: they are skipped and counted
   with the weights untouched.
4. A run whose every loss is NaN stops after `run.max_nonfinite_steps` with a message naming
   the step and the loss component (in this process, `run.local`: the loop's rule, not Ray's).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ray import cloudpickle

from idrm_ray.data import bundled_path

cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEPS, EVERY, DIE_AFTER, BATCH = 10, 3, 7, 8
NAN_AT = (5, 6)  # second run: the micro-steps after these optimizer steps get a NaN loss
FIT_TIMEOUT_S = 300


def _instrumented_loop(*, log: str, die_after: int | None = None, nan_after: tuple = (), always_nan: bool = False):
    def loop(config: dict, session=None) -> None:
        import math

        import torch

        from idrm_ray.train import worker

        original_after, original_micro = worker._WorkerRun._after_step, worker._WorkerRun.micro_step
        original_loss = worker.preference_loss

        def after_step(self) -> None:
            original_after(self)
            with open(log, "a") as f:
                f.write(json.dumps({"step": self.progress.step}) + "\n")
            if die_after is not None and self.progress.step == die_after:
                raise RuntimeError(f"injected: the job dies after step {die_after}")

        def nan_loss(*args, **kwargs):
            loss, metrics = original_loss(*args, **kwargs)
            metrics["l_bt"] = metrics["l_bt"] * math.nan
            return loss * math.nan, metrics

        def micro_step(self, micro, item):
            poisoned = self.__dict__.setdefault("poisoned", set())  # steps after which one NaN was injected
            if not (always_nan or (self.progress.step in nan_after and self.progress.step not in poisoned)):
                return original_micro(self, micro, item)
            at = self.progress.step  # the optimizer step after which this NaN comes
            poisoned.add(at)
            before = [p.detach().clone() for p in self.model.parameters()]
            worker.preference_loss = nan_loss
            try:
                stepped = original_micro(self, micro, item)
            finally:
                worker.preference_loss = original_loss
            untouched = all(torch.equal(a, p) for a, p in zip(before, self.model.parameters()))
            with open(log, "a") as f:
                f.write(json.dumps({"nan_at": at, "stepped": stepped, "untouched": untouched}) + "\n")
            return stepped

        worker._WorkerRun._after_step = after_step
        worker._WorkerRun.micro_step = micro_step
        try:
            worker.train_loop_per_worker(config, session)
        finally:  # a local run (`run.local`) patched this process's worker module: put it back
            worker._WorkerRun._after_step, worker._WorkerRun.micro_step = original_after, original_micro

    return loop


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted(p for p in (run_dir / "ray_storage").glob("*/checkpoint_*") if p.is_dir())


@pytest.fixture(scope="module")
def recovered(ray_session, guard, make_config, tmp_path_factory):
    from idrm_ray.run import driver

    root = tmp_path_factory.mktemp("recovery")
    evals = root / "eval32.jsonl"
    evals.write_text("\n".join(bundled_path("pref_eval").read_text(encoding="utf-8").splitlines()[:32]) + "\n")
    cfg = make_config(
        root, "restart", "method.name=bt", "method.compare_bt=false", "data.max_pairs=160", f"data.eval={evals}",
        f"optim.global_batch_size={BATCH}", f"optim.micro_batch_size={BATCH}", f"optim.max_steps={STEPS}",
        f"run.checkpoint_every={EVERY}", "run.keep_checkpoints=3", "run.max_failures=0", "run.log_every=1",
        "run.eval_every=0", "logging.wandb_mode=disabled",
    )
    first_log, second_log = root / "first.log", root / "second.log"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "_loop", lambda: _instrumented_loop(log=str(first_log), die_after=DIE_AFTER))
        with pytest.raises(Exception, match="injected"):
            guard(lambda: driver.run_train(cfg), timeout_s=FIT_TIMEOUT_S, what="run_train that dies")
    run_dir = Path(cfg.run.output_dir) / "restart"
    kept = _checkpoints(run_dir)
    steps_kept = [json.loads((c / "progress.json").read_text())["step"] for c in kept]
    latest = kept[steps_kept.index(max(steps_kept))]
    state = next((latest / "train_state").rglob("*.pt"))
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])  # truncated mid-write
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "_loop", lambda: _instrumented_loop(log=str(second_log), nan_after=NAN_AT))
        summary = guard(lambda: driver.run_train(cfg), timeout_s=FIT_TIMEOUT_S, what="run_train again (restart)")
    return {"first": _events(first_log), "second": _events(second_log), "steps_kept": sorted(steps_kept),
            "corrupted": str(latest), "summary": summary, "run_dir": Path(summary["run_dir"])}


def test_the_first_driver_died_with_checkpoints_left(recovered):
    assert [e["step"] for e in recovered["first"]] == list(range(1, DIE_AFTER + 1))
    assert recovered["steps_kept"] == [3, 6]


def test_restart_resumes_from_the_previous_good_checkpoint(recovered):
    steps = [e["step"] for e in recovered["second"] if "step" in e]
    # the step-6 checkpoint is unreadable: resumed from step 3, not from scratch, not from 6
    assert steps == list(range(4, STEPS + 1)), steps
    run = recovered["summary"]["runs"][0]
    assert run["steps"] == STEPS
    assert run["pairs_seen"] == STEPS * BATCH  # the lost steps 4-7 of the first driver are not counted
    history = [json.loads(line) for line in (recovered["run_dir"] / "bt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history if r.get("pairs")] == list(range(1, STEPS + 1))


def test_injected_nan_steps_are_skipped_counted_and_leave_weights_untouched(recovered):
    nans = [e for e in recovered["second"] if "nan_at" in e]
    assert [e["nan_at"] for e in nans] == list(NAN_AT)
    assert all(not e["stepped"] and e["untouched"] for e in nans), nans
    assert recovered["summary"]["runs"][0]["nonfinite_skipped"] == len(NAN_AT)


def test_consecutive_nan_losses_stop_the_run_naming_step_and_component(guard, make_config, tmp_path):
    """The worker loop's own rule, not Ray's: an in-process run (`run.local`)."""
    from idrm_ray.run import driver

    cfg = make_config(
        tmp_path, "allnan", "method.name=bt", "method.compare_bt=false", "data.max_pairs=64",
        "optim.global_batch_size=8", "optim.micro_batch_size=8", "optim.max_steps=6", "run.max_nonfinite_steps=3",
        "run.eval_every=0", "logging.wandb_mode=disabled", "run.local=true",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "_loop", lambda: _instrumented_loop(log=str(tmp_path / "nan.log"), always_nan=True))
        with pytest.raises(Exception) as info:
            guard(lambda: driver.run_train(cfg), timeout_s=FIT_TIMEOUT_S, what="run_train with NaN losses")
    message = str(info.value)
    # Dropped windows count as (skipped) steps, as DeepSpeed counts its overflow skips.
    assert "3 consecutive non-finite losses or gradients, at step 3" in message, message
    assert "l_bt" in message
    nans = [e for e in _events(tmp_path / "nan.log") if "nan_at" in e]
    assert len(nans) == 2 and not any(e["stepped"] for e in nans)  # two skipped; the third raised before its line
