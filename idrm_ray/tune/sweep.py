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

Outputs in the sweep folder: results.csv, results.md, heatmap.png (λ × N of the eval
metric; a trial stopped early shows its last eval), best_config.yaml (accepted by
`idrm-ray train --config` from any folder: paths inside the sweep folder are written as
`${config_dir}/...`, i.e. relative to the YAML's folder), best.json (metrics and checkpoint
path), cache.json (the cache key, its rows and build count), sweep.json (everything).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import ray

from idrm_ray import console
from idrm_ray.config import derive, dump_config
from idrm_ray.config.loader import CONFIG_DIR, dump_yaml
from idrm_ray.config.plan import make_plan
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.pipeline import cluster, map_cache
from idrm_ray.pipeline.assets import prepare_student, prepare_teacher
from idrm_ray.pipeline.dataset import encoded_stream, examples_dataset
from idrm_ray.pipeline.driver import encode_kwargs_for, load_data, teacher_maps_stream, train_one

METRIC = "eval_accuracy"


def trial_config(base: TrainJobConfig, *, lam: float, top_n: int, output_dir: str,
                 worker_wandb: bool = True) -> TrainJobConfig:
    values = {"method.name": "id", "method.compare_bt": False, "method.id.lam": float(lam),
              "method.id.top_n": int(top_n), "run.output_dir": output_dir, "run.name": f"lam{lam:g}_n{top_n}",
              "run.storage_path": ""}
    if not worker_wandb:  # in a sweep, W&B is Tune's callback (one run per trial), not the worker's
        values["logging.wandb_mode"] = "disabled"
    return derive(base, values)


def max_concurrent(cfg: TrainJobConfig) -> int:
    """Trials that fit at once (`cluster.runs_that_fit`: one trial is one train run)."""
    return cluster.runs_that_fit(cfg)


