"""Eval layouts (RewardBench, RMB, HH, generic) on hand-built files, the RewardBench section
table, and one-line errors for malformed eval files."""

from __future__ import annotations

import json

import pytest

from idrm_ray.data import DataError
from idrm_ray.eval import rewardbench
from idrm_ray.eval.layouts import load_eval_set
from idrm_ray.eval.rmb import render_messages


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def rb_row(i, subset="alpacaeval-easy", **extra):
    return {
        "prompt": f"Question {i}?",
        "chosen": f"Good answer {i}.",
        "rejected": f"Bad answer {i}.",
        "subset": subset,
        "id": i,
        **extra,
    }


def rmb_row(i, path="Pairwise_set/Harmlessness/S1", **extra):
    return {
        "pair_uid": str(100 + i),
        "conversation_input": [{"role": "user", "content": f"Help me {i}", "language": "English"}],
        "chosen": {"llm_name": "a", "answer": "Sure, safely.", "score": 5.0},
        "reject": {"llm_name": "b", "answer": "No way.", "score": 1.0},
        "category_path": path,
        **extra,
    }


# -- RewardBench -------------------------------------------------------------------------------


def test_rewardbench_table_is_rewardbenchs():
    # rewardbench/constants.py: math-prm counts as 984 = 6 x 164, equal to the six code subsets.
    hep = [n for s, (sec, n) in rewardbench.SUBSETS.items() if s.startswith("hep-")]
    assert len(hep) == 6 and rewardbench.SUBSETS["math-prm"] == ("Reasoning", sum(hep))
    sizes = {sec: sum(1 for s in rewardbench.SUBSETS.values() if s[0] == sec) for sec in rewardbench.SECTIONS}
    assert sizes == {"Chat": 5, "Chat Hard": 6, "Safety": 5, "Reasoning": 7}


def test_section_scores_by_hand():
    acc = {
        "alpacaeval-easy": 1.0,
        "mt-bench-easy": 0.5,
        "math-prm": 1.0,
        "hep-python": 0.0,
        "hep-go": 0.5,
        "unknown": 0.0,
    }
    got = rewardbench.section_scores(acc)
    # Chat: (100*1 + 28*0.5) / (100 + 28) = 114/128; Reasoning: (984*1 + 164*0 + 164*0.5) / 1312 = 1066/1312
    assert got == pytest.approx({"Chat": 114 / 128, "Reasoning": 1066 / 1312})
    assert rewardbench.overall_score(got) == pytest.approx((114 / 128 + 1066 / 1312) / 2)
    assert rewardbench.unknown_subsets(acc) == ["unknown"]


