"""Baseline math (METHOD.md §10) with hand-checked numbers: AM margins, LF strength/flips and
label smoothing, WARM averaging, InfoRM's IB head and KL term, and their reductions to BT."""
from __future__ import annotations

import math

import pytest
import torch

from idrm_ray.core.baselines import (
    IBRewardHead,
    am_margins,
    average_state_dicts,
    flip_mask,
    fold_ib_state,
    inform_kl,
    inform_kl_terms,
    preference_strength,
    smoothed_bt_terms,
)
from idrm_ray.core import tiny
from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.losses import bt_loss
from idrm_ray.core.objective import BTSettings, RewardForward, preference_loss
from idrm_ray.core.reward_model import compute_rewards, value_head
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs


def test_preference_strength_by_hand():
    gaps = torch.tensor([[1.0, -2.0, 0.5], [3.0, -1.0, -0.5]])  # 2 members x 3 pairs
    mu, sigma = preference_strength(gaps)
    assert mu.tolist() == pytest.approx([2.0, -1.5, 0.0])
    assert sigma.tolist() == pytest.approx([1.0, 0.5, 0.5])  # population std over members


def test_am_margins_clip_and_scale():
    assert am_margins(torch.tensor([1.5, -0.3, 0.0]), scale=2.0).tolist() == pytest.approx([3.0, 0.0, 0.0])


def test_am_loss_by_hand_and_zero_margin_is_bt():
    r_w, r_l = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, _ = bt_loss(r_w, r_l, margin=torch.tensor([1.0, 0.5]))
    expected = (math.log(2) + math.log1p(math.exp(1.5))) / 2  # -log σ(1-1), -log σ(-1-0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    zero, _ = bt_loss(r_w, r_l, margin=torch.zeros(2))
    plain, _ = bt_loss(r_w, r_l)
    assert zero.item() == pytest.approx(plain.item(), rel=1e-7)


def test_flip_mask_negative_mean_and_cap():
    mu = torch.tensor([0.5, -1.0, -0.2, 2.0, -3.0])
    assert flip_mask(mu).tolist() == [False, True, True, False, True]
    # at most 40% of 5 = 2 pairs: the two lowest μ̂
    assert flip_mask(mu, max_fraction=0.4).tolist() == [False, True, False, False, True]
    assert not flip_mask(torch.tensor([0.1, 0.2])).any()  # nothing to flip: the data is unchanged


def test_label_smoothing_by_hand_and_alpha_zero_is_bt():
    gap = torch.tensor([1.0, -2.0])
    sig = torch.sigmoid(gap)
    expected = -(0.9 * torch.log(sig) + 0.1 * torch.log(1 - sig))
    assert smoothed_bt_terms(gap, alpha=0.1).tolist() == pytest.approx(expected.tolist(), rel=1e-6)
    assert smoothed_bt_terms(gap, alpha=0.0).tolist() == pytest.approx((-torch.log(sig)).tolist(), rel=1e-6)
    loss, _ = bt_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), label_smoothing=0.1)
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="α"):
        smoothed_bt_terms(gap, alpha=1.0)


def test_label_smoothing_keeps_a_finite_optimum():
    """With α > 0 the loss is minimised at a finite gap, log((1-α)/α), not at +inf."""
    gaps = torch.linspace(0, 6, 601)
    best = gaps[smoothed_bt_terms(gaps, alpha=0.1).argmin()].item()
    assert best == pytest.approx(math.log(9), abs=0.01)


def test_average_state_dicts_by_hand_identity_and_generator():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    avg = average_state_dicts([a, b])
    assert avg["w"].tolist() == [2.0, 4.0] and avg["n"].item() == 7  # integer buffers from member 0
    assert average_state_dicts(iter([a, b]), weights=[3, 1])["w"].tolist() == [1.5, 3.0]
    one = average_state_dicts([a])
    assert torch.equal(one["w"], a["w"]) and one["w"].dtype == a["w"].dtype  # one model: identity
    half = {"w": torch.tensor([1.0, 2.0], dtype=torch.bfloat16)}
    assert average_state_dicts([half, half])["w"].dtype == torch.bfloat16


def test_average_state_dicts_refuses_different_models():
    with pytest.raises(ValueError, match="same initialisation"):
        average_state_dicts([{"w": torch.zeros(2)}, {"v": torch.zeros(2)}])
    with pytest.raises(ValueError, match="shape"):
        average_state_dicts([{"w": torch.zeros(2)}, {"w": torch.zeros(3)}])


