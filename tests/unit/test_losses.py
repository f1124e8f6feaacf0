"""Losses (METHOD.md Eq. 2, 3, 8) with hand-checked numbers, sharding and gradient flow."""
from __future__ import annotations

import math

import pytest
import torch

from idrm_ray.core.losses import block_distance, bt_loss, id_loss, total_loss
from idrm_ray.core.types import BLOCKS, BlockMaps

# ---------------------------------------------------------------- bt_loss (Eq. 2)


def test_bt_loss_hand_checked():
    r_w, r_l = torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([1.0, 1.0])
    loss, m = bt_loss(r_w, r_l)
    # gaps (1, -1): -logsigmoid(1) = log(1 + e^-1) = 0.3132617, -logsigmoid(-1) = log(1 + e) = 1.3132617
    # mean = (0.3132617 + 1.3132617) / 2 = 0.8132617
    assert loss.item() == pytest.approx(0.8132617, abs=1e-6)
    assert m["accuracy"].item() == 0.5 and m["reward_gap"].item() == 0.0
    assert m["reward_chosen"].item() == 1.0 and m["reward_rejected"].item() == 1.0
    assert not any(v.requires_grad for v in m.values())
    loss.backward()
    # d/dr_w -logsigmoid(g) / B = -sigmoid(-g) / 2: g=1 -> -0.2689414/2, g=-1 -> -0.7310586/2
    torch.testing.assert_close(r_w.grad, torch.tensor([-0.1344707, -0.3655293]))


def test_bt_loss_margin_and_num_pairs():
    r_w, r_l = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, m = bt_loss(r_w, r_l, margin=torch.tensor([1.0, -1.0]))
    # shifted gaps (1 - 1, -1 + 1) = (0, 0): -logsigmoid(0) = log 2 = 0.6931472 each
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["accuracy"].item() == 0.5  # accuracy compares raw rewards, not margin-shifted ones
    loss, _ = bt_loss(r_w, r_l, num_pairs=4)
    # global normaliser: (0.3132617 + 1.3132617) / 4 = 0.4066309
    assert loss.item() == pytest.approx(0.4066309, abs=1e-6)


def test_bt_loss_sharding():
    gen = torch.Generator().manual_seed(0)
    r_w, r_l, margin = (torch.randn(8, generator=gen) for _ in range(3))
    full, _ = bt_loss(r_w, r_l, margin=margin)
    halves = [bt_loss(r_w[s], r_l[s], margin=margin[s]) for s in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close((halves[0][0] + halves[1][0]) / 2, full)  # mean of local means
    summed = [bt_loss(r_w[s], r_l[s], margin=margin[s], num_pairs=8)[0] for s in (slice(0, 4), slice(4, 8))]
    torch.testing.assert_close(summed[0] + summed[1], full)  # global normaliser: shards add up


# ---------------------------------------------------------------- block_distance

# One pair, 2 x 2: P rows (0.5, 0.5), (0.25, 0.75); T rows (1, 0), (0.5, 0.5)
P2 = torch.tensor([[[0.5, 0.5], [0.25, 0.75]]])
T2 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
ALL2 = torch.ones(1, 2, dtype=torch.bool)


@pytest.mark.parametrize(
    ("distance", "expected"),
    [
        # row 0: 0.5^2 + 0.5^2 = 0.5; row 1: 0.25^2 + 0.25^2 = 0.125; sqrt((0.5 + 0.125) / 2) = sqrt(0.3125)
        ("frobenius", 0.5590170),
        # entries 0.25, 0.25, 0.0625, 0.0625: sum 0.625 / 4 = 0.15625
        ("mse", 0.15625),
        # KL(T0||P0) = 1 log(1/0.5) = 0.6931472; KL(T1||P1) = 0.5 log(0.5/0.25) + 0.5 log(0.5/0.75)
        # = 0.3465736 - 0.2027326 = 0.1438410; mean = 0.4184941
        ("kl", 0.4184941),
    ],
)
def test_block_distance_hand_checked(distance, expected):
    got = block_distance(P2, T2, ALL2, ALL2, distance=distance)
    assert got.shape == (1,) and got.item() == pytest.approx(expected, abs=1e-6)
    # the same maps padded with an invalid row and column full of junk give the same number
    junk = torch.full((1, 3, 3), 0.7)
    P3, T3 = junk.clone(), junk.clone() * 0.1
    P3[:, :2, :2], T3[:, :2, :2] = P2, T2
    mask = torch.tensor([[True, True, False]])
    assert block_distance(P3, T3, mask, mask, distance=distance).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("distance", ["frobenius", "mse", "kl"])
def test_block_distance_empty_pair_and_zero_grad(distance):
    P = torch.tensor([[[0.5, 0.5]], [[0.2, 0.8]]], requires_grad=True)  # (B=2, 1, 2)
    T = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]])
    rows = torch.tensor([[True], [False]])  # pair 1 has no valid row: contributes 0
    d = block_distance(P, T, rows, torch.ones(2, 2, dtype=torch.bool), distance=distance)
    assert d.tolist() == [0.0, 0.0]  # pair 0 has P == T
    d.sum().backward()
    assert torch.isfinite(P.grad).all()  # safe sqrt: no NaN at P == T
    # frobenius/mse are minimal at P == T; KL's free gradient there is -T/P = (-1, -1), a
    # constant along the row that is zero on the simplex. The masked pair gets nothing.
    want = torch.tensor([[[-1.0, -1.0]], [[0.0, 0.0]]]) if distance == "kl" else torch.zeros(2, 1, 2)
    torch.testing.assert_close(P.grad, want)


