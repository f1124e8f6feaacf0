"""`idrm-ray eval` and `idrm-ray report` end to end on small local files in each layout, with
tiny reward models whose preference is known by construction (`marker_reward_model`: the
reward counts " robot" minus " doctor" tokens; `sign=-1` prefers the rejected side).
One Ray Data run checks the `--ray` scoring path against in-process scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from idrm_ray.cli import main
from idrm_ray.core.reward_model import save_reward_model
from idrm_ray.eval.fixtures import marker_reward_model


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SUBSETS = ["alpacaeval-easy", "mt-bench-med", "llmbar-natural", "xstest-should-respond", "math-prm", "hep-js"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, student_tokenizer):
    root = tmp_path_factory.mktemp("evalworld")
    tok = student_tokenizer
    # A training-run-shaped folder for the "good" model: <run>/summary.json, <run>/id/checkpoint, config.yaml.
    run = root / "run-a"
    good = save_reward_model(
        marker_reward_model(tok, plus=[" robot"], minus=[" doctor"]), tok, run / "id" / "checkpoint"
    )
    (run / "config.yaml").write_text(
        json.dumps({"student": {"max_len": 64, "template": {"prefix": "", "separator": "", "suffix": ""}}})
    )
    (run / "summary.json").write_text(
        json.dumps({"runs": [{"method": "id", "eval_accuracy": 0.9, "eval_loss": 0.3, "checkpoint": str(good)}]})
    )
    bad = save_reward_model(marker_reward_model(tok, plus=[" robot"], minus=[" doctor"], sign=-1.0), tok, root / "bad")
    rb = _jsonl(
        root / "rb.jsonl",
        [
            {
                "prompt": f"Who helps with task {i}?",
                "chosen": f"The robot helps ({i}).",
                "rejected": f"The doctor helps ({i}).",
                "subset": SUBSETS[i % len(SUBSETS)],
                "id": f"rb{i}",
            }
            for i in range(12)
        ],
    )
    rmb_dir = root / "RMB_dataset" / "Pairwise_set" / "Helpfulness" / "Chat"
    rmb_dir.mkdir(parents=True)
    rmb = [
        {
            "pair_uid": str(i),
            "conversation_input": [{"role": "user", "content": f"Who can help {i}?", "language": "English"}],
            "chosen": {"answer": "The robot can."},
            "reject": {"answer": "The doctor can."},
            "category_path": "Pairwise_set/Helpfulness/Chat/Discussion",
        }
        for i in range(6)
    ]
    (rmb_dir / "Discussion.json").write_text(json.dumps(rmb, indent=1))
    generic = _jsonl(
        root / "pairs.jsonl",
        [{"prompt": "\n\nHuman: Who?\n\nAssistant:", "chosen": " The robot.", "rejected": " A cat."}] * 4,
    )
    return {
        "root": root,
        "run": run,
        "good": str(good),
        "bad": str(bad),
        "rb": str(rb),
        "rmb": str(root / "RMB_dataset" / "Pairwise_set"),
        "generic": str(generic),
    }


def test_eval_command_end_to_end(world):
    common = ["--data", world["rb"], "--data", world["rmb"], "--data", world["generic"], "--n-boot", "300"]
    rc = main(
        [
            "eval",
            "--checkpoint",
            world["good"],
            *common,
            "--baseline",
            world["bad"],
            "--diagnostics",
            "--diag-pairs",
            "4",
        ]
    )
    assert rc == 0
    out = world["run"] / "id" / "eval"  # default: beside the checkpoint in the run folder
    rb = json.loads((out / "rb" / "results.json").read_text())
    assert rb["accuracy"] == 1.0 and rb["model"]["max_len"] == 64  # max_len from the run's config.yaml
    assert rb["sections"] == {"Chat": 1.0, "Chat Hard": 1.0, "Safety": 1.0, "Reasoning": 1.0}
    sig = rb["significance"]
    assert sig["accuracy_b"] == 0.0 and sig["mcnemar"]["b"] == 12 and sig["mcnemar"]["p_exact"] < 0.01
    assert sig["wilcoxon"]["significant"] and sig["accuracy_difference"]["ci"][0] > 0.5
    rmb = json.loads((out / "Pairwise_set" / "results.json").read_text())  # folder named after the source
    assert rmb["goals"] == {"Helpfulness": {"n": 6, "accuracy": 1.0}}
    diag = rb["diagnostics"]
    assert diag["masking"]["accuracy"][0] == 1.0 and diag["masking"]["accuracy"][-1] == 0.5
    assert diag["stages"]["correct"]["pairs"] == len(diag["pairs"]) == 4
    for name in (
        "accuracy.png",
        "groups.png",
        "stages.png",
        "masking.png",
        "token_view.html",
        "token_view.png",
        "scores.jsonl",
    ):
        assert (out / "rb" / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## rb (rewardbench, 12 pairs)" in report and "McNemar" in report and "![stages](rb/stages.png)" in report
    assert json.loads((out / "eval_summary.json").read_text())["datasets"]["rb"]["RewardBench score"] == 1.0

    # The baseline's own eval, then both runs side by side; same pairs -> paired tests.
    bad_out = world["root"] / "bad-eval"
    assert main(["eval", "--checkpoint", world["bad"], *common, "--output-dir", str(bad_out), "--max-len", "64"]) == 0
    assert json.loads((bad_out / "rb" / "results.json").read_text())["accuracy"] == 0.0
    # an eval folder works as a baseline too (scores.jsonl, no re-scoring)
    again = world["root"] / "again"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                world["good"],
                "--data",
                world["rb"],
                "--baseline",
                str(bad_out),
                "--output-dir",
                str(again),
                "--n-boot",
                "100",
            ]
        )
        == 0
    )
    assert json.loads((again / "rb" / "results.json").read_text())["significance"]["baseline"].endswith("scores.jsonl")

    cmp_dir = world["root"] / "cmp"
    assert main(["report", str(world["run"]), str(bad_out), "--output", str(cmp_dir), "--n-boot", "200"]) == 0
    text = (cmp_dir / "report.md").read_text()
    assert "| run-a/id |" in text and "| bad |" in text and "Paired tests" in text and "eval_accuracy" in text
    comparison = json.loads((cmp_dir / "comparison.json").read_text())
    assert comparison["datasets"]["rb"]["tests"][0]["accuracy_a"] == 0.0
    assert (cmp_dir / "compare_rb.png").stat().st_size > 0 and (cmp_dir / "masking_rb.png").stat().st_size > 0
    assert main(["report", str(world["run"])]) == 0 and (world["run"] / "report" / "report.md").is_file()


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("idrm-ray: "), err
    return err


def test_cli_bad_input_is_one_line(world, tmp_path, capsys):
    bad_rows = _jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b", "subset": "x"}, {"prompt": "p", "subset": "x"}],
    )
    assert (
        main(["eval", "--checkpoint", world["good"], "--data", str(bad_rows), "--output-dir", str(tmp_path / "o")]) == 2
    )
    assert "bad.jsonl, line 2: missing field 'chosen'" in _one_line(capsys)
    broken = tmp_path / "S1.json"
    broken.write_text("[{")
    assert main(["eval", "--checkpoint", world["good"], "--data", str(broken)]) == 2
    assert "S1.json: invalid JSON" in _one_line(capsys)
    assert (
        main(
            ["eval", "--checkpoint", str(tmp_path / "nope"), "--data", world["rb"], "--output-dir", str(tmp_path / "o")]
        )
        == 2
    )
    _one_line(capsys)
    assert main(["eval", "--checkpoint", world["good"], "--data", world["rb"], "--token-view-pair", "3"]) == 2
    assert "needs --diagnostics" in _one_line(capsys)
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json" in _one_line(capsys)


def test_ray_scoring_matches_in_process(world, ray_session, guard):
    from transformers import AutoTokenizer

    from idrm_ray.eval.layouts import load_eval_set
    from idrm_ray.eval.ray_scoring import score_with_ray
    from idrm_ray.core.scoring import RewardScorer, encode_sequences

    seqs = encode_sequences(
        load_eval_set(world["rb"]).examples, AutoTokenizer.from_pretrained(world["good"]), max_len=64
    )
    local = RewardScorer(world["good"], device="cpu").score(seqs)
    remote = guard(
        lambda: score_with_ray(world["good"], seqs, batch_size=4, concurrency=1, num_cpus=0.5),
        timeout_s=120,
        what="ray scoring",
    )
    assert np.allclose(local, remote, atol=1e-5) and np.all(local[0::2] > local[1::2])
