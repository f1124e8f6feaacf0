"""`idrm-ray train`: the job driver (runs on the head node or the local machine).

Order: validate data (before any GPU time) -> prepare student/teacher -> per method, a
Ray Data stream (encode -> teacher maps) into a TorchTrainer -> run folder with
checkpoints, metrics, plots and summary.json.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray

from idrm_ray import console
from idrm_ray.config.plan import make_plan, teacher_dtype
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core.method_kind import am_from_ratings, method_kind
from idrm_ray.methods.registry import worker_asks
from idrm_ray.multirun import tools as procedures
from idrm_ray.run import outputs, preflight
from idrm_ray.run.assets import prepare_student
from idrm_ray.run.inputs import RunInputs, prepare_inputs, run_dir_for
from idrm_ray.stream import cluster, local_run, map_cache
from idrm_ray.stream.dataset import encoded_stream, examples_dataset, teacher_stream
from idrm_ray.stream.stages import encode_stage
from idrm_ray.teacher.assets import validate_teacher_data
from idrm_ray.teacher.job import prepare_teacher
from idrm_ray.train.checkpointing import model_dir as ckpt_model_dir
from idrm_ray.train.session import fit_local
from idrm_ray.train.spec import WorkerSpec, peft_settings


def worker_spec(cfg: TrainJobConfig, plan, *, method: str, student_dir: str, pad_id: int, run_dir: Path,
                **overrides) -> WorkerSpec:
    """The worker's values for one run of `method` (bt, id, am, lf, inform, id+am, id+lf; an
    ensemble member is a bt or id run with `overrides` such as seed, lr or max_steps); what
    depends on the method (loss settings, L_ID, head) its family asks (`methods.registry`)."""
    o = cfg.optim
    spec = WorkerSpec(
        method=method, student_dir=student_dir, pad_id=pad_id, **worker_asks(cfg.method, method),
        lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), schedule=o.schedule,
        warmup_steps=plan.warmup_steps, total_steps=plan.total_steps, max_steps=o.max_steps, epochs=o.epochs,
        micro_batch_size=plan.micro_batch_size, grad_accum_steps=plan.grad_accum_steps,
        max_grad_norm=o.max_grad_norm, seed=o.seed, shuffle_buffer=cfg.data.shuffle_buffer,
        strategy="deepspeed" if cfg.deepspeed.enabled else "torch", zero_stage=cfg.deepspeed.zero_stage,
        precision=plan.precision, offload_optimizer=cfg.deepspeed.offload_optimizer,
        offload_params=cfg.deepspeed.offload_params,
        gradient_checkpointing=cfg.student.gradient_checkpointing,
        student_dtype=plan.student_dtype, attn_implementation=cfg.student.attn_implementation,
        peft=peft_settings(cfg.student),
        eval_every=plan.eval_every, checkpoint_every=plan.checkpoint_every, log_every=cfg.run.log_every,
        max_nonfinite_steps=cfg.run.max_nonfinite_steps,
        run_name=run_dir.name, wandb_project=cfg.logging.wandb_project, wandb_mode=cfg.logging.wandb_mode,
        wandb_dir=str(run_dir), render=render_metadata(cfg),
    )
    return replace(spec, **overrides)


def encode_kwargs_for(cfg: TrainJobConfig, student_dir: str, teacher_dir: str | None) -> dict:
    """The encode stage's settings of a run (the map-cache key depends on them)."""
    return dict(
        student_tokenizer_dir=student_dir, teacher_tokenizer_dir=teacher_dir,
        student_max_len=cfg.student.max_len, teacher_max_len=cfg.teacher.max_len, template=cfg.student.render,
    )


def render_metadata(cfg: TrainJobConfig) -> dict:
    """How the student read its text, saved in every checkpoint (`idrm_meta.json` "render"):
    eval, the reward server and the PPO builder take it from there (DESIGN.md decision 9)."""
    t = cfg.student.template
    return {"chat_template": cfg.student.chat_template, "template": [t.prefix, t.separator, t.suffix],
            "max_len": cfg.student.max_len}


