"""The teacher's files, as paths the workers load, and its NLI data.

- Teacher: a ready NLI checkpoint (hub id / path), `tiny` (random, no NLI tuning: the
  paper's "w/o SNLI" ablation), or empty: fine-tune `teacher.finetune.base` on NLI data
  first (`teacher/finetune.py`) and use the result.
"""
from __future__ import annotations

import functools
from pathlib import Path

from idrm_ray.config.train import TrainJobConfig
from idrm_ray.data import load_nli, tokenizer_corpus


def tiny_teacher_dir(cfg: TrainJobConfig, run_dir: Path, name: str) -> str:
    """A random tiny encoder with a 3-way head, saved as an HF directory."""
    out = run_dir / "assets" / name
    if not (out / "config.json").exists():
        from idrm_ray.core import tiny  # torch: only where a tiny teacher is built
        from idrm_ray.core.hf_save import save_pretrained

        t = cfg.teacher.tiny
        kind = "unigram" if t.family == "deberta-v2" else "wordpiece"
        tokenizer = tiny.train_teacher_tokenizer(tokenizer_corpus(), kind=kind)
        model = tiny.build_tiny_teacher(
            tokenizer, family=t.family, num_layers=t.num_layers, hidden_size=t.hidden_size, num_heads=t.num_heads, seed=t.seed
        )
        save_pretrained(model, out)
        tokenizer.save_pretrained(out)
    return str(out)


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
    # data.skip_bad_rows covers the NLI data too; job.py writes what was skipped.
    data, report = load_nli(ft.data, split=ft.split, max_rows=ft.max_examples, skip_bad_rows=skip_bad_rows)
    n_eval = max(1, int(len(data) * ft.eval_fraction))
    return data[n_eval:], data[:n_eval], report
