"""Common units across tokenizers, pair encoding, truncation and collation
(METHOD.md §6, "Token alignment across tokenizers" and "Truncation")."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, processors
from transformers import PreTrainedTokenizerFast

from idrm_ray.core import tiny
from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.tokens import teacher_pair_format
from idrm_ray.core.truncation import keep_counts, renumber_units, units_for_maps, window_keep
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import common_units, encode_pair, encode_pairs, unit_matrix

TEXTS = [
    "\n\nHuman: What is the capital of France?\n\nAssistant: Paris, of course.",
    "Café naïve über — 日本語のテキスト 🙂🙂 done",
    "spaces    and\t\ttabs\n\n\nnewlines   ",
    "UPPER lower MiXeD 12345 !!! ??? --…",
    "İstanbul ǅ ﬁ ß straße ÅNGSTRÖM",  # normalisers change the length of these
    " leading space",
    "a",
    "",
]
HH = PreferenceExample(
    "\n\nHuman: Can you help my friend?\n\nAssistant:", " Sure, the cat likes the ball.", " No."
)


def long_text(words: int, *, seed: int) -> str:
    return " ".join(tiny.tiny_corpus(words // 4 + 1, seed=seed))


@pytest.fixture(params=["wordpiece", "unigram"])
def teacher(request, teacher_tokenizer, unigram_tokenizer):
    return teacher_tokenizer if request.param == "wordpiece" else unigram_tokenizer


def offsets(tok, text):
    enc = tok(text, return_offsets_mapping=True)
    return np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------- common_units


def test_common_units_hand_built():
    # "ab  cd!": A is BPE-like (spaces glued to the next word, "!" split into two byte
    # tokens with the same span), B is BERT-like (spaces dropped, a zero-width token).
    # A straddles 1, 3, 4, 5; B straddles nothing; so the cuts are 0, 2, 6, 7.
    text_len = 7
    a = [(0, 0), (0, 2), (2, 6), (6, 7), (6, 7), (0, 0)]
    b = [(0, 1), (1, 2), (4, 5), (5, 6), (6, 7), (6, 6)]
    spans, ua, ub = common_units(text_len, a, b)
    np.testing.assert_array_equal(spans, [[0, 2], [2, 6], [6, 7]])
    np.testing.assert_array_equal(ua, [-1, 0, 1, 2, 2, -1])
    np.testing.assert_array_equal(ub, [0, 0, 1, 1, 2, -1])


def test_common_units_skip_uncovered_characters():
    # Both sides drop the two spaces at 2..4: they are cuts on both sides and no unit.
    spans, ua, ub = common_units(6, [(0, 2), (4, 6)], [(0, 1), (1, 2), (4, 5), (5, 6)])
    np.testing.assert_array_equal(spans, [[0, 2], [4, 6]])
    np.testing.assert_array_equal(ua, [0, 1])
    np.testing.assert_array_equal(ub, [0, 0, 1, 1])


def test_common_units_empty_inputs():
    spans, ua, ub = common_units(0, [(0, 0)], np.zeros((0, 2)))
    assert spans.shape == (0, 2) and ua.tolist() == [-1] and ub.shape == (0,)


def check_units(text_len, off_a, off_b, spans, ua, ub):
    """Disjoint, ordered, exactly the covered characters, each token inside its unit."""
    assert np.all(spans[:, 1] > spans[:, 0])
    assert np.all(spans[1:, 0] >= spans[:-1, 1])
    covered = np.zeros(text_len, bool)
    for s, e in np.concatenate([off_a, off_b]):
        covered[s:e] = True
    in_unit = np.zeros(text_len, int)
    for s, e in spans:
        in_unit[s:e] += 1
    np.testing.assert_array_equal(in_unit, covered.astype(int))
    for off, unit in ((off_a, ua), (off_b, ub)):
        real = off[:, 1] > off[:, 0]
        assert np.all(unit[~real] == -1)
        u = unit[real]
        assert np.all(u >= 0)
        assert np.all(spans[u, 0] <= off[real, 0]) and np.all(off[real, 1] <= spans[u, 1])


@pytest.mark.parametrize("text", TEXTS)
def test_common_units_invariants_on_real_tokenizers(text, student_tokenizer, teacher):
    off_s, off_t = offsets(student_tokenizer, text), offsets(teacher, text)
    spans, us, ut = common_units(len(text), off_s, off_t)
    check_units(len(text), off_s, off_t, spans, us, ut)
    # Both tokenizations refine the units: every unit holds a token of the student,
    # which covers every character (byte-level BPE drops nothing).
    assert set(us[us >= 0].tolist()) == set(range(len(spans)))


@pytest.mark.parametrize("text", [t for t in TEXTS if t.isascii()])
def test_common_units_identity_for_one_tokenizer(text, student_tokenizer):
    off = offsets(student_tokenizer, text)
    spans, ua, ub = common_units(len(text), off, off)
    real = off[:, 1] > off[:, 0]
    np.testing.assert_array_equal(spans, off[real])
    np.testing.assert_array_equal(ua[real], np.arange(real.sum()))
    np.testing.assert_array_equal(ua, ub)
    g = unit_matrix(ua, len(spans))  # pooling with G = [0; I] is the identity
    np.testing.assert_array_equal(g[real], np.eye(real.sum()))


def test_common_units_10k_chars_vectorised(student_tokenizer, teacher_tokenizer):
    text = long_text(2000, seed=3)[:10_000]
    off_s, off_t = offsets(student_tokenizer, text), offsets(teacher_tokenizer, text)
    spans, us, ut = common_units(len(text), off_s, off_t)
    check_units(len(text), off_s, off_t, spans, us, ut)


def test_unit_matrix_pools_rows_by_hand():
    g = unit_matrix(np.array([-1, 0, 0, 1]), 2)
    np.testing.assert_array_equal(g, [[0, 0], [1, 0], [1, 0], [0, 1]])
    # A row-stochastic 4x4 map pooled to 2x2 stays row-stochastic: rows averaged,
    # columns summed (METHOD.md §6 Pool); special row/col 0 is dropped.
    p = np.full((4, 4), 0.25)
    pooled = np.diag(1 / g.sum(0)) @ g.T @ p @ g
    np.testing.assert_allclose(pooled, [[0.5, 0.25], [0.5, 0.25]])


# ----------------------------------------------------------------------------- truncation rule


@pytest.mark.parametrize(
    "n_prompt,n_response,budget,expected",
    [
        (10, 10, 8, (4, 4)),  # both long: half each
        (10, 10, 7, (3, 4)),  # odd budget: the spare token goes to the response
        (2, 10, 8, (2, 6)),  # short prompt: the response takes the rest
        (10, 3, 8, (5, 3)),  # short response: the prompt takes the rest
        (0, 10, 8, (0, 8)),
        (3, 3, 8, (3, 3)),
        (5, 5, 0, (0, 0)),
    ],
)
def test_keep_counts(n_prompt, n_response, budget, expected):
    assert keep_counts(n_prompt, n_response, budget) == expected


def test_window_keep_cuts_prompt_left_response_right():
    # specials at both ends, prompt tokens 1..4, response 5..8, budget 4 -> 2 + 2
    is_content = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    is_prompt = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)
    keep = window_keep(is_content, is_prompt, budget=4)
    assert np.flatnonzero(keep).tolist() == [0, 3, 4, 5, 6, 9]


# ----------------------------------------------------------------------------- encode_pair


def check_encoding(enc, ex, student_tok, *, student_max_len, teacher_max_len, map_units="teacher_window"):
    """Structural invariants every PairEncoding must satisfy."""
    for half, response in (("w", ex.chosen), ("l", ex.rejected)):
        ids, unit = getattr(enc, f"student_ids_{half}"), getattr(enc, f"student_unit_{half}")
        spans, valid = getattr(enc, f"unit_spans_{half}"), getattr(enc, f"unit_valid_{half}")
        assert len(ids) <= student_max_len and ids[-1] == student_tok.eos_token_id and unit[-1] == -1
        assert np.all(spans[1:, 0] >= spans[:-1, 1]) and spans[-1:, 1].max(initial=0) <= len(ex.prompt + response)
        np.testing.assert_array_equal(getattr(enc, f"unit_response_{half}"), spans[:, 1] > len(ex.prompt))
        offset = 0 if half == "w" else enc.n_units_w
        t_units = enc.teacher_unit[(enc.teacher_unit >= offset) & (enc.teacher_unit < offset + len(spans))] - offset
        s_units = unit[unit >= 0]
        assert s_units.max(initial=-1) < len(spans)
        ids_u = np.arange(len(spans))
        np.testing.assert_array_equal(valid, np.isin(ids_u, s_units) & np.isin(ids_u, t_units))
        if map_units == "teacher_window":  # maps cover only units with tokens in both windows
            assert valid.all()
        else:  # units in neither window are dropped, so every unit is used by some token
            assert set(s_units.tolist()) | set(t_units.tolist()) == set(range(len(spans)))
    assert len(enc.teacher_ids) <= teacher_max_len
    assert enc.teacher_unit.max(initial=-1) < enc.n_units_w + enc.n_units_l
    assert enc.teacher_ids.shape == enc.teacher_type_ids.shape == enc.teacher_unit.shape


@pytest.mark.parametrize(
    "prompt", ["\n\nHuman: Hi there!\n\nAssistant:", "", "Café  naïve\n\n\n日本 🙂 ", "İSTANBUL    ﬁne"]
)
def test_encode_pair_matches_tokenizers_without_truncation(prompt, student_tokenizer, teacher):
    ex = PreferenceExample(prompt, " The cat likes 🙂 the ball.", "   no\tway…")
    enc = encode_pair(ex, student_tokenizer, teacher, student_max_len=512, map_units="either_window")
    check_encoding(enc, ex, student_tokenizer, student_max_len=512, teacher_max_len=512, map_units="either_window")
    a, b = ex.prompt + ex.chosen, ex.prompt + ex.rejected
    pair = teacher(a, b, return_token_type_ids=True)
    assert enc.teacher_ids.tolist() == pair["input_ids"]  # the tokenizer's own pair format
    assert enc.teacher_type_ids.tolist() == pair["token_type_ids"]
    eos = student_tokenizer.eos_token_id
    assert enc.student_ids_w.tolist() == student_tokenizer(a)["input_ids"] + [eos]
    assert enc.student_ids_l.tolist() == student_tokenizer(b)["input_ids"] + [eos]
    # Units are exactly common_units over the full tokenizations of each half.
    spans, us, ut = common_units(len(a), offsets(student_tokenizer, a), offsets(teacher, a)[1:-1])
    np.testing.assert_array_equal(enc.unit_spans_w, spans)
    np.testing.assert_array_equal(enc.student_unit_w, np.append(us, -1))
    np.testing.assert_array_equal(enc.teacher_unit[1 : 1 + len(ut)], ut)
    assert enc.stats.pairs_teacher_truncated == enc.stats.pairs_student_truncated == 0
    if not prompt:
        assert enc.unit_response_w.all() and enc.unit_response_l.all()


def test_encode_pair_identity_when_teacher_is_student(student_tokenizer):
    enc = encode_pair(HH, student_tokenizer, student_tokenizer, student_max_len=512)
    n_w = enc.n_units_w
    np.testing.assert_array_equal(enc.student_unit_w[1:-1], np.arange(n_w))
    np.testing.assert_array_equal(enc.teacher_unit, np.concatenate([[-1], np.arange(n_w + enc.n_units_l)]))
    assert enc.unit_valid_w.all() and enc.unit_valid_l.all()


def roberta_style(teacher_tokenizer):
    """The WordPiece teacher with RoBERTa's `<s> A </s></s> B </s>` post-processor."""
    tok = Tokenizer.from_str(teacher_tokenizer.backend_tokenizer.to_str())
    cls, sep = (("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]")))
    tok.post_processor = processors.RobertaProcessing(sep=sep, cls=cls)
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")