def methods_to_run(cfg: TrainJobConfig) -> list[str]:
    if cfg.method.compare_bt and cfg.method.name != "bt":
        return ["bt", cfg.method.name]
    return [cfg.method.name]


def run_train(cfg: TrainJobConfig, inputs: RunInputs | None = None) -> dict:
    """`inputs`: what `prepare_inputs(cfg)` read already (the command line reads it first)."""
    inputs = inputs or prepare_inputs(cfg)
    run_dir, train, evals, counts = inputs.run_dir, inputs.train, inputs.evals, inputs.counts
    plan = make_plan(cfg, len(train))
    methods = methods_to_run(cfg)
    console.run_folder(run_dir, f"[idrm] run folder {run_dir}: {len(train)} train / {len(evals)} eval pairs, "
                                f"methods {methods}")
    _start(cfg)
    student_dir = prepare_student(cfg, run_dir)
    teacher_dir, teacher_metrics = prepare_teacher(cfg, run_dir, needed=cfg.method.distills)
    runs = run_methods(cfg, plan, methods, student_dir=student_dir, teacher_dir=teacher_dir, train=train,
                       evals=evals, run_dir=run_dir)
    summary = {
        "run_dir": str(run_dir),
        "wall_time_s": time.perf_counter() - inputs.started,
        "data": counts,
        "plan": plan.as_dict(),
        "teacher": {"path": teacher_dir, **teacher_metrics},
        "runs": runs,
    }
    outputs.write_summary(run_dir, summary)
    return summary


def _start(cfg: TrainJobConfig) -> None:
    """Ray and the checks before any worker (models + cluster); a local run (`run.local`,
    the NLI fine-tune in this process too) checks the models and starts no Ray."""
    if cfg.run.local:
        preflight.check_models(cfg, needs_teacher=cfg.method.distills, needs_student=True)
        return
    cluster.init_ray(cfg.resources.ray_address)
    preflight.check_before_workers(cfg, job="train")


def train_one(cfg, plan, *, method, student_dir, teacher_dir, train, evals, run_dir: Path,
              out_name: str | None = None, spec_overrides: dict | None = None, keep_checkpoints: bool = False,
              callbacks: list | None = None) -> dict:
    """One run of `method` over `train` (a TorchTrainer, or this process with `run.local`);
    its folder is run_dir/(out_name or method). `keep_checkpoints`: the row also lists every
    kept checkpoint's model directory (WARM's checkpoint-average variant)."""
    from idrm_ray.core.reward_model import cached_tokenizer

    out_name = out_name or method
    tokenizer = cached_tokenizer(student_dir)  # pad = EOS where the student has no pad token
    spec = worker_spec(cfg, plan, method=method, student_dir=student_dir, pad_id=tokenizer.pad_token_id,
                       run_dir=run_dir, **(spec_overrides or {}))
    encode_kwargs = encode_kwargs_for(cfg, student_dir, teacher_dir)
    name = f"{run_dir.name}-{out_name}".replace("+", "_").replace("/", "-")
    t0 = time.perf_counter()
    fit = _fit_local if cfg.run.local else _fit_ray
    result = fit(cfg, spec, train=train, evals=evals, teacher_dir=teacher_dir, encode_kwargs=encode_kwargs,
                 run_dir=run_dir, name=name, callbacks=callbacks)
    if result.error is not None:
        raise result.error
    row = outputs.collect_method(run_dir / out_name, result, method=method, wall_s=time.perf_counter() - t0)
    if keep_checkpoints:
        row["checkpoints"] = [str(ckpt_model_dir(c.path)) for c, _ in result.best_checkpoints]
    return row


