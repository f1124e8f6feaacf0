"""Simulated maps (METHOD.md Eq. 6-7, §6 Pool): the chunked, checkpointed implementation
against a naive dense reference, plus row-stochasticity, NaN-freedom and memory."""
from __future__ import annotations

import math

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from idrm_ray.core.simulated import simulated_maps
from idrm_ray.core.types import BLOCKS, BlockMaps, CapturedQK, PreferenceBatch

# ---------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def one_thread():
    """Many tiny ops: one intra-op thread is faster on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_batch(lengths: list[int], n: int, *, seed: int, empty_l: int | None = None) -> PreferenceBatch:
    """Right-padded units: BOS (-1), units of 1-3 tokens with a few -1 specials between them,
    EOS (-1). ~20% of units invalid, one padded unit slot per half. `empty_l` makes every
    unit of that pair's rejected half invalid (its rows and the chosen->rejected keys vanish)."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(lengths)
    unit = torch.full((rows, n), -1, dtype=torch.long)
    counts = []
    for r, length in enumerate(lengths):
        pos, u = 1, 0
        while pos < length - 1:
            if torch.rand(1, generator=gen).item() < 0.15:  # a special/template token
                pos += 1
                continue
            span = min(int(torch.randint(1, 4, (1,), generator=gen)), length - 1 - pos)
            unit[r, pos : pos + span] = u
            pos, u = pos + span, u + 1
        counts.append(u)
    bsz = rows // 2

    def valid(half: range) -> torch.Tensor:
        width = max(counts[r] for r in half) + 1  # +1: a padded unit slot
        v = torch.rand(bsz, width, generator=gen) > 0.2
        return v & (torch.arange(width)[None, :] < torch.tensor([counts[r] for r in half])[:, None])

    valid_w, valid_l = valid(range(bsz)), valid(range(bsz, rows))
    if empty_l is not None:
        valid_l[empty_l] = False
    mask = (torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]).long()
    return PreferenceBatch(
        input_ids=torch.zeros(rows, n, dtype=torch.long), attention_mask=mask, student_unit=unit,
        unit_valid_w=valid_w, unit_valid_l=valid_l, unit_response_w=valid_w, unit_response_l=valid_l,
    )


def make_qk(
    rows: int, n: int, *, heads: int = 4, kv_heads: int = 2, dim: int = 8, blocks: int = 2, seed: int = 0
) -> CapturedQK:
    gen = torch.Generator().manual_seed(seed)

    def rand(h: int) -> list[torch.Tensor]:
        return [(2.0 * torch.randn(rows, h, n, dim, generator=gen)).requires_grad_() for _ in range(blocks)]

    return CapturedQK(q=rand(heads), k=rand(kv_heads), q_pre=rand(heads), k_pre=rand(kv_heads))


# ---------------------------------------------------------------- naive reference


