"""Common units between real tokenizers (METHOD.md §6, "Token alignment" and "Truncation"):
SmolLM2's byte-level BPE with its chat template (student) against MiniLM's lowercasing,
accent-stripping WordPiece (teacher).

Every check is against an oracle computed here from the raw tokenizations, not from
`units.py`: the student's text is OpenRLHF's own reward-dataset rendering, content characters
are located by the chat markers, coverage comes straight from the two offset mappings, and
kept tokens are compared as bytes.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from idrm_ray.core.chat import chat_layout
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs

UNICODE = [
    # precomposed and decomposed accents (MiniLM strips them: its offsets must still point here)
    PreferenceExample("Crème brûlée? Cre\u0300me bru\u0302le\u0301e!", " Ça va, naïve façade.",
                      " ÅNGSTRÖM İstanbul straße ﬁne"),
    PreferenceExample("日本語のテキストを翻訳してください。", " 这是中文。", " 한국어 텍스트"),
    PreferenceExample("Rate this 👍🏽 and 👩‍👩‍👧‍👦 family 🇫🇷", " 🙂🙂🙂", " ❤️‍🔥 e\u0301\u0327"),
    # right-to-left scripts, zero-width and bidi control characters
    PreferenceExample("שלום עולם مرحبا بالعالم", " a\u200bb\u200cc\u200dd\ufeffe", " \u202eevil\u202c text"),
    PreferenceExample("\n\nHuman: tabs\t\tand  spaces \n\nAssistant:", " \u00a0nbsp\u3000wide space ", "\n"),
    # a special token written in the text is a special token to the student: no unit
    PreferenceExample("Quote <|im_end|> and <|endoftext|> here", " ok [SEP] [CLS] ya", ""),
]
USER, ASSISTANT = "<|im_start|>user\n", "<|im_start|>assistant\n"


def _openrlhf_dataset_ids(tok, examples, max_length=4096):
    """Token ids OpenRLHF 0.11.2's RewardDataset feeds its RM (--apply_chat_template), per half."""
    from datasets import Dataset
    from openrlhf.datasets.reward_dataset import RewardDataset

    rows = [{"p": [{"role": "user", "content": e.prompt}], "c": [{"role": "assistant", "content": e.chosen}],
             "r": [{"role": "assistant", "content": e.rejected}]} for e in examples]
    data = SimpleNamespace(prompt_key="p", chosen_key="c", rejected_key="r", apply_chat_template=True)
    ds = RewardDataset(Dataset.from_list(rows), tok, max_length, SimpleNamespace(args=SimpleNamespace(data=data)),
                       num_processors=1)
    out = []
    for i in range(len(ds)):
        c, _, r, _, _ = ds[i]
        out += [c[0].tolist(), r[0].tolist()]
    return out


def _openrlhf_text(tok, prompt, response):
    # RewardDataset.__getitem__'s string: full render, trailing newlines stripped, EOS kept once.
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    text = tok.apply_chat_template(turns, tokenize=False).rstrip("\n")
    return text if text.endswith(tok.eos_token) else text + " " + tok.eos_token


def _content_positions(text, prompt, response):
    """Rendered-text index of every content character (prompt+response), found by the markers."""
    p0 = text.find(USER) + len(USER)
    r0 = text.rfind(ASSISTANT) + len(ASSISTANT)
    assert text[p0 : p0 + len(prompt)] == prompt and text[r0 : r0 + len(response)] == response
    return np.concatenate([np.arange(p0, p0 + len(prompt)), np.arange(r0, r0 + len(response))]).astype(np.int64)


def _covered(offsets, positions, text_len, skip=None):
    """(len(positions),) bool: which content characters some (non-skipped) token covers."""
    hit = np.zeros(text_len + 1, bool)
    for i, (a, b) in enumerate(offsets):
        if b > a and not (skip is not None and skip[i]):
            hit[a:b] = True
    return hit[positions]


def _token_content_span(a, b, positions):
    """The content-coordinate span of a rendered-text token span [a, b) (None: no content)."""
    inside = np.flatnonzero((positions >= a) & (positions < b))
    return None if len(inside) == 0 else (inside[0], inside[-1] + 1)


