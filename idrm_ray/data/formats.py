"""Row formats: one validating converter per format, plus auto-detection.

A converter takes one row (a dict) and returns a record, or raises `RowProblem`
(the loader attaches the file and row). Rules per format are in `idrm_ray.data`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data.errors import RowProblem

HH_ASSISTANT = "\n\nAssistant:"
NLI_LABELS = ("entailment", "neutral", "contradiction")  # ids 0, 1, 2 (tiny teacher's id2label)
NLI_UNLABELED = (-1, "-1", "-")  # SNLI: no gold label; dropped and counted, never an error
TEXT, MESSAGES, LABEL = "text", "messages", "label"
MAX_TEXT_CHARS = 1_000_000  # per text field; ~250k tokens, far above any max_len (see _checked)


@dataclass(frozen=True)
class NLIExample:
    premise: str
    hypothesis: str
    label: int  # 0 entailment, 1 neutral, 2 contradiction


@dataclass(frozen=True)
class FormatSpec:
    name: str
    fields: dict[str, str]  # required field -> kind (TEXT, MESSAGES, LABEL)
    convert: Callable[[Mapping[str, Any]], Any]  # row -> record (None: dropped by rule)


def _field(row: Mapping[str, Any], name: str) -> Any:
    if name not in row:
        raise RowProblem("missing_field", f"missing field '{name}' (row has: {', '.join(map(str, row)) or 'nothing'})")
    if row[name] is None:
        raise RowProblem("missing_field", f"field '{name}' is null")
    return row[name]


def _text(row: Mapping[str, Any], name: str, fmt: str) -> str:
    value = _field(row, name)
    if not isinstance(value, str):
        hint = " (message lists are the 'ultrafeedback' format)" if isinstance(value, list) else ""
        raise RowProblem("wrong_type", f"field '{name}' must be a string in {fmt} format, got {type(value).__name__}{hint}")
    if not value.strip():
        raise RowProblem("empty_text", f"field '{name}' is empty or whitespace-only")
    return _checked(value, f"field '{name}'")


def _checked(value: str, what: str) -> str:
    """Text the encode stage can take. A 10 MB text costs ~35 s and ~4 GB of memory to
    tokenize and align before truncation (measured), so texts over MAX_TEXT_CHARS are
    rejected as broken data. JSON escapes can also smuggle in lone UTF-16 surrogates
    ("\\ud800"): valid JSON, not valid text; the fast tokenizers fail on them."""
    if len(value) > MAX_TEXT_CHARS:
        raise RowProblem(
            "too_long", f"{what} is {len(value):,} characters, over the {MAX_TEXT_CHARS:,}-character limit per text "
            "(the models read at most max_len tokens); shorten or drop the row")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = f"\\u{ord(value[e.start]):04x}"
        raise RowProblem("bad_unicode", f"{what} has a lone surrogate {bad} at character {e.start}; not valid Unicode text")
    return value


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowProblem("bad_margin", f"field '{name}' must be a finite number, got {value!r:.40}")
    return float(value)


def _score_margin(row: Mapping[str, Any]) -> float | None:
    """score_chosen - score_rejected when both are present (UltraFeedback ratings)."""
    if row.get("score_chosen") is None or row.get("score_rejected") is None:
        return None
    return _finite(row["score_chosen"], "score_chosen") - _finite(row["score_rejected"], "score_rejected")


def _pair(prompt: str, chosen: str, rejected: str, margin: float | None, what: str = "responses") -> PreferenceExample:
    if chosen.strip() == rejected.strip():
        raise RowProblem("identical", f"chosen and rejected {what} are identical")
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, margin=margin)


def convert_generic(row: Mapping[str, Any]) -> PreferenceExample:
    prompt, chosen, rejected = (_text(row, k, "generic") for k in ("prompt", "chosen", "rejected"))
    margin = _finite(row["margin"], "margin") if row.get("margin") is not None else _score_margin(row)
    return _pair(prompt, chosen, rejected, margin)


def split_hh(transcript: str, name: str = "chosen") -> tuple[str, str]:
    """HH-RLHF rule: prompt = text up to and including the last "\\n\\nAssistant:",
    response = the remainder (usually starting with a space)."""
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RowProblem("no_assistant_turn", f"HH transcript '{name}' has no '\\n\\nAssistant:' turn")
    cut += len(HH_ASSISTANT)
    return transcript[:cut], transcript[cut:]


def convert_hh(row: Mapping[str, Any]) -> PreferenceExample:
    chosen_t, rejected_t = _text(row, "chosen", "hh"), _text(row, "rejected", "hh")
    prompt, chosen = split_hh(chosen_t, "chosen")
    if not rejected_t.startswith(prompt):
        split_hh(rejected_t, "rejected")  # a rejected transcript with no turn gets that message
        diff = next((i for i, (a, b) in enumerate(zip(prompt, rejected_t)) if a != b), min(len(prompt), len(rejected_t)))
        raise RowProblem(
            "prompt_mismatch",
            f"chosen and rejected transcripts do not share the prompt (chosen up to its last '\\n\\nAssistant:'); "
            f"first difference at character {diff}",
        )
    rejected = rejected_t[len(prompt):]
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise RowProblem("empty_text", f"{name} response (after the last '\\n\\nAssistant:') is empty or whitespace-only")
    return _pair(prompt, chosen, rejected, None)


def last_assistant(messages: Any, name: str) -> str:
    """Content of the last {"role": "assistant"} message of a message list."""
    if not isinstance(messages, list):
        got = type(messages).__name__
        raise RowProblem("wrong_type", f"field '{name}' must be a list of messages in ultrafeedback format, got {got}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise RowProblem("wrong_type", f"'{name}' message {i} must be an object with string 'role' and 'content'")
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    if not answers:
        raise RowProblem("no_assistant_message", f"'{name}' has no assistant message")
    if not answers[-1].strip():
        raise RowProblem("empty_text", f"last assistant message of '{name}' is empty or whitespace-only")
    return _checked(answers[-1], f"last assistant message of '{name}'")


def convert_ultrafeedback(row: Mapping[str, Any]) -> PreferenceExample:
    prompt = _text(row, "prompt", "ultrafeedback")
    chosen = last_assistant(_field(row, "chosen"), "chosen")
    rejected = last_assistant(_field(row, "rejected"), "rejected")
    return _pair(prompt, chosen, rejected, _score_margin(row))


def nli_label(value: Any) -> int | None:
    """0/1/2 or the label names; -1 (also "-1", "-") means unlabeled and returns None."""
    if isinstance(value, str):
        key = value.strip().lower()
        if key in NLI_UNLABELED:
            return None
        if key in NLI_LABELS:
            return NLI_LABELS.index(key)
    elif isinstance(value, int) and not isinstance(value, bool):
        if value == -1:
            return None
        if 0 <= value < len(NLI_LABELS):
            return value
    else:
        raise RowProblem("wrong_type", f"field 'label' must be an integer or a label name, got {type(value).__name__}")
    raise RowProblem(
        "label_out_of_range",
        f"label {value!r:.40} is out of range (expected 0, 1, 2, {'/'.join(NLI_LABELS)}, or -1 for unlabeled)",
    )


def convert_nli(row: Mapping[str, Any]) -> NLIExample | None:
    premise, hypothesis = _text(row, "premise", "nli"), _text(row, "hypothesis", "nli")
    label = nli_label(_field(row, "label"))
    return None if label is None else NLIExample(premise, hypothesis, label)


FORMATS = {
    "generic": FormatSpec("generic", {"prompt": TEXT, "chosen": TEXT, "rejected": TEXT}, convert_generic),
    "hh": FormatSpec("hh", {"chosen": TEXT, "rejected": TEXT}, convert_hh),
    "ultrafeedback": FormatSpec(
        "ultrafeedback", {"prompt": TEXT, "chosen": MESSAGES, "rejected": MESSAGES}, convert_ultrafeedback
    ),
    "nli": FormatSpec("nli", {"premise": TEXT, "hypothesis": TEXT, "label": LABEL}, convert_nli),
}
PREFERENCE_FORMATS = ("generic", "hh", "ultrafeedback")


def detect_format(row: Mapping[str, Any]) -> str:
    """From one row's fields: premise+hypothesis -> nli; chosen as a list -> ultrafeedback;
    chosen/rejected with a prompt -> generic; chosen/rejected transcripts only -> hh."""
    keys = set(row)
    if {"premise", "hypothesis"} <= keys:
        return "nli"
    if {"chosen", "rejected"} <= keys:
        if isinstance(row["chosen"], list):
            return "ultrafeedback"
        return "generic" if "prompt" in keys else "hh"
    raise RowProblem(
        "unknown_format",
        f"cannot detect the data format from fields [{', '.join(map(str, row))}]: expected prompt/chosen/rejected "
        "(generic), chosen/rejected transcripts (hh), or prompt + chosen/rejected message lists (ultrafeedback)",
    )


def _kind_of(dtype: pa.DataType) -> str:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return TEXT
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return MESSAGES if pa.types.is_struct(dtype.value_type) else "list"
    if pa.types.is_integer(dtype):
        return "integer"
    return str(dtype)


def schema_problems(columns: Mapping[str, pa.DataType | None], spec: FormatSpec) -> list[str]:
    """Missing or mistyped columns for `spec` (types are checked when known, i.e. Parquet)."""
    problems = []
    for name, kind in spec.fields.items():
        if name not in columns:
            problems.append(f"missing column '{name}'")
        elif columns[name] is not None:
            found = _kind_of(columns[name])
            ok = found in (TEXT, "integer") if kind == LABEL else found == kind
            if not ok:
                problems.append(f"column '{name}' is {columns[name]}, expected {'string' if kind == TEXT else kind}")
    return problems
