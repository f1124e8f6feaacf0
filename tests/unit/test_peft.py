"""Parameter-efficient students (issue 14 §1): top-block training and LoRA, in process.

- top blocks: exactly the top K blocks, the final norm and the value head keep requires_grad;
  after a backward the frozen parameters have no gradient and an optimizer step leaves them
  bitwise unchanged; ID's distilled blocks outside the trained ones are refused (config).
- LoRA: the Q/K capture sees the adapted projections (checked against the eager attention of
  the LoRA model, with lora_B random so the adapters are not a no-op); the merged state dict is
  an ordinary model whose rewards equal the LoRA model's; the saved adapter loads with
  `PeftModel.from_pretrained` over the initial student and gives the same rewards.
"""
from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from idrm_ray.config import ConfigError, load_config
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core import tiny
from idrm_ray.core.capture import capture_qk, decoder_layers
from idrm_ray.core.peft_student import (
    PeftSettings,
    apply_peft,
    check_distilled_trained,
    merge_lora_state,
    plain_skeleton,
    save_adapter,
    trainable_counts,
)
from idrm_ray.core.reward_model import compute_rewards, read_metadata, save_reward_model
from idrm_ray.train.spec import WorkerSpec, peft_settings

TEXTS = ["The cat likes the ball quickly today.", "A dog sees.", "Our team builds the code with care!"]
LORA = PeftSettings(lora_r=4, lora_alpha=8.0, lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"))


@pytest.fixture(scope="module")
def batch(student_tokenizer):
    enc = student_tokenizer(TEXTS, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _student(tok, *, attn="sdpa", seed=0):
    return tiny.build_tiny_student(tok, attn_implementation=attn, seed=seed)


def _randomize_lora_b(model, seed=0):
    """peft starts lora_B at zero (a no-op adapter); give it values so the checks can fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- top blocks


def test_top_blocks_train_only_top_norm_and_head(student_tokenizer, batch):
    model = apply_peft(_student(student_tokenizer), PeftSettings(train_top_blocks=2))  # 4 blocks
    names = _trainable(model)
    assert names, "nothing trains"
    assert all(n.startswith(("model.layers.2.", "model.layers.3.", "model.norm.", "score.")) for n in names), names
    assert {"model.norm.weight", "score.weight", "model.layers.2.self_attn.q_proj.weight"} <= names
    assert not any(n.startswith(("model.embed_tokens", "model.layers.0.", "model.layers.1.")) for n in names)
    trained, total = trainable_counts(model)
    assert 0 < trained < total // 2

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    compute_rewards(model, *batch).sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in names), n  # frozen: no gradient allocated at all
    opt.step()
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n in names), n


def test_top_blocks_out_of_range_refused(student_tokenizer):
    with pytest.raises(ValueError, match=r"train_top_blocks=5 must be in \[1, 4\]"):
        apply_peft(_student(student_tokenizer), PeftSettings(train_top_blocks=5))


def test_distilled_blocks_must_be_trained():
    check_distilled_trained(PeftSettings(train_top_blocks=2), top_n=2)
    check_distilled_trained(PeftSettings(), top_n=4)  # 0: everything trains
    with pytest.raises(ValueError, match="top_n=3 distills blocks that student.train_top_blocks=2 freezes"):
        check_distilled_trained(PeftSettings(train_top_blocks=2), top_n=3)


@pytest.mark.parametrize("overrides, key", [
    (["method.name=id", "method.id.top_n=2", "student.train_top_blocks=1"], "method.id.top_n"),
    (["student.train_top_blocks=5"], "student.train_top_blocks"),  # tiny student: 4 blocks
    (["student.train_top_blocks=-1"], "student.train_top_blocks"),
    (["student.lora.r=-1"], "student.lora.r"),
    (["student.lora.r=4", "student.lora.target_modules=[]"], "student.lora.target_modules"),
])
def test_config_refuses_with_one_line(overrides, key):
    with pytest.raises(ConfigError) as err:
        load_config(TrainJobConfig, preset="tiny", overrides=overrides)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_config_reaches_the_worker_spec():
    cfg = load_config(TrainJobConfig, preset="tiny", overrides=[
        "method.name=id", "method.id.top_n=2", "student.train_top_blocks=2", "student.lora.r=8",
        "student.lora.target_modules=[q_proj, k_proj]"])
    settings = peft_settings(cfg.student)
    assert settings == PeftSettings(train_top_blocks=2, lora_r=8, lora_alpha=16.0,
                                    lora_target_modules=("q_proj", "k_proj"))
    spec = WorkerSpec(method="id", student_dir="x", pad_id=0, id_settings=None, peft=settings)
    assert WorkerSpec.from_dict(spec.to_dict()) == spec  # survives the trip to the workers


# ----------------------------------------------------------------------------- LoRA


def _lora_pair(tok, settings=LORA):
    """A LoRA sdpa student with random lora_B, and an eager copy with the same weights."""
    sdpa = apply_peft(_student(tok), settings)
    _randomize_lora_b(sdpa)
    eager = apply_peft(_student(tok, attn="eager", seed=1), settings)
    eager.load_state_dict(sdpa.state_dict())
    return sdpa.eval(), eager.eval()


def test_lora_trains_adapters_and_head_only(student_tokenizer):
    model = apply_peft(_student(student_tokenizer), LORA)
    names = _trainable(model)
    assert "score.weight" in names
    assert all(".lora_A." in n or ".lora_B." in n or n == "score.weight" for n in names), names
    assert any("layers.0.self_attn.q_proj.lora_A" in n for n in names)
    top = apply_peft(_student(student_tokenizer), PeftSettings(train_top_blocks=1, lora_r=4))
    adapted = {n.split(".")[2] for n in _trainable(top) if ".lora_" in n}
    assert adapted == {"3"}  # with train_top_blocks: adapters in the top block only


@pytest.mark.parametrize("top_n", [1, 2])
def test_capture_sees_the_adapted_projections(student_tokenizer, batch, top_n):
    ids, mask = batch
    sdpa, eager = _lora_pair(student_tokenizer)
    with torch.no_grad():
        ref = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        with capture_qk(sdpa, top_n=top_n) as cap:
            sdpa(input_ids=ids, attention_mask=mask)
            qk = cap.result()
        plain = _student(student_tokenizer)  # the same base weights without the adapters
        with capture_qk(plain, top_n=top_n) as cap:
            plain(input_ids=ids, attention_mask=mask)
            base_qk = cap.result()
    M = len(decoder_layers(sdpa))
    for k in range(top_n):
        probs = _probs_from_qk(qk.q[k], qk.k[k], mask, qk.scaling)
        torch.testing.assert_close(probs, ref[M - 1 - k], atol=1e-5, rtol=0)
        assert (qk.q[k] - base_qk.q[k]).abs().max() > 1e-2  # the adapters changed Q (not a no-op check)


def _probs_from_qk(q, k, mask, scaling):
    """softmax(Q K^T * scaling + causal + padding), keys GQA-expanded (as test_capture.py)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, n, d)
    logits = (q @ k.transpose(-1, -2)) * scaling  # (B, H, n, n)
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    return logits.masked_fill(~allowed, float("-inf")).softmax(-1)


def test_merged_checkpoint_and_adapter_give_the_lora_rewards(student_tokenizer, batch, tmp_path):
    base = _student(student_tokenizer)
    base_dir = tmp_path / "base"
    save_reward_model(base, student_tokenizer, base_dir)
    model = apply_peft(_student(student_tokenizer), LORA).eval()
    _randomize_lora_b(model)
    with torch.no_grad():
        model.score.weight.mul_(-2.0)  # the head trained too: it must travel in both forms
        want = compute_rewards(model, *batch)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    merged = merge_lora_state(state, LORA)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    assert set(merged) == set(base.state_dict())
    out = save_reward_model(plain_skeleton(model), student_tokenizer, tmp_path / "model", state_dict=merged,
                            metadata={"peft": LORA.to_metadata()})
    save_adapter(out / "adapter", state, LORA, num_blocks=4, base_model=str(base_dir))
    assert read_metadata(out)["peft"]["lora_r"] == 4

    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(compute_rewards(reloaded, *batch), want, atol=1e-5, rtol=1e-5)
        assert (compute_rewards(base.eval(), *batch) - want).abs().max() > 1e-3  # LoRA really moved it
        plain = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
        adapted = PeftModel.from_pretrained(plain, out / "adapter").eval()
        logits = adapted(input_ids=batch[0], attention_mask=batch[1]).logits.squeeze(-1)  # HF's own pooling
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
        unloaded = adapted.merge_and_unload()  # what a user does with the adapter: same rewards
        torch.testing.assert_close(compute_rewards(unloaded, *batch), want, atol=1e-5, rtol=1e-5)


def test_merge_without_adapters_is_the_identity(student_tokenizer):
    state = _student(student_tokenizer).state_dict()
    merged = merge_lora_state(state, PeftSettings())
    assert list(merged) == list(state) and all(merged[k] is state[k] for k in state)


# ----------------------------------------------------------------------------- preflight


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, student_tokenizer):
    """A complete 2-block decoder directory (weights + tokenizer), for the preflight checks."""
    path = tmp_path_factory.mktemp("llama2")
    save_reward_model(tiny.build_tiny_student(student_tokenizer, num_layers=2, hidden_size=32), student_tokenizer, path)
    return str(path)


