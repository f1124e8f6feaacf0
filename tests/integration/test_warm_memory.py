"""WARM averaging at scale (issue 13 §5, DESIGN.md decision 10): measured, not guessed.

- The streamed average (`methods.write_average`) adds a small fraction of one member's
  weights to the resident set of a fresh process; the old in-process average (kept in
  `bench.warm_memory.old_average`) adds several members' worth, so the bound can fail.
- Its output is an ordinary reward-model checkpoint whose weights are the members' mean.
- `methods.average_checkpoints` runs it as a Ray task (here a plain task on the local Ray).
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from idrm_ray.bench.warm_memory import make_members, measure, warm_members, weight_bytes
from idrm_ray.core import tiny
from idrm_ray.core.reward_model import META_FILE, load_reward_model, read_metadata

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_is_the_mean(out, sources) -> None:
    averaged = load_reward_model(out, dtype=torch.float32).state_dict()
    members = [load_reward_model(s, dtype=torch.float32).state_dict() for s in sources]
    assert set(averaged) == set(members[0])
    for key, value in averaged.items():
        want = sum(m[key].double() for m in members) / len(members)
        torch.testing.assert_close(value, want.float(), rtol=0, atol=1e-6, msg=key)


def test_streamed_average_peak_is_a_fraction_of_one_member(student_tokenizer, tmp_path):
    # 32 blocks of width 256: ~76 MB of fp32 weights per member, no tensor above 0.5 MB.
    model = tiny.build_tiny_student(student_tokenizer, num_layers=32, hidden_size=256)
    sources = make_members(model, student_tokenizer, tmp_path, 3)
    size = weight_bytes(sources[0])
    assert size > 60 * 2**20
    warm = warm_members(student_tokenizer, tmp_path / "warm-up")
    # Each method in a fresh process of its own, both at once (a process's peak is its own; the
    # two mostly import and wait on disk, so one after the other left a core idle).
    with ThreadPoolExecutor(2) as pool:
        new, old = pool.map(lambda method: measure(method, tmp_path / method, sources, warm), ("new", "old"))
    # Old: every member as a model, an fp64 sum, member 0 and the output model (~5-6x measured).
    assert old["peak_growth"] > 2 * size, (old, size)
    # New: one 16 MiB fp64 chunk at most (the tensors here are smaller) plus fixed overhead
    # (about 3.5 MB after the warm-up, measured at 5 and 72 MB per member; 10-23 MB without one).
    assert new["peak_growth"] < 0.3 * size, (new, size)
    _assert_is_the_mean(str(tmp_path / "new"), sources)
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert (config["value_head_prefix"], config["mean"], config["std"]) == ("score", 0.0, 1.0)
    assert (tmp_path / "new" / "tokenizer.json").exists() and (tmp_path / "new" / META_FILE).exists()


def test_average_checkpoints_runs_as_a_ray_task(ray_session, make_config, student_tokenizer, tmp_path):
    from idrm_ray.multirun.tools import average_checkpoints

    model = tiny.build_tiny_student(student_tokenizer, num_layers=2)
    render = {"chat_template": True, "template": ["", "", ""], "max_len": 64}  # as the worker records it
    sources = make_members(model, student_tokenizer, tmp_path / "members", 2, noise=0.1, metadata={"render": render})
    cfg = make_config(tmp_path, "warm")
    out = average_checkpoints(cfg, sources, tmp_path / "avg", metadata={"method": "warm", "variant": "members"})
    _assert_is_the_mean(str(out), sources)
    meta = read_metadata(out)
    assert meta["method"] == "warm" and meta["averaged"] == sources
    assert meta["render"] == render  # what every member was trained on (DESIGN.md decision 9)
    assert "member" not in meta  # a number that differs per member is not the average's
