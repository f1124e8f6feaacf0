"""Worker-side ingest: numpy batches from the Ray Data stream -> student tensors.

`synced_batches` keeps data-parallel ranks in lock-step when their shards differ in
length (we split with `equal=False` so that no pair is dropped): a rank whose shard is
exhausted keeps stepping on its last batch with zero weight until every rank is done,
so the collectives of DeepSpeed/DDP always match. Only real batches are counted.
`StartedEarly` asks a stream for its first batch before the student is built.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.teacher import block_maps_from_rows
from idrm_ray.core.types import BlockMaps, PreferenceBatch
from idrm_ray.data.records import MAPS, STAT_PREFIX, batch_margins, batch_size, row_to_encoding


@dataclass
class StreamItem:
    batch: dict[str, Any]  # numpy batch (ragged columns are object arrays)
    real: bool  # False for the zero-weight filler of an exhausted rank
    wait_s: float  # seconds this rank waited for the stream to yield it


class StartedEarly:
    """`batches` with its first item fetched from now on in a thread (then served first).

    A Ray Data stream starts on its first request: the encode tasks and the teacher actors
    start their processes and load their models only then. Asked before the student is built,
    that start-up runs beside the student's own instead of after it. Errors of the fetch are
    raised where the loop first iterates, as without the thread."""

    def __init__(self, batches: Iterable[dict[str, Any]]) -> None:
        self._it = iter(batches)
        self._first: tuple[str, Any] = ("end", None)
        self._thread = threading.Thread(target=self._fetch, name="idrm first batch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first = ("item", next(self._it))
        except StopIteration:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the loop's thread
            self._first = ("error", exc)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._thread.join()
        kind, value = self._first
        if kind == "error":
            raise value
        if kind == "item":
            yield value
            yield from self._it


def synced_batches(
    batches: Iterable[dict[str, Any]],
    all_reduce_sum: Callable[[float], float],
    *,
    filler: dict[str, Any] | None = None,
) -> Iterator[StreamItem]:
    """Yield every local batch once, then fillers until all ranks are exhausted.
    `filler` stands in for a rank that has no batch at all."""
    it = iter(batches)
    last: dict[str, Any] | None = filler
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        wait = time.perf_counter() - t0
        has_local = batch is not None
        if all_reduce_sum(float(has_local)) == 0:
            return
        if has_local:
            last = batch
            yield StreamItem(batch, True, wait)
        elif last is not None:
            yield StreamItem(last, False, wait)
        else:  # this rank got no data at all this epoch: nothing to run a filler on
            raise RuntimeError(
                "a train worker received no pairs while others did; use fewer workers or more data "
                "(every worker needs at least one micro-batch per epoch)"
            )


def stack_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Row dicts -> one numpy-style batch (ragged columns stay lists)."""
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def to_student_batch(
    batch: dict[str, Any], *, pad_id: int, device: torch.device, use_margin: bool = False
) -> PreferenceBatch:
    """Student tensors of a stream batch. Rating margins enter the loss only for methods
    that use them (AM-RM); plain BT ignores them even when the data carries them."""
    encodings = [row_to_encoding(batch, i) for i in range(batch_size(batch))]
    margins = batch_margins(batch) if use_margin else None
    return collate_pairs(encodings, pad_id=pad_id, margins=margins).to(device)


def to_teacher_maps(batch: dict[str, Any], *, device: torch.device) -> BlockMaps:
    """Pad the per-pair fp16 unit-level maps into a batch BlockMaps (fp32 on the worker)."""
    n_w = [int(len(v)) for v in batch["unit_valid_w"]]
    maps = block_maps_from_rows(teacher_rows(batch), n_w, list(batch["unit_valid_w"]), list(batch["unit_valid_l"]))
    return maps.to(device)


def teacher_rows(batch: dict[str, Any]) -> list[np.ndarray]:
    """Per-pair (N, U, U) maps (from the teacher stage or read back from the map cache:
    one form, `records.py`)."""
    return list(batch[MAPS])


def map_bytes_stats(batch: dict[str, Any], *, num_blocks: int) -> dict[str, float]:
    """Mean bytes per pair of the fp16 unit-level maps that travelled, and of the
    head-averaged token-level fp32 maps they replace (N x n_t x n_t x 4 bytes)."""
    shipped = [float(m[:num_blocks].nbytes) for m in teacher_rows(batch)]
    token_fp32 = [num_blocks * len(ids) ** 2 * 4.0 for ids in batch["teacher_ids"]]
    return {"teacher_map_bytes": sum(shipped) / len(shipped), "token_fp32_map_bytes": sum(token_fp32) / len(token_fp32)}


def truncation_stats(batch: dict[str, Any]) -> dict[str, float]:
    """Per-pair truncation indicators (the accumulator turns them into fractions): long
    rows are cut by the documented rule (METHOD.md §6), never dropped, and counted."""
    def frac(name: str) -> float:
        values = [float(v > 0) for v in batch[STAT_PREFIX + name]]
        return sum(values) / len(values)

    return {
        "frac_pairs_student_truncated": frac("pairs_student_truncated"),
        "frac_pairs_teacher_truncated": frac("pairs_teacher_truncated"),
    }
