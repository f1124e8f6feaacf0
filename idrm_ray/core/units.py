"""Cross-tokenizer common units and aligned pair encodings (METHOD.md §6, "Token
alignment across tokenizers" and "Truncation", both [D]).

The student (decoder RM, e.g. Llama-3 byte-level BPE) and the teacher (cross-encoder,
e.g. DeBERTa) segment the same text differently. Both attention maps are pooled onto
the coarsest segmentation that both tokenizations refine: the common units. Units are
computed per half over the content string prompt+response from the FULL tokenizations,
then each model's window is cut (`truncation.py`); a unit is valid for L_ID only if
both windows still hold a token of it.

CPU numpy only: this runs per pair inside data-loading tasks. The tokens come from
`tokens.py`; the encodings are padded into a batch by `collate.py`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from idrm_ray.core.truncation import content_budget, renumber_units, units_for_maps, window_keep, window_units
from idrm_ray.core.tokens import PairFormat, Tokens, teacher_pair_format, tokenize, with_eos
from idrm_ray.core.types import AlignmentStats, PairEncoding, PreferenceExample

# ----------------------------------------------------------------------------- units


def _as_spans(offsets, text_len: int) -> np.ndarray:
    return np.clip(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), 0, text_len)  # (n, 2)


def _unit_of_tokens(unit_of_char: np.ndarray, spans: np.ndarray) -> np.ndarray:
    out = np.full(len(spans), -1, dtype=np.int64)
    real = spans[:, 1] > spans[:, 0]  # empty spans (specials) cover nothing: no unit
    out[real] = unit_of_char[spans[real, 0]]
    return out


def common_units(text_len: int, offsets_a, offsets_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarsest common segmentation of one string under two tokenizations (METHOD.md §6).

    `offsets_*`: (n_*, 2) per-token [start, end) character spans; empty spans (specials,
    (0, 0)) are ignored. Position p is a cut iff no token of either side has
    start < p < end; units are the spans between consecutive cuts that some token
    covers (characters no tokenizer covers, e.g. spaces both drop, are in no unit).
    Overlapping spans (byte-level BPE splitting one character) and normalisers that
    change the text are fine: only the offsets into the original string are used.

    Returns spans (U, 2) int64 and token->unit (n_a,), (n_b,) int64, -1 for empty spans.
    """
    span_a, span_b = _as_spans(offsets_a, text_len), _as_spans(offsets_b, text_len)
    starts, ends = np.concatenate([span_a, span_b]).T
    real = ends > starts
    s, e = starts[real], ends[real]
    size = text_len + 2
    # Difference arrays: +1 where a token's coverage / straddling begins, -1 where it stops.
    covered = np.cumsum(np.bincount(s, minlength=size) - np.bincount(e, minlength=size))[:text_len] > 0
    straddled = np.cumsum(np.bincount(s + 1, minlength=size) - np.bincount(e, minlength=size))[:text_len] > 0
    seg_starts = np.flatnonzero(~straddled)  # cuts in [0, L); position 0 is never straddled
    seg_ends = np.append(seg_starts[1:], text_len)
    # A segment longer than one character is straddled inside, hence fully covered;
    # so its first character decides whether it is a unit.
    is_unit = covered[seg_starts]
    spans = np.stack([seg_starts[is_unit], seg_ends[is_unit]], axis=1)  # (U, 2)
    unit_of_seg = np.where(is_unit, np.cumsum(is_unit) - 1, -1)
    unit_of_char = unit_of_seg[np.cumsum(~straddled) - 1]  # (L,)
    return spans, _unit_of_tokens(unit_of_char, span_a), _unit_of_tokens(unit_of_char, span_b)


def unit_matrix(token_unit: np.ndarray, num_units: int, *, dtype=np.float32) -> np.ndarray:
    """Dense (n, U) 0/1 token->unit matrix G of METHOD.md §6 (rows of -1 tokens are zero).
    Pool(P) = diag(G_q^T 1)^-1 G_q^T P G_k; a reference for tests, not the fast path."""
    token_unit = np.asarray(token_unit, dtype=np.int64)
    out = np.zeros((len(token_unit), num_units), dtype=dtype)
    rows = np.flatnonzero(token_unit >= 0)
    out[rows, token_unit[rows]] = 1
    return out


# ----------------------------------------------------------------------------- one half