def test_pair_format_is_read_from_the_tokenizer(student_tokenizer, teacher_tokenizer):
    fmt = teacher_pair_format(teacher_tokenizer)
    cls, sep = teacher_tokenizer.cls_token_id, teacher_tokenizer.sep_token_id
    assert [p.tolist() for p in fmt.ids] == [[cls], [sep], [sep]] and (fmt.type_a, fmt.type_b) == (0, 1)
    roberta = roberta_style(teacher_tokenizer)
    assert [p.tolist() for p in teacher_pair_format(roberta).ids] == [[cls], [sep, sep], [sep]]
    enc = encode_pair(HH, student_tokenizer, roberta, student_max_len=512)
    assert enc.teacher_ids.tolist() == roberta(HH.prompt + HH.chosen, HH.prompt + HH.rejected)["input_ids"]
    assert (enc.teacher_unit == -1).sum() == 4


def test_template_tokens_map_to_no_unit(student_tokenizer, teacher_tokenizer):
    template = ("User says:", "\nBot:", " <end>")
    ex = PreferenceExample("hello there", "the cat", "a dog")
    enc = encode_pair(ex, student_tokenizer, teacher_tokenizer, student_max_len=512, template=template)
    text = template[0] + ex.prompt + template[1] + ex.chosen + template[2]
    full = student_tokenizer(text, return_offsets_mapping=True)
    assert enc.student_ids_w.tolist() == full["input_ids"] + [student_tokenizer.eos_token_id]
    # Which characters of `text` are content, and their index in prompt+chosen.
    lp, ls = len(template[0]), len(template[1])
    content_index = {lp + i: i for i in range(len(ex.prompt))}
    content_index.update({lp + len(ex.prompt) + ls + i: len(ex.prompt) + i for i in range(len(ex.chosen))})
    for (s, e), u in zip(full["offset_mapping"], enc.student_unit_w):
        chars = [content_index[c] for c in range(s, e) if c in content_index]
        if not chars:
            assert u == -1
        else:
            lo, hi = enc.unit_spans_w[u]
            assert lo <= min(chars) and max(chars) < hi
    assert enc.unit_valid_w.all()  # nothing truncated: every unit has a token on both sides


