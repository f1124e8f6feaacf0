"""TeacherAttention and the teacher map math (METHOD.md §4 Eq. 4-5, §6 Ã).

Inputs are built by hand (teacher token ids and token->unit arrays), so these tests do not
depend on the alignment module. Tiny teachers are saved to a tmp dir and loaded by path.
Their query/key weights are re-drawn with a larger std: a fresh tiny model attends almost
uniformly, which would hide permutation, renormalisation and layer-order mistakes.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from idrm_ray.core import tiny
from idrm_ray.core.teacher import TeacherAttention
from idrm_ray.core.teacher_maps import block_maps_from_rows, maps_to_rows, pad_teacher_rows, teacher_block_maps
from idrm_ray.core.types import BLOCKS, PairEncoding, PreferenceExample

COLS = ("teacher_ids", "teacher_type_ids", "teacher_unit", "unit_valid_w", "unit_valid_l")
TEXTS = [
    ("the cat likes a book.", "the dog sees the ball!", "my friend reads some music."),
    ("a child finds the code today.", "our team builds the house at night.", "the robot answers."),
    ("the doctor helps.", "a dog avoids an apple again.", "the teacher reads a letter with care."),
]


def _sharpen(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("query.weight", "key.weight", "query_proj.weight", "key_proj.weight")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.25)
    return model


@pytest.fixture(scope="module", params=["bert", "deberta-v2"])
def teacher_dir(request, tmp_path_factory, teacher_tokenizer):
    model = _sharpen(tiny.build_tiny_teacher(teacher_tokenizer, family=request.param))
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return path


def make_pair(tok, prompt, chosen, rejected, *, group=False, invalid=(), seed=0):
    """[CLS] x y_w [SEP] x y_l [SEP]. group=False: every non-special token is its own unit;
    group=True: runs of 1-3 tokens form a unit. `invalid`: global unit ids marked invalid."""
    ids = np.array(tok(f"{prompt} {chosen}", f"{prompt} {rejected}")["input_ids"], dtype=np.int64)
    s0, s1 = np.flatnonzero(ids == tok.sep_token_id)[:2]
    rng = np.random.default_rng(seed)

    def units(n):
        sizes = rng.integers(1, 4, size=n) if group else np.ones(n, dtype=np.int64)
        return np.repeat(np.arange(n), sizes)[:n]

    uw, ul = units(s0 - 1), units(s1 - s0 - 1)
    U_w, U_l = int(uw.max()) + 1, int(ul.max()) + 1
    unit = np.full(len(ids), -1, dtype=np.int64)
    unit[1:s0], unit[s0 + 1 : s1] = uw, ul + U_w  # rejected units offset by U_w
    types = np.zeros(len(ids), dtype=np.int64)
    types[s0 + 1 :] = 1
    valid = np.ones(U_w + U_l, dtype=bool)
    valid[list(invalid)] = False
    return dict(teacher_ids=ids, teacher_type_ids=types, teacher_unit=unit, unit_valid_w=valid[:U_w], unit_valid_l=valid[U_w:])


def as_batch(pairs):
    batch = {}
    for c in COLS:
        col = np.empty(len(pairs), dtype=object)  # Ray Data's ragged numpy column
        col[:] = [p[c] for p in pairs]
        batch[c] = col
    return batch


def token_attention(teacher, pair, k):
    """Head-mean probabilities of block N_T-k from a plain `output_attentions` forward."""
    with torch.no_grad():
        out = teacher.model(
            input_ids=torch.from_numpy(pair["teacher_ids"])[None],
            token_type_ids=torch.from_numpy(pair["teacher_type_ids"])[None],
            output_attentions=True,
        )
    return out.attentions[-1 - k][0].double().mean(0).numpy()  # (n_t, n_t)


def dense_reference(A, pair):
    """Joint (U, U) map by the dense formula of METHOD.md §6, block by block:
    Pool(Ã_ab) = diag(G_q^T 1)^-1 G_q^T Ã_ab G_k, with Ã_ab the token block renormalised row-wise."""
    valid = np.concatenate([pair["unit_valid_w"], pair["unit_valid_l"]])
    U_w, U = len(pair["unit_valid_w"]), len(valid)
    unit = pair["teacher_unit"]
    G = np.zeros((len(unit), U))
    for i, u in enumerate(unit):
        if u >= 0 and valid[u]:
            G[i, u] = 1.0
    halves = [np.arange(U_w), np.arange(U_w, U)]
    out = np.zeros((U, U))
    for ua in halves:
        for ub in halves:
            I_a, I_b = np.flatnonzero(G[:, ua].sum(1)), np.flatnonzero(G[:, ub].sum(1))
            block = A[np.ix_(I_a, I_b)]
            tilde = block / block.sum(1, keepdims=True)
            G_q, G_k = G[np.ix_(I_a, ua)], G[np.ix_(I_b, ub)]
            counts = G_q.sum(0)
            pooled = np.diag(1 / np.where(counts > 0, counts, 1)) @ G_q.T @ tilde @ G_k
            out[np.ix_(ua, ub)] = pooled
    return out


# ---------------------------------------------------------------- pure map math, by hand


def test_block_maps_by_hand():
    # tokens: 0 CLS(-1) | 1 -> w0 | 2,3 -> w1 | 4 -> l0 (global unit 2). U_w=2, U_l=1. One head.
    A = torch.tensor(
        [
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.2, 0.2, 0.1, 0.5, 0.0],  # w0: ww keys [0.2, 0.1+0.5] / 0.8 = [1/4, 3/4]; wl mass 0 -> row 0
            [0.0, 0.4, 0.2, 0.2, 0.2],  # w1 token a: ww [0.4, 0.4] / 0.8 = [1/2, 1/2]; wl 0.2/0.2 = 1
            [0.5, 0.1, 0.1, 0.1, 0.2],  # w1 token b: ww [0.1, 0.2] / 0.3 = [1/3, 2/3]; wl 1
            [0.1, 0.3, 0.3, 0.2, 0.1],  # l0: lw [0.3, 0.5] / 0.8 = [3/8, 5/8]; ll 0.1/0.1 = 1
        ]
    )[None, None]  # (B=1, H=1, 5, 5)
    unit = torch.tensor([[-1, 0, 1, 1, 2]])
    vw, vl = torch.tensor([[True, True]]), torch.tensor([[True]])
    m = teacher_block_maps([A], unit, vw, vl)
    # w1 row = mean of its two token rows: [(1/2+1/3)/2, (1/2+2/3)/2] = [5/12, 7/12]
    torch.testing.assert_close(m.ww[0, 0], torch.tensor([[1 / 4, 3 / 4], [5 / 12, 7 / 12]]))
    torch.testing.assert_close(m.wl[0, 0], torch.tensor([[0.0], [1.0]]))
    torch.testing.assert_close(m.lw[0, 0], torch.tensor([[3 / 8, 5 / 8]]))
    torch.testing.assert_close(m.ll[0, 0], torch.tensor([[1.0]]))
    # renormalize=False keeps the raw mass without specials: ww w1 = [(0.4+0.1)/2, (0.4+0.2)/2]
    raw = teacher_block_maps([A], unit, vw, vl, renormalize=False)
    torch.testing.assert_close(raw.ww[0, 0], torch.tensor([[0.2, 0.6], [0.25, 0.3]]))
    torch.testing.assert_close(raw.wl[0, 0], torch.tensor([[0.0], [0.2]]))
    torch.testing.assert_close(raw.lw[0, 0], torch.tensor([[0.3, 0.5]]))
    # unit w1 invalid: its tokens leave both rows and keys; w0 -> [1, 0], l0 -> lw [1, 0]
    inv = teacher_block_maps([A], unit, torch.tensor([[True, False]]), vl)
    torch.testing.assert_close(inv.ww[0, 0], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    torch.testing.assert_close(inv.lw[0, 0], torch.tensor([[1.0, 0.0]]))
    assert all(torch.isfinite(getattr(x, b)).all() for x in (m, raw, inv) for b in BLOCKS)


def test_rows_roundtrip_and_batch_split():
    # A pair's maps are the same computed alone or in a padded batch (different U_w, n_t).
    rng = np.random.default_rng(0)
    pairs, attns = [], []
    for n_w, n_l in [(3, 4), (6, 2), (2, 5)]:
        n = n_w + n_l + 3
        unit = np.r_[-1, np.arange(n_w), -1, n_w + np.arange(n_l), -1]
        pairs.append(dict(teacher_ids=np.arange(n), teacher_type_ids=np.zeros(n, np.int64), teacher_unit=unit,
                          unit_valid_w=rng.random(n_w) > 0.2, unit_valid_l=rng.random(n_l) > 0.2))
        attns.append(torch.softmax(torch.randn(2, n, n, dtype=torch.float64) * 3, -1))  # (H, n, n)
    inp = pad_teacher_rows(*([p[c] for p in pairs] for c in COLS), pad_id=0)
    n_max = inp.input_ids.shape[1]
    A = torch.zeros(3, 2, n_max, n_max, dtype=torch.float64)
    for b, a in enumerate(attns):
        A[b, :, : a.shape[1], : a.shape[2]] = a
    batched = teacher_block_maps([A], inp.teacher_unit, inp.valid_w, inp.valid_l)
    for b, (p, a) in enumerate(zip(pairs, attns)):
        alone = teacher_block_maps([a[None]], torch.from_numpy(p["teacher_unit"])[None],
                                   torch.from_numpy(p["unit_valid_w"])[None], torch.from_numpy(p["unit_valid_l"])[None])
        uw, ul = len(p["unit_valid_w"]), len(p["unit_valid_l"])
        torch.testing.assert_close(batched.ww[b, :, :uw, :uw], alone.ww[0])
        torch.testing.assert_close(batched.lw[b, :, :ul, :uw], alone.lw[0])
        assert batched.wl[b, :, uw:].abs().sum() == 0 and batched.wl[b, :, :, ul:].abs().sum() == 0
    joint = torch.cat([torch.cat([batched.ww, batched.wl], 3), torch.cat([batched.lw, batched.ll], 3)], 2)
    rows = maps_to_rows(joint, inp.n_units_w, inp.n_units_l)
    again = block_maps_from_rows(rows, inp.n_units_w, [p["unit_valid_w"] for p in pairs], [p["unit_valid_l"] for p in pairs])
    for name in BLOCKS:
        torch.testing.assert_close(again.block(name), batched.block(name), atol=1e-3, rtol=0)
    assert torch.equal(again.valid_w, batched.valid_w) and torch.equal(again.valid_l, batched.valid_l)


# ---------------------------------------------------------------- the real teacher


def test_maps_are_fp16_stochastic_and_frozen(teacher_dir, teacher_tokenizer):
    teacher = TeacherAttention(str(teacher_dir), device="cpu", top_n=1)
    assert teacher.capture == "hooks"
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    pairs = [make_pair(teacher_tokenizer, *t, group=True, invalid=(1, 5), seed=i) for i, t in enumerate(TEXTS)]
    out = teacher(as_batch(pairs))
    assert set(COLS) <= set(out) and out["teacher_maps"].shape == (3,)
    for p, m, nbytes in zip(pairs, out["teacher_maps"], out["teacher_map_bytes"]):
        U_w, U = len(p["unit_valid_w"]), len(p["unit_valid_w"]) + len(p["unit_valid_l"])
        assert m.dtype == np.float16 and m.shape == (1, U, U) and nbytes == m.nbytes
        valid = np.concatenate([p["unit_valid_w"], p["unit_valid_l"]])
        m32 = m[0].astype(np.float32)
        for cols in (slice(0, U_w), slice(U_w, U)):  # each quadrant row-stochastic on valid rows
            np.testing.assert_allclose(m32[valid, cols].sum(1), 1.0, atol=1e-3)
        assert not m32[~valid].any() and not m32[:, ~valid].any()
    maps = teacher.maps_for_encodings([_encoding(p) for p in pairs])
    for name in BLOCKS:
        t = maps.block(name)
        assert not t.requires_grad and t.grad_fn is None and t.dtype == torch.float32
    assert maps.ww.shape[:2] == (3, 1) and teacher.forward_count == 6


def test_identity_units_match_naive_blocks(teacher_dir, teacher_tokenizer):
    teacher = TeacherAttention(str(teacher_dir), device="cpu")
    pair = make_pair(teacher_tokenizer, *TEXTS[0])
    m = teacher(as_batch([pair]))["teacher_maps"][0][0].astype(np.float64)
    A = token_attention(teacher, pair, k=0)
    s0, s1 = np.flatnonzero(pair["teacher_ids"] == teacher_tokenizer.sep_token_id)[:2]
    I = {"w": np.arange(1, s0), "l": np.arange(s0 + 1, s1)}  # CLS and SEP dropped
    U_w = len(I["w"])
    quad = {"w": slice(0, U_w), "l": slice(U_w, None)}
    for a, b in [("w", "w"), ("w", "l"), ("l", "w"), ("l", "l")]:
        block = A[np.ix_(I[a], I[b])]
        np.testing.assert_allclose(m[quad[a], quad[b]], block / block.sum(1, keepdims=True), atol=1e-3)
    assert m.std() > 0.02  # sharpened teacher: far from uniform, so the comparison has teeth


def test_multi_token_units_match_dense_pooling(teacher_dir, teacher_tokenizer):
    teacher = TeacherAttention(str(teacher_dir), device="cpu")
    pairs = [make_pair(teacher_tokenizer, *t, group=True, invalid=(0, 4), seed=i + 3) for i, t in enumerate(TEXTS)]
    assert any(np.bincount(p["teacher_unit"][p["teacher_unit"] >= 0]).max() > 1 for p in pairs)
    maps = teacher(as_batch(pairs))["teacher_maps"]
    for p, m in zip(pairs, maps):
        ref = dense_reference(token_attention(teacher, p, k=0), p)
        np.testing.assert_allclose(m[0].astype(np.float64), ref, atol=1e-3)


def test_padding_and_micro_batch_invariance(teacher_dir, teacher_tokenizer):
    teacher = TeacherAttention(str(teacher_dir), device="cpu", micro_batch_size=2)
    short = make_pair(teacher_tokenizer, "the cat.", "a dog.", "the ball.", group=True, seed=7)
    longer = [make_pair(teacher_tokenizer, *t, group=True, seed=i) for i, t in enumerate(TEXTS[1:])]
    alone = teacher(as_batch([short]))["teacher_maps"][0]
    teacher.micro_batch_size = None
    batched = teacher(as_batch(longer[:1] + [short] + longer[1:]))["teacher_maps"]
    np.testing.assert_allclose(batched[1].astype(np.float32), alone.astype(np.float32), atol=2e-3)
    assert teacher.forward_count == 4 and teacher.forward_calls == 2


def test_top_two_layers_in_order_and_hooks_match_output_attentions(teacher_dir, teacher_tokenizer):
    teacher = TeacherAttention(str(teacher_dir), device="cpu", top_n=2)
    pair = make_pair(teacher_tokenizer, *TEXTS[2], group=True, seed=11)
    m = teacher(as_batch([pair]))["teacher_maps"][0].astype(np.float64)
    for k in range(2):
        np.testing.assert_allclose(m[k], dense_reference(token_attention(teacher, pair, k), pair), atol=1e-3)
    assert np.abs(m[0] - m[1]).max() > 0.05
    teacher.capture = "output_attentions"  # the fallback path gives the same maps
    np.testing.assert_array_equal(teacher(as_batch([pair]))["teacher_maps"][0], m.astype(np.float16))


def test_errors(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="top_n=4 but .* has 3 blocks"):
        TeacherAttention(str(teacher_dir), device="cpu", top_n=4)
    cfg = AutoConfig.for_model("llama", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=2, num_key_value_heads=1, num_labels=1)
    decoder = AutoModelForSequenceClassification.from_config(cfg)
    with pytest.raises(ValueError, match="decoder-only"):
        TeacherAttention.from_model(decoder)
    decoder.save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="encoder cross-encoder"):
        TeacherAttention(str(tmp_path / "llama"))
    with pytest.raises(KeyError, match="teacher_unit"):
        TeacherAttention(str(teacher_dir), device="cpu")({"teacher_ids": np.empty(0, dtype=object)})


def test_from_model_switches_sdpa_to_eager(teacher_tokenizer):
    cfg = tiny.build_tiny_teacher(teacher_tokenizer).config
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="sdpa")  # returns no probs
    teacher = TeacherAttention.from_model(model)
    assert teacher.model.config._attn_implementation == "eager" and teacher.capture == "hooks"
    pair = make_pair(teacher_tokenizer, *TEXTS[0])
    assert teacher(as_batch([pair]))["teacher_maps"][0].shape[0] == 1


def test_end_to_end_through_encode_pairs(student_tokenizer, unigram_tokenizer):
    # Real alignment (byte-level BPE student vs Unigram/DeBERTa-v3-style teacher), with a
    # teacher window small enough that some units fall outside it and are invalid.
    units = pytest.importorskip("idrm_ray.core.units")
    model = _sharpen(tiny.build_tiny_teacher(unigram_tokenizer, family="deberta-v2"))
    teacher = TeacherAttention.from_model(model)
    examples = [PreferenceExample("Human: does the cat like music?", " The cat likes some music today.", " No."),
                PreferenceExample("Human: what does the robot build?", " The robot builds the house at night.",
                                  " The robot reads a letter, 日本 café 🙂 again and again with care.")]
    encs = units.encode_pairs(examples, student_tokenizer, unigram_tokenizer, student_max_len=64, teacher_max_len=27)
    assert sum(e.stats.units_outside_teacher for e in encs) > 0
    maps = teacher.maps_for_encodings(encs)
    for b, e in enumerate(encs):
        pair = {c: getattr(e, c) for c in COLS}
        ref = dense_reference(token_attention(teacher, pair, k=0), pair)
        uw, ul = e.n_units_w, e.n_units_l
        got = torch.cat([torch.cat([maps.ww[b, 0, :uw, :uw], maps.wl[b, 0, :uw, :ul]], 1),
                         torch.cat([maps.lw[b, 0, :ul, :uw], maps.ll[b, 0, :ul, :ul]], 1)], 0)
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-3)
        assert torch.equal(maps.valid_w[b, :uw], torch.from_numpy(e.unit_valid_w))


def _encoding(p) -> PairEncoding:
    """A PairEncoding with only the teacher fields meaningful (student fields are stubs)."""
    stub = np.zeros(1, dtype=np.int64)
    U_w, U_l = len(p["unit_valid_w"]), len(p["unit_valid_l"])
    return PairEncoding(
        student_ids_w=stub, student_ids_l=stub, student_unit_w=stub, student_unit_l=stub,
        **{c: p[c] for c in COLS},
        unit_response_w=np.zeros(U_w, bool), unit_response_l=np.zeros(U_l, bool),
        unit_spans_w=np.zeros((U_w, 2), np.int64), unit_spans_l=np.zeros((U_l, 2), np.int64),
    )


# ---------------------------------------------------------------- joint renormalisation, per-head renormalisation


def _hand_attention():
    """The 5-token map of `test_block_maps_by_hand`: CLS | w0 | w1 w1 | l0."""
    A = torch.tensor(
        [
            [0.2, 0.2, 0.2, 0.2, 0.2],
            [0.2, 0.2, 0.1, 0.5, 0.0],
            [0.0, 0.4, 0.2, 0.2, 0.2],
            [0.5, 0.1, 0.1, 0.1, 0.2],
            [0.1, 0.3, 0.3, 0.2, 0.1],
        ]
    )[None, None]  # (B=1, H=1, 5, 5)
    return A, torch.tensor([[-1, 0, 1, 1, 2]]), torch.tensor([[True, True]]), torch.tensor([[True]])


def test_joint_mode_renormalises_over_both_halves_by_hand():
    # METHOD.md §6 with the joint student (one softmax over both halves): each token row is
    # renormalised over the kept keys of BOTH halves, so ww + wl rows sum to 1.
    A, unit, vw, vl = _hand_attention()
    m = teacher_block_maps([A], unit, vw, vl, renormalize="joint")
    # w0 (token 1): keys w0 0.2, w1 0.1+0.5, l0 0.0, mass 0.8 -> [1/4, 3/4 | 0]
    # w1 token 2: [0.4, 0.4 | 0.2] / 1.0; token 3: [0.1, 0.2 | 0.2] / 0.5 = [0.2, 0.4 | 0.4];
    #   mean [0.3, 0.4 | 0.3]
    # l0 (token 4): [0.3, 0.5 | 0.1] / 0.9 -> lw [1/3, 5/9], ll [1/9]
    torch.testing.assert_close(m.ww[0, 0], torch.tensor([[0.25, 0.75], [0.3, 0.4]]))
    torch.testing.assert_close(m.wl[0, 0], torch.tensor([[0.0], [0.3]]))
    torch.testing.assert_close(m.lw[0, 0], torch.tensor([[1 / 3, 5 / 9]]))
    torch.testing.assert_close(m.ll[0, 0], torch.tensor([[1 / 9]]))
    rows = torch.cat([m.ww.sum(-1) + m.wl.sum(-1), m.lw.sum(-1) + m.ll.sum(-1)], -1)
    torch.testing.assert_close(rows, torch.ones_like(rows))
    # The flag's spellings: True is "separate", False is "none"; anything else is refused.
    torch.testing.assert_close(teacher_block_maps([A], unit, vw, vl, renormalize="separate").ww,
                               teacher_block_maps([A], unit, vw, vl, renormalize=True).ww)
    torch.testing.assert_close(teacher_block_maps([A], unit, vw, vl, renormalize="none").ww,
                               teacher_block_maps([A], unit, vw, vl, renormalize=False).ww)
    with pytest.raises(ValueError, match="renormalize"):
        teacher_block_maps([A], unit, vw, vl, renormalize="rows")


def _two_heads():
    """CLS | w0 | w1 | l0, two heads that differ on w0's row; other rows uniform."""
    A = torch.full((1, 2, 4, 4), 0.25)
    A[0, 0, 1] = torch.tensor([0.6, 0.1, 0.1, 0.2])
    A[0, 1, 1] = torch.tensor([0.0, 0.5, 0.25, 0.25])
    return A, torch.tensor([[-1, 0, 1, 2]]), torch.tensor([[True, True]]), torch.tensor([[True]])


