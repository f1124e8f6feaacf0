"""The NLI teacher fine-tune through Ray Train with two workers (issue 13 §6): `batch_size` is
per optimizer step over both (8 + 8 = 16), the learning rate follows `warmup_ratio`'s warmup
and then decays, and the run saves a loadable checkpoint. The schedule's arithmetic is in
tests/unit/test_teacher_finetune.py; this checks the real loop reads it. About 30-60 s here.
(Learning itself is asserted on the shared run: test_pipeline.py, NLI accuracy above chance.)"""
from __future__ import annotations

import json

import pytest

EXAMPLES, BATCH, EPOCHS, WARMUP, LR = 480, 16, 2, 0.2, 1e-3


def test_two_workers_split_each_step_and_follow_the_schedule(ray_session, guard, make_config, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from idrm_ray.teacher.finetune import LinearSchedule
    from idrm_ray.teacher.job import prepare_teacher

    cfg = make_config(tmp_path, "ft", f"teacher.finetune.max_examples={EXAMPLES}", f"teacher.finetune.epochs={EPOCHS}",
                      f"teacher.finetune.batch_size={BATCH}", "teacher.finetune.num_workers=2",
                      "teacher.finetune.cpus_per_worker=0.5", f"teacher.finetune.warmup_ratio={WARMUP}",
                      f"teacher.finetune.lr={LR}", "teacher.finetune.log_every=10")
    out_dir, metrics = guard(lambda: prepare_teacher(cfg, tmp_path / "ft", needed=True), timeout_s=300,
                             what="teacher fine-tune, 2 workers")
    plan = LinearSchedule.plan(num_examples=EXAMPLES, batch_size=BATCH, epochs=EPOCHS, warmup_ratio=WARMUP)
    assert (plan.total_steps, plan.warmup_steps) == (60, 12)  # 2 x ceil(480 / 16); ceil(0.2 x 60)
    assert metrics["num_workers"] == 2 and metrics["micro_batch_size"] == BATCH // 2, metrics
    # Ragged shards may add a few filler steps, never fewer than the plan.
    assert plan.total_steps <= metrics["steps"] <= plan.total_steps + 2 * EPOCHS, metrics
    assert metrics["lr_first"] == pytest.approx(LR / plan.warmup_steps)  # warmup: 1/12 of the peak at step 1
    assert metrics["lr_peak"] == pytest.approx(LR)
    assert metrics["lr_last"] == pytest.approx(LR / (plan.total_steps - plan.warmup_steps), rel=0.05)  # decayed
    assert json.loads((tmp_path / "ft" / "teacher" / "nli_metrics.json").read_text())["nli_train_pairs"] == EXAMPLES
    model = AutoModelForSequenceClassification.from_pretrained(out_dir)
    assert model.config.num_labels == 3
