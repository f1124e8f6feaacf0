"""One trial of the λ × N sweep (`sweep.py`): its config, the run it makes, what it leaves
for the table when ASHA stops it inside its fit, and its row of the results table."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from idrm_ray.config import derive
from idrm_ray.configtree.loader import dump_yaml
from idrm_ray.config.plan import make_plan
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.run import train_one

__all__ = ["TRIAL_INFO", "run_trial", "trial_config", "trial_row"]


def trial_config(base: TrainJobConfig, *, lam: float, top_n: int, output_dir: str,
                 worker_wandb: bool = True) -> TrainJobConfig:
    values = {"method.name": "id", "method.compare_bt": False, "method.id.lam": float(lam),
              "method.id.top_n": int(top_n), "run.output_dir": output_dir, "run.name": f"lam{lam:g}_n{top_n}",
              "run.storage_path": ""}
    if not worker_wandb:  # in a sweep, W&B is Tune's callback (one run per trial), not the worker's
        values["logging.wandb_mode"] = "disabled"
    return derive(base, values)


TRIAL_INFO = "trial.json"


def _unchanged(success: Path | None, cache_hit, run_dir: Path):
    """The cache's `_SUCCESS` has the mtime the trial saw before its fit (None without a cache)."""
    if not cache_hit:
        return None if success is None else False
    before = json.loads((run_dir / TRIAL_INFO).read_text())["success_mtime"]
    return success.exists() and success.stat().st_mtime == before


def run_trial(config: dict, *, base: TrainJobConfig, train, evals, student_dir: str, teacher_dir: str,
              cache_path: str | None, trials_dir: str, before_trial: Callable[[dict], None] | None = None):
    """One Tune trial: the run for (λ, N) = (config["lam"], config["top_n"]) through the
    pipeline's `train_one`, every eval reported to Tune, then its outputs."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    lam, top_n = config["lam"], config["top_n"]
    cfg = trial_config(base, lam=lam, top_n=top_n, output_dir=trials_dir, worker_wandb=False)
    if before_trial is not None:  # e.g. a fault injected to watch Tune retry the trial
        before_trial(config)
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
