"""Derived numbers of a train run, computed from the config and never written back into it.

`make_plan(cfg, num_train_pairs)` is pure arithmetic (no Ray, no torch), so the driver can
print it before anything starts and tests can check it by hand.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from idrm_ray.configtree.base import ConfigError
from idrm_ray.config.train import TrainJobConfig


@dataclass(frozen=True)
class TrainPlan:
    world_size: int  # data-parallel student ranks (= resources.num_workers)
    micro_batch_size: int  # pairs per forward/backward per rank
    grad_accum_steps: int  # global / (micro * world)
    global_batch_size: int  # effective pairs per optimizer step = micro * accum * world
    num_train_pairs: int
    steps_per_epoch: int  # ceil(pairs / global): every pair is used once per epoch
    last_step_pairs: int  # pairs in the last (possibly partial) step of an epoch
    total_steps: int  # steps_per_epoch * epochs, capped by optim.max_steps
    warmup_steps: int  # ceil(warmup_ratio * total_steps), as transformers does
    eval_every: int  # steps between evaluations (run.eval_every; 0 or above total -> total_steps)
    checkpoint_every: int  # steps between checkpoints (run.checkpoint_every; 0 or above total -> total_steps)
    precision: str  # resolved deepspeed.precision: bf16 | fp16 | fp32
    student_dtype: str  # resolved student.dtype
    teacher_dtype: str  # resolved teacher.dtype
    distill: bool  # whether L_ID is computed (method id with λ > 0)
    teacher_blocks: int  # teacher blocks whose maps are needed (N, or 0 without distillation)
    finetune_teacher: bool  # teacher.name_or_path is empty: NLI fine-tuning runs first
    cpus_needed: float  # train workers + the largest teacher pool, to compare with the cluster

    def as_dict(self) -> dict:
        return asdict(self)


def make_plan(cfg: TrainJobConfig, num_train_pairs: int) -> TrainPlan:
    """The plan for `num_train_pairs` training pairs (after the eval split and max_pairs)."""
    opt, res = cfg.optim, cfg.resources
    world, micro, glob = res.num_workers, opt.micro_batch_size, opt.global_batch_size
    accum = glob // (micro * world)  # divisibility is checked by TrainJobConfig
    steps_per_epoch = math.ceil(num_train_pairs / glob)
    if num_train_pairs < glob:
        raise ConfigError(
            f"{num_train_pairs} training pairs are fewer than one global batch ({glob}): "
            f"lower optim.global_batch_size or use more data")
    total = steps_per_epoch * opt.epochs
    if opt.max_steps is not None:
        total = min(total, opt.max_steps)
    precision = _resolve(cfg.deepspeed.precision, gpu=res.use_gpu)
    distill = cfg.method.distills and cfg.method.id.lam > 0
    return TrainPlan(
        world_size=world,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        global_batch_size=micro * accum * world,
        num_train_pairs=num_train_pairs,
        steps_per_epoch=steps_per_epoch,
        last_step_pairs=num_train_pairs - (steps_per_epoch - 1) * glob,
        total_steps=total,
        warmup_steps=math.ceil(opt.warmup_ratio * total),
        eval_every=min(cfg.run.eval_every or total, total),
        checkpoint_every=min(cfg.run.checkpoint_every or total, total),
        precision=precision,
        student_dtype=_student_dtype(cfg, precision),
        teacher_dtype=teacher_dtype(cfg),
        distill=distill,
        teacher_blocks=cfg.method.id.top_n if distill else 0,
        finetune_teacher=distill and cfg.teacher.name_or_path == "",
        cpus_needed=world * res.cpus_per_worker + (res.teacher_concurrency[1] * res.teacher_num_cpus if distill else 0),
    )


def _resolve(dtype: str, *, gpu: bool) -> str:
    return ("bf16" if gpu else "fp32") if dtype == "auto" else dtype


def _student_dtype(cfg: TrainJobConfig, precision: str) -> str:
    # DeepSpeed keeps fp32 master weights itself, so the weights load in the training
    # precision; the plain-torch path keeps fp32 weights and autocasts instead.
    if cfg.student.dtype != "auto":
        return cfg.student.dtype
    return precision if cfg.deepspeed.enabled else "fp32"


def teacher_dtype(cfg: TrainJobConfig) -> str:
    # The teacher is frozen and its maps travel in fp16 (DESIGN.md §2); CPUs compute in fp32.
    if cfg.teacher.dtype != "auto":
        return cfg.teacher.dtype
    return "fp16" if cfg.resources.teacher_num_gpus > 0 else "fp32"