# ----------------------------------------------------------------------------- truncation


def split_tokens(tok, text, prompt_len, *, specials):
    enc = tok(text, add_special_tokens=specials, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, off, special = (np.asarray(enc[k]) for k in ("input_ids", "offset_mapping", "special_tokens_mask"))
    content = ids[special == 0]
    return content, int((off[special == 0, 0] < prompt_len).sum())


def test_truncation_keeps_latest_prompt_and_earliest_response(student_tokenizer, teacher):
    ex = PreferenceExample(long_text(200, seed=1), " " + long_text(200, seed=2), " " + long_text(30, seed=4))
    enc = encode_pair(ex, student_tokenizer, teacher, student_max_len=48, teacher_max_len=64)
    check_encoding(enc, ex, student_tokenizer, student_max_len=48, teacher_max_len=64)
    a = ex.prompt + ex.chosen
    # Student: budget 48 - BOS - EOS = 46 -> 23 + 23, the prompt's last 23 and response's first 23.
    content, n_p = split_tokens(student_tokenizer, a, len(ex.prompt), specials=True)
    assert enc.student_ids_w[1:-1].tolist() == content[n_p - 23 : n_p + 23].tolist()
    # Teacher: (64 - 3 specials) // 2 = 30 per half -> 15 + 15.
    t_content, t_p = split_tokens(teacher, a, len(ex.prompt), specials=False)
    assert enc.teacher_ids[1:31].tolist() == t_content[t_p - 15 : t_p + 15].tolist()
    assert enc.stats.pairs_student_truncated == enc.stats.pairs_teacher_truncated == 1
    l_content, _ = split_tokens(student_tokenizer, ex.prompt + ex.rejected, len(ex.prompt), specials=True)
    assert enc.stats.student_tokens_truncated == len(content) - 46 + len(l_content) - 46


def test_units_outside_teacher_window_are_invalid_but_kept_by_student(student_tokenizer, teacher):
    # The former rule (units in either window), still reachable for the byte comparison.
    ex = PreferenceExample(long_text(120, seed=5), " " + long_text(120, seed=6), " short")
    enc = encode_pair(ex, student_tokenizer, teacher, student_max_len=4096, teacher_max_len=40, map_units="either_window")
    check_encoding(enc, ex, student_tokenizer, student_max_len=4096, teacher_max_len=40, map_units="either_window")
    a = ex.prompt + ex.chosen
    assert enc.student_ids_w.tolist() == student_tokenizer(a)["input_ids"] + [student_tokenizer.eos_token_id]
    # Teacher window (40 - 3) // 2 = 18 -> 9 + 9 around the prompt/response junction.
    t_content, t_p = split_tokens(teacher, a, len(ex.prompt), specials=False)
    assert enc.teacher_ids[1:19].tolist() == t_content[t_p - 9 : t_p + 9].tolist()
    valid = enc.unit_valid_w
    assert not valid[0] and not valid[-1]  # both ends lie outside the teacher window
    junction = np.flatnonzero(enc.unit_response_w)[0]
    # A lone " " unit is student-only (BERT drops whitespace) and so never valid.
    first_word = junction + int(a[slice(*enc.unit_spans_w[junction])].isspace())
    assert valid[junction - 1] and valid[first_word]
    assert 0 < valid.sum() <= 18 and enc.n_units_w > 100  # the student keeps all units
    assert enc.stats.units_outside_teacher > 0 and enc.stats.units_outside_student == 0
    assert enc.stats.pairs_teacher_truncated == 1 and enc.stats.pairs_student_truncated == 0
    # Rejected half: " short" leaves the prompt's end 17 tokens; its words are all valid.
    b = ex.prompt + ex.rejected
    words = [not b[s:e].isspace() for s, e in enc.unit_spans_l]
    assert not enc.unit_valid_l[0] and enc.unit_valid_l[enc.unit_response_l & np.array(words)].all()


def test_units_outside_student_window_are_invalid(student_tokenizer, teacher):
    # The teacher sees the whole half, the student only BOS + 22 content tokens + EOS.
    ex = PreferenceExample(long_text(12, seed=11), " " + long_text(12, seed=12), " ok")
    enc = encode_pair(ex, student_tokenizer, teacher, student_max_len=24, map_units="either_window")
    check_encoding(enc, ex, student_tokenizer, student_max_len=24, teacher_max_len=512, map_units="either_window")
    assert enc.stats.teacher_tokens_truncated == 0 and len(enc.student_ids_w) == 24
    in_student = np.isin(np.arange(enc.n_units_w), enc.student_unit_w)
    assert not in_student[0] and not in_student[-1]  # present through the teacher only
    assert not enc.unit_valid_w[~in_student].any() and enc.unit_valid_w.sum() > 5
    assert enc.stats.units_outside_student > 0 and enc.stats.units_outside_teacher == 0


def test_renumber_units_by_hand():
    # Units 0..3 with unit 1 dropped: 0 -> 0, 1 -> -1, 2 -> 1, 3 -> 2; -1 stays -1.
    got = renumber_units(np.array([0, 1, 2, -1, 3, 1]), np.array([True, False, True, True]))
    assert got.tolist() == [0, -1, 1, -1, 2, -1]


def test_units_for_maps_rules():
    valid, present = np.array([1, 0, 1, 0], bool), np.array([1, 1, 1, 0], bool)
    assert units_for_maps(valid, present, "teacher_window").tolist() == [True, False, True, False]
    assert units_for_maps(valid, present, "either_window").tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="map_units"):
        units_for_maps(valid, present, "student_window")