def _fit_ray(cfg, spec: WorkerSpec, *, train, evals, teacher_dir, encode_kwargs: dict, run_dir: Path, name: str,
             callbacks):
    """The Ray Data stream (encode -> teacher maps) into a TorchTrainer of the worker loop."""
    distill, placement = spec.id_settings is not None, cluster.stage_placement(cfg)
    # Units only matter where teacher maps are compared: BT training and every eval encode
    # with the student tokenizer standing in for the teacher (identity units, no extra tokenizing).
    student_only = {**encode_kwargs, "teacher_tokenizer_dir": None}
    train_ds = encoded_stream(examples_dataset(train), encode_kwargs=encode_kwargs if distill else student_only,
                              placement=placement)
    if distill:
        train_ds = teacher_maps_stream(cfg, train_ds, train=train, teacher_dir=teacher_dir,
                                       student_dir=spec.student_dir, encode_kwargs=encode_kwargs, placement=placement)
    eval_ref = ray.put(encode_eval(evals, student_only))
    return cluster.fit(_loop(), loop_config={"spec": spec.to_dict(), "eval": eval_ref}, datasets={"train": train_ds},
                       cfg=cfg, run_dir=run_dir, callbacks=callbacks, name=name)


def _fit_local(cfg, spec: WorkerSpec, *, train, evals, teacher_dir, encode_kwargs: dict, run_dir: Path, name: str,
               callbacks):
    """The same stages and worker loop in this process (`run.local`): no Ray Train, world size 1."""
    if callbacks:
        raise ValueError("run.local=true trains in this process: Ray Tune's callbacks need Ray Train runs")
    distill = spec.id_settings is not None
    student_only = {**encode_kwargs, "teacher_tokenizer_dir": None}
    shard = local_run.local_shard(
        train, encode_kwargs=encode_kwargs if distill else student_only, placement=cluster.stage_placement(cfg),
        teacher_kwargs=teacher_kwargs_for(cfg, teacher_dir, top_n=cfg.method.id.top_n) if distill else None)
    return fit_local(_loop(), loop_config={"spec": spec.to_dict(), "eval": encode_eval(evals, student_only)},
                     shards={"train": shard}, storage=Path(cluster.storage_path(cfg, run_dir)) / name,
                     keep=cfg.run.keep_checkpoints)


def teacher_kwargs_for(cfg: TrainJobConfig, teacher_dir: str, *, top_n: int) -> dict:
    """The teacher stage's settings: rows renormalised over the kept keys of each half
    (separate) or of both (joint), METHOD.md §6; the plan's teacher dtype (teacher.dtype;
    auto: fp16 on teacher GPUs, fp32 on CPU)."""
    return dict(teacher_path=teacher_dir, top_n=top_n, renormalize=cfg.method.id.mode,
                head_renorm=cfg.method.id.teacher_head_renorm, map_format=cfg.teacher.map_format,
                dtype=teacher_dtype(cfg))


def map_cache_key(cfg, *, train, teacher_dir, student_dir, encode_kwargs, num_blocks: int) -> str:
    """The map cache's key for `num_blocks` teacher blocks over `train` as `cfg` encodes and
    normalises them: a run, a sweep's shared build and its best config agree on it."""
    return map_cache.cache_key(teacher_dir=teacher_dir, student_dir=student_dir, examples=train,
                               encode_kwargs=encode_kwargs, num_blocks=num_blocks, renormalize=cfg.method.id.mode,
                               head_renorm=cfg.method.id.teacher_head_renorm, map_format=cfg.teacher.map_format)


def teacher_maps_stream(cfg, encoded, *, train, teacher_dir, student_dir, encode_kwargs, placement):
    """The teacher stage over the encoded stream, or the map cache when configured."""
    top_n = cfg.method.id.top_n
    if not cfg.teacher.cache_dir:
        kwargs = teacher_kwargs_for(cfg, teacher_dir, top_n=top_n)
        return teacher_stream(encoded, teacher_kwargs=kwargs, placement=placement)
    n_max = max(cfg.teacher.cache_blocks, top_n)
    key = map_cache_key(cfg, train=train, teacher_dir=teacher_dir, student_dir=student_dir,
                        encode_kwargs=encode_kwargs, num_blocks=n_max)
    kwargs = teacher_kwargs_for(cfg, teacher_dir, top_n=n_max)
    return map_cache.read_or_build(
        lambda: teacher_stream(encoded, teacher_kwargs=kwargs, placement=placement),
        root=cfg.teacher.cache_dir, key=key, num_blocks=n_max, needed=top_n,
    )


