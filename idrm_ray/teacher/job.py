"""Driver of the NLI teacher fine-tune (`idrm-ray teacher`, and step 1 of the embedded default)."""
from __future__ import annotations

import json
from pathlib import Path

import ray

from idrm_ray import console
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.stream import cluster
from idrm_ray.teacher.assets import nli_examples, tiny_teacher_dir
from idrm_ray.train.checkpointing import copy_tree
from idrm_ray.train.session import LocalShard, fit_local
from idrm_ray.teacher.finetune import (
    LinearSchedule,
    TeacherFinetuneSpec,
    nli_train_loop,
    per_worker_batch,
    spec_dict,
)


def prepare_teacher(cfg: TrainJobConfig, run_dir: Path, *, needed: bool) -> tuple[str | None, dict]:
    if not needed:
        return None, {}
    name = cfg.teacher.name_or_path
    if name == "tiny":
        return tiny_teacher_dir(cfg, run_dir, "teacher"), {}
    if name:
        return name, {}
    ft = cfg.teacher.finetune
    base = tiny_teacher_dir(cfg, run_dir, "teacher_base") if ft.base == "tiny" else ft.base
    out = Path(ft.output_dir) if ft.output_dir else run_dir / "teacher"
    return finetune_teacher(cfg, base_dir=base, out_dir=out)


def _nli_rows(examples) -> list[dict]:
    return [{"premise": e.premise, "hypothesis": e.hypothesis, "label": int(e.label)} for e in examples]


def _nli_dataset(examples) -> ray.data.Dataset:
    rows = _nli_rows(examples)
    return ray.data.from_items(rows, override_num_blocks=min(8, len(rows)))


def _fit(cfg: TrainJobConfig, spec: TeacherFinetuneSpec, *, train, evals, out_dir: Path, scaling):
    """The fine-tune as a Ray Train run, or in this process with `run.local` (one worker)."""
    name, config = f"{out_dir.parent.name}-teacher", {"spec": spec_dict(spec)}
    if cfg.run.local:
        shards = {"train": LocalShard(lambda: _nli_rows(train)), "eval": LocalShard(lambda: _nli_rows(evals))}
        return fit_local(nli_train_loop, loop_config=config, shards=shards, keep=cfg.run.keep_checkpoints,
                         storage=Path(cluster.storage_path(cfg, out_dir.parent)) / name)
    return cluster.fit(nli_train_loop, loop_config=config, cfg=cfg, run_dir=out_dir.parent, name=name,
                       datasets={"train": _nli_dataset(train), "eval": _nli_dataset(evals)}, scaling=scaling)


def finetune_teacher(cfg: TrainJobConfig, *, base_dir: str, out_dir: Path) -> tuple[str, dict]:
    """Fine-tune `base_dir` into a 3-way NLI cross-encoder saved at `out_dir`."""
    if (out_dir / "config.json").exists() and (out_dir / "nli_metrics.json").exists():
        return str(out_dir), json.loads((out_dir / "nli_metrics.json").read_text())
    ft = cfg.teacher.finetune
    train, evals, report = nli_examples(cfg)
    if cfg.data.skip_bad_rows:
        report.write_skipped(out_dir.parent, "skipped_nli_rows.jsonl")
    spec = TeacherFinetuneSpec(
        base_dir=base_dir, num_train=len(train), epochs=ft.epochs, lr=ft.lr, batch_size=ft.batch_size,
        warmup_ratio=ft.warmup_ratio, max_len=ft.max_len, weight_decay=ft.weight_decay,
        log_every=ft.log_every, seed=ft.seed,
    )
    scaling = cluster.teacher_finetune_scaling_config(cfg)
    schedule = LinearSchedule.plan(num_examples=len(train), batch_size=ft.batch_size, epochs=ft.epochs,
                                   warmup_ratio=ft.warmup_ratio)
    console.phase("teacher fine-tune", f"{base_dir} on {len(train)} NLI pairs ({len(evals)} held out): "
                  f"{schedule.total_steps} steps of {ft.batch_size} ({ft.num_workers} worker(s) x "
                  f"{per_worker_batch(ft.batch_size, ft.num_workers)}), {schedule.warmup_steps} warmup, "
                  f"each worker {scaling.resources_per_worker}")
    result = _fit(cfg, spec, train=train, evals=evals, out_dir=out_dir, scaling=scaling)
    if result.error is not None:
        raise result.error
    with result.checkpoint.as_directory() as d:
        copy_tree(d, out_dir)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    metrics.update(nli_train_pairs=len(train), nli_unlabeled_dropped=report.nli_unlabeled_dropped,
                   nli_rows_skipped=report.rows_skipped)
    (out_dir / "nli_metrics.json").write_text(json.dumps(metrics, indent=2))
    console.info(f"[idrm] teacher NLI accuracy {metrics.get('nli_accuracy', float('nan')):.3f} -> {out_dir}")
    return str(out_dir), metrics
