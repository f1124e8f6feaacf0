"""`run_sweep`: a Ray Tune run over λ × N (Train V2 shape) sharing one teacher-map cache.

Order: data, student and teacher are prepared ONCE on the sweep driver; the teacher maps for
N_max = max(top_ns) are written to the map cache ONCE (`map_cache.read_or_build`, the same
path and key `idrm-ray train` uses with `teacher.cache_dir` set); then every trial is a
driver function (`tune.with_resources(fn, {"CPU": 0.01})`) that builds its TrainJobConfig
for (λ, N), calls the pipeline's `train_one` (which builds and fits a TorchTrainer reading
the cache). `Tuner(trainer)` is not used: it fails under Train V2 (STACK_NOTES.md).

Reporting: the trial's TorchTrainer carries Tune's `TuneReportCallback`, so every periodic
evaluation of the student (`run.eval_every`) reaches Tune as an intermediate result with its
optimizer `step`; ASHA uses `step` as its time axis and `eval_accuracy` as its metric and can
stop a trial at a rung (`asha_schedule`). A trial that finishes adds one last result with its
outputs (`completed: true`, checkpoint, config). W&B: Tune's `WandbLoggerCallback`, one W&B
run per trial with its eval results, offline in `<sweep>/wandb` unless
`logging.wandb_mode=online`; nothing with `disabled` (the trial workers' own W&B is off).
`use_cache=False` (`--no-cache`) skips the shared cache: every trial runs the teacher itself.
One trial (config, run, table row) is `trial.py`; W&B, the tables, heatmap and portable
best_config.yaml are `outputs.py`.

Outputs in the sweep folder: results.csv, results.md, heatmap.png (λ × N of the eval
metric; a trial stopped early shows its last eval), best_config.yaml (accepted by
`idrm-ray train --config` from any folder: paths inside the sweep folder are written as
`${config_dir}/...`, i.e. relative to the YAML's folder), best.json (metrics and checkpoint
path), cache.json (the cache key, its rows and build count), sweep.json (everything).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from idrm_ray import console
from idrm_ray.config import derive
from idrm_ray.config.plan import make_plan
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.run import (
    cached_rows,
    encode_kwargs_for,
    encoded_stream,
    examples_dataset,
    init_ray,
    load_data,
    map_cache_key,
    prepare_student,
    prepare_teacher,
    runs_that_fit,
    stage_placement,
    teacher_maps_stream,
)
from idrm_ray.tune.outputs import METRIC, heatmap, portable_yaml, wandb_callbacks, wandb_env, write_table
from idrm_ray.tune.trial import run_trial, trial_config, trial_row




def max_concurrent(cfg: TrainJobConfig) -> int:
    """Trials that fit at once (`runs_that_fit`: one trial is one train run)."""
    return runs_that_fit(cfg)






def asha_schedule(total_steps: int, eval_every: int, *, reduction_factor: int = 3) -> dict:
    """ASHA's settings for trials of `total_steps` evaluated every `eval_every` steps.

    Time axis: `step`, which every eval report of the student carries. Grace period: about a
    third of the run rounded up to whole eval intervals (at least one), so rungs fall on steps
    where evals happen (grace × reduction_factor^k); tiny-model evals are noisy early on (an arm
    at 0.58 after 150 of 750 steps finished at 0.83 in another run). Every rung lies before the
    last step and `stop_last_trials` is off: a STOP at the final eval would arrive while the
    trial is still inside its fit, before it has copied its checkpoint; it ends by itself."""
    every = eval_every if 0 < eval_every < total_steps else total_steps
    evals = math.ceil(total_steps / max(every, 1))
    grace = max(1, min(every * max(1, math.ceil(evals / 3)), total_steps))
    return {"time_attr": "step", "grace_period": grace, "max_t": max(total_steps - 1, grace),
            "reduction_factor": reduction_factor, "evals_per_trial": evals, "stop_last_trials": False}




def build_cache(cfg: TrainJobConfig, *, train, student_dir: str, teacher_dir: str, n_max: int) -> dict:
    """The teacher maps for N_max blocks, through the pipeline's own cache path, once."""
    cfg_max = derive(cfg, {"method.id.top_n": n_max})
    ek = encode_kwargs_for(cfg_max, student_dir, teacher_dir)
    key = map_cache_key(cfg_max, train=train, teacher_dir=teacher_dir, student_dir=student_dir, encode_kwargs=ek,
                        num_blocks=n_max)
    path = Path(cfg.teacher.cache_dir) / key
    existed = (path / "_SUCCESS").exists()
    t0 = time.perf_counter()
    placement = stage_placement(cfg_max)
    # Builds the cache when the key is absent; the stream it returns (the read-back) is left unread.
    teacher_maps_stream(cfg_max, encoded_stream(examples_dataset(train), encode_kwargs=ek, placement=placement),
                        train=train, teacher_dir=teacher_dir, student_dir=student_dir, encode_kwargs=ek,
                        placement=placement)
    rows = cached_rows(path)
    return {"key": key, "path": str(path), "num_blocks": n_max, "rows": rows, "train_pairs": len(train),
            "built_now": not existed, "build_s": time.perf_counter() - t0,
            "success_mtime": (path / "_SUCCESS").stat().st_mtime}


