"""Batched scoring and accuracy on hand-built layouts, with reward models whose preference is
known by construction (`idrm_ray.eval.fixtures.marker_reward_model`: a real tiny Llama RM whose
weights make the reward count " robot" tokens minus " doctor" tokens among the visible ones;
nothing is monkeypatched, the whole tokenize -> forward -> last-token reward path runs)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idrm_ray.core.types import PreferenceExample
from idrm_ray.eval.fixtures import marker_reward_model
from idrm_ray.eval.layouts import load_eval_set
from idrm_ray.eval.results import accuracy_metrics, headline
from idrm_ray.core.scoring import (
    RewardScorer,
    encode_sequences,
    encode_with_stats,
    group_accuracy,
    pair_outcomes,
    split_pairs,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def rb_row(i, subset):
    return {"prompt": f"Question {i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}.", "subset": subset, "id": i}


@pytest.fixture(scope="module")
def scorers(student_tokenizer):
    make = lambda sign: RewardScorer(  # noqa: E731
        model=marker_reward_model(student_tokenizer, plus=[" robot"], minus=[" doctor"], sign=sign),
        device="cpu",
        batch_size=4,
    )
    return {"chosen": make(1.0), "rejected": make(-1.0)}


def marked(i, subset, *, right=True):
    good, bad = ("The robot helps.", "The doctor helps.") if right else ("The doctor helps.", "The robot helps.")
    return rb_row(i, subset) | {"chosen": f"{good} ({i})", "rejected": f"{bad} ({i})"}


def score(evals, scorer, tokenizer):
    r_w, r_l = split_pairs(scorer.score(encode_sequences(evals.examples, tokenizer, max_len=128)))
    return r_w, r_l, accuracy_metrics(evals, r_w, r_l, n_boot=200, seed=0)


def test_prefers_chosen_100_prefers_rejected_0(tmp_path, scorers, student_tokenizer):
    subsets = ["alpacaeval-easy", "llmbar-natural", "donotanswer", "math-prm", "hep-rust"]
    evals = load_eval_set(write_jsonl(tmp_path / "rb.jsonl", [marked(i, subsets[i % 5]) for i in range(10)]))
    _, _, good = score(evals, scorers["chosen"], student_tokenizer)
    _, _, bad = score(evals, scorers["rejected"], student_tokenizer)
    assert good["accuracy"] == 1.0 and bad["accuracy"] == 0.0 and good["ties"] == 0
    assert good["sections"] == {s: 1.0 for s in ("Chat", "Chat Hard", "Safety", "Reasoning")}
    assert set(bad["sections"].values()) == {0.0} and good["rewardbench_score"] == 1.0


def test_section_weighting_through_the_pipeline(tmp_path, scorers, student_tokenizer):
    rows = [
        marked(0, "alpacaeval-easy"),
        marked(1, "alpacaeval-easy"),  # 1.0
        marked(2, "mt-bench-easy"),
        marked(3, "mt-bench-easy", right=False),  # 0.5
        marked(4, "math-prm"),  # 1.0
        marked(5, "hep-python", right=False),  # 0.0
        marked(6, "hep-go"),
        marked(7, "hep-go", right=False),  # 0.5
    ]
    _, _, m = score(load_eval_set(write_jsonl(tmp_path / "rb.jsonl", rows)), scorers["chosen"], student_tokenizer)
    # Weights are RewardBench's fixed counts, not the 1-2 rows per subset here:
    # Chat = (100*1 + 28*0.5) / 128; Reasoning = (984*1 + 164*0 + 164*0.5) / (984 + 2*164)
    assert m["sections"] == pytest.approx({"Chat": 114 / 128, "Reasoning": 1066 / 1312})
    assert m["accuracy"] == pytest.approx(5 / 8)  # plain pair accuracy is unweighted
    assert headline(m)["RewardBench score"] == pytest.approx((114 / 128 + 1066 / 1312) / 2)


def test_ties_count_half(scorers, student_tokenizer):
    plain = [PreferenceExample("\n\nHuman: Who?\n\nAssistant:", " A cat.", " A dog.")]  # no marker: both rewards 0
    r = scorers["chosen"].score(encode_sequences(plain, student_tokenizer, max_len=64))
    assert r[0] == r[1] == 0.0
    assert pair_outcomes(np.array([1.0, 0.0, 2.0]), np.array([0.0, 0.0, 3.0])).tolist() == [1.0, 0.5, 0.0]
    assert group_accuracy(np.array([1.0, 0.5, 0.0]), ["a", "a", None]) == {"a": {"n": 2, "accuracy": 0.75}}


def test_batching_keeps_order(scorers, student_tokenizer):
    examples = [
        PreferenceExample("\n\nHuman: " + "Who? " * (i + 1) + "\n\nAssistant:", " The robot." * (i % 3 + 1), " No.")
        for i in range(9)
    ]
    seqs = encode_sequences(examples, student_tokenizer, max_len=64)
    scorer = scorers["chosen"]
    one = RewardScorer(model=scorer.model, device="cpu", batch_size=1).score(seqs)
    many = RewardScorer(model=scorer.model, device="cpu", batch_size=7).score(seqs)
    assert np.allclose(one, many, atol=1e-5)
    assert np.all(one[0::2] > 0) and np.allclose(one[1::2], 0.0)


def test_sequences_as_training_builds_them(student_tokenizer):
    ex = PreferenceExample("\n\nHuman: " + "tell me a story " * 30 + "\n\nAssistant:", " Once upon a time.", " No.")
    seqs, cut = encode_with_stats([ex], student_tokenizer, max_len=32)
    assert cut["pairs_truncated"] == 1 and cut["tokens_truncated"] > 0
    assert len(seqs) == 2 and all(len(s) <= 32 for s in seqs)
    assert all(s[0] == student_tokenizer.bos_token_id and s[-1] == student_tokenizer.eos_token_id for s in seqs)
    # the prompt is cut from the left: the response survives whole
    assert student_tokenizer.decode(seqs[0][1:-1]).endswith("Assistant: Once upon a time.")


def test_encodings_are_remembered_per_tokenizer_content(tmp_path, student_tokenizer, teacher_tokenizer, monkeypatch):
    """The same pairs through copies of one tokenizer (two checkpoint folders) are encoded once;
    another max_len, another tokenizer or a token added later are encoded anew; every call gets
    arrays of its own, equal to a fresh encoding."""
    from transformers import AutoTokenizer

    from idrm_ray.core import scoring

    examples = [PreferenceExample(f"Question {i}?", f" Yes {i}.", f" No {i}.") for i in range(5)]
    fresh = scoring._encode_with_stats(examples, student_tokenizer, max_len=64, template=None)
    calls = []
    real = scoring._encode_with_stats
    monkeypatch.setattr(scoring, "_encode_with_stats", lambda *a, **k: calls.append(k["max_len"]) or real(*a, **k))
    monkeypatch.setattr(scoring, "_encoded", type(scoring._encoded)())
    copies = []
    for name in ("a", "b"):
        student_tokenizer.save_pretrained(tmp_path / name)
        copies.append(AutoTokenizer.from_pretrained(tmp_path / name))
    first, cut = encode_with_stats(examples, copies[0], max_len=64)
    first[0][0] = -7  # the caller's array, not the memo's
    second, _ = encode_with_stats(examples, copies[1], max_len=64)
    assert calls == [64] and cut == fresh[1]
    assert all(np.array_equal(a, b) for a, b in zip(second, fresh[0])) and len(second) == len(fresh[0]) == 10
    encode_with_stats(examples, copies[1], max_len=32)
    encode_with_stats(examples[:4], copies[1], max_len=64)
    assert calls == [64, 32, 64]
    copies[1].add_tokens(["zzqq"])
    encode_with_stats(examples, copies[1], max_len=64)
    assert calls == [64, 32, 64, 64]
    assert scoring._tokenizer_key(teacher_tokenizer) != scoring._tokenizer_key(copies[0])
    for n in range(scoring.ENCODE_MEMO + 3):  # bounded
        encode_with_stats(examples, copies[0], max_len=16 + n)
    assert len(scoring._encoded) == scoring.ENCODE_MEMO
