"""The paper's attention diagnostics (its Section 2, Figures 1 and 2) for any supported student.

Attention is read from the TOP decoder block, averaged over heads, in the query row of the
reward token (the last real token, where Eq. 1 reads the reward). It needs the eager
attention implementation (sdpa never materialises the map), so the analysis loads its own
eager copy of the checkpoint; scoring keeps sdpa.

Stages: the real positions of a sequence, a leading BOS excluded, are split into 10
contiguous near-equal stages (`np.array_split`); the reward token is the last position of
the last stage. A leading BOS is left out because decoders park much of their attention on
it (the "attention sink"), which would fill stage 1 whatever the text says; it is never
masked either.

- Stage analysis (Fig. 1, bars): per sequence, the share of the reward token's attention
  that falls on each stage, renormalised over the staged positions (so a sequence's shares
  sum to 1), then the cumulative share up to each stage; averaged over the sequences (both
  sides) of correctly and of incorrectly judged pairs. Tied pairs join neither group.
- Progressive masking (Fig. 1, line): stages 1..k get attention_mask 0 (the reward token and
  a BOS stay visible; position ids count visible tokens only, as in `compute_rewards`), for
  k = 0..10, and the pair accuracy is recomputed. With every stage masked the chosen and
  rejected inputs are identical, so each pair ties and accuracy is 0.5; differences below
  `tie_rel` times the reward scale are ties (kernel rounding, not a judgement).
- Token view (Fig. 2, one pair): each token's attention from the reward token, divided by
  the largest value over both sides (BOS excluded from that maximum and clipped to 1), so
  colours compare across the two sides; 0..1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from idrm_ray.core.capture import decoder_layers
from idrm_ray.core.reward_model import compute_rewards, last_token_index
from idrm_ray.core.scoring import RewardScorer, pad_batch, pair_outcomes

NUM_STAGES = 10


def stage_positions(seq: np.ndarray, *, bos_id: int | None, num_stages: int = NUM_STAGES) -> list[np.ndarray]:
    """Positions of each stage (a leading BOS excluded); sequences shorter than
    `num_stages` staged tokens leave some stages empty."""
    start = 1 if bos_id is not None and len(seq) > 1 and int(seq[0]) == bos_id else 0
    return np.array_split(np.arange(start, len(seq)), num_stages)


def stage_fractions(attn: np.ndarray, stages: Sequence[np.ndarray]) -> np.ndarray:
    """(S,) share of `attn` (n,) on each stage, renormalised over the staged positions."""
    sums = np.array([float(attn[p].sum()) for p in stages])
    total = sums.sum()
    return sums / total if total > 0 else np.zeros(len(stages))


def reward_token_attention(
    model, seqs: Sequence[np.ndarray], *, pad_id: int, batch_size: int = 8
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per sequence the (n,) head-mean attention of the reward token in the top block, and
    the (len(seqs),) rewards of the same forward. `model` must use eager attention."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "eager":
        raise ValueError(f"attention diagnostics need attn_implementation='eager', the model uses {impl!r}")
    device = next(model.parameters()).device
    captured: dict[str, torch.Tensor] = {}
    hook = decoder_layers(model)[-1].self_attn.register_forward_hook(lambda mod, args, out: captured.update(w=out[1]))
    attns: list[np.ndarray] = [np.empty(0)] * len(seqs)
    rewards = np.empty(len(seqs))
    order = np.argsort([len(s) for s in seqs], kind="stable")
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad_batch([seqs[i] for i in idx], pad_id=pad_id)
            with torch.inference_mode():
                r = compute_rewards(model, ids.to(device), mask.to(device))
            weights = captured.pop("w", None)  # (B, H, n, n)
            if weights is None:
                raise ValueError("the top attention block returned no attention weights")
            last = last_token_index(mask).to(weights.device)
            rows = weights[torch.arange(len(idx), device=weights.device), :, last, :].float().mean(dim=1)  # (B, n)
            for j, i in enumerate(idx):
                attns[i] = rows[j, : len(seqs[i])].cpu().numpy()
            rewards[idx] = r.float().cpu().numpy()
    finally:
        hook.remove()
    return attns, rewards


def stage_analysis(
    attns: Sequence[np.ndarray],
    seqs: Sequence[np.ndarray],
    outcomes: np.ndarray,
    *,
    bos_id: int | None,
    num_stages: int = NUM_STAGES,
) -> dict:
    """Mean per-stage and cumulative attention shares for correctly / incorrectly judged
    pairs; `attns`, `seqs` are ordered [chosen_0, rejected_0, ...], `outcomes` (N,)."""
    fractions = np.stack(
        [stage_fractions(a, stage_positions(s, bos_id=bos_id, num_stages=num_stages)) for a, s in zip(attns, seqs)]
    )
    per_pair = fractions.reshape(len(outcomes), 2, num_stages)  # (N, 2, S)
    out: dict = {"num_stages": num_stages, "ties": int(np.sum(outcomes == 0.5))}
    for name, pick in (("correct", outcomes == 1.0), ("incorrect", outcomes == 0.0)):
        group = per_pair[pick].reshape(-1, num_stages)  # (2 * pairs, S)
        if not len(group):  # JSON has no NaN: an empty group has no bars
            out[name] = {"pairs": 0, "fraction": None, "cumulative": None}
            continue
        mean = group.mean(axis=0)
        out[name] = {"pairs": int(pick.sum()), "fraction": mean.tolist(), "cumulative": np.cumsum(mean).tolist()}
    return out


def stage_masks(seq: np.ndarray, stages: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(n,) attention mask with stages [0, k) masked; the reward token always stays."""
    mask = np.ones(len(seq), dtype=np.int64)
    for p in stages[:k]:
        mask[p] = 0
    mask[-1] = 1
    return mask


