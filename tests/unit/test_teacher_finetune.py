"""The NLI teacher fine-tune follows its config (issue 13 §6): the warmup+decay schedule of
`teacher.finetune.warmup_ratio`, `batch_size` per optimizer step over all workers, and its own
workers on the teacher node type (`teacher_finetune_scaling_config`)."""
from __future__ import annotations

import pytest

from idrm_ray.config import load_config
from idrm_ray.configtree.base import ConfigValueError
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.stream.cluster import scaling_config, teacher_finetune_scaling_config
from idrm_ray.teacher.finetune import LinearSchedule, per_worker_batch


def _cfg(*overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, None, list(overrides), preset="tiny")


def test_schedule_plan_counts_steps_and_warmup():
    # 1000 examples / 32 per step -> ceil(31.25) = 32 steps an epoch, x2 epochs = 64;
    # warmup ceil(0.1 x 64) = ceil(6.4) = 7 steps.
    s = LinearSchedule.plan(num_examples=1000, batch_size=32, epochs=2, warmup_ratio=0.1)
    assert (s.total_steps, s.warmup_steps) == (64, 7)
    assert LinearSchedule.plan(num_examples=1000, batch_size=32, epochs=2, warmup_ratio=0.0).warmup_steps == 0


def test_schedule_warms_up_then_decays_linearly():
    s = LinearSchedule(total_steps=64, warmup_steps=7)
    # warmup: step k of 7 -> k/7; the peak at step 7
    assert s.factor(1) == pytest.approx(1 / 7) and s.factor(4) == pytest.approx(4 / 7) and s.factor(7) == 1.0
    # decay over the other 57 steps: step k -> (64 - k + 1) / 57; step 8 still 1, step 64 1/57 (not 0)
    assert s.factor(8) == 1.0 and s.factor(36) == pytest.approx(29 / 57) and s.factor(64) == pytest.approx(1 / 57)
    assert s.factor(0) == 0.0 and s.factor(65) == 0.0 and s.factor(7.5) == 1.0  # clamped to [0, 1]
    factors = [s.factor(k) for k in range(1, 65)]
    peak = factors.index(1.0)
    assert peak == 6 and factors[:7] == sorted(factors[:7]) and factors[7:] == sorted(factors[7:], reverse=True)
    no_warmup = LinearSchedule(total_steps=10, warmup_steps=0)
    assert no_warmup.factor(1) == 1.0 and no_warmup.factor(10) == pytest.approx(0.1)


def test_batch_size_is_per_step_over_all_workers():
    assert per_worker_batch(32, 1) == 32 and per_worker_batch(32, 4) == 8  # 4 workers x 8 = 32 a step
    with pytest.raises(ValueError, match=r"batch_size=30 .* 4 workers .* multiple of 4"):
        per_worker_batch(30, 4)
    with pytest.raises(ConfigValueError, match="num_workers=4"):
        _cfg("teacher.finetune.batch_size=30", "teacher.finetune.num_workers=4")
    assert _cfg("teacher.finetune.batch_size=32", "teacher.finetune.num_workers=4").teacher.finetune.num_workers == 4


def test_finetune_workers_take_the_teacher_node_resources():
    cfg = _cfg("resources.custom_resources=require", "resources.use_gpu=true", "resources.num_workers=8",
               "optim.global_batch_size=128",
               "resources.teacher_num_gpus=1", "resources.teacher_resource_amount=1",
               "teacher.finetune.num_workers=2", "teacher.finetune.cpus_per_worker=3")
    ft = teacher_finetune_scaling_config(cfg)
    assert ft.num_workers == 2 and ft.use_gpu
    assert ft.resources_per_worker == {"CPU": 3.0, "GPU": 1.0, "teacher_gpu": 1.0}
    student = scaling_config(cfg)  # what the fine-tune used before: the student's workers
    assert student.num_workers == 8 and "student_gpu" in student.resources_per_worker


def test_finetune_on_cpu_without_custom_resources():
    ft = teacher_finetune_scaling_config(_cfg())  # the embedded default: CPU, custom_resources=ignore
    assert ft.num_workers == 1 and not ft.use_gpu and ft.resources_per_worker == {"CPU": 1.0}
