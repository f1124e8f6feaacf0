"""The sweep's outputs besides Tune's own (`sweep.py`): W&B through Tune's logger,
results.csv/.md, the λ × N heatmap and the portable best_config.yaml."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from idrm_ray import console
from idrm_ray.config import dump_config
from idrm_ray.configtree.loader import CONFIG_DIR
from idrm_ray.config.train import TrainJobConfig

METRIC = "eval_accuracy"

__all__ = ["METRIC", "PORTABLE_HEADER", "heatmap", "portable_yaml", "wandb_callbacks", "wandb_env", "write_table"]


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


class wandb_env:
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