@pytest.mark.parametrize(
    "mode,head_renorm,ww,wl",
    [
        # head mean first: [0.3 | 0.3, 0.175 | 0.225]; ww [0.3, 0.175] / 0.475
        ("separate", False, [12 / 19, 7 / 19], [1.0]),
        # per head: h1 ww [0.1, 0.1] / 0.2 = [1/2, 1/2], h2 [0.5, 0.25] / 0.75 = [2/3, 1/3]; mean
        ("separate", True, [7 / 12, 5 / 12], [1.0]),
        # head mean first over both halves: [0.3, 0.175 | 0.225] / 0.7
        ("joint", False, [3 / 7, 1 / 4], [9 / 28]),
        # per head over both halves: h1 [0.1, 0.1 | 0.2] / 0.4, h2 [0.5, 0.25 | 0.25] / 1; mean
        ("joint", True, [0.375, 0.25], [0.375]),
    ],
)
def test_head_renorm_by_hand(mode, head_renorm, ww, wl):
    A, unit, vw, vl = _two_heads()
    m = teacher_block_maps([A], unit, vw, vl, renormalize=mode, head_renorm=head_renorm)
    torch.testing.assert_close(m.ww[0, 0, 0], torch.tensor(ww))
    torch.testing.assert_close(m.wl[0, 0, 0], torch.tensor(wl))


