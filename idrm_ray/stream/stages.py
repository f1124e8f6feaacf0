"""Ray Data stages: plain classes over numpy batches (tests and local runs call them
in-process). The teacher runs as an actor pool (`TeacherStage`, a model held on its device);
the encode stage as tasks (`encode_batch`, an `EncodeStage` cached per worker process). The
Ray-specific placement (CPU fractions, `teacher_gpu`) is decided in `dataset.py`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from idrm_ray import console
from idrm_ray.core.types import PairEncoding
from idrm_ray.data.records import batch_examples, encoded_batch


MEMO_PAIRS = 65536  # encoded pairs an EncodeStage keeps (about 1-3 KB each at a 512-token window)


class EncodeStage:
    """CPU: tokenize both halves for student and teacher and align units (METHOD.md §6).

    Encodings are kept by pair text (the newest `MEMO_PAIRS`): the runs that share a process and
    a stage (`encode_stage`: a compare's methods, an ensemble's members, a local run's epochs and
    its eval set, pooled Ray task workers across runs) tokenize each pair once. Encoding depends
    only on the text and the stage's settings, and every call returns fresh arrays.
    """

    def __init__(
        self,
        student_tokenizer_dir: str,
        teacher_tokenizer_dir: str | None,
        *,
        student_max_len: int,
        teacher_max_len: int,
        template: tuple[str, str, str] | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        from idrm_ray.core.reward_model import load_student_tokenizer

        self.student_tok = load_student_tokenizer(student_tokenizer_dir)
        # BT-only runs need no teacher; the student tokenizer then stands in (identity units).
        self.teacher_tok = AutoTokenizer.from_pretrained(teacher_tokenizer_dir or student_tokenizer_dir)
        self.kwargs = dict(student_max_len=student_max_len, teacher_max_len=teacher_max_len, template=template)
        self.memo: OrderedDict[tuple[str, str, str], PairEncoding] = OrderedDict()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        examples = batch_examples(batch)
        return encoded_batch(self.encode(examples), examples, batch["pair_id"])

    def encode(self, examples: list) -> list[PairEncoding]:
        """`units.encode_pairs` of the pairs not in the memo; copies of the memo's for the rest."""
        from idrm_ray.core.units import encode_pairs

        keys = [(e.prompt, e.chosen, e.rejected) for e in examples]
        missing = [i for i, key in enumerate(keys) if key not in self.memo]
        fresh = encode_pairs([examples[i] for i in missing], self.student_tok, self.teacher_tok, **self.kwargs)
        out = dict(zip(missing, fresh))
        for i, key in enumerate(keys):
            if i not in out:
                self.memo.move_to_end(key)
                out[i] = _copied(self.memo[key])
        for i, enc in zip(missing, fresh):
            self.memo[keys[i]] = _copied(enc)
        while len(self.memo) > MEMO_PAIRS:
            self.memo.popitem(last=False)
        return [out[i] for i in range(len(keys))]


def _copied(enc: PairEncoding) -> PairEncoding:
    return dataclasses.replace(enc, **{f.name: getattr(enc, f.name).copy() for f in dataclasses.fields(enc)
                                       if isinstance(getattr(enc, f.name), np.ndarray)})


def encode_stage(**encode_kwargs) -> EncodeStage:
    """This process's `EncodeStage` for these settings (and tokenizer folders as they are now)."""
    return _cached_encode_stage(_stage_key(encode_kwargs))


def encode_batch(batch: dict[str, np.ndarray], **encode_kwargs) -> dict[str, Any]:
    """The encode stage as a Ray Data task. Task workers are pooled and reused across batches
    and runs (a compare, a sweep, a run's BT then ID), so the tokenizers load once per worker
    process instead of once per run in an actor of its own (~5 s of CPU per run on 2 cores)."""
    return encode_stage(**encode_kwargs)(batch)


def _stage_key(encode_kwargs: dict) -> tuple:
    """Hashable settings, plus each tokenizer folder's file stamps: a folder rewritten in place
    between runs loads again."""
    kwargs = dict(encode_kwargs)
    if isinstance(kwargs.get("template"), list):
        kwargs["template"] = tuple(kwargs["template"])
    stamps = tuple(_folder_stamp(kwargs.get(k)) for k in ("student_tokenizer_dir", "teacher_tokenizer_dir"))
    return tuple(sorted(kwargs.items())) + (stamps,)


def _folder_stamp(path: str | None) -> tuple:
    if not path or not os.path.isdir(path):
        return ()
    return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(path) if e.is_file()))


@functools.lru_cache(maxsize=4)
def _cached_encode_stage(key: tuple) -> EncodeStage:
    return EncodeStage(**{k: v for k, v in key[:-1]})


class TeacherStage:
    """The frozen teacher as an actor: adds fp16 unit-level maps of the top-N blocks."""

    def __init__(
        self,
        teacher_path: str,
        *,
        top_n: int,
        device: str | None = None,
        renormalize: bool | str = True,
        head_renorm: bool = False,
        map_format: str = "fp16",
        dtype: str = "auto",
    ) -> None:
        from idrm_ray.core.devices import torch_dtype
        from idrm_ray.core.teacher import TeacherAttention

        # The plan's teacher dtype (teacher.dtype: fp16 on teacher GPUs, fp32 on CPU); "auto": the device's.
        weights = None if dtype == "auto" else torch_dtype(dtype)
        self.teacher = TeacherAttention(
            teacher_path, top_n=top_n, device=device, renormalize=renormalize, head_renorm=head_renorm,
            map_format=map_format, dtype=weights,
        )
        self.monitor = None

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = self.teacher(batch)
        seconds = time.perf_counter() - t0
        if self.monitor is None:
            from idrm_ray.train.monitor import TeacherMonitor

            self.monitor = TeacherMonitor()
        self.monitor.record(
            pairs=len(out["teacher_maps"]), map_bytes=int(np.sum(out["teacher_map_bytes"])), seconds=seconds
        )
        console.count("teacher maps", len(out["teacher_maps"]), unit="pairs")
        return out