def test_inform_kl_zero_for_standard_normal_and_by_hand():
    zeros = torch.zeros(4, 8)
    assert inform_kl(zeros, zeros).item() == 0.0
    assert inform_kl(zeros, zeros, form="per_dim").item() == 0.0
    mu = torch.tensor([[1.0, 3.0]])  # mean over dims: 2
    logvar = torch.tensor([[0.0, 0.0]])
    assert inform_kl(mu, logvar).item() == pytest.approx(0.5 * 4)  # -½(1 + 0 - 4 - 1)
    assert inform_kl(mu, logvar, form="per_dim").item() == pytest.approx(0.5 * 1 + 0.5 * 9)
    lv = torch.tensor([[math.log(4.0)]])  # σ² = 4, μ = 0: ½(4 - 1 - log 4)
    assert inform_kl_terms(torch.zeros(1, 1), lv).item() == pytest.approx(0.5 * (4 - 1 - math.log(4)))


def test_ib_head_samples_in_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    head = IBRewardHead(hidden_size=6, latent_dim=3, init_std=0.5)
    h = torch.randn(5, 6)
    head.train()
    assert not torch.allclose(head(h), head(h))  # z = μ + σ ε
    head.eval()
    r = head(h)
    assert torch.equal(r, head(h))
    mu, logvar = head.latest
    assert mu.shape == logvar.shape == (5, 3)
    w, b = fold_ib_state(head.state_dict())
    assert w.shape == (1, 6)
    assert torch.allclose(h @ w.T + b, r.unsqueeze(-1), atol=1e-5)  # the folded head is the eval head


# -- through the training objective (tiny student) ------------------------------------------

PAIRS = [
    PreferenceExample("\n\nHuman: The cat likes the ball. What does the cat like?\n\nAssistant:", " The ball.", " A book."),
    PreferenceExample("\n\nHuman: Who reads a letter? A child reads a letter.\n\nAssistant:", " A child.", " The robot."),
]


@pytest.fixture()
def student_batch(student_tokenizer):
    encodings = encode_pairs(PAIRS, student_tokenizer, student_tokenizer, student_max_len=64, teacher_max_len=140)
    batch = collate_pairs(encodings, pad_id=student_tokenizer.pad_token_id)
    return tiny.build_tiny_student(student_tokenizer, seed=0), batch


def test_inform_objective_is_bt_plus_beta_kl_and_trains_the_head(student_batch):
    model, batch = student_batch
    torch.manual_seed(0)
    head = IBRewardHead(model.config.hidden_size, latent_dim=4)
    module = RewardForward(model, head=head)
    assert not value_head(model).weight.requires_grad  # the plain head is unused (frozen) under InfoRM
    loss, metrics = preference_loss(model, batch, forward=module, bt=BTSettings(ib_beta=0.5), ib_head=head)
    assert metrics["kl"] > 0
    assert loss.item() == pytest.approx((metrics["l_bt"] + 0.5 * metrics["kl"]).item(), rel=1e-5)
    assert metrics["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert head.encoder.weight.grad.abs().sum() > 0 and head.decoder.weight.grad.abs().sum() > 0
    # num_pairs: the KL is normalised like the BT sum (2 sequences per pair)
    loss2, _ = preference_loss(model, batch, forward=module, bt=BTSettings(ib_beta=0.5), ib_head=head, num_pairs=4)
    assert loss2.item() < loss.item()


def test_inform_eval_reward_equals_the_folded_plain_head(student_batch):
    model, batch = student_batch
    head = IBRewardHead(model.config.hidden_size, latent_dim=4, init_std=0.3)
    module = RewardForward(model, head=head).eval()
    with torch.no_grad():
        r_ib = module(batch.input_ids, batch.attention_mask)
        w, b = head.folded()
        value_head(model).weight.copy_(w)
        r_plain = compute_rewards(model, batch.input_ids, batch.attention_mask)
    assert torch.allclose(r_ib, r_plain + b, atol=1e-5)  # same preferences; b shifts all rewards


def test_smoothing_through_the_objective(student_batch):
    model, batch = student_batch
    smooth, _ = preference_loss(model, batch, bt=BTSettings(label_smoothing=0.1))
    with torch.no_grad():
        r_w, r_l = compute_rewards(model, batch.input_ids, batch.attention_mask).split(batch.num_pairs)
    sig = torch.sigmoid(r_w - r_l)
    expected = -(0.9 * sig.log() + 0.1 * (1 - sig).log()).mean()
    assert smooth.item() == pytest.approx(expected.item(), rel=1e-5)