def test_kl_clamps_zero_student_probability():
    P, T = torch.tensor([[[0.0, 1.0]]]), torch.tensor([[[1.0, 0.0]]])
    # 1 * (log 1 - log clamp(0, 1e-8)) = 8 ln 10 = 18.4206807
    got = block_distance(P, T, ALL2[:, :1], ALL2, distance="kl")
    assert got.item() == pytest.approx(18.4206807, abs=1e-4)


# ---------------------------------------------------------------- id_loss (Eq. 8)


def random_maps(bsz: int, blocks: int, u_w: int, u_l: int, *, seed: int, grad: bool = False) -> BlockMaps:
    """Row-stochastic maps over valid units; invalid rows and columns zero (BlockMaps contract)."""
    gen = torch.Generator().manual_seed(seed)
    valid_w = torch.ones(bsz, u_w, dtype=torch.bool)
    valid_l = torch.ones(bsz, u_l, dtype=torch.bool)
    valid_w[:, -1], valid_l[0, -2:] = False, False

    def block(vq: torch.Tensor, vk: torch.Tensor) -> torch.Tensor:
        logits = torch.randn(bsz, blocks, vq.shape[1], vk.shape[1], generator=gen)
        p = logits.masked_fill(~vk[:, None, None, :], -torch.inf).softmax(-1) * vq[:, None, :, None]
        return p.requires_grad_(grad)

    ww, ll = block(valid_w, valid_w), block(valid_l, valid_l)
    return BlockMaps(ww, ll, block(valid_w, valid_l), block(valid_l, valid_w), valid_w, valid_l)


def top_block(maps: BlockMaps, k: int) -> BlockMaps:
    """Only block k of the N, as an N = 1 BlockMaps."""
    return BlockMaps(*(maps.block(n)[:, k : k + 1] for n in BLOCKS), maps.valid_w, maps.valid_l)


def slice_pairs(maps: BlockMaps, s: slice) -> BlockMaps:
    return BlockMaps(*(t[s] for t in (maps.ww, maps.ll, maps.wl, maps.lw, maps.valid_w, maps.valid_l)))


def test_id_loss_hand_checked_and_reductions():
    P, T = P2[:, None], T2[:, None]  # (B=1, N=1, 2, 2), each block D = 0.5590170 (frobenius above)
    ones = torch.ones(1, 2, dtype=torch.bool)
    student, teacher = BlockMaps(P, P, P, P, ones, ones), BlockMaps(T, T, T, T, ones, ones)
    loss, m = id_loss(student, teacher)
    # sum reduction: 4 x 0.5590170 = 2.2360680 (= sqrt 5); l_intra = l_inter = 1.1180340
    assert loss.item() == pytest.approx(2.2360680, abs=1e-6)
    assert m["l_intra"].item() == pytest.approx(1.1180340, abs=1e-6)
    assert m["d_lw"].item() == pytest.approx(0.5590170, abs=1e-6)
    mean, _ = id_loss(student, teacher, block_reduction="mean")
    assert mean.item() == pytest.approx(0.5590170, abs=1e-6)  # 2.2360680 / 4 blocks
    intra_mean, _ = id_loss(student, teacher, inter=False, block_reduction="mean")
    assert intra_mean.item() == pytest.approx(0.5590170, abs=1e-6)  # (2 x 0.5590170) / 2 blocks


def test_id_loss_zero_when_equal():
    maps = random_maps(3, 2, 5, 4, seed=1)
    for distance in ("frobenius", "mse", "kl"):
        loss, m = id_loss(maps, maps, distance=distance)
        assert loss.item() == 0.0 and all(v.item() == 0.0 for v in m.values())


