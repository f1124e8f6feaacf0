"""Q/K capture from the ordinary forward (METHOD.md §5, §6 "Cost").

The reference is the eager model's own attention probabilities (`output_attentions`):
softmax(Q K^T / sqrt(d) + causal + padding) rebuilt from the captured, GQA-expanded Q/K of
the sdpa model must match them, so the capture is exactly what the attention consumed.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from idrm_ray.core import tiny
from idrm_ray.core.capture import (
    QKCapture,
    attention_layout,
    capture_qk,
    check_top_n,
    decoder_layers,
    head_dim,
    num_blocks,
    num_heads,
    num_kv_heads,
)

TEXTS = ["The cat likes the ball quickly today.", "A dog sees.", "Our team builds the code with care!"]


@pytest.fixture(scope="module")
def batch(student_tokenizer):
    enc = student_tokenizer(TEXTS, return_tensors="pt", padding=True)
    assert student_tokenizer.padding_side == "right"
    assert (enc["attention_mask"] == 0).any()  # really padded
    return enc["input_ids"], enc["attention_mask"]


def _pair(tokenizer, family):
    """An sdpa student and an eager copy with identical weights."""
    sdpa = tiny.build_tiny_student(tokenizer, family=family, attn_implementation="sdpa").eval()
    eager = tiny.build_tiny_student(tokenizer, family=family, attn_implementation="eager", seed=1).eval()
    eager.load_state_dict(sdpa.state_dict())
    return sdpa, eager


def _probs_from_qk(q, k, mask, scaling):
    """softmax(Q K^T * scaling + causal + padding), keys GQA-expanded: g(h) = h // (H / H_kv)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # (B, H, n, d)
    logits = (q @ k.transpose(-1, -2)) * scaling  # (B, H, n, n)
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    return logits.masked_fill(~allowed, float("-inf")).softmax(-1)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "qwen3"])
@pytest.mark.parametrize("top_n", [1, 2])
def test_captured_qk_reproduce_eager_attention(student_tokenizer, batch, family, top_n):
    ids, mask = batch
    sdpa, eager = _pair(student_tokenizer, family)
    layout = attention_layout(sdpa)
    assert (layout.num_heads, layout.num_kv_heads) == (4, 2)
    with torch.no_grad():
        ref = eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
        with capture_qk(sdpa, top_n=top_n) as cap:
            sdpa(input_ids=ids, attention_mask=mask)
            qk = cap.result()
    assert len(qk.q) == len(qk.k) == top_n and qk.q_pre is None
    M = layout.num_blocks
    for k in range(top_n):
        B, n = ids.shape
        assert qk.q[k].shape == (B, 4, n, layout.head_dim) and qk.k[k].shape == (B, 2, n, layout.head_dim)
        probs = _probs_from_qk(qk.q[k], qk.k[k], mask, layout.scaling)
        torch.testing.assert_close(probs, ref[M - 1 - k], atol=1e-5, rtol=0)  # block M-k (k=0 the top)
    if top_n == 2:  # the two blocks are really different blocks
        assert not torch.allclose(qk.q[0], qk.q[1])


def test_one_forward_and_sdpa_untouched(student_tokenizer, batch, monkeypatch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="llama")
    layer_calls = []
    for i, layer in enumerate(decoder_layers(model)):
        layer.register_forward_hook(lambda m, a, o, i=i: layer_calls.append(i))
    sdpa_calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: sdpa_calls.append(1) or real_sdpa(*a, **kw))
    with capture_qk(model, top_n=2) as cap:
        out = model(input_ids=ids, attention_mask=mask)
        cap.result()
    assert layer_calls == [0, 1, 2, 3]  # each block ran once: no second forward
    assert len(sdpa_calls) == 4  # and through sdpa
    assert model.config._attn_implementation == "sdpa"
    assert cap.num_forwards == 1
    assert out.logits.shape == (3, 1)


