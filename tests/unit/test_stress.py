"""The attention-hacking stress sets (idrm_ray.data.stress) and the shortcut baselines
(idrm_ray.data.shortcuts): deterministic, no leak through length or the last token, the
planted cue at 1 in distribution and 0 out of it."""
import json

import pytest

from idrm_ray.data import stress
from idrm_ray.data.shortcuts import chance_band, shortcut_baselines

SMALL = {"pref_train": 400, "per_eval_kind": 60, "nli_train": 90, "nli_eval": 30, "nli_bind_train": 90,
         "nli_bind_eval": 30}


@pytest.fixture(scope="module")
def rows():
    return stress.generate_rows(seed=3, sizes=SMALL)


def test_same_seed_same_bytes_and_committed_copy_up_to_date(tmp_path):
    a = stress.rendered(seed=3, sizes=SMALL)
    assert a == stress.rendered(seed=3, sizes=SMALL) != stress.rendered(seed=4, sizes=SMALL)
    assert stress.main(["--out", str(stress.STRESS_DIR), "--check"]) == 0


def test_splits_kinds_and_no_eval_prompt_in_training(rows):
    train, evals = rows["pref_train"], rows["pref_eval"]
    assert len(train) == 400 and {r["kind"] for r in train} == {"early/id", "copy/id"}
    assert sorted({r["kind"] for r in evals}) == list(stress.EVAL_KINDS)
    assert all(sum(r["kind"] == k for r in evals) == 60 for k in stress.EVAL_KINDS)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evals}
    assert all(r["chosen"] != r["rejected"] for r in train + evals)
    assert sorted({r["label"] for r in rows["nli_train"]}) == [0, 1, 2]


def test_copy_pairs_differ_only_in_order_where_the_kind_says(rows):
    for r in rows["pref_eval"]:
        if r["kind"].startswith("copy"):
            good, bad = r["chosen"].lower().split(", "), r["rejected"].lower().split(", ")
            assert len(r["chosen"]) == len(r["rejected"])
            diff = [i for i, (g, b) in enumerate(zip(good, bad)) if g != b]
            assert len(diff) == 2 and (diff[0] == 0) == (r["kind"] == "copy/ood")


def test_baselines_near_chance_and_cue_planted(rows):
    table = stress.baselines(rows)
    for name, r in table.items():
        band = chance_band(r["pairs"])  # |acc - 0.5| beyond this: p < 1e-3 under "no signal"
        assert abs(r["length"] - 0.5) < band, (name, r)
        assert abs(r["last_token"] - 0.5) < band, (name, r)
    assert table["early/id"]["spurious"] == 1.0 and table["early/ood"]["spurious"] == 0.0
    assert table["copy/id"]["spurious"] == table["copy/ood"]["spurious"] == 0.5


def test_shortcut_rules_find_a_real_leak():
    """The baselines can fail: a set where the chosen is always longer and ends in '!'."""
    train = [{"chosen": f"ok {i} yes!", "rejected": f"{i} no."} for i in range(40)]
    evals = [{"chosen": f"fine {i} sure!", "rejected": f"{i} nah."} for i in range(20)]
    res = shortcut_baselines(train, {"train": train, "eval": evals}, cue="!")
    assert res["eval"] == {"pairs": 20, "length": 1.0, "last_token": 0.5, "spurious": 1.0}
    assert res["train"]["length"] == res["train"]["last_token"] == 1.0  # two-fold on train itself
    assert chance_band(100) == pytest.approx(0.1645)


def _subject_fact(premise: str, subject: str) -> str | None:
    """The object the premise's first turn gives `subject` (None: no fact about it)."""
    facts = premise.split("\n\nHuman: ")[1].split("\n\n")[0].split(": ", 1)[1].rstrip(".").split(". ")
    hits = [f for f in facts if f.lower().startswith(subject)]
    return hits[0].split(" ", 2 + subject.count(" "))[-1].lower() if hits else None


def test_bind_nli_needs_the_subject_bound_to_its_fact(rows):
    """Entailment names the asked subject's object, contradiction another fact's object, neutral
    asks about a subject the premise has no fact about; the named object is always one of the
    premise's, so only the binding decides; labels balanced, no train/eval overlap."""
    train, evals = rows["nli_bind_train"], rows["nli_bind_eval"]
    assert [sum(r["label"] == k for r in train) for k in range(3)] == [30, 30, 30]
    assert not {(r["premise"], r["hypothesis"]) for r in train} & {(r["premise"], r["hypothesis"]) for r in evals}
    for r in train + evals:
        subject = r["premise"].rsplit("What does ", 1)[1].rsplit(" ", 1)[0].lower()
        objects = [o for o in stress.OBJECTS if o in r["premise"].split("\n\n")[1].lower()]
        hypothesis = r["hypothesis"].lower().removeprefix("the answer is ")  # a template, not the object
        named = [o for o in objects if o in hypothesis]
        assert len(named) == 1 and 3 <= len(objects) <= 4, r
        fact = _subject_fact(r["premise"], subject)
        expected = 1 if fact is None else 0 if fact == named[0] else 2
        assert r["label"] == expected, r


def test_committed_baselines_file_matches(rows):
    committed = json.loads((stress.STRESS_DIR / "baselines.json").read_text())
    assert set(committed) == {"train", *stress.EVAL_KINDS}
    assert committed["early/ood"]["spurious"] == 0.0