def run_sweep(cfg: TrainJobConfig, lams=(0.4, 1.0), top_ns=(1, 2), *, sweep_dir: str | Path | None = None,
              max_failures: int = 1, num_samples: int = 1, use_asha: bool = True, use_cache: bool = True,
              reduction_factor: int = 3, before_trial: Callable[[dict], None] | None = None) -> dict:
    """Sweep λ × N; returns the summary (also written as sweep.json). `use_cache=False`: no
    shared teacher-map cache (each trial runs the teacher over the data itself).
    `before_trial(config)` runs at the start of every trial attempt, in the trial's process
    (picklable; e.g. a fault injected to watch Tune retry the trial)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    t_start = time.perf_counter()
    sweep_dir = Path(sweep_dir or Path(cfg.run.output_dir) / (cfg.run.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"))
    sweep_dir = sweep_dir.resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_max = max(top_ns)
    cache_dir = (cfg.teacher.cache_dir or str(sweep_dir / "map_cache")) if use_cache else ""
    cfg = derive(cfg, {"teacher.cache_dir": cache_dir, "teacher.cache_blocks": n_max if use_cache else 0,
                       "method.compare_bt": False, "method.name": "id"})

    train, evals, _ = load_data(cfg, sweep_dir)
    console.run_folder(sweep_dir, f"[idrm] sweep in {sweep_dir}: λ {list(lams)} x N {list(top_ns)}, "
                                  f"{len(train)} train pairs")
    init_ray(cfg.resources.ray_address)
    student_dir = prepare_student(cfg, sweep_dir)
    teacher_dir, _ = prepare_teacher(cfg, sweep_dir, needed=True)
    # Trials use the prepared assets by path (no per-trial fine-tune, same cache key).
    cfg = derive(cfg, {"student.name_or_path": student_dir, "teacher.name_or_path": teacher_dir})

    if use_cache:
        cache = build_cache(cfg, train=train, student_dir=student_dir, teacher_dir=teacher_dir, n_max=n_max)
        console.info(f"[idrm] sweep: teacher maps for N_max={n_max} at {cache['path']} ({cache['rows']} rows, "
                     f"built now: {cache['built_now']}, {cache['build_s']:.1f} s)")
    else:
        cache = {"enabled": False, "path": None}
        console.info("[idrm] sweep: no shared map cache; every trial runs the teacher over the data")

    concurrency = max_concurrent(cfg)
    plan = make_plan(cfg, len(train))
    asha = asha_schedule(plan.total_steps, plan.eval_every, reduction_factor=reduction_factor)
    if use_asha and asha["evals_per_trial"] < 2:
        console.info("[idrm] sweep: one evaluation per trial, so ASHA cannot stop a trial early (off); "
                     "set run.eval_every")
        use_asha = False
    param_space = {"lam": tune.grid_search(list(lams)), "top_n": tune.grid_search(list(top_ns))}
    trials_dir = sweep_dir / "trials"
    trainable = tune.with_parameters(
        run_trial, base=cfg, train=train, evals=evals, student_dir=student_dir, teacher_dir=teacher_dir,
        cache_path=cache["path"], trials_dir=str(trials_dir), before_trial=before_trial)
    scheduler = (ASHAScheduler(time_attr=asha["time_attr"], max_t=asha["max_t"], grace_period=asha["grace_period"],
                               reduction_factor=asha["reduction_factor"], stop_last_trials=False) if use_asha else None)
    callbacks = wandb_callbacks(cfg, sweep_dir)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.01}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                    max_concurrent_trials=concurrency, num_samples=num_samples),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir / "ray_tune"), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    with wandb_env(cfg.logging.wandb_mode if callbacks else None):
        grid = tuner.fit()
    rows = [trial_row(r, trials_dir, total_steps=plan.total_steps, cache_path=cache["path"]) for r in grid]
    rows.sort(key=lambda x: (x["lam"], x["top_n"]))
    done = [x for x in rows if x["completed"] and x["eval_accuracy"] is not None]
    # The best is a trial that trained to the end (its checkpoint exists); a trial ASHA stopped
    # only competes when none finished.
    pool = done or [x for x in rows if x["eval_accuracy"] is not None]
    best = max(pool, key=lambda x: x["eval_accuracy"]) if pool else None
    write_table(sweep_dir, rows)
    heatmap(sweep_dir / "heatmap.png", rows, lams=list(lams), top_ns=list(top_ns))
    if best:
        best_cfg = trial_config(cfg, lam=best["lam"], top_n=best["top_n"], output_dir=str(sweep_dir / "best_runs"))
        (sweep_dir / "best_config.yaml").write_text(portable_yaml(best_cfg, sweep_dir))
        (sweep_dir / "best.json").write_text(json.dumps(best, indent=2))
    if use_cache:
        success = Path(cache["path"]) / "_SUCCESS"
        cache["success_rewritten"] = success.stat().st_mtime != cache["success_mtime"]
        cache["cache_dirs"] = sorted(p.name for p in Path(cfg.teacher.cache_dir).iterdir() if not p.name.startswith("."))
    (sweep_dir / "cache.json").write_text(json.dumps(cache, indent=2))
    summary = {"sweep_dir": str(sweep_dir), "wall_time_s": time.perf_counter() - t_start, "trials": rows,
               "best": best, "cache": cache, "max_concurrent_trials": concurrency,
               "asha": {**asha, "enabled": use_asha,
                        "stopped_early": sum(1 for x in rows if x["stopped_early"])},
               "wandb_dir": str(sweep_dir / "wandb") if callbacks else None,
               "errors": [str(e)[:200] for e in grid.errors]}
    (sweep_dir / "sweep.json").write_text(json.dumps(summary, indent=2, default=str))
    console.result_table(f"[idrm] sweep done in {summary['wall_time_s']:.0f} s: {sweep_dir} "
                         f"({summary['asha']['stopped_early']} of {len(rows)} trials stopped early by ASHA)")
    return summary