def test_rewardbench_layout_detected_and_rendered(tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", [rb_row(0), rb_row(1, "hep-go", chosen_model="m")])
    evals = load_eval_set(path)
    assert (evals.layout, evals.name, len(evals)) == ("rewardbench", "rb", 2)
    assert evals.groups == ["alpacaeval-easy", "hep-go"] and evals.ids == ["0", "1"]
    ex = evals.examples[0]
    assert ex.prompt == "\n\nHuman: Question 0?\n\nAssistant:" and ex.chosen == " Good answer 0."
    raw = load_eval_set(path, render="raw").examples[0]
    assert (raw.prompt, raw.chosen) == ("Question 0?", "Good answer 0.")


# -- RMB -----------------------------------------------------------------------------------------


def test_rmb_json_arrays_in_a_folder(tmp_path):
    harm = tmp_path / "Pairwise_set" / "Harmlessness"
    help_ = tmp_path / "Pairwise_set" / "Helpfulness" / "Chat"
    harm.mkdir(parents=True)
    help_.mkdir(parents=True)
    (harm / "S1.json").write_text(json.dumps([rmb_row(0), rmb_row(1)]))
    (help_ / "Discussion.json").write_text(json.dumps([rmb_row(2, "Pairwise_set/Helpfulness/Chat/Discussion")]))
    evals = load_eval_set(tmp_path / "Pairwise_set")
    assert evals.layout == "rmb" and len(evals) == 3
    assert sorted(set(evals.groups)) == ["Harmlessness/S1", "Helpfulness/Chat/Discussion"]
    assert evals.ids == ["100", "101", "102"]  # files sorted by path, rows in file order
    ex = evals.examples[0]
    assert (
        ex.prompt.startswith("\n\nHuman: Help me")
        and ex.prompt.endswith("\n\nAssistant:")
        and ex.chosen == " Sure, safely."
    )


def test_rmb_multi_turn_rendering():
    msgs = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_messages(msgs) == "Be nice.\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Bye\n\nAssistant:"


# -- generic / HH ------------------------------------------------------------------------------


def test_generic_and_hh(tmp_path):
    g = load_eval_set(write_jsonl(tmp_path / "g.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert (g.layout, g.groups, g.examples[0].prompt) == ("generic", [None], "p")
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    h = load_eval_set(write_jsonl(tmp_path / "hh.jsonl", [hh]), layout="hh")
    assert h.layout == "hh" and h.examples[0].rejected == " go away"


# -- malformed files: one line naming file, row and problem -----------------------------------


def _one_line_error(fn, *parts):
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg
    return info.value


@pytest.mark.parametrize(
    "row, parts",
    [
        (rb_row(0, subset=""), ["line 2", "'subset'"]),
        ({k: v for k, v in rb_row(0).items() if k != "chosen"} | {"subset": "x"}, ["line 2", "missing field 'chosen'"]),
        (rb_row(0) | {"rejected": "Good answer 0."}, ["line 2", "identical"]),
        ('{"prompt": "x", "subset": ', ["line 2", "invalid JSON"]),
    ],
)
def test_rewardbench_bad_rows(tmp_path, row, parts):
    path = write_jsonl(tmp_path / "rb.jsonl", [rb_row(9), row])
    err = _one_line_error(lambda: load_eval_set(path, layout="rewardbench"), str(path), *parts)
    assert err.row == 2


@pytest.mark.parametrize(
    "change, parts",
    [
        ({"reject": {"llm_name": "b"}}, ["item 1", "'reject' has no 'answer'"]),
        ({"chosen": "text"}, ["item 1", "'chosen' must be an object"]),
        ({"conversation_input": []}, ["item 1", "non-empty list"]),
        ({"conversation_input": [{"role": "robot", "content": "x"}]}, ["item 1", "role 'robot'"]),
        ({"category_path": "Pairwise_set/Other/S1"}, ["item 1", "neither Harmlessness nor Helpfulness"]),
        ({"category_path": "BoN_set/Harmlessness/S1"}, ["item 1", "BoN_set"]),
    ],
)
def test_rmb_bad_rows(tmp_path, change, parts):
    path = tmp_path / "S1.json"
    path.write_text(json.dumps([rmb_row(0), rmb_row(1, **change)]))
    _one_line_error(lambda: load_eval_set(path), str(path), *parts)


def test_bad_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"pair_uid": 1,')
    _one_line_error(lambda: load_eval_set(broken), "broken.json", "invalid JSON")
    obj = tmp_path / "obj.json"
    obj.write_text('{"rows": []}')
    _one_line_error(lambda: load_eval_set(obj), "obj.json", "expected a JSON array")
    _one_line_error(lambda: load_eval_set(tmp_path / "missing.jsonl"), "missing.jsonl", "no such file")
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    _one_line_error(lambda: load_eval_set(empty), "empty.jsonl", "no rows")


def test_skip_bad_rows_counts(tmp_path):
    path = write_jsonl(tmp_path / "rb.jsonl", [rb_row(0), rb_row(1, subset=""), rb_row(2)])
    evals = load_eval_set(path, skip_bad_rows=True)
    assert len(evals) == 2 and evals.report.rows_skipped == 1 and evals.report.metrics()["data/rows_skipped"] == 1


class _FakeSplit(list):
    @property
    def column_names(self):
        return list(self[0])


def test_hub_ids_pick_layout_and_split(monkeypatch):
    # Nothing is downloaded: the hub reader's dataset is replaced, and we check what was asked for.
    from idrm_ray.data.readers import HubData

    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: no"}
    rows = {"allenai/reward-bench": _FakeSplit([rb_row(0, "donotanswer")]), "Anthropic/hh-rlhf": _FakeSplit([hh])}
    asked = []

    def fake_dataset(self):
        asked.append((self.repo_id, self.split))
        return rows[self.repo_id]

    monkeypatch.setattr(HubData, "_dataset", fake_dataset)
    rb = load_eval_set("allenai/reward-bench")
    assert (rb.layout, rb.name, rb.groups) == ("rewardbench", "reward-bench", ["donotanswer"])
    assert load_eval_set("Anthropic/hh-rlhf").layout == "hh"
    assert set(asked) == {("allenai/reward-bench", "filtered"), ("Anthropic/hh-rlhf", "test")}