def test_grads_reach_top_blocks_and_below(student_tokenizer, batch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="llama")
    layers = decoder_layers(model)
    with capture_qk(model, top_n=2) as cap:
        model(input_ids=ids, attention_mask=mask)
        qk = cap.result()
    assert qk.q[0].requires_grad and qk.k[0].requires_grad
    (qk.q[0].pow(2).mean() + qk.k[0].pow(2).mean() + qk.q[1].mean()).backward()
    for layer in (layers[-1], layers[-2]):
        assert layer.self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[-1].self_attn.k_proj.weight.grad.abs().sum() > 0
    assert layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0  # through the hidden states
    assert layers[-1].self_attn.v_proj.weight.grad is None  # Q/K loss never touches V of the top block
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_hooks_removed_after_context(student_tokenizer, batch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="qwen2")

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = n_hooks()
    with capture_qk(model, top_n=2) as cap:
        assert cap.attached and n_hooks() > before
        model(input_ids=ids, attention_mask=mask)
    assert not cap.attached and n_hooks() == before
    model(input_ids=ids, attention_mask=mask)
    assert cap.num_forwards == 1  # the forward after exit was not recorded


def test_pre_rope_copies_equal_projections(student_tokenizer, batch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="mistral")
    attn = decoder_layers(model)[-1].self_attn
    seen = {}
    attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o))
    attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o))
    d = head_dim(model)
    with torch.no_grad(), capture_qk(model, top_n=1, keep_pre_rope=True) as cap:
        model(input_ids=ids, attention_mask=mask)
        qk = cap.result()
    B, n = ids.shape
    torch.testing.assert_close(qk.q_pre[0], seen["q"].view(B, n, -1, d).transpose(1, 2), atol=0, rtol=0)
    torch.testing.assert_close(qk.k_pre[0], seen["k"].view(B, n, -1, d).transpose(1, 2), atol=0, rtol=0)
    # RoPE is the identity at position 0 and a rotation after it (norms kept)
    torch.testing.assert_close(qk.q[0][:, :, 0], qk.q_pre[0][:, :, 0])
    assert not torch.allclose(qk.q[0][:, :, 1:], qk.q_pre[0][:, :, 1:])
    torch.testing.assert_close(qk.k[0].norm(dim=-1), qk.k_pre[0].norm(dim=-1))


def _qk_loss_grads(model, ids, mask):
    model.zero_grad()
    with capture_qk(model, top_n=2) as cap:
        out = model(input_ids=ids, attention_mask=mask)
        qk = cap.result()
        loss = out.logits.sum() + qk.q[0].pow(2).mean() + qk.k[1].pow(2).mean()
        cap.reset()  # the graph lives on in `qk`; a step may drop the records before backward
        loss.backward()
        assert cap.num_forwards == 0  # the backward recomputation recorded nothing
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_same_grads(student_tokenizer, batch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="llama").train()
    plain = _qk_loss_grads(model, ids, mask)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    q_calls = []
    decoder_layers(model)[-1].self_attn.q_proj.register_forward_hook(lambda m, a, o: q_calls.append(1))
    ckpt = _qk_loss_grads(model, ids, mask)
    assert len(q_calls) == 2  # forward + recomputation in backward: the checkpointing really ran
    assert plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-6, rtol=1e-5)


def test_reentrant_checkpointing_is_refused(student_tokenizer, batch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="llama").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with capture_qk(model, top_n=1), pytest.raises(RuntimeError, match="use_reentrant"):
        model(input_ids=ids, attention_mask=mask)


def test_one_capture_reused_across_steps(student_tokenizer, batch):
    ids, mask = batch
    model = tiny.build_tiny_student(student_tokenizer, family="llama").eval()
    cap = QKCapture(model, top_n=1).attach()
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
            model(input_ids=ids[:1], attention_mask=mask[:1])
        assert cap.num_forwards == 2
        assert cap.result(0).q[0].shape[0] == 3 and cap.result().q[0].shape[0] == 1
        torch.testing.assert_close(cap.result().q[0][0], cap.result(0).q[0][0])  # same row, same Q
        cap.reset()
        assert cap.num_forwards == 0
        with pytest.raises(RuntimeError, match="no forward recorded"):
            cap.result()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        assert cap.num_forwards == 1
    finally:
        cap.detach()


def test_introspection_and_validation(student_tokenizer):
    model = tiny.build_tiny_student(student_tokenizer, family="qwen2", num_layers=3)
    assert (num_blocks(model), num_heads(model), num_kv_heads(model), head_dim(model)) == (3, 4, 2, 16)
    assert decoder_layers(model) is model.model.layers
    check_top_n(model, 3)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="decoder blocks"):
            check_top_n(model, bad)
        with pytest.raises(ValueError):
            QKCapture(model, top_n=bad)
    with pytest.raises(ValueError, match="no decoder layer list"):
        num_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
