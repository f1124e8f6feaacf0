"""Method families (issue 15 §1): one module per family under idrm_ray/methods/, one
registry; their worker asks and their procedures, run here against fake driver tools (no
Ray, no training): what each procedure trains, with which pairs, and what it returns."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from idrm_ray.config import derive
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core.method_kind import BASES, METHODS
from idrm_ray.core.objective import BTSettings, IDSettings
from idrm_ray.core.types import PreferenceExample
from idrm_ray.methods.base import MethodRun
from idrm_ray.methods.registry import FAMILIES, family, worker_asks

CFG = derive(TrainJobConfig(), {"method.lf.smoothing": 0.2, "method.inform.beta": 0.5, "method.inform.latent_dim": 8,
                                "method.inform.kl_form": "per_dim", "method.am.scale": 2.0,
                                "method.ensemble.members": 2})
PLAN = SimpleNamespace(total_steps=10, warmup_steps=1)
# per member, the gap r(chosen) - r(rejected) of each of 4 pairs: μ̂ = [1, -1, 0.5, -0.2]
GAPS = [np.array([1.5, -0.5, 0.5, 0.0]), np.array([0.5, -1.5, 0.5, -0.4])]


def test_registry_holds_every_base_and_composes_id():
    assert set(FAMILIES) == set(BASES)
    assert family("id") is FAMILIES["bt"] and family("id+lf") is FAMILIES["lf"]


@pytest.mark.parametrize("method", METHODS)
def test_worker_asks_are_the_methods_settings(method):
    """The values worker_spec used to decode from the name, now asked by the families."""
    m, base = CFG.method, method.removeprefix("id+") if method != "id" else "bt"
    asks = worker_asks(m, method)
    assert asks["bt_settings"] == BTSettings(label_smoothing=0.2 if base == "lf" else 0.0,
                                             ib_beta=0.5 if base == "inform" else 0.0, kl_form="per_dim")
    assert asks["use_margin"] == (base == "am")
    assert asks["ib_latent_dim"] == (8 if base == "inform" else 0)
    assert (asks["id_settings"] is not None) == method.startswith("id")
    if asks["id_settings"] is not None:
        assert isinstance(asks["id_settings"], IDSettings) and asks["id_settings"].lam == m.id.lam


class FakeTools:
    """The driver's tools, recorded: train_one returns a row naming its checkpoint."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def train_one(self, cfg, plan, **kw):
        self.calls.append(("train_one", kw))
        row = {"method": kw["method"], "checkpoint": f"ckpt/{kw['out_name']}", "eval_accuracy": 0.5, "steps": 3}
        return {**row, "checkpoints": ["a", "b"]} if kw.get("keep_checkpoints") else row

    def train_members(self, cfg, plan, *, kind, folder, train, diverse_lr=True, **common):
        self.calls.append(("train_members", {"kind": kind, "folder": folder, "diverse_lr": diverse_lr}))
        return [{"checkpoint": f"{folder}/member{i}", "eval_accuracy": 0.6} for i in range(2)]

    def score_gaps(self, cfg, checkpoints, examples):
        assert len(checkpoints) == 2 and len(examples) == 4
        return GAPS

    def average_checkpoints(self, cfg, sources, out, *, metadata):
        self.calls.append(("average", {"sources": list(sources), "metadata": metadata}))

    def evaluate_checkpoint(self, cfg, checkpoint, examples):
        return {"eval_accuracy": 0.75, "eval_loss": 0.5, "eval_pairs": len(examples)}


def _run(tmp_path, method, *, cfg=CFG, margins=(None,) * 4, members=None):
    train = [PreferenceExample(f"p{i}", f"c{i}", f"r{i}", margin=m) for i, m in enumerate(margins)]
    tools = FakeTools()
    r = MethodRun(cfg=cfg, plan=PLAN, method=method, name=method, train=train, evals=train[:2], student_dir="s",
                  teacher_dir="t", run_dir=tmp_path, tools=tools, members=members or {})
    return family(method).run(r), tools, train


def test_single_run_families_train_once_under_their_name(tmp_path):
    for method in ("bt", "id", "inform"):
        rows, tools, _ = _run(tmp_path, method)
        assert [c for c, _ in tools.calls] == ["train_one"]
        assert tools.calls[0][1]["method"] == method and rows == [{**rows[0], "method": method}]


def test_am_margins_from_ratings_or_from_the_ensemble(tmp_path):
    rows, tools, _ = _run(tmp_path, "id+am", margins=(1.0, 0.0, 2.0, 0.5))
    (kind, kw), = tools.calls
    assert kw["method"] == "id+am" and [e.margin for e in kw["train"]] == [2.0, 0.0, 4.0, 1.0]  # scale 2
    assert rows[0]["margin_source"] == "rating"
    rows, tools, _ = _run(tmp_path, "am")  # no ratings: the bt ensemble's max(μ̂, 0) x scale
    assert [c for c, _ in tools.calls] == ["train_members", "train_one"]
    assert tools.calls[0][1] == {"kind": "bt", "folder": "am/members", "diverse_lr": False}
    assert [e.margin for e in tools.calls[1][1]["train"]] == pytest.approx([2.0, 0.0, 1.0, 0.0])
    assert rows[0]["margin_source"] == "ensemble" and rows[0]["members"] == 2
    assert len((tmp_path / "am" / "strength.jsonl").read_text().splitlines()) == 4


def test_lf_flips_the_pairs_the_ensemble_disputes(tmp_path):
    members = {"bt": [{"checkpoint": "x", "eval_accuracy": 0.5}, {"checkpoint": "y", "eval_accuracy": 0.7}]}
    rows, tools, train = _run(tmp_path, "id+lf", members=members)
    (kind, kw), = tools.calls  # the caller's members are reused: no ensemble trained here
    assert kw["method"] == "id+lf"
    assert [e.chosen for e in kw["train"]] == ["c0", "r1", "c2", "r3"]  # μ̂ < 0 on pairs 1 and 3
    assert rows[0]["flipped_pairs"] == 2 and rows[0]["member_eval_accuracy"] == pytest.approx(0.6)
    lines = [json.loads(x) for x in (tmp_path / "id+lf" / "strength.jsonl").read_text().splitlines()]
    assert [x["flipped"] for x in lines] == [False, True, False, True]


@pytest.mark.parametrize("method,member", [("warm", "bt"), ("id+warm", "id")])
def test_warm_averages_its_members(tmp_path, method, member):
    rows, tools, _ = _run(tmp_path, method)
    assert tools.calls[0] == ("train_members", {"kind": member, "folder": f"{method}/members", "diverse_lr": True})
    assert tools.calls[1] == ("average", {"sources": [f"{method}/members/member0", f"{method}/members/member1"],
                                          "metadata": {"method": method, "variant": "members"}})
    assert rows[0]["checkpoint"] == str(tmp_path / method / "checkpoint") and rows[0]["averaged_models"] == 2
    assert rows[0]["eval_accuracy"] == 0.75


def test_warm_checkpoints_variant_averages_one_runs_checkpoints(tmp_path):
    cfg = derive(CFG, {"method.warm.variant": "checkpoints", "method.warm.checkpoints": 2})
    rows, tools, _ = _run(tmp_path, "warm", cfg=cfg)
    (_, kw), (_, avg) = tools.calls
    assert kw["method"] == "bt" and kw["out_name"] == "warm/run" and kw["spec_overrides"] == {"checkpoint_every": 5}
    assert avg["sources"] == ["a", "b"] and rows[0]["averaged_models"] == 2
