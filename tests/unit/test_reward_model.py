"""Reward model (METHOD.md Eq. 1) and its OpenRLHF-compatible checkpoint.

OpenRLHF's layout (openrlhf/models/model.py `_get_reward_model`, cli/train_rm.py,
trainer/rm_trainer.py): backbone `model.*`, bias-free `score` Linear(hidden, 1), config
fields `value_head_prefix`, `mean`, `std`, `normalize_reward`.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, LlamaForCausalLM

from idrm_ray.core import tiny
from idrm_ray.core.capture import capture_qk
from idrm_ray.core.reward_model import (
    META_FILE,
    RewardStats,
    compute_rewards,
    last_token_index,
    load_reward_model,
    normalize,
    read_metadata,
    reward_stats,
    save_reward_model,
)

TEXTS = ["The cat likes the ball quickly today.", "A dog sees.", "Our team builds the code with care!"]


@pytest.fixture(scope="module")
def batch(student_tokenizer):
    assert student_tokenizer.pad_token_id != student_tokenizer.eos_token_id
    enc = student_tokenizer([t + "</s>" for t in TEXTS], return_tensors="pt", padding=True)
    assert (enc["attention_mask"] == 0).any()  # right-padded for real
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture()
def rm(student_tokenizer):
    return tiny.build_tiny_student(student_tokenizer, family="llama").eval()


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 0]


def test_rewards_equal_hf_pooling_and_are_fp32(rm, batch):
    ids, mask = batch
    with torch.no_grad():
        ours = compute_rewards(rm, ids, mask)
        hf = rm(input_ids=ids, attention_mask=mask).logits.squeeze(-1)  # HF pools at the last non-pad id
    assert ours.shape == (3,) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, hf, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        assert compute_rewards(rm.to(torch.bfloat16), ids, mask).dtype == torch.float32


def test_left_padding_gives_the_same_rewards(rm, batch):
    ids, mask = batch
    lengths = mask.sum(1)
    left_ids, left_mask = torch.full_like(ids, int(ids[1, -1])), torch.zeros_like(mask)
    for i, n in enumerate(lengths.tolist()):  # move each row's real tokens to the right end
        left_ids[i, ids.shape[1] - n :], left_mask[i, ids.shape[1] - n :] = ids[i, :n], 1
    with torch.no_grad():
        torch.testing.assert_close(compute_rewards(rm, left_ids, left_mask), compute_rewards(rm, ids, mask))


def test_capture_hooks_fire_in_the_reward_forward(rm, batch):
    ids, mask = batch
    with capture_qk(rm, top_n=1) as cap:
        rewards = compute_rewards(rm, ids, mask)
        qk = cap.result()
    assert cap.num_forwards == 1 and qk.q[0].shape[:3] == (3, 4, ids.shape[1])
    (rewards.sum() + qk.q[0].pow(2).mean()).backward()
    assert rm.score.weight.grad is not None and rm.model.layers[-1].self_attn.q_proj.weight.grad.abs().sum() > 0


def test_save_reload_roundtrip(rm, batch, student_tokenizer, tmp_path):
    ids, mask = batch
    meta = {"method": "id-rm", "lam": 1.0}
    out = save_reward_model(
        rm, student_tokenizer, tmp_path / "rm", mean=0.5, std=2.0, normalize_reward=True, metadata=meta
    )
    assert not hasattr(rm.config, "mean")  # the live config was left as it was
    config = json.loads((out / "config.json").read_text())
    assert config["value_head_prefix"] == "score" and config["normalize_reward"] is True
    assert (config["mean"], config["std"]) == (0.5, 2.0)
    assert len(config["id2label"]) == 1  # num_labels == 1
    assert config["pad_token_id"] == student_tokenizer.pad_token_id
    assert read_metadata(out) == meta == json.loads((out / META_FILE).read_text())
    assert AutoTokenizer.from_pretrained(out).pad_token_id == student_tokenizer.pad_token_id

    weights = load_file(out / "model.safetensors")  # one file: not sharded
    assert all(k.startswith("model.") for k in weights if k != "score.weight")
    assert "score.weight" in weights and "score.bias" not in weights
    assert weights["score.weight"].shape == (1, rm.config.hidden_size)
    assert set(weights) == set(rm.state_dict())

    loaded = load_reward_model(out)
    assert reward_stats(loaded) == RewardStats(mean=0.5, std=2.0, normalize_reward=True)
    assert loaded.config._attn_implementation == "sdpa"
    with torch.no_grad():
        r0, r1 = compute_rewards(rm, ids, mask), compute_rewards(loaded.eval(), ids, mask)
    torch.testing.assert_close(r1, r0, atol=0, rtol=0)  # head kept, not re-initialised
    torch.testing.assert_close(normalize(r1, loaded), (r0 - 0.5) / 2.0)

    plain = AutoModelForSequenceClassification.from_pretrained(out).eval()  # no help from us
    with torch.no_grad():
        logits = plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1)  # (B,)
    torch.testing.assert_close(logits, r0, atol=1e-5, rtol=1e-5)


def test_save_with_gathered_state_dict(rm, batch, student_tokenizer, tmp_path):
    ids, mask = batch
    gathered = {k: v.clone() for k, v in rm.state_dict().items()}  # what a ZeRO-3 gather hands over
    gathered["score.weight"] *= 3.0
    out = save_reward_model(rm, student_tokenizer, tmp_path / "rm", state_dict=gathered)
    assert read_metadata(out) == {}
    with torch.no_grad():
        reloaded = compute_rewards(load_reward_model(out), ids, mask)
        torch.testing.assert_close(reloaded, 3.0 * compute_rewards(rm, ids, mask))
    del gathered["model.norm.weight"]
    with pytest.raises(ValueError, match="lacks 1 model keys"):
        save_reward_model(rm, student_tokenizer, tmp_path / "bad", state_dict=gathered)
    with pytest.raises(ValueError, match="std"):
        save_reward_model(rm, student_tokenizer, tmp_path / "bad", std=0.0)


def test_init_from_plain_causal_lm(student_tokenizer, batch, tmp_path):
    ids, mask = batch
    hidden = 256  # 1/(hidden+1) = 0.0039, far from HF's initializer_range 0.02
    config = AutoConfig.for_model(
        "llama", vocab_size=len(student_tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    lm = LlamaForCausalLM(config)
    assert lm.config.pad_token_id is None
    lm.save_pretrained(tmp_path / "lm")
    student_tokenizer.save_pretrained(tmp_path / "lm")

    rm = load_reward_model(tmp_path / "lm").eval()
    lm_state = lm.state_dict()
    for name, value in rm.state_dict().items():
        if name != "score.weight":
            torch.testing.assert_close(value, lm_state[name], atol=0, rtol=0)  # backbone carried over
    std = rm.score.weight.std().item()
    assert rm.score.bias is None and 0.8 / (hidden + 1) < std < 1.2 / (hidden + 1)  # OpenRLHF's init
    assert rm.config.pad_token_id == student_tokenizer.pad_token_id
    assert reward_stats(rm) == RewardStats() and rm.config.value_head_prefix == "score"
    with torch.no_grad():
        assert torch.isfinite(compute_rewards(rm, ids, mask)).all()
    head = rm.score.weight.clone()
    kept = load_reward_model(tmp_path / "lm", init_value_head=False, tokenizer=student_tokenizer)
    assert not torch.equal(kept.score.weight, head)  # HF's own init, not OpenRLHF's


def test_normalize_accepts_stats_config_or_model(rm):
    r = torch.tensor([1.0, 3.0])
    assert normalize(r, RewardStats(mean=1.0, std=2.0)).tolist() == [0.0, 1.0]  # (1-1)/2, (3-1)/2
    rm.config.mean, rm.config.std = 1.0, 2.0
    assert normalize(r, rm).tolist() == normalize(r, rm.config).tolist() == [0.0, 1.0]