def encode_eval(evals, encode_kwargs: dict) -> list[dict]:
    """Eval pairs encoded once on the driver (student inputs only), as stream rows."""
    stage = encode_stage(**encode_kwargs)
    rows = []
    for start in range(0, len(evals), 256):
        chunk = evals[start : start + 256]
        batch = stage({
            "prompt": [e.prompt for e in chunk], "chosen": [e.chosen for e in chunk],
            "rejected": [e.rejected for e in chunk], "pair_id": np.arange(start, start + len(chunk)),
            "margin": np.array([np.nan if e.margin is None else e.margin for e in chunk]),
        })
        rows += [{k: v[i] for k, v in batch.items()} for i in range(len(chunk))]
    return rows


def run_methods(cfg, plan, methods: list[str], *, train, **common) -> list[dict]:
    """Every method's summary rows, in `methods` order. Methods that are one training run each
    (bt, id, am from ratings, inform, id+am) go side by side, each a Ray task driving its own
    TorchTrainer (the shape of ensemble members and Tune trials), as many at once as
    `methods_at_once` allows; else, and for local runs, one after another."""
    limit = methods_at_once(cfg, methods, train)
    if limit <= 1:
        return [row for method in methods for row in run_method(cfg, plan, method=method, train=train, **common)]
    console.info(f"[idrm] {len(methods)} runs side by side: {', '.join(methods)}")
    calls = [{"cfg": cfg, "plan": plan, "method": method, **common} for method in methods]
    per_method = procedures.run_tasks(run_method, calls, limit=limit, shared={"train": train})
    return [row for rows in per_method for row in rows]


def methods_at_once(cfg, methods: list[str], train) -> int:
    """How many of `methods` train at once: `run.methods_at_once` (0: as many as the cluster's
    student resources fit, `cluster.runs_that_fit`), 1 for a local run or when a method is
    an ensemble procedure (its members already fill the cluster)."""
    if cfg.run.local or len(methods) < 2:
        return 1
    am_rated = am_from_ratings(cfg.method.am.source, train)
    if any(method_kind(m).needs_members(am_from_ratings=am_rated) for m in methods):
        return 1
    return min(len(methods), cfg.run.methods_at_once or cluster.runs_that_fit(cfg))


def run_method(cfg, plan, **kwargs) -> list[dict]:
    """`method`'s family procedure (`multirun/tools.run_method`) with this driver's `train_one`."""
    return procedures.run_method(cfg, plan, train_one=train_one, **kwargs)


def _loop():
    from idrm_ray.train.worker import train_loop_per_worker

    return train_loop_per_worker



def run_teacher(cfg: TrainJobConfig) -> dict:
    """`idrm-ray teacher`: only the NLI fine-tune; prints and returns its metrics."""
    run_dir = run_dir_for(cfg)
    validate_teacher_data(cfg, needed=True)
    console.run_folder(run_dir, f"[idrm] run folder {run_dir}: the NLI teacher only")
    cluster.init_ray(cfg.resources.ray_address)
    if cfg.teacher.name_or_path:
        console.info(f"[idrm] teacher.name_or_path={cfg.teacher.name_or_path!r} is a ready teacher; nothing to fine-tune")
        return {}
    preflight.check_before_workers(cfg, job="teacher")
    path, metrics = prepare_teacher(cfg, run_dir, needed=True)
    console.result_table(json.dumps({"teacher": path, **metrics}, indent=2))
    return metrics
