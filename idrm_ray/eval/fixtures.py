"""Reward models with a known preference, built offline for tests and smoke runs.

`marker_reward_model` turns the tiny Llama-style student (`idrm_ray.core.tiny`) into an RM
whose reward is, by construction, proportional to (#plus - #minus marker tokens) / #tokens
among the tokens the reward token sees, times `sign`:

- every token embedding has 0 in dimension 0, except the markers: +-1 there and 0 elsewhere,
  so the first block's RMSNorm maps them to exactly +-sqrt(hidden);
- block 0 has W_Q = W_K = 0 (uniform causal attention), W_V copies dimension 0 into head 0,
  W_O writes it back to dimension 0; every other attention output and every MLP output is 0,
  so the residual stream at the last token is its own embedding (0 in dimension 0) plus the
  mean of the visible tokens' normalised dimension 0;
- the value head reads dimension 0 (times `sign`) after the final RMSNorm (a positive scale).
So with a plus marker only in chosen responses and a minus marker only in rejected ones, a
`sign=+1` model prefers every chosen response and `sign=-1` every rejected one; with no
marker visible both rewards are 0 (a tie). Attention masking hides markers, as it should.
"""

from __future__ import annotations

import torch

from idrm_ray.core.capture import decoder_layers
from idrm_ray.core.reward_model import backbone, value_head
from idrm_ray.core.tiny import build_tiny_student


def single_token_ids(tokenizer, words: list[str]) -> list[int]:
    ids = []
    for word in words:
        toks = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"marker {word!r} is {len(toks)} tokens for this tokenizer; pick a single-token word")
        ids.append(toks[0])
    return ids


def marker_reward_model(tokenizer, *, plus: list[str], minus: list[str], sign: float = 1.0, seed: int = 0):
    """A tiny RM whose reward counts marker tokens (module docstring); eval mode, fp32."""
    model = build_tiny_student(tokenizer, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, seed=seed)
    plus_ids, minus_ids = single_token_ids(tokenizer, plus), single_token_ids(tokenizer, minus)
    if set(plus_ids) & set(minus_ids):
        raise ValueError("plus and minus markers share a token")
    with torch.no_grad():
        emb = backbone(model).embed_tokens.weight  # (V, d)
        emb[:, 0] = 0.0
        for ids, value in ((plus_ids, 1.0), (minus_ids, -1.0)):
            emb[ids] = 0.0
            emb[ids, 0] = value
        for k, block in enumerate(decoder_layers(model)):
            block.mlp.down_proj.weight.zero_()
            block.self_attn.o_proj.weight.zero_()
            if k == 0:
                attn = block.self_attn
                attn.q_proj.weight.zero_()
                attn.k_proj.weight.zero_()
                attn.v_proj.weight.zero_()
                attn.v_proj.weight[0, 0] = 1.0  # kv head 0, dim 0 <- hidden dim 0
                attn.o_proj.weight[0, 0] = 1.0  # hidden dim 0 <- query head 0, dim 0
        head = value_head(model).weight  # (1, d)
        head.zero_()
        head[0, 0] = float(sign)
    return model.eval()