def _trial(config: dict, *, base: TrainJobConfig, train, evals, student_dir: str, teacher_dir: str, cache_path: str | None,
           trials_dir: str):
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    lam, top_n = config["lam"], config["top_n"]
    cfg = trial_config(base, lam=lam, top_n=top_n, output_dir=trials_dir, worker_wandb=False)
    marker = config.get("fail_once_marker")
    if marker and not Path(marker).exists():  # test hook: the first attempt of this trial raises
        Path(marker).write_text("failed once\n")
        raise RuntimeError(f"injected failure for lam={lam} N={top_n}")
    success = Path(cache_path) / "_SUCCESS" if cache_path else None
    cache_hit = success.exists() if success else None
    run_dir = Path(trials_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    # What a trial stopped early by ASHA (killed inside its fit) still leaves for the table.
    (run_dir / TRIAL_INFO).write_text(json.dumps({
        "cache_hit": cache_hit, "success_mtime": success.stat().st_mtime if cache_hit else None,
        "config_path": str(run_dir / "config.yaml")}))
    plan = make_plan(cfg, len(train))
    # Every ray.train.report of the student (each periodic eval, the final one) -> a Tune result.
    row = train_one(cfg, plan, method="id", student_dir=student_dir, teacher_dir=teacher_dir,
                    train=train, evals=evals, run_dir=run_dir, callbacks=[TuneReportCallback()])
    tune.report({
        "eval_accuracy": row["eval_accuracy"], "eval_loss": row["eval_loss"], "step": row["steps"],
        "lam": lam, "top_n": top_n, "completed": True,
        "steps": row["steps"], "wall_time_s": row["wall_time_s"], "checkpoint_path": row["checkpoint"],
        "config_path": str(run_dir / "config.yaml"), "cache_hit": cache_hit,
        "cache_unchanged": _unchanged(success, cache_hit, run_dir),
    })


TRIAL_INFO = "trial.json"


def _unchanged(success: Path | None, cache_hit, run_dir: Path):
    """The cache's `_SUCCESS` has the mtime the trial saw before its fit (None without a cache)."""
    if not cache_hit:
        return None if success is None else False
    before = json.loads((run_dir / TRIAL_INFO).read_text())["success_mtime"]
    return success.exists() and success.stat().st_mtime == before


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


def wandb_callbacks(cfg: TrainJobConfig, sweep_dir: Path) -> list:
    """Tune's W&B logger: one W&B run per trial (its eval results), grouped by the sweep; offline
    files under `<sweep>/wandb` unless `logging.wandb_mode=online`; none when disabled."""
    mode = cfg.logging.wandb_mode
    if mode == "disabled":
        return []
    try:
        from ray.air.integrations.wandb import WandbLoggerCallback
    except ImportError as exc:  # wandb missing: the sweep runs without it
        console.warn(f"sweep: W&B logging off ({exc})")
        return []
    wandb_dir = sweep_dir / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    return [WandbLoggerCallback(project=cfg.logging.wandb_project or "idrm-ray-sweep", group=sweep_dir.name,
                                mode=mode, dir=str(wandb_dir), excludes=["config_path"])]


def build_cache(cfg: TrainJobConfig, *, train, student_dir: str, teacher_dir: str, n_max: int) -> dict:
    """The teacher maps for N_max blocks, through the pipeline's own cache path, once."""
    cfg_max = derive(cfg, {"method.id.top_n": n_max})
    ek = encode_kwargs_for(cfg_max, student_dir, teacher_dir)
    key = map_cache.cache_key(teacher_dir=teacher_dir, student_dir=student_dir, examples=train, encode_kwargs=ek,
                              num_blocks=n_max, renormalize=cfg_max.method.id.mode,  # as teacher_maps_stream
                              head_renorm=cfg_max.method.id.teacher_head_renorm,
                              map_format=cfg_max.teacher.map_format)
    path = Path(cfg.teacher.cache_dir) / key
    existed = (path / "_SUCCESS").exists()
    t0 = time.perf_counter()
    placement = cluster.stage_placement(cfg_max)
    ds = teacher_maps_stream(cfg_max, encoded_stream(examples_dataset(train), encode_kwargs=ek, placement=placement),
                             train=train, teacher_dir=teacher_dir, student_dir=student_dir, encode_kwargs=ek,
                             placement=placement)
    rows = ds.count()
    return {"key": key, "path": str(path), "num_blocks": n_max, "rows": rows, "train_pairs": len(train),
            "built_now": not existed, "build_s": time.perf_counter() - t0,
            "success_mtime": (path / "_SUCCESS").stat().st_mtime}


def run_sweep(cfg: TrainJobConfig, lams=(0.4, 1.0), top_ns=(1, 2), *, sweep_dir: str | Path | None = None,
              max_failures: int = 1, num_samples: int = 1, fail_once: tuple | None = None,
              use_asha: bool = True, use_cache: bool = True, reduction_factor: int = 3) -> dict:
    """Sweep λ × N; returns the summary (also written as sweep.json). `fail_once=(λ, N)`
    makes that trial's first attempt raise (to show the retry). `use_cache=False`: no shared
    teacher-map cache (each trial runs the teacher over the data itself)."""
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
    cluster.init_ray(cfg.resources.ray_address)
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
    if fail_once:
        markers = sweep_dir / "fail_markers"
        markers.mkdir(exist_ok=True)
        param_space["fail_once_marker"] = tune.sample_from(
            lambda spec, lam=fail_once[0], n=fail_once[1], d=str(markers):
            f"{d}/lam{lam:g}_n{n}" if (spec.config.lam == lam and spec.config.top_n == n) else "")
    trials_dir = sweep_dir / "trials"
    trainable = tune.with_parameters(
        _trial, base=cfg, train=train, evals=evals, student_dir=student_dir, teacher_dir=teacher_dir,
        cache_path=cache["path"], trials_dir=str(trials_dir))
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
    with _wandb_env(cfg.logging.wandb_mode if callbacks else None):
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


def trial_row(r, trials_dir: Path, *, total_steps: int, cache_path: str | None) -> dict:
    """One trial's table row from its last Tune result, its result history and `trial.json`."""
    m = dict(r.metrics or {})
    lam, top_n = r.config["lam"], r.config["top_n"]
    run_dir = Path(trials_dir) / f"lam{lam:g}_n{top_n}"
    info_file = run_dir / TRIAL_INFO
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    history = r.metrics_dataframe
    eval_steps = []
    if history is not None and "step" in history:
        eval_steps = sorted({int(s) for s in history["step"].dropna()})
    completed = bool(m.get("completed"))
    cache_hit = m.get("cache_hit", info.get("cache_hit"))
    unchanged = m.get("cache_unchanged")
    if unchanged is None and cache_hit and cache_path:  # stopped inside its fit: check the cache now
        success = Path(cache_path) / "_SUCCESS"
        unchanged = success.exists() and success.stat().st_mtime == info.get("success_mtime")
    return {"lam": lam, "top_n": top_n, "eval_accuracy": m.get("eval_accuracy"), "eval_loss": m.get("eval_loss"),
            "steps": m.get("step"), "total_steps": total_steps, "completed": completed,
            "stopped_early": (not completed) and r.error is None and bool(eval_steps),
            "reports": len(history) if history is not None else 0, "eval_steps": eval_steps,
            "wall_time_s": m.get("wall_time_s"), "cache_hit": cache_hit, "cache_unchanged": unchanged,
            "checkpoint_path": m.get("checkpoint_path") if completed else None,
            "config_path": m.get("config_path", info.get("config_path")),
            "error": None if r.error is None else repr(r.error)[:200]}


class _wandb_env:
    """`WANDB_MODE` set for the duration of the fit when the callback runs offline: Ray's W&B
    callback asks for an API key unless the environment says offline (the logging actors get
    `mode=` from the callback either way)."""

    def __init__(self, mode: str | None):
        self.mode, self.saved = mode, None

    def __enter__(self):
        self.saved = os.environ.get("WANDB_MODE")
        if self.mode == "offline" and self.saved not in ("offline", "disabled"):
            os.environ["WANDB_MODE"] = "offline"
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = self.saved
        return False


PORTABLE_HEADER = """\
# The best trial of a Ray Tune sweep, ready for `idrm-ray train --config THIS_FILE` from any folder.
# `${config_dir}` stands for the folder holding this file (the sweep folder): the config loader
# expands it, so the prepared student and teacher, the shared map cache and the output folder
# resolve inside the sweep folder wherever it is moved or copied (keep its assets/, teacher/ and
# map_cache/ beside this file). Paths outside the sweep folder are written as they were.
"""


def portable_yaml(cfg: TrainJobConfig, sweep_dir: Path) -> str:
    """`dump_yaml(cfg)` with every string path inside `sweep_dir` written as `${config_dir}/...`."""
    root = Path(sweep_dir).resolve()

    def rel(value):
        if isinstance(value, dict):
            return {k: rel(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rel(v) for v in value]
        if isinstance(value, str) and value.startswith("/"):
            path = Path(value)
            if path == root:
                return CONFIG_DIR
            if root in path.parents:
                return f"{CONFIG_DIR}/{path.relative_to(root).as_posix()}"
        return value

    import yaml

    return PORTABLE_HEADER + yaml.safe_dump(rel(dump_config(cfg)), sort_keys=False, allow_unicode=True)


def write_table(out: Path, rows: list[dict]) -> None:
    keys = list(rows[0]) if rows else []
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    cols = ["lam", "top_n", "eval_accuracy", "eval_loss", "steps", "total_steps", "stopped_early", "reports",
            "wall_time_s", "cache_hit", "checkpoint_path", "error"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def heatmap(path: Path, rows: list[dict], *, lams: list, top_ns: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = np.full((len(lams), len(top_ns)), np.nan)
    stopped = {}
    for r in rows:
        if r["eval_accuracy"] is not None:
            grid[lams.index(r["lam"]), top_ns.index(r["top_n"])] = r["eval_accuracy"]
            if r.get("stopped_early"):
                stopped[(lams.index(r["lam"]), top_ns.index(r["top_n"]))] = r.get("steps")
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(top_ns), 1.5 + 0.6 * len(lams)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(top_ns)), [str(n) for n in top_ns])
    ax.set_yticks(range(len(lams)), [f"{x:g}" for x in lams])
    ax.set_xlabel("N (distilled blocks)")
    ax.set_ylabel("λ")
    for i in range(len(lams)):
        for j in range(len(top_ns)):
            if not math.isnan(grid[i, j]):
                note = f"\n(ASHA stop @{stopped[i, j]})" if (i, j) in stopped else ""
                ax.text(j, i, f"{grid[i, j]:.3f}{note}", ha="center", va="center", color="w", fontsize=8 if note else 10)
    fig.colorbar(im, ax=ax, label=METRIC)
    ax.set_title(f"{METRIC} over λ × N")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