def test_id_loss_switches_and_block_average():
    student, teacher = random_maps(3, 2, 5, 4, seed=2), random_maps(3, 2, 5, 4, seed=3)
    full, m = id_loss(student, teacher)
    intra, m_intra = id_loss(student, teacher, inter=False)
    inter, m_inter = id_loss(student, teacher, intra=False)
    torch.testing.assert_close(intra + inter, full)
    # each switch keeps exactly its two blocks (Eq. 8's L_intra / L_inter)
    torch.testing.assert_close(intra, m["d_ww"] + m["d_ll"])
    torch.testing.assert_close(inter, m["d_wl"] + m["d_lw"])
    assert m_intra["l_inter"].item() == 0.0 and m_inter["l_intra"].item() == 0.0
    assert m_intra["d_wl"] == m["d_wl"]  # switched-off blocks are still reported
    # N = 2: the loss is the average of the per-block (N = 1) losses, top-aligned by index k
    per_k = [id_loss(top_block(student, k), top_block(teacher, k))[0] for k in (0, 1)]
    torch.testing.assert_close(full, (per_k[0] + per_k[1]) / 2)
    mean, _ = id_loss(student, teacher, block_reduction="mean")
    torch.testing.assert_close(mean * 4, full)  # 4 enabled blocks
    torch.testing.assert_close(id_loss(student, teacher, intra=False, block_reduction="mean")[0] * 2, inter)


@pytest.mark.parametrize("distance", ["frobenius", "mse", "kl"])
def test_id_loss_sharding(distance):
    student, teacher = random_maps(4, 2, 5, 4, seed=4), random_maps(4, 2, 5, 4, seed=5)
    full, _ = id_loss(student, teacher, distance=distance)
    halves = [(slice_pairs(student, s), slice_pairs(teacher, s)) for s in (slice(0, 2), slice(2, 4))]
    local = [id_loss(s, t, distance=distance)[0] for s, t in halves]
    torch.testing.assert_close((local[0] + local[1]) / 2, full)
    summed = [id_loss(s, t, distance=distance, num_pairs=4)[0] for s, t in halves]
    torch.testing.assert_close(summed[0] + summed[1], full)


def test_id_loss_gradients_reach_student_only():
    student = random_maps(2, 1, 5, 4, seed=6, grad=True)
    teacher = random_maps(2, 1, 5, 4, seed=7)
    halves = (teacher.block(n).half().requires_grad_() for n in BLOCKS)  # fp16, as from the teacher stage
    teacher = BlockMaps(*halves, teacher.valid_w, teacher.valid_l)
    loss, m = id_loss(student, teacher, distance="kl")
    assert loss.dtype == torch.float32 and not any(v.requires_grad for v in m.values())
    loss.backward()
    assert all(student.block(n).grad is not None and student.block(n).grad.abs().sum() > 0 for n in BLOCKS)
    assert all(teacher.block(n).grad is None for n in BLOCKS)
    # an intra-only loss sends no gradient into the inter blocks
    student = random_maps(2, 1, 5, 4, seed=6, grad=True)
    id_loss(student, teacher, inter=False)[0].backward()
    assert student.wl.grad is None and student.ww.grad is not None


def test_id_loss_response_only_inter():
    # One pair, units (prompt, response) in each half. Inter rows renormalised over the
    # response column: student wl row 1 (0.6, 0.4) -> (0, 1), teacher (0.2, 0.8) -> (0, 1): D = 0.
    ones, response = torch.ones(1, 2, dtype=torch.bool), torch.tensor([[False, True]])
    s_inter = torch.tensor([[[[0.5, 0.5], [0.6, 0.4]]]])
    t_inter = torch.tensor([[[[0.9, 0.1], [0.2, 0.8]]]])
    eye = torch.eye(2)[None, None]
    student = BlockMaps(eye, eye, s_inter, s_inter, ones, ones)
    teacher = BlockMaps(eye, eye, t_inter, t_inter, ones, ones)
    restricted, m = id_loss(student, teacher, response_w=response, response_l=response)
    assert restricted.item() == 0.0 and m["l_intra"].item() == 0.0
    # without the restriction: rows (0.4, -0.4)^2 -> 0.32 and (0.4, -0.4)^2 -> 0.32; D = sqrt(0.32) = 0.5656854
    full, m = id_loss(student, teacher)
    assert m["d_wl"].item() == pytest.approx(0.5656854, abs=1e-6)
    assert full.item() == pytest.approx(2 * 0.5656854, abs=1e-6)  # wl + lw; intra blocks equal


def test_total_loss():
    # METHOD.md Eq. 3: 0.5 + 0.8 x 0.25 = 0.7
    assert total_loss(torch.tensor(0.5), torch.tensor(0.25), lam=0.8).item() == pytest.approx(0.7)


def test_bad_flags_fail():
    maps = random_maps(1, 1, 3, 3, seed=8)
    with pytest.raises(ValueError):
        id_loss(maps, maps, intra=False, inter=False)
    with pytest.raises(ValueError):
        id_loss(maps, maps, block_reduction="max")
    with pytest.raises(ValueError):
        block_distance(P2, T2, ALL2, ALL2, distance="l1")
