"""The quiet console (issue 15 §6), through the real command line (`python -m idrm_ray.cli
train` in a subprocess, which starts its own local Ray). A module of its own so that `pytest -n 2`
runs it beside test_pipeline.py's shared run instead of after it."""
from __future__ import annotations

# The quiet console (issue 15 §6), through the real command line: a BT-only run (no teacher) of
# 20 steps logged at every step. Its console is the run-folder and log lines, about one
# progress line per 10% of the run, the table and the wall time; Ray's progress bars, worker
# prefixes and library warnings are in <run>/logs/driver.log and Ray's session logs instead.
QUIET_MAX_LINES = 30  # 4 header lines + 11 progress lines + a 3-line table + 1: 19 seen


def test_the_console_is_short_and_the_logs_hold_the_rest(tmp_path):
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "idrm_ray.cli", "train", "--output-dir", str(tmp_path), "run.name=quiet",
            "method.name=bt", "data.max_pairs=160", "data.max_eval_pairs=64", "optim.epochs=1",
            "optim.max_steps=null", "optim.global_batch_size=8", "optim.micro_batch_size=8", "run.log_every=1",
            "run.eval_every=0", "logging.wandb_mode=disabled"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert proc.stderr == "" and len(lines) <= QUIET_MAX_LINES, proc.stdout + proc.stderr
    for noise in ("pid=", "RayTrainWorker", "Running Dataset", "Warning", "INFO"):
        assert noise not in proc.stdout, f"{noise!r} on the console:\n{proc.stdout}"
    logs = tmp_path / "quiet" / "logs"
    assert lines[:2] == [f"[idrm] run folder {tmp_path / 'quiet'}: 160 train / 64 eval pairs, methods ['bt']",
                         f"[idrm] logs: {logs / 'driver.log'} (Ray, libraries, warnings; --verbose shows them here)"]
    progress = [line for line in lines if line.startswith("  bt seed")]
    assert 5 <= len(progress) <= 12 and progress[-1].startswith("  bt seed 42: step 20/20 (100%)"), progress
    assert any(line.startswith("bt ") for line in lines) and lines[-1].startswith("[idrm] wall time")
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    assert any(p.stat().st_size for p in (logs / "ray").glob("worker-*.err")), "Ray's worker logs are linked"
