"""PAR reward shaping (METHOD.md §10): r_PAR = mean_k sigmoid(r - r_ref_k), numbers by hand,
bounds, 0.5 at the reference, and the OpenRLHF `reward_func` wrapper around a stand-in
server (the real server is exercised in tests/integration/test_serve_ray.py)."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from idrm_ray.serve.par import score_references
from idrm_ray.serve.par_reward import (
    ENV_MISSING,
    ENV_REFERENCES,
    ENV_TOKEN_FILE,
    ENV_URL,
    PARShaper,
    par_reward,
    read_references,
    shaper_from_env,
    sigmoid,
)


def test_hand_checked_numbers():
    assert sigmoid(math.log(3)) == pytest.approx(0.75)  # 1 / (1 + 1/3)
    assert par_reward(0.0, [math.log(3)]) == pytest.approx(0.25)  # sigmoid(-ln 3) = 1/4
    assert par_reward(2.0, [0.0]) == pytest.approx(1 / (1 + math.exp(-2)))  # 0.8807970779...
    assert par_reward(2.0, [0.0]) == pytest.approx(0.8807970779778823)
    # K = 2: sigmoid(1) + sigmoid(-1) = 1, so the mean is exactly 1/2.
    assert par_reward(1.0, [0.0, 2.0]) == pytest.approx(0.5)
    # K = 3 with ln-odds 0, ln 3, -ln 3: (1/2 + 1/4 + 3/4) / 3 = 1/2.
    assert par_reward(0.0, [0.0, math.log(3), -math.log(3)]) == pytest.approx(0.5)


def test_half_when_the_response_scores_like_the_reference():
    for r in (-7.25, 0.0, 0.3, 12.5):
        assert par_reward(r, [r]) == 0.5
        assert par_reward(r, [r, r, r]) == 0.5


def test_bounded_monotone_and_stable():
    rng = random.Random(0)
    for _ in range(200):
        refs = [rng.uniform(-10, 10) for _ in range(rng.randint(1, 5))]
        r = rng.uniform(-10, 10)
        v = par_reward(r, refs)
        assert 0.0 < v < 1.0
        assert par_reward(r + 0.5, refs) > v  # more reward, more PAR reward
    assert par_reward(1e6, [0.0]) == 1.0 and par_reward(-1e6, [0.0]) == 0.0  # no overflow at the extremes
    with pytest.raises(ValueError, match="at least one reference"):
        par_reward(0.0, [])


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row, piece", [
    ({"prompt": "", "references": ["a"]}, "`prompt` must be a non-empty string"),
    ({"prompt": "p", "references": []}, "`references` must be a non-empty list"),
    ({"prompt": "p", "references": ["a", 2]}, "`references` must be a non-empty list of strings"),
    ({"prompt": "p", "references": ["a"], "ref_rewards": [1.0, 2.0]}, "`ref_rewards` must be 1 finite numbers"),
])
def test_reference_file_errors_name_the_row(tmp_path, row, piece):
    path = _write(tmp_path / "refs.jsonl", [{"prompt": "ok", "references": ["r"]}, row])
    with pytest.raises(ValueError, match="row 2") as err:
        read_references(path)
    assert piece in str(err.value)


class FakeClient:
    """reward = len(query) / 10, recording every call."""

    def __init__(self):
        self.calls = []

    def rewards(self, queries, prompts=None):
        self.calls.append(list(queries))
        return {"rewards": [len(q) / 10 for q in queries]}


def test_shaper_returns_openrlhfs_dict_with_raw_reward_in_extra_logs():
    client = FakeClient()
    refs = {"P:": {"references": ["abc", "a"], "ref_rewards": None}, "Q:": {"references": ["x"], "ref_rewards": [0.0]}}
    shaper = PARShaper(client, refs, ref_suffix="!")
    out = shaper(["P:abc!", "Q:xyzw"], ["P:", "Q:"], [None, None])
    # P: r = 0.6; refs scored through the server as prompt + ref + suffix: "P:abc!" 0.6, "P:a!" 0.4.
    expected_p = (sigmoid(0.0) + sigmoid(0.2)) / 2
    # Q: r = 0.6, precomputed ref reward 0.0.
    assert out["rewards"].tolist() == pytest.approx([expected_p, sigmoid(0.6)])
    assert isinstance(out["rewards"], torch.Tensor) and torch.equal(out["scores"], out["rewards"])
    assert out["extra_logs"]["raw_reward"].tolist() == pytest.approx([0.6, 0.6])
    assert out["extra_logs"]["par_ref_reward"].tolist() == pytest.approx([0.5, 0.0])
    assert client.calls[1] == ["P:abc!", "P:a!"]
    shaper(["P:abc!"], ["P:"], [None])
    assert len(client.calls) == 3  # references scored once, then cached


def test_missing_references_fail_or_are_neutral():
    refs = {"P:": {"references": ["a"], "ref_rewards": [0.0]}}
    with pytest.raises(KeyError, match="no references for prompt 'other'"):
        PARShaper(FakeClient(), refs)(["otherxx"], ["other"], [None])
    out = PARShaper(FakeClient(), refs, missing="neutral")(["otherxx"], ["other"], [None])
    assert out["rewards"].tolist() == [0.5] and out["extra_logs"]["par_missing_ref"].tolist() == [1.0]


def test_passthrough_without_references():
    out = PARShaper(FakeClient(), None)(["abcd"], ["a"], [None])
    assert out["rewards"].tolist() == pytest.approx([0.4])
    assert out["extra_logs"]["raw_reward"].tolist() == pytest.approx([0.4])


def test_settings_from_environment(tmp_path):
    refs = _write(tmp_path / "refs.jsonl", [{"prompt": "P:", "references": ["a"], "ref_rewards": [1.5]}])
    (tmp_path / "token").write_text("tok-from-file\n")
    shaper = shaper_from_env({ENV_URL: "http://127.0.0.1:1/get_reward", ENV_REFERENCES: str(refs),
                              ENV_TOKEN_FILE: str(tmp_path / "token"), ENV_MISSING: "neutral"})
    assert shaper.client.token == "tok-from-file" and shaper.missing == "neutral"
    assert shaper.references["P:"]["ref_rewards"] == [1.5]
    with pytest.raises(RuntimeError, match=ENV_URL):
        shaper_from_env({})


def test_precompute_reference_rewards(tmp_path):
    src = _write(tmp_path / "refs.jsonl", [{"prompt": "P:", "references": ["ab", "abcd"]},
                                           {"prompt": "Q:", "references": ["x"]}])

    class Scored:
        def __init__(self, rewards):
            self.rewards = rewards

    seen = []

    def score(queries, prompts):
        seen.append((list(queries), list(prompts)))
        return Scored([float(len(q)) for q in queries])

    n = score_references(src, tmp_path / "out" / "scored.jsonl", score, prompts_per_call=1)
    assert n == 2 and seen[0] == (["P:ab", "P:abcd"], ["P:", "P:"])
    rows = read_references(tmp_path / "out" / "scored.jsonl")
    assert rows["P:"]["ref_rewards"] == [4.0, 6.0] and rows["Q:"]["ref_rewards"] == [3.0]