class _Layout(NamedTuple):
    """Character layout of the student string prefix + prompt[p0:p1] + separator +
    response[r0:r1] + suffix. `prompt`/`response` are the raw lengths (content
    coordinates); the spans are what a chat template kept (`core/chat.py`: only whitespace
    at the ends may be dropped), the whole strings otherwise."""

    prefix: int
    prompt: int
    separator: int
    response: int
    prompt_span: tuple[int, int] | None = None  # None: (0, prompt)
    response_span: tuple[int, int] | None = None  # None: (0, response)


def _content_offsets(tokens: Tokens, lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Student offsets mapped from the templated string into content coordinates
    (prompt+response). A token that also covers template characters keeps only its
    content part; tokens with no content character (template, specials) get (0, 0).
    Returns offsets (n, 2) and is_content (n,) bool."""
    s, e = tokens.offsets.T
    (pa, pb), (ra, rb) = lay.prompt_span or (0, lay.prompt), lay.response_span or (0, lay.response)
    p0, p1 = lay.prefix, lay.prefix + (pb - pa)  # the prompt's characters in the student string
    r0 = p1 + lay.separator
    r1 = r0 + (rb - ra)
    ps, pe = np.maximum(s, p0), np.minimum(e, p1)
    rs, re = np.maximum(s, r0), np.minimum(e, r1)
    has_p, has_r = (pe > ps) & ~tokens.special, (re > rs) & ~tokens.special
    # String position -> content position: shift by the region start and by what was trimmed.
    start = np.where(has_p, ps - p0 + pa, rs - r0 + ra + lay.prompt)
    end = np.where(has_r, re - r0 + ra + lay.prompt, pe - p0 + pa)
    is_content = has_p | has_r
    return np.where(is_content[:, None], np.stack([start, end], axis=1), 0), is_content


class _Half(NamedTuple):
    student_ids: np.ndarray  # (n,) kept student ids, [BOS] ... [EOS]
    student_unit: np.ndarray  # (n,) in [-1, U)
    teacher_ids: np.ndarray  # (m,) kept teacher content ids, no specials
    teacher_unit: np.ndarray  # (m,) in [-1, U)
    spans: np.ndarray  # (U, 2)
    valid: np.ndarray  # (U,) bool
    response: np.ndarray  # (U,) bool
    stats: AlignmentStats


def _encode_half(
    student: Tokens,
    teacher: Tokens,
    lay: _Layout,
    *,
    student_max_len: int,
    teacher_budget: int,
    map_rule: str = "teacher_window",
) -> _Half:
    content_offsets, s_content = _content_offsets(student, lay)
    spans, s_unit, t_unit = common_units(lay.prompt + lay.response, content_offsets, teacher.offsets)
    s_budget = content_budget(student_max_len, int((~s_content).sum()), what="student")
    s_keep = window_keep(s_content, content_offsets[:, 0] < lay.prompt, budget=s_budget)
    # Every teacher token here is content (specials are spliced in later); zero-width
    # ones have no unit but still take a position in the window.
    t_keep = window_keep(np.ones(len(teacher.ids), bool), teacher.offsets[:, 0] < lay.prompt, budget=teacher_budget)
    stats, valid, present = window_units(s_unit, s_keep, t_unit, t_keep, num_units=len(spans))
    # [D] Maps cover only the valid units (DESIGN.md decision 8): (U, U) is bounded by the
    # teacher's window, not the student's. Stats still count every unit of the text.
    present = units_for_maps(valid, present, map_rule)
    return _Half(
        student_ids=student.ids[s_keep],
        student_unit=renumber_units(s_unit[s_keep], present),
        teacher_ids=teacher.ids[t_keep],
        teacher_unit=renumber_units(t_unit[t_keep], present),
        spans=spans[present],
        valid=valid[present],
        response=(spans[:, 1] > lay.prompt)[present],
        stats=stats,
    )


# ----------------------------------------------------------------------------- pairs


def _student_texts(
    halves: list[tuple[str, str]], tokenizer, template: tuple[str, str, str] | str | None
) -> tuple[list[str], list[_Layout], bool]:
    """The student's strings, their layouts and whether the tokenizer adds its specials.
    "chat": the tokenizer's chat template per half (`core/chat.py`), tokenized without added
    specials as OpenRLHF's reward dataset does (the template writes BOS where one belongs);
    a tuple: fixed (prefix, separator, suffix) text, tokenized with the specials (BOS)."""
    if isinstance(template, str):
        if template != "chat":
            raise ValueError(f"template {template!r}: use 'chat', a (prefix, separator, suffix) tuple or None")
        from idrm_ray.core.chat import chat_parts, chat_render

        parts = chat_parts(tokenizer)  # one clear ValueError for a tokenizer with no chat template
        renders = [chat_render(tokenizer, prompt, response, parts=parts) for prompt, response in halves]
        layouts = [
            _Layout(len(r.prefix), len(p), len(r.separator), len(y), r.prompt_span, r.response_span)
            for r, (p, y) in zip(renders, halves)
        ]
        return [r.text(p, y) for r, (p, y) in zip(renders, halves)], layouts, False
    prefix, separator, suffix = template or ("", "", "")
    texts = [prefix + prompt + separator + response + suffix for prompt, response in halves]
    layouts = [_Layout(len(prefix), len(prompt), len(separator), len(response)) for prompt, response in halves]
    return texts, layouts, True


def _join(w: _Half, l: _Half, fmt: PairFormat) -> PairEncoding:
    # One global unit numbering on the teacher: rejected units follow the chosen ones.
    l_unit = np.where(l.teacher_unit >= 0, l.teacher_unit + len(w.spans), -1)
    stats = w.stats.merge(l.stats)
    stats.pairs_teacher_truncated = int(stats.teacher_tokens_truncated > 0)
    stats.pairs_student_truncated = int(stats.student_tokens_truncated > 0)
    return PairEncoding(
        student_ids_w=w.student_ids,
        student_ids_l=l.student_ids,
        student_unit_w=w.student_unit,
        student_unit_l=l.student_unit,
        teacher_ids=fmt.join(w.teacher_ids, l.teacher_ids),
        teacher_type_ids=fmt.type_ids_for(len(w.teacher_ids), len(l.teacher_ids)),
        teacher_unit=fmt.join(w.teacher_unit, l_unit, specials=-1),
        unit_valid_w=w.valid,
        unit_valid_l=l.valid,
        unit_response_w=w.response,
        unit_response_l=l.response,
        unit_spans_w=w.spans,
        unit_spans_l=l.spans,
        stats=stats,
    )


def encode_pairs(
    examples: Sequence[PreferenceExample],
    student_tokenizer,
    teacher_tokenizer,
    *,
    student_max_len: int,
    teacher_max_len: int = 512,
    template: tuple[str, str, str] | str | None = None,
    map_units: str = "teacher_window",
) -> list[PairEncoding]:
    """Align and truncate a list of pairs with two batched tokenizer calls (see
    `encode_pair`). Halves are ordered [chosen_0, rejected_0, chosen_1, ...].
    `map_units`: which units the maps cover (`truncation.units_for_maps`)."""
    if not examples:
        return []
    if student_tokenizer.eos_token_id is None:
        raise ValueError("the student tokenizer needs an EOS token: the reward is read there")
    fmt = teacher_pair_format(teacher_tokenizer)
    teacher_budget = content_budget(teacher_max_len, fmt.num_specials, what="teacher") // 2
    halves = [(ex.prompt, response) for ex in examples for response in (ex.chosen, ex.rejected)]
    student_texts, layouts, add_specials = _student_texts(halves, student_tokenizer, template)
    student = tokenize(student_tokenizer, student_texts, add_special_tokens=add_specials)
    teacher = tokenize(teacher_tokenizer, [prompt + response for prompt, response in halves], add_special_tokens=False)
    encoded = [
        _encode_half(
            with_eos(s, student_tokenizer.eos_token_id),
            t,
            lay,
            student_max_len=student_max_len,
            teacher_budget=teacher_budget,
            map_rule=map_units,
        )
        for s, t, lay in zip(student, teacher, layouts)
    ]
    return [_join(encoded[i], encoded[i + 1], fmt) for i in range(0, len(encoded), 2)]


def encode_pair(
    example: PreferenceExample,
    student_tokenizer,
    teacher_tokenizer,
    *,
    student_max_len: int,
    teacher_max_len: int = 512,
    template: tuple[str, str, str] | str | None = None,
    map_units: str = "teacher_window",
) -> PairEncoding:
    """One pair: the student reads `prefix + prompt + separator + response + suffix`
    per half with its own specials and a final EOS; the teacher reads its own pair
    format with A = prompt+chosen and B = prompt+rejected (`template` = (prefix,
    separator, suffix), default all empty; "chat": the student tokenizer's chat template,
    prompt as the user turn and response as the assistant turn, `core/chat.py`; template
    text and specials map to no unit either way). Truncation: METHOD.md §6 / `truncation.py`,
    the student over its whole sequence, the teacher per half with
    (teacher_max_len - #specials) // 2 tokens each."""
    return encode_pairs(
        [example],
        student_tokenizer,
        teacher_tokenizer,
        student_max_len=student_max_len,
        teacher_max_len=teacher_max_len,
        template=template,
        map_units=map_units,
    )[0]