def masking_curve(
    scorer: RewardScorer,
    seqs: Sequence[np.ndarray],
    *,
    bos_id: int | None,
    num_stages: int = NUM_STAGES,
    tie_rel: float | None = None,
) -> dict:
    """Accuracy after masking the first k stages, k = 0..num_stages."""
    if tie_rel is None:
        tie_rel = 1e-5 if next(scorer.model.parameters()).dtype == torch.float32 else 1e-2
    stages = [stage_positions(s, bos_id=bos_id, num_stages=num_stages) for s in seqs]
    base = scorer.score(seqs)
    tie_tol = tie_rel * max(float(np.std(base)), float(np.mean(np.abs(base))), 1e-12)
    accuracy, ties = [], []
    for k in range(num_stages + 1):
        rewards = base if k == 0 else scorer.score(seqs, masks=[stage_masks(s, st, k) for s, st in zip(seqs, stages)])
        outcomes = pair_outcomes(rewards[0::2], rewards[1::2], tie_tol=tie_tol)
        accuracy.append(float(outcomes.mean()))
        ties.append(int(np.sum(outcomes == 0.5)))
    return {
        "masked_fraction": [k / num_stages for k in range(num_stages + 1)],
        "accuracy": accuracy,
        "ties": ties,
        "tie_tol": tie_tol,
    }


def _token_texts(tokenizer, seq: np.ndarray) -> list[str]:
    return [tokenizer.decode([int(t)], clean_up_tokenization_spaces=False) for t in seq]


def token_view(
    tokenizer, seq_w: np.ndarray, attn_w: np.ndarray, seq_l: np.ndarray, attn_l: np.ndarray, *, bos_id: int | None
) -> dict:
    """Both sides' tokens with raw and normalised (0..1, common scale) reward-token attention."""

    def staged(seq: np.ndarray, attn: np.ndarray) -> np.ndarray:
        return np.concatenate(stage_positions(seq, bos_id=bos_id, num_stages=1))

    scale = max(float(attn_w[staged(seq_w, attn_w)].max()), float(attn_l[staged(seq_l, attn_l)].max()), 1e-12)
    side = lambda seq, attn: {  # noqa: E731
        "tokens": _token_texts(tokenizer, seq),
        "attention": [float(a) for a in attn],
        "normalized": [float(min(a / scale, 1.0)) for a in attn],
    }
    return {"chosen": side(seq_w, attn_w), "rejected": side(seq_l, attn_l), "scale_max": scale}