def test_head_renorm_needs_heads_and_a_renormalisation():
    A, unit, vw, vl = _two_heads()
    with pytest.raises(ValueError, match="per-head"):
        teacher_block_maps([A.mean(1)], unit, vw, vl, head_renorm=True)
    with pytest.raises(ValueError, match="renormalize"):
        teacher_block_maps([A], unit, vw, vl, renormalize=False, head_renorm=True)


@pytest.mark.parametrize("mode", ["separate", "joint"])
def test_head_renorm_through_the_teacher(mode, teacher_dir, teacher_tokenizer):
    # The hooked forward gives the maps of the per-head formula on `output_attentions`.
    teacher = TeacherAttention(str(teacher_dir), device="cpu", renormalize=mode, head_renorm=True)
    plain = TeacherAttention(str(teacher_dir), device="cpu", renormalize=mode)
    pairs = [make_pair(teacher_tokenizer, *t, group=True, invalid=(1,), seed=i) for i, t in enumerate(TEXTS)]
    got = teacher.maps_for_encodings([_encoding(p) for p in pairs])
    base = plain.maps_for_encodings([_encoding(p) for p in pairs])
    inp = pad_teacher_rows(*([p[c] for p in pairs] for c in COLS), pad_id=teacher.pad_id)
    with torch.no_grad():
        out = teacher.model(input_ids=inp.input_ids, token_type_ids=inp.token_type_ids,
                            attention_mask=inp.attention_mask, output_attentions=True)
    want = teacher_block_maps([out.attentions[-1]], inp.teacher_unit, inp.valid_w, inp.valid_l,
                              renormalize=mode, head_renorm=True)
    for name in BLOCKS:
        torch.testing.assert_close(got.block(name), want.block(name), atol=2e-3, rtol=0)
    assert max((got.block(n) - base.block(n)).abs().max() for n in BLOCKS) > 0.01  # the flag has an effect
    teacher.capture = "output_attentions"  # the fallback path renormalises per head too
    again = teacher.maps_for_encodings([_encoding(p) for p in pairs])
    torch.testing.assert_close(again.ww, got.ww, atol=1e-3, rtol=0)


