"""Driver-side preparation of the models a run needs, as paths the workers load.

- Student `tiny`: a tokenizer trained on the bundled texts and a random tiny decoder,
  saved as a reward-model directory; otherwise the hub id / local path is used as is.
- Teacher: a ready NLI checkpoint (hub id / path), `tiny` (random, no NLI tuning: the
  paper's "w/o SNLI" ablation), or empty: fine-tune `teacher.finetune.base` on NLI data
  first (`teacher_finetune.py`) and use the result.
"""
from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core import tiny
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.data import load_nli, tokenizer_corpus


@dataclass(frozen=True)
class Assets:
    student_dir: str  # HF reward-model dir or hub id (tokenizer included)
    teacher_dir: str | None  # NLI cross-encoder dir or hub id; None for BT-only runs
    teacher_metrics: dict  # NLI fine-tuning metrics ({} when a ready teacher is used)


def prepare_student(cfg: TrainJobConfig, run_dir: Path) -> str:
    if cfg.student.name_or_path != "tiny":
        return cfg.student.name_or_path
    out = run_dir / "assets" / "student"
    if not (out / "config.json").exists():
        t = cfg.student.tiny
        tokenizer = tiny.train_student_tokenizer(tokenizer_corpus())
        model = tiny.build_tiny_student(
            tokenizer,
            family=t.family,
            num_layers=t.num_layers,
            hidden_size=t.hidden_size,
            num_heads=t.num_heads,
            num_kv_heads=t.num_kv_heads,
            attn_implementation=cfg.student.attn_implementation,
            seed=t.seed,
        )
        save_reward_model(model, tokenizer, out, metadata={"origin": "tiny random init"})
    return str(out)


def tiny_teacher_dir(cfg: TrainJobConfig, run_dir: Path, name: str) -> str:
    """A random tiny encoder with a 3-way head, saved as an HF directory."""
    out = run_dir / "assets" / name
    if not (out / "config.json").exists():
        t = cfg.teacher.tiny
        kind = "unigram" if t.family == "deberta-v2" else "wordpiece"
        tokenizer = tiny.train_teacher_tokenizer(tokenizer_corpus(), kind=kind)
        model = tiny.build_tiny_teacher(
            tokenizer, family=t.family, num_layers=t.num_layers, hidden_size=t.hidden_size, num_heads=t.num_heads, seed=t.seed
        )
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return str(out)


def copy_tree(src: str | Path, dst: str | Path) -> None:
    if Path(dst).exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)


def nli_examples(cfg: TrainJobConfig):
    """NLI train/eval triples for the teacher fine-tune (bundled files or user data). Loaded
    once per process and settings: the driver validates them before Ray starts
    (`validate_teacher_data`) and the fine-tune reuses the result."""
    return _nli_examples(cfg.teacher.finetune, cfg.data.skip_bad_rows)


def validate_teacher_data(cfg: TrainJobConfig, *, needed: bool) -> None:
    """Read and validate the NLI data now when the run will fine-tune the teacher, so a bad
    file fails in seconds with its one-line error, before Ray or any worker starts."""
    if needed and not cfg.teacher.name_or_path:
        nli_examples(cfg)


@functools.lru_cache(maxsize=4)
def _nli_examples(ft, skip_bad_rows: bool):
    from idrm_ray.data import bundled_path

    if ft.data == "bundled":
        train, train_report = load_nli(bundled_path("nli_train"), max_rows=ft.max_examples)
        evals, _ = load_nli(bundled_path("nli_eval"))
        return train, evals, train_report
    # data.skip_bad_rows covers the NLI data too; teacher_job writes what was skipped.
    data, report = load_nli(ft.data, split=ft.split, max_rows=ft.max_examples, skip_bad_rows=skip_bad_rows)
    n_eval = max(1, int(len(data) * ft.eval_fraction))
    return data[n_eval:], data[:n_eval], report
