"""Bad input through the real command line (DESIGN.md §5, issue 9 item 4): exit status 2, the
last stderr line "idrm-ray: data error: <file>, line N: <problem>", no traceback, and nothing
trained. The full corpus is checked in-process (tests/unit/test_bad_input_corpus.py); these
few subprocesses prove the terminal behaviour, two at a time. They fail in data validation
(`run.inputs.prepare_inputs`), before the driver's imports and Ray (each takes about 0.3 s), so
stderr is exactly one line and the run-folder line never appears. NLI data is validated before Ray starts too (`validate_teacher_data`), so
`idrm-ray teacher` with a bad NLI file is one of the subprocess cases.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from idrm_ray.cli import main
from idrm_ray.config import load_config
from idrm_ray.config.train import TrainJobConfig

CORPUS = Path(__file__).resolve().parents[1] / "data" / "bad_inputs"
GOOD = '{"prompt": "Q: what does the cat like?", "chosen": " The ball.", "rejected": " A book."}'
# name -> (command and overrides; {c}: corpus dir, {t}: tmp dir), the bad file, the row, words
CASES = {
    "truncated_json": (["train", "data.train={c}/truncated_json.jsonl"], "{c}/truncated_json.jsonl", 3,
                       ["invalid JSON", "truncated line?"]),
    "eval_non_utf8": (["train", "data.train={t}/good.jsonl", "data.eval={c}/non_utf8.jsonl"], "{c}/non_utf8.jsonl", 2,
                      ["not valid UTF-8", "0xe9"]),
    "truncated_gzip": (["train", "data.train={c}/truncated.jsonl.gz"], "{c}/truncated.jsonl.gz", None,
                       ["gzip data is truncated or corrupt after line 1978"]),
    "directory": (["train", "data.train={t}/a_dir.jsonl"], "{t}/a_dir.jsonl", None, ["directory has no data files"]),
    "teacher_nli_label": (["teacher", "teacher.finetune.data={c}/nli_label_out_of_range.jsonl"],
                          "{c}/nli_label_out_of_range.jsonl", 2, ["label 3 is out of range"]),
}
TIMEOUT_S = 180


def _fill(text: str, root: Path) -> str:
    return text.format(c=CORPUS, t=root)


def _run_case(root: Path, name: str):
    command, *_ = CASES[name]
    args = [sys.executable, "-m", "idrm_ray.cli", *[_fill(a, root) for a in command],
            "--output-dir", str(root / "runs"), f"run.name={name}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "good.jsonl").write_text((GOOD + "\n") * 20)
    (root / "a_dir.jsonl").mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run_case, root, name) for name in CASES}
        return root, {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_ends_in_one_line_and_exit_2(cli_results, name):
    root, results = cli_results
    proc = results[name]
    command, path, row, words = CASES[name]
    assert proc is not None, f"{name}: the CLI did not finish within {TIMEOUT_S} s"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{proc.stderr}"
    assert "[idrm] run folder" not in proc.stdout, "the driver got past data validation"
    where = _fill(path, root) + ("" if row is None else f", line {row}")
    assert lines[0].startswith(f"idrm-ray: data error: {where}: "), lines[0]
    for word in words:
        assert word in lines[0], lines[0]


def test_config_and_data_errors_in_process(tmp_path, capsys):
    """The same CLI entry in-process (no Ray is reached): one stderr line, status 2."""
    runs = str(tmp_path / "runs")
    assert main(["train", "--output-dir", runs, "method.id.lam=-1"]) == 2
    assert main(["train", "--output-dir", runs, f"data.train={CORPUS / 'hh_no_assistant.jsonl'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("idrm-ray: config error: invalid value for 'method.id.lam' (-1.0): λ must be >= 0")
    assert lines[1].startswith(f"idrm-ray: data error: {CORPUS / 'hh_no_assistant.jsonl'}, line 2: HH transcript")
    assert len(lines) == 2


def test_teacher_nli_data_errors_through_the_teacher_loader(tmp_path):
    """NLI rows through `nli_examples` (what `validate_teacher_data` and the fine-tune read):
    the CLI's line, and skip_bad_rows counting the row instead."""
    from idrm_ray.cli import bad_input_line
    from idrm_ray.data import DataError
    from idrm_ray.teacher.assets import nli_examples

    bad = CORPUS / "nli_label_out_of_range.jsonl"
    cfg = load_config(TrainJobConfig, preset="tiny", overrides=[f"teacher.finetune.data={bad}"])
    with pytest.raises(DataError) as info:
        nli_examples(cfg)
    assert bad_input_line(info.value) == (
        f"idrm-ray: data error: {bad}, line 2: label 3 is out of range "
        "(expected 0, 1, 2, entailment/neutral/contradiction, or -1 for unlabeled)")
    skip = load_config(TrainJobConfig, preset="tiny", overrides=[f"teacher.finetune.data={bad}", "data.skip_bad_rows=true",
                                                                 "teacher.finetune.eval_fraction=0"])
    train, _, report = nli_examples(skip)
    assert len(train) == 0 and report.rows_kept == 1 and report.skipped_by_reason == {"label_out_of_range": 1}


def test_skip_bad_rows_lists_train_and_eval_skips_in_the_run_folder(tmp_path):
    from idrm_ray.run.inputs import load_data

    train = tmp_path / "train.jsonl"
    train.write_text((GOOD + "\n") * 5 + (CORPUS / "missing_field.jsonl").read_text()
                     + (CORPUS / "identical.jsonl").read_text())
    cfg = load_config(TrainJobConfig, preset="tiny", overrides=[
        f"data.train={train}", f"data.eval={CORPUS / 'whitespace_only.jsonl'}", "data.skip_bad_rows=true"])
    pairs, evals, counts = load_data(cfg, tmp_path)
    assert (len(pairs), len(evals)) == (5 + 1 + 2, 1)
    assert counts["train"]["data/skipped/missing_field"] == 1 and counts["train"]["data/skipped/identical"] == 1
    assert counts["train"]["data/rows_read"] == 10 and counts["eval"]["data/rows_skipped"] == 1
    listed = [json.loads(x) for x in (tmp_path / "skipped_rows.jsonl").read_text().splitlines()]
    assert [(s["row"], s["reason"]) for s in listed] == [(7, "missing_field"), (10, "identical")]
    eval_listed = [json.loads(x) for x in (tmp_path / "skipped_eval_rows.jsonl").read_text().splitlines()]
    assert [(s["file"], s["row"], s["reason"]) for s in eval_listed] == [
        (str(CORPUS / "whitespace_only.jsonl"), 2, "empty_text")]
