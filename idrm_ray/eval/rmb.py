"""RMB (Zhou et al. 2024, Zhou-Zoey/RMB-Reward-Model-Benchmark) pairwise layout.

The repo ships `RMB_dataset/Pairwise_set/{Harmlessness,Helpfulness}/.../*.json`, each a JSON
array of rows
    {"pair_uid": "15089",
     "conversation_input": [{"role": "user", "content": "...", "language": "English"}, ...],
     "chosen": {"llm_name": "...", "answer": "...", "score": 5.0},
     "reject": {"llm_name": "...", "answer": "...", "score": 4.5},
     "category_path": "Pairwise_set/Harmlessness/S1"}
(checked against `Pairwise_set/Harmlessness/S1.json`). RMB's own scorer
(`eval/scripts/my_run_rm.py`) builds `conversation_input + [assistant: answer]` per side and
counts a pair correct when r(chosen) > r(reject); we report accuracy per goal
(Harmlessness, Helpfulness: the pairs of that goal pooled) and per category path.

Rendering: the conversation becomes an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant:"),
the format our reward models are trained on; system messages lead, unmarked. Responses get
HH's leading space when they have none.

Best-of-N (`RMB_dataset/BoN_set/...`, layout `rmb-bon`): rows
    {"bon_uid": "3294", "conversation_input": [...], "bon_best": {"llm_name", "answer"},
     "loser_list": [{"llm_name", "answer"}, ...], "category_path": "BoN_set/Harmlessness/S1"}
(checked against `BoN_set/Harmlessness/S1.json` at commit 2be3180857f2190b7ffa929d43190835627f1f4d;
2 to 5 losers a row). The repository's scorer (`eval/scripts/my_run_rm.py`) is pairwise only;
the paper's BoN accuracy counts a list correct only when the best answer's reward is above
every loser's (`bestofn.beats_all`, strict: a tie is a miss). Goals and paths as above.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data.errors import RowProblem
from idrm_ray.eval.bestofn import Candidates

GOALS = ("Harmlessness", "Helpfulness")
_MARKERS = {"user": "\n\nHuman: ", "assistant": "\n\nAssistant: ", "system": ""}


def _get(row: Mapping[str, Any], name: str) -> Any:
    if name not in row:
        raise RowProblem("missing_field", f"missing field '{name}' (row has: {', '.join(map(str, row)) or 'nothing'})")
    if row[name] is None:
        raise RowProblem("missing_field", f"field '{name}' is null")
    return row[name]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"{what} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem("empty_text", f"{what} is empty or whitespace-only")
    return value


def render_messages(messages: Any, what: str = "conversation_input") -> str:
    """[{"role", "content"}, ...] -> "\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:"."""
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if messages == [] else type(messages).__name__
        raise RowProblem("wrong_type", f"'{what}' must be a non-empty list of messages, got {got}")
    parts = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise RowProblem("wrong_type", f"'{what}' message {i} must be an object, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in _MARKERS:
            raise RowProblem(
                "wrong_type", f"'{what}' message {i} has role {role!r}; expected user, assistant or system"
            )
        parts.append(_MARKERS[role] + _text(msg.get("content"), f"'{what}' message {i} content").strip())
    return "".join(parts) + "\n\nAssistant:"


def hh_response(text: str) -> str:
    return text if text[:1].isspace() else " " + text


def goal_of(category_path: str, *, bon: bool = False) -> str:
    parts = category_path.replace("\\", "/").split("/")
    if parts and parts[0] == "BoN_set" and not bon:
        raise RowProblem("unknown_format", "a BoN_set row is not the pairwise layout; load it with layout rmb-bon")
    for goal in GOALS:
        if goal in parts:
            return goal
    raise RowProblem(
        "unknown_format", f"category_path {category_path!r:.80} names neither Harmlessness nor Helpfulness"
    )


def convert_rmb(row: Mapping[str, Any]) -> tuple[PreferenceExample, str, str | None]:
    """(pair, group, id): group is the category path without the leading 'Pairwise_set/'."""
    prompt = render_messages(_get(row, "conversation_input"))
    answers = []
    for side in ("chosen", "reject"):
        value = _get(row, side)
        if not isinstance(value, Mapping):
            raise RowProblem(
                "wrong_type", f"field '{side}' must be an object with an 'answer', got {type(value).__name__}"
            )
        if "answer" not in value or value["answer"] is None:
            raise RowProblem("missing_field", f"field '{side}' has no 'answer'")
        answers.append(hh_response(_text(value["answer"], f"'{side}.answer'")))
    path = _text(_get(row, "category_path"), "field 'category_path'")
    goal_of(path)
    if answers[0].strip() == answers[1].strip():
        raise RowProblem("identical", "chosen and reject answers are identical")
    group = path.split("/", 1)[1] if path.startswith("Pairwise_set/") else path
    uid = row.get("pair_uid")
    return PreferenceExample(prompt, answers[0], answers[1]), group, None if uid is None else str(uid)


def _answer(value: Any, what: str) -> str:
    if not isinstance(value, Mapping):
        raise RowProblem("wrong_type", f"{what} must be an object with an 'answer', got {type(value).__name__}")
    if value.get("answer") is None:
        raise RowProblem("missing_field", f"{what} has no 'answer'")
    return hh_response(_text(value["answer"], f"{what}.answer"))


def convert_rmb_bon(row: Mapping[str, Any]) -> tuple[Candidates, str, str | None]:
    """(candidates: best first, then the losers; group: path without 'BoN_set/'; id)."""
    prompt = render_messages(_get(row, "conversation_input"))
    best = _answer(_get(row, "bon_best"), "'bon_best'")
    losers = _get(row, "loser_list")
    if not isinstance(losers, list) or not losers:
        raise RowProblem("wrong_type", "'loser_list' must be a non-empty list of answers")
    answers = [best] + [_answer(x, f"'loser_list' item {i}") for i, x in enumerate(losers)]
    path = _text(_get(row, "category_path"), "field 'category_path'")
    goal_of(path, bon=True)
    if not path.startswith("BoN_set/"):
        raise RowProblem("unknown_format", f"category_path {path!r:.80} is not under BoN_set/ (a pairwise row?)")
    uid = row.get("bon_uid")
    return Candidates(prompt, tuple(answers), 1), path.split("/", 1)[1], None if uid is None else str(uid)
