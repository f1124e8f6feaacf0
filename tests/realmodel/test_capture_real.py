"""Q/K capture on the real SmolLM2-135M-Instruct (METHOD.md §5): 30 Llama blocks, 9 query
heads, 3 KV heads (GQA group 3), head_dim 64, its own RoPE.

The captured post-RoPE Q/K must be exactly the inputs of the model's own attention: for every
block, softmax(q k^T * scaling + causal/padding mask) equals the probabilities eager attention
returns (`output_attentions=True`), on a padded batch run through `reward_model.last_hidden_state`
itself, so its position ids (real tokens counted from 0) and padding are the ones checked.
Short sequences, one model load, two torch threads.
"""
from __future__ import annotations

import pytest
import torch

from idrm_ray.core.capture import attention_layout, capture_qk
from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.reward_model import backbone, compute_rewards, load_reward_model
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs

# One pair: its chosen and rejected rows differ in length, so the batch has padding.
PAIRS = [PreferenceExample("What is the capital of France? 🙂", " Paris.", " I think it is Lyon, but I am not sure.")]


@pytest.fixture(scope="module")
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(smollm2_dir, two_threads):
    torch.manual_seed(0)  # the value head is freshly initialised (a causal-LM checkpoint)
    return load_reward_model(smollm2_dir, dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def batch(smollm2_tokenizer, minilm_tokenizer):
    # The real encoding path: chat template, no pad token (pad with EOS, as training does).
    encs = encode_pairs(PAIRS, smollm2_tokenizer, minilm_tokenizer, student_max_len=512, teacher_max_len=256,
                        template="chat")
    b = collate_pairs(encs, pad_id=smollm2_tokenizer.eos_token_id)
    assert (b.attention_mask == 0).any()  # the check below covers padded rows
    return b


def _left_padded(input_ids, attention_mask):
    n = attention_mask.sum(1)
    ids, mask = torch.full_like(input_ids, int(input_ids[0, -1])), torch.zeros_like(attention_mask)
    for i, k in enumerate(n.tolist()):
        ids[i, -k:], mask[i, -k:] = input_ids[i, :k], 1
    return ids, mask


def _forward_with_attentions(model, input_ids, attention_mask, top_n):
    """Rewards via the production `compute_rewards` path, plus what the capture saw and the
    eager attention probabilities of the same forward (requested through a pre-hook, so the
    position ids and mask are exactly `last_hidden_state`'s)."""
    seen = {}

    def ask(module, args, kwargs):
        return args, {**kwargs, "output_attentions": True}

    def keep(module, args, kwargs, output):
        seen["attn"] = output.attentions

    body = backbone(model)
    handles = [body.register_forward_pre_hook(ask, with_kwargs=True),
               body.register_forward_hook(keep, with_kwargs=True)]
    try:
        with torch.no_grad(), capture_qk(model, top_n=top_n) as cap:
            rewards = compute_rewards(model, input_ids, attention_mask)
            qk = cap.result()
    finally:
        for h in handles:
            h.remove()
    return rewards, qk, seen["attn"]


def _probs_from_capture(q, k, mask, scaling):
    """(B, H, n, n) softmax(q k^T * scaling + causal & key-padding mask), GQA key head h // group."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # (B, H, n, d): query head h reads key head h // group
    logits = (q @ k.transpose(-1, -2)).float() * scaling  # (B, H, n, n)
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril() & mask.bool()[:, None, None, :]  # (B, 1, n, n)
    return logits.masked_fill(~allowed, float("-inf")).softmax(-1)


def test_layout_of_the_real_model(model):
    lay = attention_layout(model)
    assert (lay.num_blocks, lay.num_heads, lay.num_kv_heads, lay.head_dim) == (30, 9, 3, 64)
    assert lay.scaling == pytest.approx(64**-0.5)


@pytest.mark.parametrize("padding", ["right", "left"])
def test_captured_qk_reproduce_eager_attention_in_every_block(model, batch, padding):
    ids, mask = batch.input_ids, batch.attention_mask
    if padding == "left":
        ids, mask = _left_padded(ids, mask)
    top_n = 30  # all blocks: at these lengths the whole check is a few milliseconds
    _, qk, attentions = _forward_with_attentions(model, ids, mask, top_n)
    assert len(attentions) == 30 and len(qk.q) == top_n
    real = mask.bool()  # (B, n) query rows to compare: padded rows are dropped (METHOD.md §5)
    for k in range(top_n):
        q, kk = qk.q[k], qk.k[k]
        assert q.shape == (ids.shape[0], 9, ids.shape[1], 64) and kk.shape == (ids.shape[0], 3, ids.shape[1], 64)
        ours = _probs_from_capture(q, kk, mask, qk.scaling)
        eager = attentions[29 - k].float()  # k=0 is the top block
        torch.testing.assert_close(ours.transpose(1, 2)[real], eager.transpose(1, 2)[real], atol=2e-5, rtol=1e-4)
    # The check can fail: positions off by one (e.g. counting pads) would change every RoPE'd row.
    shifted = _probs_from_capture(torch.roll(qk.q[0], 1, dims=2), qk.k[0], mask, qk.scaling)
    assert not torch.allclose(shifted.transpose(1, 2)[real], attentions[29].float().transpose(1, 2)[real], atol=1e-3)


def test_sdpa_and_eager_rewards_agree_and_padding_side_does_not_matter(model, batch):
    ids, mask = batch.input_ids, batch.attention_mask
    short = int(mask.sum(1).argmin())  # the most padded row, scored on its own without padding
    n = int(mask[short].sum())
    with torch.no_grad():
        eager = compute_rewards(model, ids, mask)
        left = compute_rewards(model, *_left_padded(ids, mask))
        alone = compute_rewards(model, ids[short : short + 1, :n], mask[short : short + 1, :n])
        model.set_attn_implementation("sdpa")
        try:
            sdpa = compute_rewards(model, ids, mask)
        finally:
            model.set_attn_implementation("eager")
    for other in (left, sdpa):
        torch.testing.assert_close(other, eager, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone[0], eager[short], atol=1e-4, rtol=1e-4)
    assert eager.std() > 1e-3  # distinct sequences, distinct rewards: the comparison is not vacuous


def test_capture_sees_lora_adapted_projections(model, batch):
    """LoRA (issue 14 §1) on the top 2 blocks' q/k/v/o with lora_B random (peft starts it at
    zero): the captured Q/K are still exactly what the adapted eager attention consumed, and
    they differ from the base model's, so ID steers the adapters."""
    import copy

    from idrm_ray.core.peft_student import PeftSettings, apply_peft

    ids, mask = batch.input_ids, batch.attention_mask
    _, base_qk, _ = _forward_with_attentions(model, ids, mask, 2)
    adapted = apply_peft(copy.deepcopy(model), PeftSettings(train_top_blocks=2, lora_r=8,
                                                             lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    _, qk, attentions = _forward_with_attentions(adapted.eval(), ids, mask, 2)
    real = mask.bool()
    for k in range(2):
        ours = _probs_from_capture(qk.q[k], qk.k[k], mask, qk.scaling)
        eager = attentions[29 - k].float()
        torch.testing.assert_close(ours.transpose(1, 2)[real], eager.transpose(1, 2)[real], atol=2e-5, rtol=1e-4)
        assert (qk.q[k] - base_qk.q[k]).abs().max() > 1e-2


def test_one_full_fine_tuning_step_moves_every_tensor(smollm2_dir, batch, two_threads):
    """Full fine-tuning of the real model (test_train_real.py's runs train its top blocks): one
    Bradley-Terry step through the training strategy, fp32 AdamW, moves every tensor, the
    embedding (tied to the LM head in the causal-LM checkpoint) and the value head included."""
    from idrm_ray.train.strategy import make_strategy

    torch.manual_seed(0)
    model = load_reward_model(smollm2_dir, dtype=torch.float32).train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    strategy = make_strategy("torch", micro_batch_size=1, grad_accum_steps=1, max_grad_norm=1.0)
    engine = strategy.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-5), None)
    r_w, r_l = compute_rewards(engine, batch.input_ids, batch.attention_mask).split(batch.num_pairs)
    loss = -torch.nn.functional.logsigmoid(r_w - r_l).mean()
    strategy.backward(loss)
    assert torch.isfinite(loss) and strategy.step() is True and strategy.grad_norm() > 0
    after = model.state_dict()
    assert len(after) > 270 and set(after) == set(before)
    still = [k for k in after if torch.equal(before[k], after[k])]
    assert not still, still[:5]