@pytest.mark.parametrize("student_max_len,teacher_max_len", [(4096, 40), (24, 512), (64, 48)])
def test_maps_cover_only_the_valid_units(student_max_len, teacher_max_len, student_tokenizer, teacher):
    # DESIGN.md decision 8: the default keeps exactly the former rule's valid units,
    # renumbered; tokens of every other unit get -1 on both sides; ids and stats unchanged.
    ex = PreferenceExample(long_text(120, seed=5), " " + long_text(120, seed=6), " short")
    kw = dict(student_max_len=student_max_len, teacher_max_len=teacher_max_len)
    new = encode_pair(ex, student_tokenizer, teacher, **kw)
    old = encode_pair(ex, student_tokenizer, teacher, map_units="either_window", **kw)
    check_encoding(new, ex, student_tokenizer, **kw)
    assert new.stats == old.stats  # units outside either window are still counted
    for name in ("student_ids_w", "student_ids_l", "teacher_ids", "teacher_type_ids"):
        np.testing.assert_array_equal(getattr(new, name), getattr(old, name))
    for h in "wl":
        v = getattr(old, f"unit_valid_{h}")
        for name in (f"unit_spans_{h}", f"unit_response_{h}"):
            np.testing.assert_array_equal(getattr(new, name), getattr(old, name)[v])
        np.testing.assert_array_equal(getattr(new, f"student_unit_{h}"), renumber_units(getattr(old, f"student_unit_{h}"), v))
    both = np.concatenate([old.unit_valid_w, old.unit_valid_l])
    np.testing.assert_array_equal(new.teacher_unit, renumber_units(old.teacher_unit, both))
    # Every unit holds a teacher token inside the window, so U_w + U_l <= the teacher's content.
    n_content = len(new.teacher_ids) - teacher_pair_format(teacher).num_specials
    assert new.n_units_w + new.n_units_l <= n_content
    assert new.n_units_w + new.n_units_l < old.n_units_w + old.n_units_l


