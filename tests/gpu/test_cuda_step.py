"""GPU tier: the ID student step and the teacher on CUDA (skipped without a GPU).

The CPU fp32 results are the reference; bf16/fp16 on the GPU must agree within the
precision of those formats.
"""
from __future__ import annotations

import pytest
import torch

from idrm_ray.core import tiny
from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.objective import IDSettings, preference_loss
from idrm_ray.core.teacher import TeacherAttention
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs

PAIRS = [
    PreferenceExample("\n\nHuman: The cat likes the ball. What does the cat like?\n\nAssistant:", " The ball.", " A book."),
    PreferenceExample("\n\nHuman: Who reads a letter? A child reads a letter.\n\nAssistant:", " A child.", " The robot does, I think."),
]


@pytest.fixture(scope="module")
def setup(student_tokenizer, teacher_tokenizer):
    encodings = encode_pairs(PAIRS, student_tokenizer, teacher_tokenizer, student_max_len=128, teacher_max_len=128)
    batch = collate_pairs(encodings, pad_id=student_tokenizer.pad_token_id)
    teacher_model = tiny.build_tiny_teacher(teacher_tokenizer)
    return encodings, batch, teacher_model


def test_teacher_maps_on_cuda_match_cpu(setup):
    encodings, _, teacher_model = setup
    ref = TeacherAttention.from_model(teacher_model, top_n=1, device="cpu").maps_for_encodings(encodings)
    gpu = TeacherAttention.from_model(teacher_model, top_n=1, device="cuda").maps_for_encodings(encodings)
    for name in ("ww", "ll", "wl", "lw"):
        torch.testing.assert_close(getattr(gpu, name).cpu().float(), getattr(ref, name).float(), atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_id_step_on_cuda_matches_cpu(setup, student_tokenizer, dtype):
    encodings, batch, teacher_model = setup
    teacher = TeacherAttention.from_model(teacher_model, top_n=1, device="cpu").maps_for_encodings(encodings)
    settings = IDSettings(lam=1.0, top_n=1)
    model = tiny.build_tiny_student(student_tokenizer)
    loss_cpu, m_cpu = preference_loss(model, batch, teacher, settings=settings)
    model = model.to("cuda", dtype)
    loss_gpu, m_gpu = preference_loss(model, batch.to("cuda"), teacher.to("cuda"), settings=settings)
    loss_gpu.backward()
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert abs(float(loss_gpu) - float(loss_cpu)) <= tol * max(1.0, abs(float(loss_cpu)))
    assert abs(float(m_gpu["l_id"]) - float(m_cpu["l_id"])) <= tol * max(1.0, abs(float(m_cpu["l_id"])))
    top_q = model.model.layers[-1].self_attn.q_proj.weight.grad
    assert top_q is not None and torch.isfinite(top_q).all() and top_q.abs().sum() > 0
