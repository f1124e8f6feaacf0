"""What a run reads before anything starts: its folder, its config there, its validated pairs
and (for a distilling run that fine-tunes its teacher) its NLI data.

Light on purpose (no torch, transformers or Ray): `idrm-ray train` calls `prepare_inputs` before
it imports the driver, so a bad data file ends in its one-line error within a second, and the
driver takes the pairs from here instead of reading them again.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from idrm_ray.config import dump_config
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.data import bundled_path, load_preferences
from idrm_ray.teacher.assets import validate_teacher_data


@dataclass(frozen=True)
class RunInputs:
    run_dir: Path
    train: list
    evals: list
    counts: dict
    started: float  # perf_counter when the run began: its wall time counts from here


def prepare_inputs(cfg: TrainJobConfig) -> RunInputs:
    """The run folder with its config.yaml, the pairs, and the NLI data checked when needed."""
    started = time.perf_counter()
    run_dir = run_dir_for(cfg)
    (run_dir / "config.yaml").write_text(json.dumps(dump_config(cfg), indent=2))
    train, evals, counts = load_data(cfg, run_dir)
    validate_teacher_data(cfg, needed=cfg.method.distills)  # NLI data too, before Ray starts
    return RunInputs(run_dir, train, evals, counts, started)


def run_dir_for(cfg: TrainJobConfig) -> Path:
    name = cfg.run.name or f"{cfg.method.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.run.output_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def load_data(cfg: TrainJobConfig, run_dir: Path):
    """Validated train/eval pairs; counts of anything skipped go to the run folder."""
    d = cfg.data
    train_src = bundled_path("pref_train") if d.train == "bundled" else d.train
    train, report = load_preferences(
        train_src, format=d.format, split=d.train_split, skip_bad_rows=d.skip_bad_rows, max_rows=d.max_pairs
    )
    if d.eval:
        eval_src = bundled_path("pref_eval") if d.eval == "bundled" else d.eval
        evals, eval_report = load_preferences(eval_src, format=d.format, split=d.eval_split,
                                              skip_bad_rows=d.skip_bad_rows, max_rows=d.max_eval_pairs)
    elif d.train == "bundled":
        evals, eval_report = load_preferences(bundled_path("pref_eval"), max_rows=d.max_eval_pairs)
    else:
        n_eval = int(len(train) * d.eval_fraction)
        train, evals, eval_report = train[n_eval:], train[:n_eval][: d.max_eval_pairs], None
    if d.skip_bad_rows:
        report.write_skipped(run_dir)
        if eval_report is not None:
            eval_report.write_skipped(run_dir, "skipped_eval_rows.jsonl")
    counts = {"train": report.metrics(), "eval": eval_report.metrics() if eval_report else {}}
    return train, evals, counts