def test_head_renorm_and_joint_reach_the_stage_and_the_cache_key(teacher_dir, tmp_path, monkeypatch):
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig
    from idrm_ray.run import driver
    from idrm_ray.stream import map_cache
    from idrm_ray.stream.stages import TeacherStage

    stage = TeacherStage(str(teacher_dir), top_n=1, device="cpu", renormalize="joint", head_renorm=True)
    assert stage.teacher.renormalize == "joint" and stage.teacher.head_renorm
    cfg = load_config(TrainJobConfig, overrides=["method.id.mode=joint", "method.id.teacher_head_renorm=true",
                                                 "teacher.map_format=u8"])
    seen = {}
    monkeypatch.setattr(driver, "teacher_stream", lambda ds, *, teacher_kwargs, placement: seen.update(teacher_kwargs))
    driver.teacher_maps_stream(cfg, None, train=[], teacher_dir=str(teacher_dir), student_dir=str(teacher_dir),
                               encode_kwargs={}, placement=None)
    assert seen["renormalize"] == "joint" and seen["head_renorm"] is True and seen["map_format"] == "u8"
    assert seen["dtype"] == "fp32"  # the plan's teacher dtype on CPU (auto)
    TeacherStage(**{**seen, "device": "cpu"})  # the kwargs build a stage as they are
    # teacher.dtype reaches the teacher's weights (fp16 on teacher GPUs by default; here asked for).
    cfg16 = load_config(TrainJobConfig, overrides=["teacher.dtype=bf16"])
    driver.teacher_maps_stream(cfg16, None, train=[], teacher_dir=str(teacher_dir), student_dir=str(teacher_dir),
                               encode_kwargs={}, placement=None)
    assert seen["dtype"] == "bf16"
    assert TeacherStage(**{**seen, "device": "cpu"}).teacher.model.dtype == torch.bfloat16
    key = dict(teacher_dir=str(teacher_dir), student_dir=str(teacher_dir), examples=[], encode_kwargs={}, num_blocks=1)
    base = map_cache.cache_key(**key, renormalize="separate")
    assert map_cache.cache_key(**key, renormalize="separate", head_renorm=True) != base
    assert map_cache.cache_key(**key, renormalize="joint") != base
    assert map_cache.cache_key(**key, renormalize="separate", map_format="u8") != base


