"""The Ray Data graph (DESIGN.md §2): validated pairs -> encode (CPU tasks) -> teacher actor
pool (small GPUs, `teacher_gpu`) -> streaming split into the train workers.

Resource rule for small machines (STACK_NOTES.md): Ray Data's budget excludes what the
train workers hold, so the stages ask for explicit CPU fractions; on 2 cores the
default (a whole CPU per actor) would wait forever without an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.data import ActorPoolStrategy, ExecutionResources, TaskPoolStrategy
from ray.train import DataConfig

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data.records import example_rows
from idrm_ray.stream.stages import TeacherStage, encode_batch


@dataclass(frozen=True)
class StagePlacement:
    """How much each Ray Data stage asks for. Custom resources name node types
    (`teacher_gpu` in cluster.yaml); on one machine they are left out."""

    encode_cpus: float = 0.25
    encode_concurrency: int = 2  # encode tasks at once
    teacher_cpus: float = 0.25
    teacher_gpus: float = 0.0
    teacher_resources: dict | None = None  # e.g. {"teacher_gpu": 1}
    teacher_concurrency: tuple[int, int] = (1, 1)
    teacher_batch_size: int = 16
    encode_batch_size: int = 64


def examples_dataset(examples: list[PreferenceExample], *, num_blocks: int | None = None) -> ray.data.Dataset:
    items = example_rows(examples)
    return ray.data.from_items(items, override_num_blocks=num_blocks or min(len(items), 16) or 1)


def encoded_stream(ds: ray.data.Dataset, *, encode_kwargs: dict[str, Any], placement: StagePlacement) -> ray.data.Dataset:
    """Encode as tasks (at most `encode_concurrency` at once) in Ray's pooled workers, which
    keep their loaded tokenizers between batches and runs (`stages.encode_batch`)."""
    return ds.map_batches(
        encode_batch,
        fn_kwargs=encode_kwargs,
        batch_size=placement.encode_batch_size,
        compute=TaskPoolStrategy(size=placement.encode_concurrency),
        num_cpus=placement.encode_cpus,
        batch_format="numpy",
    )


def teacher_stream(ds: ray.data.Dataset, *, teacher_kwargs: dict[str, Any], placement: StagePlacement) -> ray.data.Dataset:
    extra = {"resources": placement.teacher_resources} if placement.teacher_resources else {}
    return ds.map_batches(
        TeacherStage,
        fn_constructor_kwargs=teacher_kwargs,
        batch_size=placement.teacher_batch_size,
        compute=ActorPoolStrategy(min_size=placement.teacher_concurrency[0], max_size=placement.teacher_concurrency[1]),
        num_cpus=placement.teacher_cpus,
        num_gpus=placement.teacher_gpus or None,
        batch_format="numpy",
        max_restarts=-1,
        max_task_retries=-1,
        **extra,
    )


class ExactlyOnceDataConfig(DataConfig):
    """Ray Train's default split uses `streaming_split(equal=True)`, which may drop up to
    world_size-1 rows per epoch to balance the shards. We split with `equal=False` so
    every pair reaches exactly one worker once per epoch; the worker loop keeps ranks in
    lock-step at the ragged end (`ingest.synced_batches`).

    The order is preserved (`preserve_order`): a worker group restarted from a checkpoint
    mid-epoch re-streams the epoch and skips the micro-batches it had trained on, which is
    exactly-once only if every rank gets the same rows in the same order again. Without it,
    blocks leave the encode/teacher actor pools in completion order (a slow or retried
    batch, a second actor) and the splitter hands them to whichever rank has the fewest
    rows, so a resumed epoch could train some pairs twice and others never."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            options = self._get_execution_options(name)
            # As Ray Train's own DataConfig: only the V1 Data autoscaler needs the training
            # resources excluded; under V2 (Ray 2.55's default) Train registers them with the
            # autoscaling coordinator, and excluding them again drives Data's budget negative
            # when several runs share a cluster (compare, Tune).
            if options.is_resource_limits_default() and not self._is_v2_autoscaler():
                options.exclude_resources = options.exclude_resources.add(
                    ExecutionResources(cpu=self._num_train_cpus, gpu=self._num_train_gpus)
                )
            options.preserve_order = True
            ds = ds.copy(ds)
            ds.context.execution_options = options
            splits = ds.streaming_split(world_size, equal=False, locality_hints=worker_node_ids)
            for i, split in enumerate(splits):
                output[i][name] = split
        return output