@pytest.mark.parametrize("overrides, words", [
    (["student.train_top_blocks=3"], ["'student.train_top_blocks' (3)", "student's 2 blocks", "set it <= 2"]),
    (["student.lora.r=4", "student.lora.target_modules=[q_proj, qkv_proj]"],
     ["'student.lora.target_modules'", "qkv_proj not among the student's block Linears", "q_proj"]),
])
def test_preflight_refuses_before_workers(llama_dir, overrides, words):
    from idrm_ray.cli import bad_input_line
    from idrm_ray.run.preflight import check_models

    cfg = load_config(TrainJobConfig, preset="tiny", overrides=[f"student.name_or_path={llama_dir}", *overrides])
    with pytest.raises(ConfigError) as info:
        check_models(cfg, needs_teacher=False)
    line = bad_input_line(info.value)
    assert "\n" not in line and all(w in line for w in words), line


def test_preflight_passes_what_fits(llama_dir):
    from idrm_ray.run.preflight import check_models

    cfg = load_config(TrainJobConfig, preset="tiny", overrides=[
        f"student.name_or_path={llama_dir}", "student.train_top_blocks=2", "student.lora.r=4"])
    check_models(cfg, needs_teacher=False)


def test_skeleton_is_plain_and_empty_under_zero3(student_tokenizer, tmp_path):
    """Under ZeRO-3 (transformers' HfDeepSpeedConfig alive, as in a ZeRO-3 worker) the
    skeleton must not be partitioned by zero.Init: it is only the saving shell of the merge."""
    integrations = pytest.importorskip("transformers.integrations")
    model = apply_peft(_student(student_tokenizer), LORA)
    merged = merge_lora_state(model.state_dict(), LORA)
    keep = integrations.HfDeepSpeedConfig({"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1})
    assert integrations.is_deepspeed_zero3_enabled()
    skeleton = plain_skeleton(model)
    assert all(p.is_meta and not hasattr(p, "ds_id") for p in skeleton.parameters())
    save_reward_model(skeleton, student_tokenizer, tmp_path, state_dict=merged)
    del keep
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(reloaded[k], merged[k]) for k in merged)


def test_peft_step_benchmark_quick_smoke(capsys):
    """`python -m idrm_ray.bench.peft_step --quick` end to end (STYLE.md 9): the frozen students
    train fewer parameters and hold less between steps than full fine-tuning."""
    from idrm_ray.bench import peft_step

    res = peft_step.main(["--quick", "--length", "32"])
    full, lora, top = res["full"], res["LoRA r=8"], res["top-4"]
    assert full["trainable"] == full["total"] > top["trainable"] > lora["trainable"] > 0
    assert full["resident_bytes"] > top["resident_bytes"] and full["resident_bytes"] > lora["resident_bytes"]
    assert all(t > 0 for r in res.values() for t in r["time_s"].values())
    out = capsys.readouterr().out
    assert "ID/full" in out and "LoRA r=8" in out and "top-4" in out
