"""Ray at the edge: connecting, resources and the TorchTrainer around a worker loop.

Node types are named by custom resources (`student_gpu`, `teacher_gpu`, declared in
cluster.yaml). `resources.custom_resources`: `require` always asks for them, `ignore`
never does, `auto` asks only when the cluster offers them (so the same config runs on
one machine, DESIGN.md §2 decision 2).
"""
from __future__ import annotations

import os
from pathlib import Path

import ray
from ray.data import DataContext
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from idrm_ray import console, local_ray
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.stream.dataset import ExactlyOnceDataConfig, StagePlacement


def init_ray(address: str) -> None:
    """Join `address` (e.g. `auto` under `ray job submit`) or start Ray in process.
    Locally we declare at least 4 logical CPUs: the stages ask for CPU fractions, and
    2-core machines would otherwise leave Ray Data no budget (STACK_NOTES.md). With no
    address, a new local Ray starts even when another one runs on this machine (`ray start`):
    joining it by accident would run the job under someone else's resources; and its workers
    are pinned to it (`local_ray`), or Ray Train's placement-group cleaner may ask the other one
    whether this run lives and tear it down.

    In a quiet CLI session (`console`, no --verbose) the workers' output stays in Ray's session
    logs (log_to_driver=False), Ray Data draws no progress bars, and the workers' progress
    reaches the console through the console's progress board instead."""
    quiet = console.quiet_session()
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):  # a cluster (e.g. under `ray job submit`)
            context = ray.init(address=address or None, log_to_driver=not quiet)
        else:
            context = local_ray.init(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=not quiet)
        if context.dashboard_url:  # the Ray Data operators and idrm_* metrics show up there
            console.info(f"[idrm] Ray dashboard: http://{context.dashboard_url}")
        if quiet:
            console.on_close(ray.shutdown)  # before the terminal gets stdout back: its exit noise goes to the log
            node = getattr(ray._private.worker, "_global_node", None)  # no public API for the session's logs
            if node is not None:
                console.ray_logs(node.get_logs_dir_path())
    if quiet:
        DataContext.get_current().enable_progress_bars = False  # datasets made from here on copy it
        console.start_board()


def _offers(resource: str) -> bool:
    return bool(resource) and ray.cluster_resources().get(resource, 0) > 0


def _wants(cfg: TrainJobConfig, resource: str) -> bool:
    mode = cfg.resources.custom_resources
    if mode == "require":
        return bool(resource)
    return mode == "auto" and _offers(resource)


def scaling_config(cfg: TrainJobConfig) -> ScalingConfig:
    res = cfg.resources
    per_worker: dict[str, float] = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        per_worker["GPU"] = res.gpus_per_worker
    if _wants(cfg, res.student_resource):
        per_worker[res.student_resource] = res.student_resource_amount
    return ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu, resources_per_worker=per_worker)


def teacher_finetune_scaling_config(cfg: TrainJobConfig) -> ScalingConfig:
    """The NLI fine-tune's workers go where the teacher runs (the teacher node type): its
    custom resource and its GPU share (`resources.teacher_num_gpus`, 0: CPU), with the
    fine-tune's own worker count and CPUs (`teacher.finetune.num_workers`, `cpus_per_worker`)."""
    res, ft = cfg.resources, cfg.teacher.finetune
    per_worker: dict[str, float] = {"CPU": ft.cpus_per_worker}
    use_gpu = res.teacher_num_gpus > 0
    if use_gpu:
        per_worker["GPU"] = res.teacher_num_gpus
    if _wants(cfg, res.teacher_resource):
        per_worker[res.teacher_resource] = res.teacher_resource_amount
    return ScalingConfig(num_workers=ft.num_workers, use_gpu=use_gpu, resources_per_worker=per_worker)


def stage_placement(cfg: TrainJobConfig) -> StagePlacement:
    res = cfg.resources
    custom = {res.teacher_resource: res.teacher_resource_amount} if _wants(cfg, res.teacher_resource) else None
    return StagePlacement(
        encode_concurrency=res.encode_concurrency,
        teacher_cpus=res.teacher_num_cpus,
        teacher_gpus=res.teacher_num_gpus,
        teacher_resources=custom,
        teacher_concurrency=tuple(res.teacher_concurrency),
        teacher_batch_size=cfg.teacher.batch_size,
    )


def runs_that_fit(cfg: TrainJobConfig) -> int:
    """Train runs (workers + a teacher actor) that fit at once: GPUs, or CPUs (physical on a
    local machine: Ray's logical 4 on 2 cores would over-subscribe, STACK_NOTES.md)."""
    res = cfg.resources
    if res.use_gpu:
        gpus = ray.cluster_resources().get("GPU", 0)
        need = res.num_workers * res.gpus_per_worker + res.teacher_num_gpus
        return max(1, int(gpus // max(need, 1e-9)))
    cpus = ray.cluster_resources().get("CPU", 1)
    if (res.ray_address or os.environ.get("RAY_ADDRESS", "")) in ("", "local"):  # this machine's own Ray
        cpus = min(cpus, os.cpu_count() or 1)
    need = res.num_workers * res.cpus_per_worker + res.teacher_num_cpus
    return max(1, int(cpus // max(need, 1e-9)))


def storage_path(cfg: TrainJobConfig, run_dir: Path) -> str:
    return cfg.run.storage_path or str((run_dir / "ray_storage").resolve())


def pin_data_coordinator() -> None:
    """Create Ray Data's AutoscalingCoordinator from this (driver) process. Ray 2.55 creates it
    as a detached actor pinned (soft=False) to the node of whichever process needs it first;
    when that is a worker node that later dies, the actor can never restart there and every
    Data stream of the run fails with ActorUnschedulableError (seen once in the simulated
    cluster's node-removal test). Created here first, it lives on the driver's node."""
    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )
    except ImportError:  # another Ray version: nothing to pin
        return
    get_or_create_autoscaling_coordinator()


def fit(loop, *, loop_config: dict, datasets: dict, cfg: TrainJobConfig, run_dir: Path, name: str,
        callbacks: list | None = None, scaling: ScalingConfig | None = None):
    """Run one TorchTrainer; the same name + storage path resumes an interrupted run.
    `callbacks`: Train V2 user callbacks, e.g. Tune's `TuneReportCallback` inside a sweep trial
    (every `ray.train.report` of the workers then reaches Tune as a result). `scaling`: the
    workers' resources (default: the student's, `scaling_config(cfg)`)."""
    pin_data_coordinator()
    trainer = TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=scaling or scaling_config(cfg),
        datasets=datasets,
        dataset_config=ExactlyOnceDataConfig(),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path(cfg, run_dir),
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=callbacks or None,
        ),
    )
    return trainer.fit()