def test_chat_text_is_what_openrlhf_feeds_its_reward_model(smollm2_tokenizer, minilm_tokenizer):
    tok = smollm2_tokenizer
    encs = encode_pairs(UNICODE, tok, minilm_tokenizer, student_max_len=4096, teacher_max_len=512, template="chat")
    ours = [ids.tolist() for e in encs for ids in (e.student_ids_w, e.student_ids_l)]
    assert ours == _openrlhf_dataset_ids(tok, UNICODE)
    for e in UNICODE:
        for response in (e.chosen, e.rejected):
            prefix, separator, suffix = chat_layout(tok, e.prompt, response)
            assert prefix + e.prompt + separator + response + suffix == _openrlhf_text(tok, e.prompt, response)
            # SmolLM2's default system turn is template text; the final <|im_end|> is its EOS,
            # read by the reward head, and the template's trailing newline is dropped.
            assert prefix.startswith("<|im_start|>system\n") and suffix == "<|im_end|>" == tok.eos_token


@pytest.mark.parametrize("example", UNICODE, ids=[f"text{i}" for i in range(len(UNICODE))])
def test_units_cover_the_text_exactly_once(example, smollm2_tokenizer, minilm_tokenizer):
    s_tok, t_tok = smollm2_tokenizer, minilm_tokenizer
    enc = encode_pairs([example], s_tok, t_tok, student_max_len=4096, teacher_max_len=512, template="chat",
                       map_units="either_window")[0]
    specials = set(s_tok.all_special_ids)
    halves = [(example.chosen, enc.student_ids_w, enc.student_unit_w, enc.unit_spans_w, 0),
              (example.rejected, enc.student_ids_l, enc.student_unit_l, enc.unit_spans_l, enc.n_units_w)]
    a_len = len(t_tok(example.prompt + example.chosen, add_special_tokens=False)["input_ids"])
    teacher_parts = [enc.teacher_unit[1 : 1 + a_len], enc.teacher_unit[2 + a_len : -1]]  # [CLS] A [SEP] B [SEP]
    assert enc.teacher_unit[[0, 1 + a_len, -1]].tolist() == [-1, -1, -1]
    for (response, ids, unit, spans, offset), t_unit in zip(halves, teacher_parts):
        content = example.prompt + response
        text = _openrlhf_text(s_tok, example.prompt, response)
        pos = _content_positions(text, example.prompt, response)
        s = s_tok(text, add_special_tokens=False, return_offsets_mapping=True)
        t = t_tok(content, add_special_tokens=False, return_offsets_mapping=True)
        assert s["input_ids"] == ids.tolist() and len(t["input_ids"]) == len(t_unit)
        s_special = np.isin(s["input_ids"], list(specials))
        t_special = np.isin(t["input_ids"], list(set(t_tok.all_special_ids) - {t_tok.unk_token_id}))
        covered = _covered(s["offset_mapping"], pos, len(text), s_special)
        covered |= _covered(t["offset_mapping"], np.arange(len(content)), len(content), t_special)
        # Spans are ordered and disjoint, and their union is exactly the covered characters.
        assert (spans[:, 1] > spans[:, 0]).all() and (spans[1:, 0] >= spans[:-1, 1]).all()
        in_unit = np.zeros(len(content), int)
        for a, b in spans:
            in_unit[a:b] += 1
        np.testing.assert_array_equal(in_unit, covered.astype(int))
        # Student: template and special tokens have no unit; a content token lies inside its unit.
        for i, (a, b) in enumerate(s["offset_mapping"]):
            span = None if s_special[i] else _token_content_span(a, b, pos)
            if span is None:
                assert unit[i] == -1, (s_tok.convert_ids_to_tokens(int(ids[i])), a, b)
            else:
                assert unit[i] >= 0 and spans[unit[i], 0] <= span[0] and span[1] <= spans[unit[i], 1]
        # Teacher (lowercased, accents stripped): every token with characters lies inside its unit.
        for (a, b), u, special in zip(t["offset_mapping"], t_unit - offset * (t_unit >= 0), t_special):
            if b > a and not special:  # [UNK] (emoji here) is content; [SEP] typed in the text is not
                assert u >= 0 and spans[u, 0] <= a and b <= spans[u, 1]
            else:
                assert u == -1
        # A unit is the coarsest common cut: it has a token of the student or of the teacher.
        assert set(range(len(spans))) == set(unit[unit >= 0]) | set((t_unit - offset)[t_unit >= 0])


# ----------------------------------------------------------------------------- long inputs

