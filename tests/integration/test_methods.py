"""Every method of the comparison (METHOD.md §10) through `idrm-ray compare`'s code on the
bundled data: bt, am, lf, warm, inform, id, id+am, id+lf, id+warm, one seed, two-member
ensembles, 640 pairs (80 steps), the tiny NLI teacher fine-tuned first (in this process, ~5 s;
no dependence on conftest's `shared_run`, so `pytest -n 2` can run this module beside it).

One compare run serves every test: its 11 training runs are runs of the worker loop without
Ray Train (`run.local=true`, issue 15 §5: what is checked here is the methods, not Ray Train, whose
start-up was most of a tiny run; test_zero_under_ray.py checks that the loop gives the same numbers
under Ray Train), two at a time as Ray tasks (`method.ensemble.concurrency=2`, compare's own way
of running several; 66 s instead of 77 s one after another in this process), and so is their
scoring; WARM's averaging task runs on Ray too. Each trained run must
show learning (training loss fell, eval accuracy above chance); the procedures must have done
what they claim (LF flipped pairs, AM used the ratings, WARM is the parameter average of its
members, InfoRM's head folded into an ordinary reward-model checkpoint); the table has one row
per method with its seed count.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from idrm_ray.compare import DEFAULT_METHODS, parse_variants, run_compare
from idrm_ray.compare.job import EMBEDDED_DEFAULTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the runs train in this process

PAIRS = 640
COMPARE_TIMEOUT_S = 1200


@pytest.fixture(scope="module")
def compared(ray_session, guard, make_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    cfg = make_config(root, "compare", *EMBEDDED_DEFAULTS, f"data.max_pairs={PAIRS}",
                      "method.ensemble.members=2", "method.ensemble.concurrency=2", "run.log_every=10",
                      "run.local=true")
    report = guard(lambda: run_compare(cfg, parse_variants("all"), [0], out_dir=root / "cmp"),
                   timeout_s=COMPARE_TIMEOUT_S, what="compare: 9 methods x 1 seed")
    return {"report": report, "dir": Path(report["compare_dir"]), "runs": report["runs"]}


def _final(compared, method: str) -> dict:
    return compared["runs"][f"{method}/seed0"]


@pytest.mark.parametrize("method", [m for m in DEFAULT_METHODS if not m.endswith("warm")])
def test_every_trained_method_learns(compared, method):
    run = _final(compared, method)
    assert run["final_loss"] < run["first_loss"], run
    assert run["eval_accuracy"] > 0.5, run
    assert run["steps"] == PAIRS // 8


@pytest.mark.parametrize("method", ["warm", "id+warm"])
def test_warm_is_the_average_of_its_members_and_beats_chance(compared, method):
    from idrm_ray.core.reward_model import load_reward_model

    run = _final(compared, method)
    assert run["averaged_models"] == 2 and run["eval_accuracy"] > 0.5, run
    members = [load_reward_model(c, dtype=torch.float32).state_dict() for c in run["member_checkpoints"]]
    averaged = load_reward_model(run["checkpoint"], dtype=torch.float32).state_dict()
    for key in ("score.weight", "model.layers.0.self_attn.q_proj.weight"):
        assert not torch.equal(members[0][key], members[1][key])  # diverse members
        torch.testing.assert_close(averaged[key], (members[0][key] + members[1][key]) / 2)
    assert compared["runs"][f"{'id' if method == 'id+warm' else 'bt'}-member0/seed0"]["method"] == (
        "id" if method == "id+warm" else "bt")


def test_lf_flipped_the_pairs_the_ensemble_disagrees_with(compared):
    for method in ("lf", "id+lf"):
        run = _final(compared, method)
        assert 0 < run["flipped_pairs"] < PAIRS / 2, run
        rows = [json.loads(line) for line in (compared["dir"] / "seed0" / method / "strength.jsonl").open()]
        assert len(rows) == PAIRS
        assert sum(r["flipped"] for r in rows) == run["flipped_pairs"]
        assert all(r["flipped"] == (r["mu"] < 0) for r in rows)


def test_am_used_the_rating_margins(compared):
    for method in ("am", "id+am"):
        run = _final(compared, method)
        assert run["margin_source"] == "rating" and run["margin_mean"] > 1.0, run


def test_inform_checkpoint_is_an_ordinary_reward_model(compared):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    ckpt = Path(_final(compared, "inform")["checkpoint"])
    keys = load_file(str(ckpt / "model.safetensors")).keys()
    assert "score.weight" in keys and not any("encoder" in k or "decoder" in k for k in keys)
    assert "inform_folded_bias" in json.loads((ckpt / "idrm_meta.json").read_text())
    assert AutoModelForSequenceClassification.from_pretrained(ckpt).config.num_labels == 1


def test_table_has_one_row_per_method_with_seed_count(compared):
    d = compared["dir"]
    with open(d / "table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == list(DEFAULT_METHODS)
    assert all(r["seeds"] == "1" for r in rows)
    text = (d / "table.md").read_text()
    assert "| Method | seeds |" in text and "Δ vs BT" in text
    assert all(f"| {m} | 1 |" in text for m in DEFAULT_METHODS)
    assert (d / "accuracy.png").stat().st_size > 1000
    assert set(compared["report"]["columns"]) == {"style", "what", "who", "yesno"}  # the bundled eval kinds