# ---------------------------------------------------------------- map formats and bytes


def test_u8_rows_by_hand():
    from idrm_ray.core.teacher_maps import decode_map, encode_map

    m = np.array([[[0.25, 0.0, 1.0], [0.0, 0.0, 0.0], [0.02, 0.5, 0.0]]], dtype=np.float32)  # (N=1, U=3, U)
    row = encode_map(m, "u8")
    assert row.dtype == np.uint8 and row.shape == (1, 3, 5) and (row.nbytes, encode_map(m).nbytes) == (15, 18)
    # Row 0: max 1 -> round(255 sqrt([0.25, 0, 1])) = [128, 0, 255]; fp16 1.0 = 0x3C00, little-endian [0, 60].
    assert row[0, 0].tolist() == [128, 0, 255, 0, 60]
    assert row[0, 1].tolist() == [0, 0, 0, 0, 0]  # an all-zero row (invalid unit) stays zero, scale 0
    # Row 2: max 0.5 -> sqrt([0.04, 1, 0]) * 255 = [51, 255, 0]; decodes to (51/255)^2 * 0.5 = 0.02 exactly.
    assert row[0, 2, :3].tolist() == [51, 255, 0]
    back = decode_map(row)
    np.testing.assert_allclose(back, m, atol=(128 / 255) ** 2 - 0.25 + 1e-7)  # the worst here: 0.25 -> 0.25196
    assert back[0, 1].sum() == 0 and back[0, 2, 0] == pytest.approx(0.02, abs=1e-7)
    np.testing.assert_array_equal(decode_map(encode_map(m)), m.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="map format"):
        encode_map(m, "int4")


