"""Ray Data stages (callable classes that `map_batches` runs in actor pools).

They are plain classes over numpy batches: tests call them in-process. The Ray-specific
placement (CPU fractions, `teacher_gpu`) is decided in `dataset.py`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from idrm_ray import console
from idrm_ray.core.devices import torch_dtype
from idrm_ray.data.records import batch_examples, encoded_batch


class EncodeStage:
    """CPU: tokenize both halves for student and teacher and align units (METHOD.md §6)."""

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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from idrm_ray.core.units import encode_pairs

        examples = batch_examples(batch)
        encodings = encode_pairs(examples, self.student_tok, self.teacher_tok, **self.kwargs)
        return encoded_batch(encodings, examples, batch["pair_id"])


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