WORDS = ["Crème", "brûlée", "naïve", "日本語", "テキスト", "👍🏽", "👩‍👩‍👧", "שלום", "مرحبا", "e\u0301",
         "zero\u200bwidth", "İstanbul", "straße", "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog."]


def _long(n_words, seed):
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n_words))


def _bytes(tok, ids):
    """The exact bytes a byte-level BPE token sequence stands for (specials as their text)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    back = {c: b for b, c in bytes_to_unicode().items()}
    specials = set(tok.all_special_ids)
    out = b""
    for i, piece in zip(ids, tok.convert_ids_to_tokens([int(i) for i in ids])):
        out += piece.encode() if int(i) in specials else bytes(back[c] for c in piece)
    return out


@pytest.mark.parametrize("student_max_len,teacher_max_len", [(1024, 256), (512, 512)])
def test_long_inputs_cut_prompt_left_response_right(student_max_len, teacher_max_len, smollm2_tokenizer,
                                                    minilm_tokenizer):
    s_tok, t_tok = smollm2_tokenizer, minilm_tokenizer
    ex = PreferenceExample(_long(900, 0), " " + _long(700, 1), " " + _long(40, 2))
    enc = encode_pairs([ex], s_tok, t_tok, student_max_len=student_max_len, teacher_max_len=teacher_max_len,
                       template="chat")[0]
    half_budget = (teacher_max_len - 3) // 2  # [CLS] A [SEP] B [SEP]
    a_len = min(half_budget, len(t_tok(ex.prompt + ex.chosen, add_special_tokens=False)["input_ids"]))
    teacher_halves = [enc.teacher_ids[1 : 1 + a_len], enc.teacher_ids[2 + a_len : -1]]
    assert len(enc.teacher_ids) <= teacher_max_len
    full_student, full_teacher = 0, 0
    for response, ids, unit, spans, valid, t_kept in (
        (ex.chosen, enc.student_ids_w, enc.student_unit_w, enc.unit_spans_w, enc.unit_valid_w, teacher_halves[0]),
        (ex.rejected, enc.student_ids_l, enc.student_unit_l, enc.unit_spans_l, enc.unit_valid_l, teacher_halves[1]),
    ):
        prefix, separator, suffix = (x.encode() for x in chat_layout(s_tok, ex.prompt, response))
        kept = _bytes(s_tok, ids)
        # The template is overhead, always kept; the prompt keeps its end, the response its start.
        assert kept.startswith(prefix) and kept.endswith(suffix) and ids[-1] == s_tok.eos_token_id
        left, right = kept[len(prefix) : len(kept) - len(suffix)].split(separator)
        assert ex.prompt.encode().endswith(left) and response.encode().startswith(right) and left and right
        full = s_tok(_openrlhf_text(s_tok, ex.prompt, response), add_special_tokens=False)["input_ids"]
        assert len(ids) == min(student_max_len, len(full))
        full_student += len(full)
        # Teacher: the last p prompt and first r response tokens of its own tokenization, with
        # p = min(P, max(H // 2, H - R)) (truncation.keep_counts' documented rule).
        t = t_tok(ex.prompt + response, add_special_tokens=False, return_offsets_mapping=True)
        p_ids = [i for i, (a, _) in zip(t["input_ids"], t["offset_mapping"]) if a < len(ex.prompt)]
        r_ids = [i for i, (a, _) in zip(t["input_ids"], t["offset_mapping"]) if a >= len(ex.prompt)]
        p = min(len(p_ids), max(half_budget // 2, half_budget - len(r_ids)))
        assert t_kept.tolist() == p_ids[len(p_ids) - p :] + r_ids[: half_budget - p]
        full_teacher += len(t["input_ids"])
        # Maps cover only units with a token in both windows, in text order, each one used.
        assert valid.all() and (spans[1:, 0] >= spans[:-1, 1]).all() and (unit < len(spans)).all()
        assert np.isin(np.arange(len(spans)), unit).all()
    st = enc.stats
    assert st.student_tokens_truncated == full_student - len(enc.student_ids_w) - len(enc.student_ids_l)
    assert st.teacher_tokens_truncated == full_teacher - sum(len(h) for h in teacher_halves)
    assert st.pairs_student_truncated == 1 and st.pairs_teacher_truncated == 1
    assert st.units_valid == int(enc.unit_valid_w.sum() + enc.unit_valid_l.sum())
    assert st.units_outside_teacher > 0  # the long chosen half does not fit either teacher window
    assert st.units_valid < st.units