def test_u8_rows_through_the_teacher_the_cache_columns_and_the_collate(teacher_dir, teacher_tokenizer):
    from idrm_ray.data.records import blocks_to_maps, maps_to_blocks
    from idrm_ray.train.ingest import map_bytes_stats, teacher_rows

    pairs = [make_pair(teacher_tokenizer, *t, group=True, invalid=(2,), seed=i) for i, t in enumerate(TEXTS)]
    fp16 = TeacherAttention(str(teacher_dir), device="cpu", top_n=2)
    u8 = TeacherAttention(str(teacher_dir), device="cpu", top_n=2, map_format="u8")
    out16, out8 = fp16(as_batch(pairs)), u8(as_batch(pairs))
    for a, b, n8, n16 in zip(out16["teacher_maps"], out8["teacher_maps"], out8["teacher_map_bytes"], out16["teacher_map_bytes"]):
        N, U = a.shape[:2]
        assert b.dtype == np.uint8 and b.shape == (N, U, U + 2)
        assert (n16, n8) == (2 * N * U * U, N * U * (U + 2))  # 1 byte per entry + a 2-byte scale per row
    # The cache's per-block columns stack back to the same rows; the collate decodes them.
    cached = blocks_to_maps(maps_to_blocks({**out8, "pair_id": np.arange(3)}))
    rows = teacher_rows(cached)
    for a, b in zip(rows, out8["teacher_maps"]):
        np.testing.assert_array_equal(a, b)
    stats = map_bytes_stats({**out8, "teacher_maps": rows}, num_blocks=2)
    assert stats["teacher_map_bytes"] < 0.25 * stats["token_fp32_map_bytes"]
    args = ([len(p["unit_valid_w"]) for p in pairs], [p["unit_valid_w"] for p in pairs], [p["unit_valid_l"] for p in pairs])
    got, want = block_maps_from_rows(rows, *args), block_maps_from_rows(list(out16["teacher_maps"]), *args)
    for name in BLOCKS:
        torch.testing.assert_close(got.block(name), want.block(name), atol=4e-3, rtol=0)
    with pytest.raises(ValueError, match="map_format"):
        TeacherAttention(str(teacher_dir), device="cpu", map_format="fp8")


