"""The training objective of one student step: METHOD.md Eq. 3, L = L_BT + λ·L_ID.

Composes the pure pieces (reward head, Q/K capture, simulated maps, losses) into the
one function the train loop calls. One student forward over the 2B sequences; the
simulated maps are side computations on the captured Q/K (METHOD.md §6 "Cost").
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from idrm_ray.core.baselines import IBRewardHead, inform_kl_terms
from idrm_ray.core.capture import capture_qk
from idrm_ray.core.losses import bt_loss, id_loss, total_loss
from idrm_ray.core.reward_model import compute_rewards, last_hidden_state, value_head
from idrm_ray.core.simulated import simulated_maps
from idrm_ray.core.settings import BTSettings, IDSettings  # noqa: F401 - the objective's knobs, re-exported
from idrm_ray.core.types import BlockMaps, PreferenceBatch


def preference_loss(
    model: torch.nn.Module,
    batch: PreferenceBatch,
    teacher: BlockMaps | None = None,
    *,
    settings: IDSettings | None = None,
    num_pairs: float | None = None,
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    bt: BTSettings = BTSettings(),
    ib_head: IBRewardHead | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BT loss (Eq. 2), plus λ·L_ID (Eq. 8) when `settings` and teacher maps are given.

    `num_pairs` is the global pair count of the step (data-parallel normaliser); the
    default is this batch's B, which makes the loss a per-pair mean. `forward` maps
    (input_ids, attention_mask) to rewards through a DDP/DeepSpeed wrapper of `model`;
    the capture hooks sit on `model` itself either way. With `ib_head` (InfoRM) the forward
    must route through it (`RewardForward(model, head=ib_head)`); its latents of this
    forward give the β·KL term.
    """
    forward = forward or (lambda ids, mask: compute_rewards(model, ids, mask))
    use_id = settings is not None and teacher is not None and settings.lam > 0
    if not use_id:
        rewards = forward(batch.input_ids, batch.attention_mask)
        return _bt_part(rewards, batch, num_pairs, bt, ib_head)
    with capture_qk(model, top_n=settings.top_n, keep_pre_rope=settings.inter_keys == "pre_rope") as cap:
        rewards = forward(batch.input_ids, batch.attention_mask)
    l_bt, metrics = _bt_part(rewards, batch, num_pairs, bt, ib_head)
    student = simulated_maps(
        cap.result(), batch, inter_keys=settings.inter_keys, mode=settings.mode, chunk_rows=settings.chunk_rows,
        scaling=cap.layout.scaling,  # the model's own logit scale, not a hard-coded 1/sqrt(d)
    )
    l_id, id_metrics = id_loss(
        student,
        teacher.to(student.ww.device, torch.float32),
        distance=settings.distance,
        intra=settings.intra,
        inter=settings.inter,
        block_reduction=settings.block_reduction,
        response_w=batch.unit_response_w if settings.response_only_inter else None,
        response_l=batch.unit_response_l if settings.response_only_inter else None,
        num_pairs=num_pairs,
    )
    metrics.update(id_metrics)
    loss = total_loss(l_bt, l_id, lam=settings.lam)
    # Logged as a local per-pair mean like every other metric; `loss` itself carries the
    # data-parallel normaliser and differs from it when shards are uneven.
    metrics["loss"] = metrics["loss"] + settings.lam * metrics["l_id"]
    return loss, metrics


def _bt_part(
    rewards: torch.Tensor, batch: PreferenceBatch, num_pairs: float | None, bt: BTSettings,
    ib_head: IBRewardHead | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BT (with margin / smoothing) plus InfoRM's β·KL; metrics are local per-pair means."""
    r_w, r_l = rewards.split(batch.num_pairs)  # (B,), (B,): chosen rows first
    l_bt, metrics = bt_loss(r_w, r_l, margin=batch.margin, label_smoothing=bt.label_smoothing, num_pairs=num_pairs)
    metrics["loss"] = metrics["l_bt"]
    if ib_head is None or bt.ib_beta == 0:
        return l_bt, metrics
    if ib_head.latest is None:
        raise RuntimeError("InfoRM: the forward did not go through the IB head (use RewardForward(model, head=...))")
    kl = inform_kl_terms(*ib_head.latest, form=bt.kl_form)  # (2B,) chosen and rejected sequences
    ib_head.latest = None
    denominator = 2 * (batch.num_pairs if num_pairs is None else num_pairs)
    metrics["kl"] = kl.mean().detach()
    metrics["loss"] = metrics["loss"] + bt.ib_beta * metrics["kl"]
    return l_bt + bt.ib_beta * kl.sum() / denominator, metrics


class RewardForward(torch.nn.Module):
    """Wraps a reward model so that DDP / DeepSpeed see one module whose forward
    returns rewards (Eq. 1); the wrapped HF model stays reachable as `.model`. With `head`
    (InfoRM's IB head) the reward comes from it instead of the model's `score` layer,
    which is then frozen (unused)."""

    def __init__(self, model: torch.nn.Module, head: IBRewardHead | None = None):
        super().__init__()
        self.model = model
        self.head = head
        if head is not None:
            for p in value_head(model).parameters():
                p.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return compute_rewards(self.model, input_ids, attention_mask)
        return self.head(last_hidden_state(self.model, input_ids, attention_mask))
