"""A train run in this process, without Ray Train (`run.local`, `idrm-ray train --local`).

The stream is the Ray Data graph's stages called in-process, in the graph's order and batch
sizes: pairs -> `EncodeStage` (batches of `encode_batch_size`) -> `TeacherStage` (batches of
`teacher_batch_size`, distilling runs only) -> the worker loop's micro-batches. The loop is
the production one (`worker.train_loop_per_worker`) with a `LocalSession`: world size 1, the
same seed gives the same losses as a one-worker Ray Train run (tests/integration/test_local_run.py).
The teacher-map cache (`teacher.cache_dir`) is a Ray Data dataset and is not read here: the
maps are computed.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from idrm_ray.core.types import PreferenceExample
from idrm_ray.stream.dataset import StagePlacement
from idrm_ray.stream.stages import TeacherStage, encode_stage
from idrm_ray.train.session import LocalShard


def local_shard(examples: list[PreferenceExample], *, encode_kwargs: dict, teacher_kwargs: dict | None,
                placement: StagePlacement) -> LocalShard:
    """The train stream of `examples` in this process (stages built once, run per epoch)."""
    encode = encode_stage(**encode_kwargs)
    teacher = TeacherStage(**teacher_kwargs) if teacher_kwargs is not None else None

    def rows() -> Iterator[dict]:
        step = placement.encode_batch_size
        for start in range(0, len(examples), step):
            encoded = encode(_columns(examples[start : start + step], start))
            if teacher is None:
                yield from _rows(encoded)
                continue
            n, size = len(encoded["pair_id"]), placement.teacher_batch_size
            for sub in range(0, n, size):
                yield from _rows(teacher({k: v[sub : sub + size] for k, v in encoded.items()}))

    return LocalShard(rows)


def _columns(chunk: list[PreferenceExample], start: int) -> dict[str, np.ndarray]:
    """Pairs as the Ray Data source hands them to the encode stage (`dataset.examples_dataset`)."""
    return {
        "pair_id": np.arange(start, start + len(chunk)),
        "prompt": np.array([e.prompt for e in chunk], dtype=object),
        "chosen": np.array([e.chosen for e in chunk], dtype=object),
        "rejected": np.array([e.rejected for e in chunk], dtype=object),
        "margin": np.array([np.nan if e.margin is None else float(e.margin) for e in chunk]),
    }


def _rows(batch: dict) -> Iterator[dict]:
    for i in range(len(batch["pair_id"])):
        yield {k: v[i] for k, v in batch.items()}