def test_map_bytes_follow_the_teacher_window(student_tokenizer, unigram_tokenizer):
    # DESIGN.md decision 8 with a student window 4x the teacher's: the maps of the default
    # units are bounded by the teacher's content tokens (fp16 < 1/2 of the token-level fp32
    # map, u8 < 1/4), the former rule's grow with the student window.
    from idrm_ray.core.units import encode_pairs
    from idrm_ray.train.ingest import map_bytes_stats

    model = _sharpen(tiny.build_tiny_teacher(unigram_tokenizer, family="deberta-v2"))
    teacher = TeacherAttention.from_model(model)
    text = " ".join(tiny.tiny_corpus(60, seed=3))
    examples = [PreferenceExample(text[:600], " " + text[600:1400], " " + text[1400:2000])]
    ratio = {}
    for rule, fmt in [("either_window", "fp16"), ("teacher_window", "fp16"), ("teacher_window", "u8")]:
        encs = encode_pairs(examples, student_tokenizer, unigram_tokenizer, student_max_len=256, teacher_max_len=64,
                            map_units=rule)
        teacher.map_format = fmt
        cols = [[getattr(e, c) for e in encs] for c in COLS]
        stats = map_bytes_stats({"teacher_maps": teacher.unit_map_rows(*cols), "teacher_ids": cols[0]}, num_blocks=1)
        ratio[rule, fmt] = stats["teacher_map_bytes"] / stats["token_fp32_map_bytes"]
        assert encs[0].stats.units_outside_teacher > 0 and len(encs[0].student_ids_w) == 256
    assert ratio["teacher_window", "fp16"] < 0.5 and ratio["teacher_window", "u8"] < 0.25
    assert ratio["either_window", "fp16"] > 4 * ratio["teacher_window", "fp16"]
