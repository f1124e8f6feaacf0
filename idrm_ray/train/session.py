"""The train loop's session: what the worker loop asks of whoever runs it (DESIGN.md §2).

    rank, world_size                  this process among the data-parallel workers
    dataset_shard(name)               this rank's stream: `.iter_batches(batch_size=..., ...)`
    fetch(value)                      a value of the loop config (an object-store ref under Ray)
    resume_candidates()               checkpoints to resume from, newest first ([] : a fresh start)
    report(metrics, checkpoint_dir)   metrics, and a checkpoint directory to persist (or None)
    starts_stream_early               whether a fresh start asks for its first batch before
                                      building the model (its stream runs in other processes)

`RayTrainSession` wraps `ray.train.*` inside a TorchTrainer worker (production). `LocalSession`
runs the same loop in this process, world size 1, no Ray Train (tests and `idrm-ray train
--local`): its checkpoints go where Ray Train puts them (<storage>/<name>/checkpoint_<time>),
the same name resumes an interrupted run, and the latest `keep` are kept.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CHECKPOINT_PREFIX = "checkpoint_"


class RayTrainSession:
    """The session of a Ray Train worker (`ray.train.get_context()` and friends)."""

    starts_stream_early = True  # Ray Data's tasks and teacher actors start beside the model load

    def __init__(self) -> None:
        import ray.train

        self._train = ray.train
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def dataset_shard(self, name: str):
        return self._train.get_dataset_shard(name)

    def fetch(self, value):
        import ray

        return ray.get(value) if isinstance(value, ray.ObjectRef) else value

    def resume_candidates(self) -> list:
        from idrm_ray.train.checkpointing import older_checkpoints

        latest = self._train.get_checkpoint()
        return [] if latest is None else [latest, *older_checkpoints(latest)]

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        checkpoint = None if checkpoint_dir is None else self._train.Checkpoint.from_directory(checkpoint_dir)
        self._train.report(metrics, checkpoint=checkpoint)


@dataclass(frozen=True)
class LocalCheckpoint:
    """A checkpoint directory on this machine, read as a Ray Train `Checkpoint` is."""

    path: str

    def as_directory(self):
        return contextlib.nullcontext(self.path)


@dataclass
class LocalResult:
    """What `TorchTrainer.fit()` returns, as far as the driver reads it."""

    checkpoint: LocalCheckpoint | None
    metrics: dict
    best_checkpoints: list[tuple[LocalCheckpoint, dict]] = field(default_factory=list)
    error: BaseException | None = None


class LocalShard:
    """A rank's stream in this process: `rows()` gives one epoch's rows (dicts) in order;
    `iter_batches` cuts them into numpy-style batches as Ray Data's `iter_batches` does
    (scalar columns as arrays, per-row arrays as lists). A local shuffle buffer shuffles
    with its seed (not Ray's order: a local run with a shuffle buffer is not Ray's run)."""

    def __init__(self, rows: Callable[[], Iterable[dict]]) -> None:
        self.rows = rows

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy", prefetch_batches: int = 0,
                     local_shuffle_buffer_size: int | None = None, local_shuffle_seed: int | None = None,
                     **_ignored) -> Iterator[dict[str, Any]]:
        rows = self.rows()
        if local_shuffle_buffer_size:
            rows = _shuffled(rows, local_shuffle_buffer_size, np.random.default_rng(local_shuffle_seed))
        chunk: list[dict] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == batch_size:
                yield _batch(chunk)
                chunk = []
        if chunk:
            yield _batch(chunk)


class LocalSession:
    """The session of a run in this process (world size 1). `storage`: the folder of this
    run's checkpoints (<storage_path>/<name>); `keep`: how many of the latest to keep."""

    rank, world_size = 0, 1
    starts_stream_early = False  # the stream is computed in this process: after the model, as ever

    def __init__(self, *, shards: dict[str, LocalShard], storage: Path, keep: int) -> None:
        self.shards, self.storage, self.keep = shards, Path(storage), keep
        self.storage.mkdir(parents=True, exist_ok=True)
        self.last_metrics: dict = {}
        self.kept: list[tuple[LocalCheckpoint, dict]] = [(c, {}) for c in reversed(self.resume_candidates())]

    def dataset_shard(self, name: str) -> LocalShard:
        return self.shards[name]

    def fetch(self, value):
        return value

    def resume_candidates(self) -> list[LocalCheckpoint]:
        names = sorted((p.name for p in self.storage.glob(CHECKPOINT_PREFIX + "*") if p.is_dir()), reverse=True)
        return [LocalCheckpoint(str(self.storage / n)) for n in names]

    def report(self, metrics: dict, checkpoint_dir: str | None = None) -> None:
        self.last_metrics = dict(metrics)
        if checkpoint_dir is None:
            return
        stamp = time.time()
        clock = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(stamp))
        name = f"{CHECKPOINT_PREFIX}{clock}.{int(stamp % 1 * 1e6):06d}"  # newest sorts last, as Ray Train's
        _persist(Path(checkpoint_dir), self.storage / name)
        self.kept.append((LocalCheckpoint(str(self.storage / name)), dict(metrics)))
        while len(self.kept) > self.keep:
            old, _ = self.kept.pop(0)
            shutil.rmtree(old.path, ignore_errors=True)

    def result(self) -> LocalResult:
        latest = self.kept[-1][0] if self.kept else None
        return LocalResult(checkpoint=latest, metrics=self.last_metrics, best_checkpoints=list(self.kept))


def _persist(source: Path, dest: Path) -> None:
    """Take the checkpoint folder's contents into `dest`, all or nothing: moved (a rename on one
    filesystem, a copy across two) under a hidden partial name that `resume_candidates` never
    lists, then renamed. A run killed mid-write leaves no half checkpoint to resume from, and a
    1.6 GB state of a 135M model is not copied twice. `source` stays, empty, for its owner."""
    partial = dest.with_name("." + dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for item in source.iterdir():
        shutil.move(str(item), partial / item.name)
    os.replace(partial, dest)


def _batch(rows: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        out[key] = values if isinstance(values[0], np.ndarray) else np.asarray(values)
    return out


def _shuffled(rows: Iterable[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    buffer: list[dict] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def checkpoint_storage(storage_path: str | os.PathLike, name: str) -> Path:
    """Where a run named `name` keeps its checkpoints, under Ray Train or here."""
    return Path(storage_path) / name


def fit_local(loop: Callable, *, loop_config: dict, shards: dict[str, LocalShard], storage: Path,
              keep: int) -> LocalResult:
    """`loop(loop_config, session=...)` in this process; the result as `TorchTrainer.fit()`'s."""
    session = LocalSession(shards=shards, storage=storage, keep=keep)
    loop(loop_config, session=session)
    return session.result()
