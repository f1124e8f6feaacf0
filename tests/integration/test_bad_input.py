"""Bad preference data through the real command line (DESIGN.md §5): exit status 2, one stderr
line "idrm-ray: data error: <file>, line N: <problem>", no traceback, and nothing started
(the driver validates data before Ray, the models or any GPU; its first stdout line, the
run-folder line, comes after validation and must not appear).

Each case is a subprocess `python -m idrm_ray.cli train data.train=<file> ...`; they run two at
a time (each is ~5 s of imports on 2 cores) from one module fixture.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

GOOD = '{"prompt": "Q: what does the cat like?", "chosen": " The ball.", "rejected": " A book."}'
HH_GOOD = '{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", "rejected": "\\n\\nHuman: hi\\n\\nAssistant: go away"}'
# name -> (file bytes or None for a missing path, bad row, words the message must contain, which config key)
CASES = {
    "missing_field": ((GOOD + "\n" + '{"prompt": "p", "chosen": "a"}\n').encode(), 2, ["missing field 'rejected'"], "train"),
    "identical": ((GOOD + "\n" + GOOD + "\n" + '{"prompt": "p", "chosen": "same", "rejected": "same "}\n').encode(),
                  3, ["identical"], "train"),
    "invalid_json": ((GOOD + "\n" + '{"prompt": "p", "chosen": "a", "rejected": \n').encode(), 2, ["invalid JSON"], "train"),
    "non_utf8": ((GOOD + "\n").encode() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', 2,
                 ["not valid UTF-8", "0xe9"], "train"),
    "missing_path": (None, None, ["no such file or directory"], "train"),
    "hh_no_assistant": ((HH_GOOD + "\n" + '{"chosen": "\\n\\nHuman: hi there", "rejected": "\\n\\nHuman: hi here"}\n').encode(),
                        2, ["Assistant:", "turn"], "train"),
    "eval_empty_text": ((GOOD + "\n" + '{"prompt": "p", "chosen": "   ", "rejected": "b"}\n').encode(), 2, ["empty"], "eval"),
}
TIMEOUT_S = 120


def _run_case(root, name: str):
    content, _, _, key = CASES[name]
    path = root / f"{name}.jsonl"
    if content is not None:
        path.write_bytes(content)
    data = [f"data.train={path}"] if key == "train" else [f"data.train={root / 'good.jsonl'}", f"data.eval={path}"]
    args = [sys.executable, "-m", "idrm_ray.cli", "train", "--output-dir", str(root / "runs"), *data, f"run.name={name}"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return path, None
    return path, proc


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "good.jsonl").write_text((GOOD + "\n") * 20)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run_case, root, name) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_is_one_line_and_exit_2(cli_results, name):
    path, proc = cli_results[name]
    _, row, words, _ = CASES[name]
    assert proc is not None, f"{name}: the CLI did not finish within {TIMEOUT_S} s"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"{name}: stderr is not one line:\n{proc.stderr}"
    line = lines[0]
    where = f"{path}, line {row}:" if row is not None else f"{path}:"
    assert line.startswith(f"idrm-ray: data error: {where}"), line
    for word in words:
        assert word in line, line
    assert "[idrm] run folder" not in proc.stdout, "the driver got past data validation"