def unit_matrix(unit: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Dense 0/1 G (n, U): token t -> its unit, only tokens of valid units (METHOD.md §6)."""
    g = torch.zeros(unit.shape[0], valid.shape[0])
    for t, u in enumerate(unit.tolist()):
        if u >= 0 and valid[u]:
            g[t, u] = 1.0
    return g


def dropped_softmax(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Softmax over the kept keys only, zeros elsewhere: METHOD.md §6 drop-and-renormalise."""
    out = torch.zeros_like(logits)
    if keep.any():
        out[..., keep] = torch.softmax(logits[..., keep], dim=-1)
    return out


def dense_head_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(H, n, d) x (H_kv, n_k, d) -> (H, n, n_k), one head at a time (GQA h -> h // G)."""
    group = q.shape[0] // k.shape[0]
    return torch.stack([q[h] @ k[h // group].T / math.sqrt(q.shape[-1]) for h in range(q.shape[0])])


def naive_maps(qk: CapturedQK, batch: PreferenceBatch, *, inter_keys: str, mode: str) -> BlockMaps:
    """Dense H x n x n per pair, Pool(P) = diag(G_q^T 1)^-1 G_q^T P G_k."""
    bsz = batch.num_pairs
    q_in, k_in = (qk.q_pre, qk.k_pre) if inter_keys == "pre_rope" else (qk.q, qk.k)
    out = {name: [] for name in BLOCKS}
    for b in range(bsz):
        row = {"w": b, "l": bsz + b}
        g = {"w": unit_matrix(batch.student_unit[b], batch.unit_valid_w[b]),
             "l": unit_matrix(batch.student_unit[bsz + b], batch.unit_valid_l[b])}
        per_block = {name: [] for name in BLOCKS}
        for k in range(len(qk.q)):
            for a, o in (("w", "l"), ("l", "w")):
                own = dense_head_logits(qk.q[k][row[a]], qk.k[k][row[a]])  # Eq. 6
                cross = dense_head_logits(q_in[k][row[a]], k_in[k][row[o]])  # Eq. 7
                keep_own, keep_cross = g[a].sum(1) > 0, g[o].sum(1) > 0
                if mode == "joint":
                    p = dropped_softmax(torch.cat([own, cross], -1), torch.cat([keep_own, keep_cross])).mean(0)
                    p_own, p_cross = p.split([own.shape[-1], cross.shape[-1]], dim=-1)
                else:
                    p_own = dropped_softmax(own, keep_own).mean(0)
                    p_cross = dropped_softmax(cross, keep_cross).mean(0)
                inv = torch.diag(1.0 / g[a].sum(0).clamp(min=1.0))
                per_block[a + a].append(inv @ g[a].T @ p_own @ g[a])
                per_block[a + o].append(inv @ g[a].T @ p_cross @ g[o])
        for name in BLOCKS:
            out[name].append(torch.stack(per_block[name]))
    maps = {name: torch.stack(v) for name, v in out.items()}
    return BlockMaps(**maps, valid_w=batch.unit_valid_w, valid_l=batch.unit_valid_l)


# ---------------------------------------------------------------- tests

LENGTHS, N_TOK = [14, 9, 12, 14], 14  # B=2: chosen rows 0-1, rejected rows 2-3, right padded


@pytest.mark.parametrize("mode", ["separate", "joint"])
@pytest.mark.parametrize("inter_keys", ["post_rope", "pre_rope"])
@pytest.mark.parametrize("chunk_rows", [1, 3, 5, 64, None])
def test_chunked_equals_naive(chunk_rows, inter_keys, mode):
    batch, qk = make_batch(LENGTHS, N_TOK, seed=1), make_qk(4, N_TOK, seed=2)
    got = simulated_maps(qk, batch, inter_keys=inter_keys, mode=mode, chunk_rows=chunk_rows)
    want = naive_maps(qk, batch, inter_keys=inter_keys, mode=mode)
    for name in BLOCKS:
        assert got.block(name).shape == want.block(name).shape
        torch.testing.assert_close(got.block(name), want.block(name), atol=1e-5, rtol=0)


@pytest.mark.parametrize("checkpoint", [True, False])
@pytest.mark.parametrize(("inter_keys", "mode"), [("post_rope", "separate"), ("pre_rope", "joint")])
def test_gradients_equal_naive(checkpoint, inter_keys, mode):
    batch = make_batch(LENGTHS, N_TOK, seed=3)
    qk = make_qk(4, N_TOK, seed=4)
    probe = torch.Generator().manual_seed(5)

    def grads(maps: BlockMaps) -> list[torch.Tensor]:
        weights = [torch.randn(maps.block(n).shape, generator=probe) for n in BLOCKS]
        loss = sum((maps.block(n) * w).sum() for n, w in zip(BLOCKS, weights))
        return torch.autograd.grad(loss, [*qk.q, *qk.k, *qk.q_pre, *qk.k_pre], allow_unused=True)

    got = grads(simulated_maps(qk, batch, inter_keys=inter_keys, mode=mode, chunk_rows=4, checkpoint=checkpoint))
    probe.manual_seed(5)
    want = grads(naive_maps(qk, batch, inter_keys=inter_keys, mode=mode))
    for g, w in zip(got, want):
        assert (g is None) == (w is None)  # pre-RoPE tensors are used only when asked for
        if g is not None:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["separate", "joint"])
def test_valid_rows_stochastic_invalid_zero(mode):
    batch, qk = make_batch(LENGTHS, N_TOK, seed=6), make_qk(4, N_TOK, seed=7)
    maps = simulated_maps(qk, batch, mode=mode, chunk_rows=3)
    rows = {"w": batch.unit_valid_w, "l": batch.unit_valid_l}
    for name in BLOCKS:
        p, vq, vk = maps.block(name), rows[name[0]], rows[name[1]]
        assert (p[~vq[:, None, :, None].expand_as(p)] == 0).all()  # invalid/padded query rows
        assert (p[~vk[:, None, None, :].expand_as(p)] == 0).all()  # invalid/padded key columns
        if mode == "separate":  # each block its own distribution
            sums = p.sum(-1)[vq[:, None, :].expand(-1, p.shape[1], -1)]
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)
    if mode == "joint":  # one distribution over both sequences: ww + wl rows sum to 1
        for a, o in (("w", "l"), ("l", "w")):
            sums = (maps.block(a + a).sum(-1) + maps.block(a + o).sum(-1))[rows[a][:, None, :].expand(-1, 2, -1)]
            torch.testing.assert_close(sums, torch.ones_like(sums), atol=1e-5, rtol=0)


def test_pair_without_valid_keys_is_zero_not_nan():
    batch, qk = make_batch(LENGTHS, N_TOK, seed=8, empty_l=1), make_qk(4, N_TOK, seed=9)
    maps = simulated_maps(qk, batch, chunk_rows=4)
    assert (maps.wl[1] == 0).all() and (maps.ll[1] == 0).all() and (maps.lw[1] == 0).all()
    loss = sum(maps.block(n).sum() for n in BLOCKS)
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (*qk.q, *qk.k))


def test_low_precision_inputs_give_fp32_maps():
    batch, qk = make_batch(LENGTHS, N_TOK, seed=10), make_qk(4, N_TOK, seed=11)
    half = CapturedQK(q=[t.detach().bfloat16() for t in qk.q], k=[t.detach().bfloat16() for t in qk.k])
    got = simulated_maps(half, batch, chunk_rows=5)
    ref = CapturedQK(q=[t.float() for t in half.q], k=[t.float() for t in half.k])
    want = naive_maps(ref, batch, inter_keys="post_rope", mode="separate")
    assert got.ww.dtype == torch.float32
    torch.testing.assert_close(got.wl, want.wl, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- memory


def peak_bytes(fn) -> int:
    """Peak of live CPU allocations while `fn` runs (forward + backward), from the profiler's
    allocation/free events in time order (profile_memory=True)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward (unique storages, inputs excluded) after the forward."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def test_chunked_uses_far_less_memory_than_naive():
    n, heads = 512, 8  # dense head maps: 8 x 512 x 512 x 4 B = 8 MiB per sequence and block
    lengths = [n, n - 40]
    batch = make_batch(lengths, n, seed=12)
    qk = make_qk(2, n, heads=heads, kv_heads=2, dim=16, blocks=1, seed=13)
    inputs = {t.untyped_storage().data_ptr() for t in (*qk.q, *qk.k)}

    def step(maps_fn):
        def run():
            maps = maps_fn()
            sum(maps.block(n).sum() for n in BLOCKS).backward()
        return run

    naive = step(lambda: naive_maps(qk, batch, inter_keys="post_rope", mode="separate"))
    chunked = step(lambda: simulated_maps(qk, batch, chunk_rows=32))
    no_ckpt = step(lambda: simulated_maps(qk, batch, chunk_rows=32, checkpoint=False))
    runs = {"naive": naive, "chunked": chunked, "no_ckpt": no_ckpt}
    saved = {k: sum(v for p, v in saved_bytes(f).items() if p not in inputs) for k, f in runs.items()}
    peak = {"naive": peak_bytes(naive), "chunked": peak_bytes(chunked)}
    # Naive keeps the softmax output of every block: 4 x 8 heads x ~n x (~0.6 n kept keys) x 4 B,
    # about 25 MiB. Chunked keeps only scatter indices (~12 KiB); its peak is one recomputed
    # chunk (measured ~4 MiB vs ~56 MiB on torch 2.13 CPU).
    assert saved["naive"] > 16 * 2**20
    assert saved["chunked"] * 10 < saved["naive"], saved
    assert saved["chunked"] * 10 < saved["no_ckpt"], saved  # checkpointing is what frees the chunks
    assert peak["chunked"] * 4 < peak["naive"], peak


# ---------------------------------------------------------------- gathered valid tokens, scaling


def with_student_tail(batch: PreferenceBatch, extra: int) -> PreferenceBatch:
    """The same pairs in a student window `extra` tokens longer: the new tokens belong to units
    outside the teacher's window (unit -1, DESIGN.md decision 8) and stay in the attention mask."""
    rows = batch.input_ids.shape[0]
    tail = torch.full((rows, extra), -1, dtype=torch.long)
    return PreferenceBatch(
        input_ids=torch.zeros(rows, batch.input_ids.shape[1] + extra, dtype=torch.long),
        attention_mask=torch.cat([batch.attention_mask, torch.ones(rows, extra, dtype=torch.long)], 1),
        student_unit=torch.cat([batch.student_unit, tail], 1),
        unit_valid_w=batch.unit_valid_w, unit_valid_l=batch.unit_valid_l,
        unit_response_w=batch.unit_response_w, unit_response_l=batch.unit_response_l,
    )


def extend_qk(qk: CapturedQK, extra: int, *, seed: int) -> CapturedQK:
    gen = torch.Generator().manual_seed(seed)

    def grow(ts):
        return [torch.cat([t.detach(), 3.0 * torch.randn(*t.shape[:2], extra, t.shape[3], generator=gen)], 2)
                .requires_grad_() for t in ts]

    return CapturedQK(q=grow(qk.q), k=grow(qk.k), q_pre=grow(qk.q_pre), k_pre=grow(qk.k_pre))


@pytest.mark.parametrize("mode", ["separate", "joint"])
def test_gathered_equals_masked_softmax_over_a_longer_student_window(mode):
    # Gathering only the tokens of valid units before the logits is the masked softmax over
    # the valid keys of the whole sequence (the naive reference), values and gradients, and
    # tokens outside every unit change nothing.
    batch, qk = make_batch(LENGTHS, N_TOK, seed=14), make_qk(4, N_TOK, seed=15)
    long_batch, long_qk = with_student_tail(batch, 50), extend_qk(qk, 50, seed=16)
    got = simulated_maps(long_qk, long_batch, mode=mode, chunk_rows=4)
    want = naive_maps(long_qk, long_batch, inter_keys="post_rope", mode=mode)
    short = simulated_maps(qk, batch, mode=mode, chunk_rows=4)
    for name in BLOCKS:
        torch.testing.assert_close(got.block(name), want.block(name), atol=1e-5, rtol=0)
        torch.testing.assert_close(got.block(name), short.block(name), atol=1e-6, rtol=0)
    weights = [torch.randn(got.block(n).shape, generator=torch.Generator().manual_seed(17)) for n in BLOCKS]
    g_got = torch.autograd.grad(sum((got.block(n) * w).sum() for n, w in zip(BLOCKS, weights)), [*long_qk.q, *long_qk.k])
    g_want = torch.autograd.grad(sum((want.block(n) * w).sum() for n, w in zip(BLOCKS, weights)), [*long_qk.q, *long_qk.k])
    for g, w in zip(g_got, g_want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
        assert g[:, :, N_TOK:].abs().max() == 0  # tokens outside the units get no gradient from L_ID


def test_work_scales_with_the_units_not_the_student_window():
    # Same units in a 14-token and a 1038-token window: the same matmul FLOPs (the logits are
    # built over the gathered valid tokens only), where the masked version grew ~75x.
    from torch.utils.flop_counter import FlopCounterMode

    batch, qk = make_batch(LENGTHS, N_TOK, seed=18), make_qk(4, N_TOK, blocks=1, seed=19)
    long_batch, long_qk = with_student_tail(batch, 1024), extend_qk(qk, 1024, seed=20)

    def flops(q, b):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            simulated_maps(q, b, chunk_rows=4)
        return counter.get_total_flops()

    assert flops(long_qk, long_batch) == flops(qk, batch) > 0


def hand_batch() -> PreferenceBatch:
    """B=1, each half [BOS, u0, u1]: every content token its own valid unit."""
    unit = torch.tensor([[-1, 0, 1], [-1, 0, 1]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    return PreferenceBatch(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3, dtype=torch.long),
                           student_unit=unit, unit_valid_w=valid, unit_valid_l=valid, unit_response_w=valid,
                           unit_response_l=valid)


def test_scaling_is_the_models_own_by_hand():
    # One head, d=2. Query of w0 = [1, 0]; keys of the chosen half [0, 0] (u0) and [2, 0] (u1):
    # logits [0, 2] * scale. scale 0.5 -> softmax [0, 1] = [1/(1+e), e/(1+e)] = [0.2689, 0.7311];
    # the default 1/sqrt(2) -> [0, 1.4142] -> [0.1957, 0.8043].
    q = torch.zeros(2, 1, 3, 2)
    q[:, 0, 1] = torch.tensor([1.0, 0.0])
    k = torch.zeros(2, 1, 3, 2)
    k[:, 0, 2] = torch.tensor([2.0, 0.0])
    e = math.e
    half = torch.tensor([1 / (1 + e), e / (1 + e)])
    default = torch.softmax(torch.tensor([0.0, 2 / math.sqrt(2)]), 0)
    for qk, kwargs, want in [
        (CapturedQK(q=[q], k=[k]), {}, default),
        (CapturedQK(q=[q], k=[k], scaling=0.5), {}, half),  # the captured layout's scale
        (CapturedQK(q=[q], k=[k]), {"scaling": 0.5}, half),  # an explicit scale
    ]:
        maps = simulated_maps(qk, hand_batch(), **kwargs)
        torch.testing.assert_close(maps.ww[0, 0, 0], want, atol=1e-4, rtol=0)
        torch.testing.assert_close(maps.wl[0, 0, 0], want, atol=1e-4, rtol=0)  # the rejected half is identical


def test_capture_carries_the_models_scaling_into_the_loss(student_tokenizer, monkeypatch):
    # A model whose attention scale is not 1/sqrt(d): the captured Q/K carry its scale and
    # preference_loss's maps use it (METHOD.md §5: the model's own attention computation).
    from idrm_ray.core import tiny
    from idrm_ray.core.capture import capture_qk, decoder_layers
    from idrm_ray.core.objective import IDSettings, preference_loss

    model = tiny.build_tiny_student(student_tokenizer, family="llama").eval()
    attn = decoder_layers(model)[-1].self_attn
    attn.scaling = 0.1
    enc = student_tokenizer(["the cat likes the ball", "a dog"], return_tensors="pt", padding=True)
    with capture_qk(model, top_n=1) as cap:
        model(**enc)
    assert cap.result().scaling == 0.1
    assert cap.layout.scaling == 0.1
    import idrm_ray.core.objective as objective

    calls, real = [], objective.simulated_maps
    monkeypatch.setattr(objective, "simulated_maps", lambda *a, **kw: calls.append(kw["scaling"]) or real(*a, **kw))
    ids, mask = enc["input_ids"], enc["attention_mask"]
    unit = torch.where(mask > 0, torch.arange(ids.shape[1]).expand_as(ids), -1)
    valid = torch.ones(1, ids.shape[1], dtype=torch.bool)
    batch = PreferenceBatch(input_ids=ids, attention_mask=mask, student_unit=unit, unit_valid_w=valid,
                            unit_valid_l=valid, unit_response_w=valid, unit_response_l=valid)
    u = ids.shape[1]
    teacher = BlockMaps(*(torch.full((1, 1, u, u), 1.0 / u) for _ in BLOCKS), valid_w=valid, valid_l=valid)
    loss, _ = preference_loss(model, batch, teacher, settings=IDSettings())
    assert calls == [0.1] and torch.isfinite(loss)
