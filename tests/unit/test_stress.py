"""The attention-hacking stress sets (idrm_ray.data.stress) and the shortcut baselines
(idrm_ray.data.shortcuts): deterministic, no leak through length or the last token, the
planted cue at 1 in distribution and 0 out of it."""
import json

import pytest

from idrm_ray.data import stress
from idrm_ray.data.shortcuts import chance_band, shortcut_baselines

SMALL = {"pref_train": 400, "per_eval_kind": 60, "nli_train": 90, "nli_eval": 30}


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


def test_committed_baselines_file_matches(rows):
    committed = json.loads((stress.STRESS_DIR / "baselines.json").read_text())
    assert set(committed) == {"train", *stress.EVAL_KINDS}
    assert committed["early/ood"]["spurious"] == 0.0
