"""Issue 7: a Ray Tune sweep over λ × N on tiny settings sharing one teacher-map cache: one λ and
two N (the N = 1 trial reads the cache built for N_max = 2), so the sweep costs three Ray Train
fits (two trials at once, then the retry); the tables and heatmap of a full 3 × 2 grid are
tests/unit/test_tune_outputs.py's.

One sweep (session Ray, `guard` timeout) is asserted on by every test here: outputs written,
the best config parses (portable: sweep-folder paths as `${config_dir}`), the teacher ran over
the data once (one cache key built before the trials, every trial read it, `_SUCCESS` never
rewritten), a trial whose first attempt raises is retried without killing the sweep, every
periodic eval reached Tune as a result (what ASHA needs), and Tune's W&B callback wrote offline
runs. ASHA's settings are checked on a cheap fake trainable: a clearly bad arm stops at the
grace period while the best arm reaches its final report.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import ray

LAMS, TOP_NS = (1.0,), (1, 2)
TINY = ["data.max_pairs=64", "optim.epochs=1", "optim.max_steps=4", "optim.global_batch_size=8",
        "optim.micro_batch_size=8", "run.eval_every=2", "run.log_every=1", "teacher.name_or_path=tiny",
        "logging.wandb_mode=offline", "resources.cpus_per_worker=0.5"]  # evals at steps 2 and 4; 2 trials at once


class FailOnce:
    """`before_trial`: the first attempt of the (λ, N) trial raises, leaving a marker file, so
    the test sees Tune retry it (max_failures=1)."""

    def __init__(self, *, lam: float, top_n: int, marker: str):
        self.lam, self.top_n, self.marker = lam, top_n, marker

    def __call__(self, config: dict) -> None:
        if (config["lam"], config["top_n"]) == (self.lam, self.top_n) and not Path(self.marker).exists():
            Path(self.marker).parent.mkdir(parents=True, exist_ok=True)
            Path(self.marker).write_text("failed once\n")
            raise RuntimeError(f"injected failure for lam={self.lam} N={self.top_n}")


# Trials unpickle it in Ray worker processes, which cannot import this test module by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def sweep(ray_session, guard, make_config, tmp_path_factory):
    from idrm_ray.tune import run_sweep

    out = tmp_path_factory.mktemp("sweep")
    cfg = make_config(out, "sweep", *TINY)
    # 4 trials took ~190 s on a quiet 2-core machine (2 evals each, W&B offline); 2 trials + a retry now
    fail = FailOnce(lam=1.0, top_n=2, marker=str(out / "sweep" / "fail_markers" / "lam1_n2"))
    summary = guard(lambda: run_sweep(cfg, LAMS, TOP_NS, sweep_dir=out / "sweep", max_failures=1,
                                      before_trial=fail), timeout_s=600, what="tune sweep 1x2")
    return summary


def test_outputs_written(sweep):
    d = Path(sweep["sweep_dir"])
    for name in ("results.csv", "results.md", "heatmap.png", "best_config.yaml", "best.json"):
        assert (d / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert {(float(r["lam"]), int(r["top_n"])) for r in rows} == {(l, n) for l in LAMS for n in TOP_NS}
    assert all(r["eval_accuracy"] not in ("", None) for r in rows), rows
    best = json.loads((d / "best.json").read_text())
    assert Path(best["checkpoint_path"]).is_dir() and best["completed"]
    done = [r for r in rows if r["completed"] == "True"]
    assert best["eval_accuracy"] == max(float(r["eval_accuracy"]) for r in done)
    assert sweep["max_concurrent_trials"] >= 1


def test_every_eval_reaches_tune(sweep):
    """TuneReportCallback: each periodic eval is a Tune result with its step (ASHA's time axis)."""
    asha = sweep["asha"]
    assert asha["enabled"] and asha["time_attr"] == "step" and asha["evals_per_trial"] == 2
    assert asha["max_t"] == 3 and asha["grace_period"] == 2  # one rung, at step 2 (never at the last step)
    done = [r for r in sweep["trials"] if r["completed"]]
    assert done, sweep["trials"]
    for r in done:  # evals at steps 2 and 4 (the last with the checkpoint), then the trial's own report
        assert r["eval_steps"] == [2, 4] and r["reports"] == 3 and r["steps"] == 4, r
    for r in sweep["trials"]:
        if r["stopped_early"]:  # ASHA stopped it at the rung: one eval, no checkpoint
            assert r["eval_steps"] == [2] and r["checkpoint_path"] is None, r
    assert sweep["asha"]["stopped_early"] == sum(r["stopped_early"] for r in sweep["trials"])


def test_wandb_offline_runs(sweep):
    wandb_dir = Path(sweep["wandb_dir"])
    runs = sorted(wandb_dir.glob("**/offline-run-*"))
    assert runs, list(wandb_dir.rglob("*"))[:20]
    assert all(list(r.glob("*.wandb")) for r in runs), runs
    assert len(runs) >= len(sweep["trials"])  # one W&B run per trial (a retried trial may add one)


def test_best_config_parses(sweep):
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig

    d = Path(sweep["sweep_dir"])
    best = json.loads((d / "best.json").read_text())
    cfg = load_config(TrainJobConfig, d / "best_config.yaml")
    assert cfg.method.name == "id" and not cfg.method.compare_bt
    assert cfg.method.id.lam == best["lam"] and cfg.method.id.top_n == best["top_n"]
    assert cfg.teacher.cache_dir and cfg.teacher.cache_blocks == max(TOP_NS)
    # portable: no absolute sweep-folder path in the file; the loader resolves them beside it
    text = (d / "best_config.yaml").read_text()
    assert str(d) not in text and "${config_dir}/map_cache" in text
    assert Path(cfg.teacher.cache_dir) == d / "map_cache" and Path(cfg.student.name_or_path).parent.parent == d


def test_teacher_maps_computed_once(sweep):
    cache = sweep["cache"]
    # one pass over the data: the cache was built by the sweep driver before any trial, holds
    # one row per training pair, is the only key in the cache folder and was never rewritten
    assert cache["built_now"] and cache["rows"] == cache["train_pairs"] == 64
    assert cache["cache_dirs"] == [cache["key"]]
    assert not cache["success_rewritten"]
    # every trial found the cache complete before its fit, and it was unchanged after
    assert all(r["cache_hit"] is True and r["cache_unchanged"] is True for r in sweep["trials"]), sweep["trials"]


def test_failed_trial_retried(sweep):
    d = Path(sweep["sweep_dir"])
    assert (d / "fail_markers" / "lam1_n2").exists()  # the first attempt raised
    row = next(r for r in sweep["trials"] if r["lam"] == 1.0 and r["top_n"] == 2)
    assert row["eval_accuracy"] is not None and row["error"] is None  # the retry finished


def test_best_config_reads_the_sweeps_cache(sweep):
    """`idrm-ray train --config best_config.yaml` from any folder finds the sweep's maps: the
    config, loaded as the CLI loads it, gives the key the sweep built (the trials trained from
    that cache with the same derived config, `trial_config`; a second fit here only repeated them)."""
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig
    from idrm_ray.run import encode_kwargs_for, load_data, map_cache_key

    d = Path(sweep["sweep_dir"])
    cfg = load_config(TrainJobConfig, d / "best_config.yaml", ["run.name=best"])
    train, _, _ = load_data(cfg, d)
    student, teacher = cfg.student.name_or_path, cfg.teacher.name_or_path
    key = map_cache_key(cfg, train=train, teacher_dir=teacher, student_dir=student,
                        encode_kwargs=encode_kwargs_for(cfg, student, teacher),
                        num_blocks=max(cfg.teacher.cache_blocks, cfg.method.id.top_n))
    assert key == sweep["cache"]["key"]
    assert (Path(cfg.teacher.cache_dir) / key / "_SUCCESS").exists()


def test_asha_stops_a_bad_arm_early(ray_session, guard, tmp_path):
    """The sweep's ASHA settings on a fake trial (reports like the embedded default: eval every
    50 of 750 steps, then the trial's own final report): the bad arm stops at the grace period,
    the best arm is not cut at its last eval (no rung there, no max_t stop) and reports `completed`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from idrm_ray.tune.sweep import asha_schedule

    a = asha_schedule(750, 50)
    assert (a["grace_period"], a["max_t"], a["evals_per_trial"]) == (250, 749, 15)

    def fake_trial(config):
        for step in range(50, 751, 50):
            tune.report({"eval_accuracy": config["q"] * (1 - 0.5 ** (step / 100)), "step": step})
        tune.report({"eval_accuracy": config["q"], "step": 750, "completed": True})

    scheduler = ASHAScheduler(time_attr=a["time_attr"], max_t=a["max_t"], grace_period=a["grace_period"],
                              reduction_factor=a["reduction_factor"], stop_last_trials=a["stop_last_trials"])
    tuner = tune.Tuner(
        tune.with_resources(fake_trial, {"CPU": 0.01}), param_space={"q": tune.grid_search([0.9, 0.2])},
        tune_config=tune.TuneConfig(metric="eval_accuracy", mode="max", scheduler=scheduler, max_concurrent_trials=1),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path)),
    )
    grid = guard(tuner.fit, timeout_s=120, what="asha on a fake trial")
    last = {r.config["q"]: r.metrics for r in grid}
    assert last[0.9]["step"] == 750 and last[0.9].get("completed") is True
    assert last[0.2]["step"] == 250 and not last[0.2].get("completed")
