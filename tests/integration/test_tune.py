"""Issue 7: a 2 × 2 Ray Tune sweep over λ × N on tiny settings sharing one teacher-map cache.

One sweep (session Ray, `guard` timeout) is asserted on by every test here: outputs written,
the best config parses, the teacher ran over the data once (one cache key built before the
trials, every trial read it, `_SUCCESS` never rewritten), and a trial whose first attempt
raises is retried without killing the sweep.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

LAMS, TOP_NS = (0.4, 1.0), (1, 2)
TINY = ["data.max_pairs=64", "optim.epochs=1", "optim.max_steps=4", "optim.global_batch_size=8",
        "optim.micro_batch_size=8", "run.eval_every=0", "run.log_every=1", "teacher.name_or_path=tiny",
        "logging.wandb_mode=disabled"]


@pytest.fixture(scope="module")
def sweep(ray_session, guard, make_config, tmp_path_factory):
    from idrm_ray.tune import run_sweep

    out = tmp_path_factory.mktemp("sweep")
    cfg = make_config(out, "sweep", *TINY)
    summary = guard(lambda: run_sweep(cfg, LAMS, TOP_NS, sweep_dir=out / "sweep", max_failures=1,
                                      fail_once=(1.0, 2)), timeout_s=420, what="tune sweep 2x2")
    return summary


def test_outputs_written(sweep):
    d = Path(sweep["sweep_dir"])
    for name in ("results.csv", "results.md", "heatmap.png", "best_config.yaml", "best.json"):
        assert (d / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(d / "results.csv")))
    assert {(float(r["lam"]), int(r["top_n"])) for r in rows} == {(l, n) for l in LAMS for n in TOP_NS}
    assert all(r["eval_accuracy"] not in ("", None) for r in rows), rows
    best = json.loads((d / "best.json").read_text())
    assert Path(best["checkpoint_path"]).is_dir()
    assert best["eval_accuracy"] == max(float(r["eval_accuracy"]) for r in rows)
    assert sweep["max_concurrent_trials"] >= 1


def test_best_config_parses(sweep):
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig

    d = Path(sweep["sweep_dir"])
    best = json.loads((d / "best.json").read_text())
    cfg = load_config(TrainJobConfig, d / "best_config.yaml")
    assert cfg.method.name == "id" and not cfg.method.compare_bt
    assert cfg.method.id.lam == best["lam"] and cfg.method.id.top_n == best["top_n"]
    assert cfg.teacher.cache_dir and cfg.teacher.cache_blocks == max(TOP_NS)


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


def test_best_config_trains_from_cache(sweep, guard, tmp_path):
    """`idrm-ray train --config best_config.yaml` path: trains and reads the sweep's cache (no new key)."""
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig
    from idrm_ray.pipeline.driver import run_train

    d = Path(sweep["sweep_dir"])
    cfg = load_config(TrainJobConfig, d / "best_config.yaml", [f"run.output_dir={tmp_path}", "run.name=best"])
    summary = guard(lambda: run_train(cfg), timeout_s=240, what="train best config")
    assert summary["runs"][0]["eval_accuracy"] is not None
    cache_root = Path(cfg.teacher.cache_dir)
    assert sorted(p.name for p in cache_root.iterdir() if not p.name.startswith(".")) == [sweep["cache"]["key"]]
