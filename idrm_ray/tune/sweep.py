"""`run_sweep`: a Ray Tune run over λ × N (Train V2 shape) sharing one teacher-map cache.

Order: data, student and teacher are prepared ONCE on the sweep driver; the teacher maps for
N_max = max(top_ns) are written to the map cache ONCE (`map_cache.read_or_build`, the same
path and key `idrm-ray train` uses with `teacher.cache_dir` set); then every trial is a
driver function (`tune.with_resources(fn, {"CPU": 0.01})`) that builds its TrainJobConfig
for (λ, N), calls the pipeline's `train_one` (which builds and fits a TorchTrainer reading
the cache) and reports eval_accuracy / eval_loss to Tune. `Tuner(trainer)` is not used:
it fails under Train V2 (STACK_NOTES.md).

Outputs in the sweep folder: results.csv, results.md, heatmap.png (λ × N of the eval
metric), best_config.yaml (accepted by `idrm-ray train --config`), best.json (metrics and
checkpoint path), cache.json (the cache key, its rows and build count).
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import ray

from idrm_ray.config import dump_config
from idrm_ray.config.loader import dump_yaml, from_dict
from idrm_ray.config.plan import make_plan
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.pipeline import cluster, map_cache
from idrm_ray.pipeline.assets import prepare_student, prepare_teacher
from idrm_ray.pipeline.dataset import encoded_stream, examples_dataset
from idrm_ray.pipeline.driver import load_data, teacher_maps_stream, train_one

METRIC = "eval_accuracy"


def encode_kwargs_for(cfg: TrainJobConfig, student_dir: str, teacher_dir: str) -> dict:
    """Exactly as `driver.train_one` builds them (the cache key depends on them)."""
    t = cfg.student.template
    return dict(
        student_tokenizer_dir=student_dir, teacher_tokenizer_dir=teacher_dir,
        student_max_len=cfg.student.max_len, teacher_max_len=cfg.teacher.max_len,
        template=(t.prefix, t.separator, t.suffix) if (t.prefix or t.separator or t.suffix) else None,
    )


def trial_config(base: dict, *, lam: float, top_n: int, output_dir: str) -> TrainJobConfig:
    data = json.loads(json.dumps(base))
    data["method"]["name"] = "id"
    data["method"]["compare_bt"] = False
    data["method"]["id"]["lam"] = float(lam)
    data["method"]["id"]["top_n"] = int(top_n)
    data["run"]["output_dir"] = output_dir
    data["run"]["name"] = f"lam{lam:g}_n{top_n}"
    data["run"]["storage_path"] = ""
    return from_dict(TrainJobConfig, data)


def max_concurrent(cfg: TrainJobConfig) -> int:
    """Trials that fit at once: CPUs (physical on a local machine: Ray's logical 4 on 2 cores
    would over-subscribe, and two concurrent trials on 2 cores hung, STACK_NOTES.md) or GPUs
    over one trial's student + teacher needs."""
    res = cfg.resources
    if res.use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0)
        need = res.num_workers * res.gpus_per_worker + res.teacher_num_gpus
        return max(1, int(gpus // max(need, 1e-9)))
    cpus = ray.cluster_resources().get("CPU", 1)
    if not (res.ray_address or os.environ.get("RAY_ADDRESS")):
        cpus = min(cpus, os.cpu_count() or 1)
    need = res.num_workers * res.cpus_per_worker + res.teacher_num_cpus
    return max(1, int(cpus // need))


def _trial(config: dict, *, base: dict, train, evals, student_dir: str, teacher_dir: str, cache_path: str,
           trials_dir: str):
    from ray import tune

    lam, top_n = config["lam"], config["top_n"]
    cfg = trial_config(base, lam=lam, top_n=top_n, output_dir=trials_dir)
    marker = config.get("fail_once_marker")
    if marker and not Path(marker).exists():  # test hook: the first attempt of this trial raises
        Path(marker).write_text("failed once\n")
        raise RuntimeError(f"injected failure for lam={lam} N={top_n}")
    success = Path(cache_path) / "_SUCCESS"
    cache_hit = success.exists()
    success_mtime = success.stat().st_mtime if cache_hit else None
    run_dir = Path(trials_dir) / cfg.run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(cfg, len(train))
    row = train_one(cfg, plan, method="id", student_dir=student_dir, teacher_dir=teacher_dir,
                    train=train, evals=evals, run_dir=run_dir)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    tune.report({
        "eval_accuracy": row["eval_accuracy"], "eval_loss": row["eval_loss"], "lam": lam, "top_n": top_n,
        "steps": row["steps"], "wall_time_s": row["wall_time_s"], "checkpoint_path": row["checkpoint"],
        "config_path": str(run_dir / "config.yaml"), "cache_hit": cache_hit,
        "cache_unchanged": cache_hit and success.stat().st_mtime == success_mtime,
    })


def build_cache(cfg: TrainJobConfig, *, train, student_dir: str, teacher_dir: str, n_max: int) -> dict:
    """The teacher maps for N_max blocks, through the pipeline's own cache path, once."""
    cfg_max = from_dict(TrainJobConfig, {**dump_config(cfg), "method": {**dump_config(cfg.method),
                                         "id": {**dump_config(cfg.method.id), "top_n": n_max}}})
    ek = encode_kwargs_for(cfg_max, student_dir, teacher_dir)
    renormalize = cfg_max.method.id.mode == "separate"
    key = map_cache.cache_key(teacher_dir=teacher_dir, student_dir=student_dir, examples=train, encode_kwargs=ek,
                              num_blocks=n_max, renormalize=renormalize)
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
              use_asha: bool = True) -> dict:
    """Sweep λ × N; returns the summary (also written as sweep.json). `fail_once=(λ, N)`
    makes that trial's first attempt raise (to show the retry)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    t_start = time.perf_counter()
    sweep_dir = Path(sweep_dir or Path(cfg.run.output_dir) / (cfg.run.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"))
    sweep_dir = sweep_dir.resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_max = max(top_ns)
    base_dict = dump_config(cfg)
    base_dict["teacher"]["cache_dir"] = cfg.teacher.cache_dir or str(sweep_dir / "map_cache")
    base_dict["teacher"]["cache_blocks"] = n_max
    base_dict["method"]["compare_bt"] = False
    base_dict["method"]["name"] = "id"
    cfg = from_dict(TrainJobConfig, base_dict)

    train, evals, _ = load_data(cfg, sweep_dir)
    cluster.init_ray(cfg.resources.ray_address)
    student_dir = prepare_student(cfg, sweep_dir)
    teacher_dir, _ = prepare_teacher(cfg, sweep_dir, needed=True)
    # Trials use the prepared assets by path (no per-trial fine-tune, same cache key).
    base_dict["student"]["name_or_path"] = student_dir
    base_dict["teacher"]["name_or_path"] = teacher_dir
    cfg = from_dict(TrainJobConfig, base_dict)

    cache = build_cache(cfg, train=train, student_dir=student_dir, teacher_dir=teacher_dir, n_max=n_max)
    print(f"[idrm] sweep: teacher maps for N_max={n_max} at {cache['path']} ({cache['rows']} rows, "
          f"built now: {cache['built_now']}, {cache['build_s']:.1f} s)")

    concurrency = max_concurrent(cfg)
    param_space = {"lam": tune.grid_search(list(lams)), "top_n": tune.grid_search(list(top_ns))}
    if fail_once:
        markers = sweep_dir / "fail_markers"
        markers.mkdir(exist_ok=True)
        param_space["fail_once_marker"] = tune.sample_from(
            lambda spec, lam=fail_once[0], n=fail_once[1], d=str(markers):
            f"{d}/lam{lam:g}_n{n}" if (spec.config.lam == lam and spec.config.top_n == n) else "")
    trainable = tune.with_parameters(
        _trial, base=base_dict, train=train, evals=evals, student_dir=student_dir, teacher_dir=teacher_dir,
        cache_path=cache["path"], trials_dir=str(sweep_dir / "trials"))
    # ASHA on the eval metric: each trial reports once (its final eval) because the trial's
    # TorchTrainer reports to Train, not Tune; with one report per trial ASHA cannot stop early.
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=100, grace_period=1) if use_asha else None
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.01}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                    max_concurrent_trials=concurrency, num_samples=num_samples),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir / "ray_tune"),
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    grid = tuner.fit()
    rows = []
    for r in grid:
        m = dict(r.metrics or {})
        rows.append({"lam": r.config["lam"], "top_n": r.config["top_n"], "eval_accuracy": m.get("eval_accuracy"),
                     "eval_loss": m.get("eval_loss"), "steps": m.get("steps"), "wall_time_s": m.get("wall_time_s"),
                     "cache_hit": m.get("cache_hit"), "cache_unchanged": m.get("cache_unchanged"),
                     "checkpoint_path": m.get("checkpoint_path"), "config_path": m.get("config_path"),
                     "error": None if r.error is None else repr(r.error)[:200]})
    rows.sort(key=lambda x: (x["lam"], x["top_n"]))
    ok = [x for x in rows if x["eval_accuracy"] is not None]
    best = max(ok, key=lambda x: x["eval_accuracy"]) if ok else None
    write_table(sweep_dir, rows)
    heatmap(sweep_dir / "heatmap.png", rows, lams=list(lams), top_ns=list(top_ns))
    if best:
        best_cfg = trial_config(base_dict, lam=best["lam"], top_n=best["top_n"], output_dir=str(sweep_dir / "best_runs"))
        (sweep_dir / "best_config.yaml").write_text(dump_yaml(best_cfg))
        (sweep_dir / "best.json").write_text(json.dumps(best, indent=2))
    success = Path(cache["path"]) / "_SUCCESS"
    cache["success_rewritten"] = success.stat().st_mtime != cache["success_mtime"]
    cache["cache_dirs"] = sorted(p.name for p in Path(cfg.teacher.cache_dir).iterdir() if not p.name.startswith("."))
    (sweep_dir / "cache.json").write_text(json.dumps(cache, indent=2))
    summary = {"sweep_dir": str(sweep_dir), "wall_time_s": time.perf_counter() - t_start, "trials": rows,
               "best": best, "cache": cache, "max_concurrent_trials": concurrency,
               "errors": [str(e)[:200] for e in grid.errors]}
    (sweep_dir / "sweep.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[idrm] sweep done in {summary['wall_time_s']:.0f} s: {sweep_dir}")
    return summary


def write_table(out: Path, rows: list[dict]) -> None:
    keys = list(rows[0]) if rows else []
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    cols = ["lam", "top_n", "eval_accuracy", "eval_loss", "steps", "wall_time_s", "cache_hit", "checkpoint_path", "error"]
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
    for r in rows:
        if r["eval_accuracy"] is not None:
            grid[lams.index(r["lam"]), top_ns.index(r["top_n"])] = r["eval_accuracy"]
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(top_ns), 1.5 + 0.6 * len(lams)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(top_ns)), [str(n) for n in top_ns])
    ax.set_yticks(range(len(lams)), [f"{x:g}" for x in lams])
    ax.set_xlabel("N (distilled blocks)")
    ax.set_ylabel("λ")
    for i in range(len(lams)):
        for j in range(len(top_ns)):
            if not math.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="w")
    fig.colorbar(im, ax=ax, label=METRIC)
    ax.set_title(f"{METRIC} over λ × N")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
