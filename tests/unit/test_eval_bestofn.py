"""Best-of-N eval sets (RewardBench 2, RM-Bench, RMB BoN): official scores on hand-built score
vectors worked out in the comments, the same numbers through the loaders, the paired tests,
one-line errors for malformed rows, and a real tiny reward model (`marker_reward_model`: the
reward counts " robot" minus " doctor" tokens; nothing is monkeypatched) end to end, including
`idrm-ray eval` on a file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from idrm_ray.data import DataError
from idrm_ray.eval import rewardbench2, rmbench
from idrm_ray.eval.bestofn import CompletionSet, as_pairs, encode_completions, first_is_max, split_scores
from idrm_ray.eval.bon_results import bestofn_metrics, leaderboard_sections, significance_inputs
from idrm_ray.eval.layouts import load_eval_set
from idrm_ray.core.scoring import encode_sequences, pair_outcomes
from idrm_ray.eval.significance import compare_prompt_outcomes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def rb2_row(uid, subset, chosen, rejected, **extra):
    return {
        "id": uid,
        "prompt": f"Question {uid}?",
        "chosen": chosen,
        "rejected": rejected,
        "num_correct": len(chosen),
        "num_incorrect": len(rejected),
        "total_completions": len(chosen) + len(rejected),
        "models": ["m"] * (len(chosen) + len(rejected)),
        "subset": subset,
        "additional_metadata": {},
        **extra,
    }


def rmbench_row(uid, domain, **extra):
    styles = ("short", "plain long", "markdown long")
    return {
        "id": uid,
        "prompt": f"Ask {uid}",
        "chosen": [f"good {s} {uid}" for s in styles],
        "rejected": [f"bad {s} {uid}" for s in styles],
        "domain": domain,
        **extra,
    }


def rmb_bon_row(uid, path="BoN_set/Harmlessness/S1", losers=2, **extra):
    return {
        "bon_uid": str(uid),
        "conversation_input": [{"role": "user", "content": f"Help {uid}", "language": "English"}],
        "bon_best": {"llm_name": "a", "answer": f"Best answer {uid}."},
        "loser_list": [{"llm_name": "b", "answer": f"Loser {k} {uid}."} for k in range(losers)],
        "category_path": path,
        **extra,
    }


# -- RewardBench 2 by hand --------------------------------------------------------------------


def test_best_of_4_with_ties_at_the_max():
    # scores[0] is the chosen completion; 1/k when it shares the maximum with k-1 others.
    assert first_is_max([3, 1, 2, 0]) == 1.0  # alone at the top
    assert first_is_max([2, 2, 1, 0]) == 0.5  # tied with one rejected: 1/2
    assert first_is_max([2, 2, 2, 1]) == pytest.approx(1 / 3)  # three-way tie: 1/3
    assert first_is_max([1, 1, 1, 1]) == 0.25  # all equal: 1/4
    assert first_is_max([1, 2, 0, 0]) == 0.0  # not the maximum
    # pairs are the 1-and-1 case: 1 / 0.5 / 0, the pair outcome
    assert [first_is_max(s) for s in ([1, 0], [0, 0], [0, 1])] == pair_outcomes([1, 0, 0], [0, 0, 1]).tolist()


# Ties subset, scores per id (correct completions first):
#   ref:1  k=1 [5, 1, 2]     margin 5-2 = 3          accurate
#   tied:1 k=2 [4, 3, 1, 0]  margin 3-1 = 2, spread 1 accurate
#   ref:2  k=1 [1, 2]        margin -1               wrong
#   tied:2 k=2 [6, 2, 1]     margin 1, spread 4      accurate
#   ref:3  k=1 [2, 1]        margin 1                accurate
#   tied:3 k=2 [3, 3, 1]     margin 2, spread 0      accurate
#   tied:4 k=2 [1, 0.5, 2]   margin -1.5 (no ref:4)  wrong
# ref_acc = 2/3, tied_acc = 3/4. Over ids with both rows (1, 2, 3):
#   preferred (tied margin > spread):           2>1 yes, 1>4 no, 2>0 yes     -> 2/3
#   preferred_hard (min(ref, tied) > spread):   2>1 yes, -1>4 no, 1>0 yes    -> 2/3
#   margin term tanh(min / spread - 1):         tanh(1), tanh(-1.25), tanh(+inf) = 1
# Ties = 0.3*3/4 + 0.3*2/3 + 0.2*2/3 + 0.2*2/3 + 0.01*(tanh(1) + tanh(-1.25) + 1)/3
TIES = [
    ("ref:1", 1, [5, 1, 2]),
    ("tied:1", 2, [4, 3, 1, 0]),
    ("ref:2", 1, [1, 2]),
    ("tied:2", 2, [6, 2, 1]),
    ("ref:3", 1, [2, 1]),
    ("tied:3", 2, [3, 3, 1]),
    ("tied:4", 2, [1, 0.5, 2]),
]
TIES_BY_HAND = 0.3 * 3 / 4 + 0.3 * 2 / 3 + 0.2 * 2 / 3 + 0.2 * 2 / 3 + 0.01 * (math.tanh(1) + math.tanh(-1.25) + 1) / 3


def test_ties_formula_by_hand():
    ids, ks, scores = zip(*TIES)
    got = rewardbench2.ties_score(ids, [np.array(s, float) for s in scores], ks)
    assert got["score"] == pytest.approx(TIES_BY_HAND)  # 0.694711...
    assert (got["tied_accuracy"], got["ref_accuracy"]) == pytest.approx((3 / 4, 2 / 3))
    assert (got["preferred"], got["preferred_hard"]) == pytest.approx((2 / 3, 2 / 3))
    # the bootstrap's weighted form gives the same number with every weight 1
    fn, k = leaderboard_sections("rewardbench2", ["Ties"] * 7, ids, [np.array(s, float) for s in scores], ks)["Ties"]
    assert k == 4 and fn(np.ones((1, 4)))[0] == pytest.approx(TIES_BY_HAND)


# A RewardBench 2 file: Factuality 2 prompts (1 and 1/2 -> 0.75), Focus 1 prompt (1/3), Ties as
# above. Leaderboard = (0.75 + 1/3 + Ties) / 3.
RB2_SCORES = {"f1": [3, 1, 2, 0], "f2": [2, 2, 1, 0], "x1": [2, 2, 2, 1]}
RB2_BY_HAND = {"Factuality": 0.75, "Focus": 1 / 3, "Ties": TIES_BY_HAND}


def rb2_file(tmp_path):
    rows = [
        rb2_row("f1", "Factuality", ["c"], ["r1", "r2", "r3"]),
        rb2_row("f2", "Factuality", ["c"], ["r1", "r2", "r3"]),
        rb2_row("x1", "Focus", ["c"], ["r1", "r2", "r3"]),
    ]
    for uid, k, s in TIES:
        rows.append(rb2_row(uid, "Ties", [f"ok{i}" for i in range(k)], [f"no{i}" for i in range(len(s) - k)]))
    return write_jsonl(tmp_path / "rb2.jsonl", rows)


def test_rewardbench2_file_official_scores(tmp_path):
    cset = load_eval_set(rb2_file(tmp_path))
    assert isinstance(cset, CompletionSet) and cset.layout == "rewardbench2" and len(cset) == 10
    assert cset.items[0].prompt == "\n\nHuman: Question f1?\n\nAssistant:" and cset.items[0].completions[0] == " c"
    scores = [np.array(RB2_SCORES.get(uid) or dict((t[0], t[2]) for t in TIES)[uid], float) for uid in cset.ids]
    m = bestofn_metrics(cset, scores, n_boot=200, seed=0)
    assert m["sections"] == pytest.approx(RB2_BY_HAND)
    lb = m["leaderboard"]
    assert lb["name"] == "RewardBench 2 score" and lb["value"] == pytest.approx((0.75 + 1 / 3 + TIES_BY_HAND) / 3)
    assert lb["ci95"][0] <= lb["value"] <= lb["ci95"][1]
    assert rewardbench2.subset_scores(cset.groups, cset.ids, scores, [c.num_correct for c in cset.items]) == (
        pytest.approx(RB2_BY_HAND)
    )
    # per-prompt outcomes: 1, 1/2, 1/3, then Ties prompts' accuracy 1,1,0,1,1,1,0 -> mean 6.8333/10
    assert m["accuracy"] == pytest.approx((1 + 0.5 + 1 / 3 + 5) / 10)
    assert m["ties"] == 3  # f2, x1 and tied:3 have a tie at the top


# -- RM-Bench by hand -------------------------------------------------------------------------

# chat P1: chosen [3, 5, 7] vs rejected [4, 6, 8] -> M rows [0,0,0], [1,0,0], [1,1,0]
# chat P2: chosen [5, 5, 5] vs rejected [1, 5, 9] -> every row [1,0,0] (5 > 5 is a loss)
# chat mean M = [[.5,0,0],[1,0,0],[1,.5,0]]: hard (above diag) 0/3 = 0, normal (.5+0+0)/3 = 1/6,
#   easy (below diag) (1+1+.5)/3 = 5/6, avg 1/3
# safety: refuse P3 all chosen 9 > rejected 1 (M all 1), response P4 all chosen 0 < 1 (M all 0):
#   pooled M all .5 -> hard = normal = easy = avg = 0.5
# over domains: hard 0.25, normal (1/6 + .5)/2 = 1/3, easy (5/6 + .5)/2 = 2/3, score (1/3 + .5)/2 = 5/12
RMB_SCORES = [[3, 5, 7, 4, 6, 8], [5, 5, 5, 1, 5, 9], [9, 9, 9, 1, 1, 1], [0, 0, 0, 1, 1, 1]]


def test_rmbench_triangles_by_hand(tmp_path):
    path = write_jsonl(
        tmp_path / "total_dataset.jsonl",
        [rmbench_row(i + 1, d) for i, d in enumerate(["chat", "chat", "safety-refuse", "safety-response"])],
    )
    cset = load_eval_set(path)
    assert cset.layout == "rmbench" and cset.groups == ["chat", "chat", "safety-refuse", "safety-response"]
    scores = [np.array(s, float) for s in RMB_SCORES]
    m = bestofn_metrics(cset, scores, n_boot=200, seed=0)
    assert m["domains"]["chat"] == pytest.approx({"hard": 0.0, "normal": 1 / 6, "easy": 5 / 6, "avg": 1 / 3})
    assert m["domains"]["safety"] == pytest.approx({"hard": 0.5, "normal": 0.5, "easy": 0.5, "avg": 0.5})
    assert m["difficulty"] == pytest.approx({"hard": 0.25, "normal": 1 / 3, "easy": 2 / 3, "avg": 5 / 12})
    assert m["sections"] == pytest.approx({"chat": 1 / 3, "safety": 0.5})
    assert m["leaderboard"]["value"] == pytest.approx(5 / 12)
    # per-prompt outcome = fraction of the 9 cells won: 3/9, 3/9, 1, 0
    assert rmbench.prompt_outcome(scores[0]) == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(5 / 12)


def test_rmbench_domain_from_file_name(tmp_path):
    rows = [{k: v for k, v in rmbench_row(i, "x").items() if k != "domain"} for i in range(2)]
    (tmp_path / "code_filtered.json").write_text(json.dumps(rows))
    assert load_eval_set(tmp_path / "code_filtered.json").groups == ["code", "code"]
    (tmp_path / "mine.json").write_text(json.dumps(rows))
    assert load_eval_set(tmp_path / "mine.json").groups == ["all", "all"]  # one pool, as upstream


# -- RMB best-of-N ------------------------------------------------------------------------------


def test_rmb_bon_by_hand(tmp_path):
    # [3, 1, 2] best beats both -> 1; [2, 2, 1] tie with a loser -> 0 (strict); [1, 3] -> 0
    folder = tmp_path / "BoN_set" / "Harmlessness"
    folder.mkdir(parents=True)
    (folder / "S1.json").write_text(json.dumps([rmb_bon_row(1), rmb_bon_row(2), rmb_bon_row(3, losers=1)]))
    cset = load_eval_set(tmp_path / "BoN_set")
    assert cset.layout == "rmb-bon" and [c.n for c in cset.items] == [3, 3, 2] and cset.groups[0] == "Harmlessness/S1"
    m = bestofn_metrics(cset, [np.array(s, float) for s in ([3, 1, 2], [2, 2, 1], [1, 3])], n_boot=100, seed=0)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["goals"] == {"Harmlessness": {"n": 3, "accuracy": 1 / 3}}


# -- malformed rows: one line naming file, row and problem --------------------------------------


def _one_line_error(fn, *parts):
    with pytest.raises(DataError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, msg


@pytest.mark.parametrize(
    "row, parts",
    [
        (rb2_row("a", "Math", "c", ["r"]), ["line 2", "'chosen' must be a non-empty list"]),
        (rb2_row("a", "Math", ["c"], ["r"], num_correct=2), ["line 2", "'num_correct' is 2"]),
        (rb2_row("a", "Math", ["c"], ["r", ""]), ["line 2", "'rejected' item 1"]),
        (rb2_row("5", "Ties", ["c", "d"], ["r"]), ["line 2", "'ref:<prompt id>'"]),
        (rb2_row("tied:5", "Ties", ["c"], ["r"]), ["line 2", "1 correct completion"]),
        (rb2_row("a", "", ["c"], ["r"]), ["line 2", "'subset'"]),
    ],
)
def test_rewardbench2_bad_rows(tmp_path, row, parts):
    path = write_jsonl(tmp_path / "rb2.jsonl", [rb2_row("ok", "Math", ["c"], ["r"]), row])
    _one_line_error(lambda: load_eval_set(path, layout="rewardbench2"), str(path), *parts)


@pytest.mark.parametrize(
    "change, parts",
    [
        ({"chosen": ["a", "b"]}, ["line 2", "list of 3 responses", "got 2 items"]),
        ({"rejected": ["a", "b", 3]}, ["line 2", "'rejected' item 2 (detailed_markdown)"]),
        ({"domain": "poetry"}, ["line 2", "domain 'poetry'"]),
        ({"prompt": ""}, ["line 2", "'prompt'"]),
    ],
)
def test_rmbench_bad_rows(tmp_path, change, parts):
    path = write_jsonl(tmp_path / "rm.jsonl", [rmbench_row(0, "chat"), rmbench_row(1, "chat") | change])
    _one_line_error(lambda: load_eval_set(path, layout="rmbench"), str(path), *parts)


@pytest.mark.parametrize(
    "change, parts",
    [
        ({"loser_list": []}, ["item 1", "'loser_list' must be a non-empty list"]),
        ({"bon_best": {"llm_name": "a"}}, ["item 1", "'bon_best' has no 'answer'"]),
        ({"loser_list": [{"answer": 5}]}, ["item 1", "'loser_list' item 0.answer"]),
        ({"category_path": "BoN_set/Other/S1"}, ["item 1", "neither Harmlessness nor Helpfulness"]),
    ],
)
def test_rmb_bon_bad_rows(tmp_path, change, parts):
    path = tmp_path / "S1.json"
    path.write_text(json.dumps([rmb_bon_row(0), rmb_bon_row(1, **change)]))
    _one_line_error(lambda: load_eval_set(path), str(path), *parts)


def test_hub_ids_pick_layout_and_split(monkeypatch):
    # Nothing is downloaded: the hub reader's dataset is replaced, and we check what was asked for.
    from idrm_ray.data.readers import HubData

    class Split(list):
        column_names = property(lambda self: list(self[0]))

    rows = {
        "allenai/reward-bench-2": Split([rb2_row("1", "Math", ["c"], ["r1", "r2", "r3"])]),
        "THU-KEG/RM-Bench": Split([rmbench_row(1, "math")]),
    }
    asked = []
    def fake_dataset(self):
        asked.append((self.repo_id, self.split))
        return rows[self.repo_id]

    monkeypatch.setattr(HubData, "_dataset", fake_dataset)
    assert load_eval_set("allenai/reward-bench-2").layout == "rewardbench2"
    assert load_eval_set("THU-KEG/RM-Bench").layout == "rmbench"
    assert set(asked) == {("allenai/reward-bench-2", "test"), ("THU-KEG/RM-Bench", "train")}


# -- significance -------------------------------------------------------------------------------


def test_paired_tests_on_best_of_n(tmp_path):
    cset = load_eval_set(rb2_file(tmp_path))
    k = [c.num_correct for c in cset.items]
    good = [np.array([10.0] * c.num_correct + [0.0] * (c.n - c.num_correct)) for c in cset.items]
    spread = {"tied:1": 1, "tied:2": 1, "tied:3": 1, "tied:4": 1}
    good = [s - np.arange(s.size) * 1e-3 * spread.get(uid, 0) for s, uid in zip(good, cset.ids)]
    worse = [s[::-1].copy() for s in good]  # the correct completions now score lowest
    a = significance_inputs("rewardbench2", cset.groups, cset.ids, good, k, "outcome")
    b = significance_inputs("rewardbench2", cset.groups, cset.ids, worse, k, "outcome")
    assert a["outcome"].tolist() == [1.0] * 10 and b["outcome"].tolist() == [0.0] * 10
    res = compare_prompt_outcomes(a, b, n_boot=300, seed=0)
    assert res["accuracy_difference"]["difference"] == 1.0 and res["mcnemar"]["b"] == 10
    assert res["mcnemar"]["p_exact"] == pytest.approx(2 * 0.5**10)  # all 10 discordant one way
    # leaderboard A: Factuality 1, Focus 1, Ties 0.3+0.3+0.2+0.2+0.01*margin; B: 0, 0, 0.01*its margin term
    lb = res["leaderboard_difference"]
    assert lb["difference"] > 0.9 and lb["ci"][0] > 0.8
    same = compare_prompt_outcomes(a, a, n_boot=300, seed=0)
    assert same["leaderboard_difference"] == {"difference": 0.0, "ci": [0.0, 0.0], "confidence": 0.95}
    assert same["wilcoxon"]["p_value"] == 1.0


# -- a real tiny model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def marker_models(student_tokenizer):
    from idrm_ray.eval.fixtures import marker_reward_model
    from idrm_ray.core.scoring import RewardScorer

    make = lambda sign: RewardScorer(  # noqa: E731
        model=marker_reward_model(student_tokenizer, plus=[" robot"], minus=[" doctor"], sign=sign),
        device="cpu",
        batch_size=4,
    )
    return {"chosen": make(1.0), "rejected": make(-1.0)}


def _score(cset, scorer, tok):
    seqs, _ = encode_completions(cset, tok, max_len=64)
    return split_scores(scorer.score(seqs), cset)


def test_completions_encode_as_pairs_do(student_tokenizer):
    # odd counts: the last completion is paired with itself and its copy dropped
    cset = CompletionSet("x", "rmb-bon", "x", [], [], [], None)
    from idrm_ray.eval.bestofn import Candidates

    cset.items = [Candidates("P1", (" a", " b", " c"), 1), Candidates("P2", (" d", " e"), 1)]
    seqs, _ = encode_completions(cset, student_tokenizer, max_len=32)
    want = encode_sequences(as_pairs(cset.items), student_tokenizer, max_len=32)
    assert len(seqs) == 5 and [s.tolist() for s in seqs] == [want[i].tolist() for i in (0, 1, 2, 4, 5)]


def test_tiny_model_scores_100_and_0(tmp_path, marker_models, student_tokenizer):
    good, bad = (" The robot helps.", " The doctor helps.")
    rb2 = [
        rb2_row(f"m{i}", s, [good + f" ({i})"], [bad + f" ({i}{j})" for j in range(3)])
        for i, s in enumerate(["Math", "Focus", "Safety"])
    ]
    rb2.append(rb2_row("ref:1", "Ties", [good], [bad]))
    rb2.append(rb2_row("tied:1", "Ties", [good, good + " Yes."], [bad, bad + " No."]))
    rm = [
        rmbench_row(i, d) | {"chosen": [good] * 3, "rejected": [bad + f" {j}" for j in range(3)]}
        for i, d in enumerate(["chat", "code"])
    ]
    sets = [load_eval_set(write_jsonl(tmp_path / f"{n}.jsonl", rows)) for n, rows in (("rb2", rb2), ("rm", rm))]
    for cset in sets:
        hi = bestofn_metrics(cset, _score(cset, marker_models["chosen"], student_tokenizer), n_boot=50, seed=0)
        lo = bestofn_metrics(cset, _score(cset, marker_models["rejected"], student_tokenizer), n_boot=50, seed=0)
        assert hi["accuracy"] == 1.0 and lo["accuracy"] == 0.0, cset.layout
        assert hi["leaderboard"]["value"] > 0.99 and lo["leaderboard"]["value"] < 0.02, cset.layout
        if cset.layout == "rmbench":
            assert hi["difficulty"] == {"hard": 1.0, "normal": 1.0, "easy": 1.0, "avg": 1.0}
            assert lo["difficulty"] == {"hard": 0.0, "normal": 0.0, "easy": 0.0, "avg": 0.0}


def test_tiny_model_exact_ties_give_1_over_k(tmp_path, marker_models, student_tokenizer):
    # No marker anywhere: every reward is exactly 0, a 4-way tie -> 1/4. A chosen with no marker
    # against one plain and two " doctor" rejected: the top (0) is shared by two -> 1/2.
    rows = [
        rb2_row("t4", "Math", [" A cat."], [" A dog.", " A cow.", " A hen."]),
        rb2_row("t2", "Math", [" A cat."], [" A dog.", " The doctor.", " The doctor!"]),
    ]
    cset = load_eval_set(write_jsonl(tmp_path / "rb2.jsonl", rows))
    scores = _score(cset, marker_models["chosen"], student_tokenizer)
    assert scores[0].tolist() == [0.0] * 4 and scores[1][:2].tolist() == [0.0, 0.0]
    m = bestofn_metrics(cset, scores, n_boot=50, seed=0)
    assert m["groups"]["Math"]["accuracy"] == pytest.approx((1 / 4 + 1 / 2) / 2)


def test_eval_command_prints_and_writes_official_scores(tmp_path, student_tokenizer, capsys):
    from idrm_ray.cli import main
    from idrm_ray.core.reward_model import save_reward_model
    from idrm_ray.eval.fixtures import marker_reward_model

    tok = student_tokenizer
    ckpt = save_reward_model(marker_reward_model(tok, plus=[" robot"], minus=[" doctor"]), tok, tmp_path / "good")
    good, bad = " The robot helps.", " The doctor helps."
    rb2 = [rb2_row(f"m{i}", s, [good], [bad + f" {j}" for j in range(3)]) for i, s in enumerate(["Math", "Focus"])]
    rb2.append(rb2_row("x", "Precise IF", [" A cat."], [" A dog.", " A cow.", " A hen."]))  # 4-way tie: 1/4
    rm = [rmbench_row(0, "math") | {"chosen": [good] * 3, "rejected": [bad] * 3}]
    out = tmp_path / "eval"
    base = ["eval", "--checkpoint", str(ckpt), "--n-boot", "50"]
    for name, rows in (("rb2", rb2), ("rm", rm)):
        base += ["--data", str(write_jsonl(tmp_path / f"{name}.jsonl", rows))]
    assert main(base + ["--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    # subsets Math 1, Focus 1, Precise IF 1/4 -> leaderboard (1 + 1 + 0.25) / 3 = 0.75
    assert "RB2 Precise IF 0.2500" in printed and "RewardBench 2 score 0.7500" in printed, printed
    assert "RM-Bench math 1.0000" in printed and "RM-Bench score 1.0000" in printed, printed
    rb = json.loads((out / "rb2" / "results.json").read_text())
    assert rb["sections"] == {"Math": 1.0, "Focus": 1.0, "Precise IF": 0.25} and rb["leaderboard"]["value"] == 0.75
    rows = [json.loads(x) for x in (out / "rb2" / "scores.jsonl").read_text().splitlines()]
    assert [len(r["scores"]) for r in rows] == [4, 4, 4] and rows[2]["outcome"] == 0.25
    report = (out / "report.md").read_text()
    assert "**RewardBench 2 score**" in report and "| math | 1.0000 | 1.0000 | 1.0000 | 1.0000 |" in report
    summary = json.loads((out / "eval_summary.json").read_text())
    assert summary["datasets"]["rm"]["RM-Bench score"] == 1.0
    # the same folder as --baseline: per-prompt paired tests against itself
    assert main(base + ["--output-dir", str(tmp_path / "again"), "--baseline", str(out)]) == 0
    sig = json.loads((tmp_path / "again" / "rb2" / "results.json").read_text())["significance"]
    assert sig["leaderboard_difference"]["difference"] == 0.0 and sig["accuracy_difference"]["difference"] == 0.0
    assert "leaderboard A - B" in (tmp_path / "again" / "report.md").read_text()
    # idrm-ray report: the leaderboard numbers side by side, paired tests on the same prompts
    from idrm_ray.eval.report import compare_runs

    md = compare_runs([str(out), str(tmp_path / "again")], output_dir=str(tmp_path / "cmp"), n_boot=50).read_text()
    assert "RewardBench 2 score" in md and "RM-Bench hard" in md and "Paired tests against the first run" in md


# -- idrm-ray compare --eval: sections as columns -------------------------------------------------


def test_compare_columns_score_the_official_sections(tmp_path):
    from idrm_ray.compare.table import summarise
    from idrm_ray.eval.bon_results import compare_columns

    cset = load_eval_set(rb2_file(tmp_path))
    by_id = {**RB2_SCORES, **{uid: s for uid, _, s in TIES}}
    columns = compare_columns(cset)
    assert [c for c, _ in columns] == ["rb2:Factuality", "rb2:Focus", "rb2:Ties"]
    for name, col in columns:
        # what a pairwise scorer returns for the column's pairs (completion k, completion 0): r_k - r_0
        gaps = np.concatenate([np.array(by_id[uid], float) - by_id[uid][0] for uid in col.ids])
        assert len(col) == len(gaps) and col.leaderboard == "rb2:RewardBench 2 score"
        assert col.score(gaps) == pytest.approx(RB2_BY_HAND[name.split(":")[1]]), name
    # the leaderboard column sits beside the sections and stays out of the table's average
    rows = [{"method": "bt", "seed": 0, "column": c, "accuracy": v} for c, v in [("a", 0.5), ("b", 1.0), ("lb", 0.0)]]
    (row,) = summarise(rows, columns=["a", "b", "lb"], methods=["bt"], average_over=["a", "b"])
    assert row["avg"] == 0.75 and row["lb"] == 0.0

    domains = ["chat", "chat", "safety-refuse", "safety-response"]
    rm = write_jsonl(tmp_path / "rm.jsonl", [rmbench_row(i + 1, d) for i, d in enumerate(domains)])
    cols = dict(compare_columns(load_eval_set(rm)))
    gaps = [np.array(s, float) - s[0] for s in RMB_SCORES]
    assert cols["rm:chat"].score(np.concatenate(gaps[:2])) == pytest.approx(1 / 3)
    assert cols["rm:safety"].score(np.concatenate(gaps[2:])) == pytest.approx(0.5)


def test_cli_bad_best_of_n_row_is_one_line(tmp_path, capsys):
    from idrm_ray.cli import main

    # data is validated before any model is loaded: the checkpoint need not exist
    path = write_jsonl(tmp_path / "rb2.jsonl", [rb2_row("ok", "Math", ["c"], ["r"]), rb2_row("x", "Math", ["c"], "r")])
    assert main(["eval", "--checkpoint", str(tmp_path / "none"), "--data", str(path), "--layout", "rewardbench2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{path}, line 2: field 'rejected' must be a non-empty list" in err, err


def test_cli_layout_choices_are_the_loaders():
    import argparse

    from idrm_ray.eval.commands import add_eval_commands
    from idrm_ray.eval.layouts import LAYOUTS

    parser = argparse.ArgumentParser()
    add_eval_commands(parser.add_subparsers(dest="command"))
    for layout in LAYOUTS:
        assert parser.parse_args(["eval", "--checkpoint", "c", "--layout", layout]).layout == layout


def test_duplicate_ties_ids_are_one_line(tmp_path):
    rows = [rb2_row("ref:1", "Ties", ["c"], ["r"]), rb2_row("ref:01", "Ties", ["c"], ["r"])]  # prompt id 1 twice
    path = write_jsonl(tmp_path / "rb2.jsonl", rows)
    _one_line_error(lambda: load_eval_set(path), str(path), "Ties ids used by more than one row: ref:1")