def test_very_long_input_both_sides(student_tokenizer, teacher):
    ex = PreferenceExample(long_text(2500, seed=7)[:12_000], " " + long_text(2000, seed=8)[:8_000], " " + "ok " * 3000)
    assert len(ex.prompt + ex.chosen) >= 20_000
    enc = encode_pair(ex, student_tokenizer, teacher, student_max_len=256, teacher_max_len=128)
    check_encoding(enc, ex, student_tokenizer, student_max_len=256, teacher_max_len=128)
    assert len(enc.student_ids_w) == len(enc.student_ids_l) == 256 and len(enc.teacher_ids) == 3 + 2 * ((128 - 3) // 2)
    # Units are bounded by the student window, not by the 20k characters.
    assert enc.n_units_w <= 256 and enc.unit_valid_w.sum() > 0
    assert enc.unit_response_w.any() and not enc.unit_response_w.all()


def test_encode_pairs_equals_per_pair(student_tokenizer, teacher):
    examples = [HH, PreferenceExample("", " a", " b")]
    examples.append(PreferenceExample("Café 🙂", " " + long_text(80, seed=9), " x"))
    batched = encode_pairs(examples, student_tokenizer, teacher, student_max_len=64, teacher_max_len=48)
    for ex, got in zip(examples, batched):
        want = encode_pair(ex, student_tokenizer, teacher, student_max_len=64, teacher_max_len=48)
        for name in ("student_ids_w", "student_unit_l", "teacher_ids", "teacher_unit", "unit_valid_w", "unit_spans_l"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
        assert got.stats == want.stats


def test_empty_texts_and_eos_in_template(student_tokenizer, teacher_tokenizer):
    enc = encode_pair(PreferenceExample("", "", ""), student_tokenizer, teacher_tokenizer, student_max_len=8)
    bos, eos = student_tokenizer.bos_token_id, student_tokenizer.eos_token_id
    assert enc.student_ids_w.tolist() == [bos, eos] and enc.n_units_w == enc.n_units_l == 0
    cls, sep = teacher_tokenizer.cls_token_id, teacher_tokenizer.sep_token_id
    assert enc.teacher_ids.tolist() == [cls, sep, sep] and (enc.teacher_unit == -1).all()
    # A template that already ends in EOS gets no second one.
    enc = encode_pair(HH, student_tokenizer, teacher_tokenizer, student_max_len=64, template=("", "", "</s>"))
    assert enc.student_ids_w[-1] == eos and enc.student_ids_w[-2] != eos
    assert encode_pairs([], student_tokenizer, teacher_tokenizer, student_max_len=8) == []


def test_template_longer_than_window_is_an_error(student_tokenizer, teacher_tokenizer):
    with pytest.raises(ValueError, match="student"):
        encode_pair(HH, student_tokenizer, teacher_tokenizer, student_max_len=3, template=("a b c d e f", "", ""))


# ----------------------------------------------------------------------------- collate


def test_collate_pairs_shapes_and_padding(student_tokenizer, teacher_tokenizer):
    examples = [HH, PreferenceExample("Hi", " " + long_text(40, seed=10), " ok")]
    encs = encode_pairs(examples, student_tokenizer, teacher_tokenizer, student_max_len=128)
    pad = student_tokenizer.pad_token_id
    batch = collate_pairs(encs, pad_id=pad, margins=[1.0, 0.5])
    rows = [e.student_ids_w for e in encs] + [e.student_ids_l for e in encs]
    n = max(len(r) for r in rows)
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.student_unit.shape == (4, n)
    assert batch.num_pairs == 2
    for i, r in enumerate(rows):
        assert batch.input_ids[i, : len(r)].tolist() == r.tolist()
        assert batch.attention_mask[i].sum().item() == len(r)
        assert torch.all(batch.input_ids[i, len(r) :] == pad) and torch.all(batch.student_unit[i, len(r) :] == -1)
    u_w = max(e.n_units_w for e in encs)
    assert batch.unit_valid_w.shape == batch.unit_response_w.shape == (2, u_w)
    assert batch.unit_valid_l.shape == (2, max(e.n_units_l for e in encs))
    short = int(np.argmin([e.n_units_w for e in encs]))
    assert not batch.unit_valid_w[short, encs[short].n_units_w :].any()
    assert batch.unit_valid_w.dtype == torch.bool and batch.margin.tolist() == [1.0, 0.5]
    assert collate_pairs(encs, pad_id=pad).margin is None


# ----------------------------------------------------------------------------- chat templates

# ChatML with a default system turn (as SmolLM2's), and a Llama-3-like one that trims turns
# and writes BOS itself; the tiny student's EOS is </s>.
CHATML = (
    "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}{{ '<s>system\\nBe brief.</s>\\n' }}"
    "{% endif %}{{ '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}"
)
TRIMMING = (
    "{{ bos_token }}{% for m in messages %}{{ '[' + m['role'] + ']\\n' + (m['content'] | trim) + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[assistant]\\n' }}{% endif %}"
)

# No end-of-turn marker: OpenRLHF's rstrip("\n") then eats the response's own trailing newlines.
BARE = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def _with_template(tokenizer, template):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    return tok


def _openrlhf_text(tok, prompt, response):
    # OpenRLHF's reward dataset: preprocess_data with a prompt key, then __getitem__'s rstrip/EOS rule.
    from openrlhf.datasets.reward_dataset import preprocess_data

    data = {"p": [{"role": "user", "content": prompt}], "c": [{"role": "assistant", "content": response}],
            "r": [{"role": "assistant", "content": response}]}
    p, c, _, _ = preprocess_data(data, None, "p", "c", "r", tok.apply_chat_template)
    text = (p + c).rstrip("\n")
    return text if text.endswith(tok.eos_token) else text + " " + tok.eos_token


def _content_of_units(enc, content):
    return [content[a:b] for a, b in enc.unit_spans_w]


@pytest.mark.parametrize("template", [CHATML, TRIMMING, BARE], ids=["chatml", "trimming", "bare"])
def test_chat_template_text_is_openrlhfs_and_template_maps_to_no_unit(template, student_tokenizer, teacher_tokenizer):
    from idrm_ray.core.chat import chat_render

    tok = _with_template(student_tokenizer, template)
    ex = PreferenceExample("  Where is the cat?\n", " On the mat.\n\n", "No idea")
    for response in (ex.chosen, ex.rejected):
        r = chat_render(tok, ex.prompt, response)
        assert r.text(ex.prompt, response) == _openrlhf_text(tok, ex.prompt, response)
    enc = encode_pair(ex, tok, teacher_tokenizer, student_max_len=128, template="chat", map_units="either_window")
    want = tok(_openrlhf_text(tok, ex.prompt, ex.chosen), add_special_tokens=False)["input_ids"]
    assert enc.student_ids_w.tolist() == want  # no added BOS, and the last token is EOS
    assert want[-1] == tok.eos_token_id and want.count(tok.bos_token_id) == {CHATML: 3, TRIMMING: 1, BARE: 0}[template]
    # Only content tokens have a unit, and units only hold content characters.
    content = ex.prompt + ex.chosen
    units = _content_of_units(enc, content)
    assert "".join("".join(units).split()) == "".join(content.split())  # every visible character once
    decoded = [tok.decode([i]) for i, u in zip(enc.student_ids_w, enc.student_unit_w) if u >= 0]
    assert not any(m in "".join(decoded) for m in ("<s>", "</s>", "system", "assistant", "[user]"))


def test_chat_template_errors(student_tokenizer, teacher_tokenizer):
    from idrm_ray.core.chat import chat_layout

    with pytest.raises(ValueError, match="no chat template"):
        encode_pair(HH, student_tokenizer, teacher_tokenizer, student_max_len=64, template="chat")
    upper = _with_template(student_tokenizer, TRIMMING.replace("| trim", "| upper"))
    with pytest.raises(ValueError, match="changes the prompt or response"):
        encode_pair(HH, upper, teacher_tokenizer, student_max_len=64, template="chat")
    with pytest.raises(ValueError, match="trims whitespace"):
        chat_layout(_with_template(student_tokenizer, TRIMMING), HH.prompt, HH.chosen)
    with pytest.raises(ValueError, match="template 'chatml'"):
        encode_pair(HH, student_tokenizer, teacher_tokenizer, student_max_len=64, template="chatml")


def test_special_tokens_written_in_the_text_have_no_unit(student_tokenizer, teacher_tokenizer):
    # "</s>" and "[SEP]" typed in a prompt are parsed as specials by the tokenizers: they are no
    # text, so no unit; an [UNK] standing for an unknown character (the emoji) is text and keeps one.
    ex = PreferenceExample("quote </s> and [SEP] here 🦜", " ok", " no")
    enc = encode_pair(ex, student_tokenizer, teacher_tokenizer, student_max_len=64, map_units="either_window")
    eos, sep, unk = student_tokenizer.eos_token_id, teacher_tokenizer.sep_token_id, teacher_tokenizer.unk_token_id
    assert (enc.student_unit_w[enc.student_ids_w == eos] == -1).all() and (enc.student_ids_w == eos).sum() == 2
    assert (enc.teacher_unit[enc.teacher_ids == sep] == -1).all() and (enc.teacher_ids == sep).sum() == 4
    assert unk in enc.teacher_ids.tolist() and (enc.teacher_unit[enc.teacher_ids == unk] >= 0).all()
    content = ex.prompt + ex.chosen
    texts = [content[a:b] for a, b in enc.unit_spans_w]
    assert not any("</s>" in t or "[SEP]" in t for t in texts) and any("🦜" in t for t in texts)
