"""Two Ray Train workers under DeepSpeed ZeRO-3 (CPU, gloo) agree with one worker.

The comparison has to survive the streaming split: which worker gets which pairs, and in
what order, is decided by Ray Data at run time. So the training set is ONE bundled pair
repeated 68 times: every micro-batch, on any worker, holds copies of the same pair, and an
optimizer step's gradient is that pair's gradient g(θ) whatever the split, PROVIDED the
pipeline normalises by the global count of real pairs, accumulates the right number of
micro-batches, steps the optimizer and the LR schedule once per global batch, and
consolidates ZeRO-3 shards correctly on save. Same init (seeded tiny student), same global
batch (8 = 4 x 2 accumulation on one worker, 4 x 1 x 2 workers), same 8 steps, lr 1e-3,
cosine schedule. The eval set is 32 distinct bundled eval pairs, so eval loss checks the
whole model.

68 pairs leave the two workers' shards uneven (the encode stage emits blocks of up to 64 rows
and the split hands out whole blocks), so one worker runs out within the 8 steps and keeps
stepping on zero-weight fillers (`ingest.synced_batches`) while metrics are logged every step:
the ragged end, its normalisation and its collectives are part of what must match (this is
the case that deadlocked before step_metrics kept every rank's metric keys alike).

Ray Train fits only where Ray is what is checked (issue 15 §5): the two-worker ZeRO-3 run (ID
with gradient checkpointing) streams through Ray Data's split into two Ray Train workers.
InfoRM under ZeRO-3 is a one-rank DeepSpeed run of the local loop (`idrm-ray train --local` in a
subprocess): its IB head is partitioned and gathered with one rank as with two. The two-worker run
is the real command line too, starting its own local Ray as a user's first run does, and its
console is the suite's quiet-console check (issue 15 §6; this replaced test_console_cli.py, whose
BT-only command line cost a second Ray start and fit). The one-worker
references are in-process runs of the same loop (`run.local`), so id_zero3 against id_one_worker is
also the suite's check that the loop gives the same numbers in this process and under Ray Train
(issue 15 §3), with the two run folders' layouts (test_local_run_folder_has_the_ray_run_layout). Left out
as not distinct: ZeRO-2 and plain-BT ZeRO-3 under Ray. ID's L_BT under ZeRO-3 is BT's loss
under ZeRO-3 plus the capture; ZeRO-2 against one process is test_strategy.py's (no Ray), and
ZeRO-2 under Ray Train, with per-rank optimizer shards saved and restored, is test_cluster.py's (across simulated nodes).

Tolerances (fp32), the same reasoning and numbers as test_strategy.py (which checks the
strategies alone, without Ray): the runs differ only in float summation order (two 4-row
means averaged by gloo vs a 4+4 accumulation; ZeRO's flat buckets), ~1e-7 relative.
- training loss (`l_bt`, the per-pair mean) per step and eval loss: rtol 1e-4;
- parameters, globally: |run - ref| / |ref - init| <= 1e-3 (a real error, e.g. a missed or
  doubled step, a wrong scale feeding AdamW's eps, a lost shard, is of order 1);
- parameters, per element: max |run - ref| <= 2e-4. AdamW moves an element whose true
  gradient is ~0 by up to ~1e-2 lr per step on summation noise of ~1e-10 against eps 1e-8,
  so 8 steps can differ by up to ~8e-5 (observed over runs: ZeRO-2 <= 3e-7, ZeRO-3 <= 4.4e-5,
  on single elements). A skipped or doubled step moves ordinary elements by ~lr = 1e-3, 5x the bound.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from idrm_ray.data import bundled_path

STEPS, PAIRS, EVAL_PAIRS = 8, 68, 32
RTOL_LOSS, REL_PARAMS, ATOL_PARAMS = 1e-4, 1e-3, 2e-4
FIT_TIMEOUT_S = 300  # ~15-30 s each on 2 cores; a hang fails, not waits
COMMON = (
    "method.name=bt", f"optim.max_steps={STEPS}", "optim.global_batch_size=8", "optim.micro_batch_size=4",
    "optim.lr=1e-3", "optim.warmup_ratio=0.03", "optim.schedule=cosine", "run.log_every=1", "run.eval_every=0",
    "run.checkpoint_every=4",
)
ONE = ("resources.num_workers=1", "deepspeed.enabled=false", "run.local=true")  # in-process reference
ZERO3 = ("resources.num_workers=2", "deepspeed.enabled=true", "deepspeed.zero_stage=3")
# ID with gradient checkpointing: the Q/K capture under ZeRO-3 partitions and recomputed blocks.
# The teacher is the seeded random tiny encoder (no fine-tune), so every run gets the same maps.
ID = ("method.name=id", "method.compare_bt=false", "student.gradient_checkpointing=true", "teacher.name_or_path=tiny",
      "method.id.top_n=2")
INFORM = ("method.name=inform", "method.compare_bt=false", "method.inform.latent_dim=16")
# InfoRM under ZeRO-3 is a one-rank DeepSpeed run of the local loop, in a subprocess of its own
# (`idrm-ray train --local`, so DeepSpeed's process group never lives in pytest's process): what it
# checks, the IB head's parameters partitioned outside a module call and gathered to be folded on
# save, holds with one rank, and the split across Ray Train workers is id_zero3's.
ZERO3_LOCAL = ("resources.num_workers=1", "deepspeed.enabled=true", "deepspeed.zero_stage=3", "run.local=true")
RUNS = {  # name -> (method folder, overrides)
    "one_worker": ("bt", ONE),
    "id_one_worker": ("id", ONE + ID),
    "id_zero3": ("id", ZERO3 + ID),
    "inform_zero3": ("inform", ZERO3_LOCAL + INFORM),
}
# Run by the real command line (`python -m idrm_ray.cli train` in a subprocess); the others in this
# process. id_zero3 thus starts its own local Ray, as a user's first run does, and its console is
# the quiet-console check (issue 15 §6, test_the_console_is_short_and_the_logs_hold_the_rest): a
# DeepSpeed ZeRO-3 run with the teacher stage, the noisiest the product has, logged at every step.
# inform_zero3 (one rank, no Ray; ~10 s) runs beside the others: id_zero3's Ray start-up leaves
# a core idle for much of its ~40 s.
CLI_RUNS = {"id_zero3", "inform_zero3"}
BESIDE = ("inform_zero3",)  # started first, collected last


def _write_data(root: Path) -> tuple[Path, Path]:
    train_lines = bundled_path("pref_train").read_text(encoding="utf-8").splitlines()
    eval_lines = bundled_path("pref_eval").read_text(encoding="utf-8").splitlines()
    train, evals = root / "same_pair.jsonl", root / "eval32.jsonl"
    train.write_text((train_lines[0] + "\n") * PAIRS, encoding="utf-8")
    evals.write_text("\n".join(eval_lines[:EVAL_PAIRS]) + "\n", encoding="utf-8")
    return train, evals


@pytest.fixture(scope="module")
def runs(guard, make_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("zero")
    train, evals = _write_data(root)
    overrides = {name: (*COMMON, f"data.train={train}", f"data.eval={evals}", *extra)
                 for name, (_, extra) in RUNS.items()}
    beside = {name: _cli_start(root, name, overrides[name]) for name in BESIDE}
    try:
        return _collect(root, overrides, beside, guard, make_config)
    finally:
        for proc in beside.values():  # a failed run above leaves no process behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _collect(root: Path, overrides: dict, beside: dict, guard, make_config) -> dict:
    from idrm_ray.run.driver import run_train

    out = {}
    for name in sorted(RUNS, key=lambda n: n in BESIDE):
        method = RUNS[name][0]
        cfg = make_config(root, name, *overrides[name])
        console = None
        if name in CLI_RUNS:
            summary, console = _cli_finish(root, name, beside.get(name) or _cli_start(root, name, overrides[name]))
        else:
            summary = guard(lambda: run_train(cfg), timeout_s=FIT_TIMEOUT_S, what=f"run_train {name}")
        run_dir = Path(summary["run_dir"])
        out[name] = {
            "run": summary["runs"][0], "lam": cfg.method.id.lam, "console": console,
            "history": [json.loads(line) for line in (run_dir / method / "metrics.jsonl").read_text().splitlines()],
            "run_dir": run_dir, "init": load_file(run_dir / "assets" / "student" / "model.safetensors"),
            "final": load_file(run_dir / method / "checkpoint" / "model.safetensors"),
        }
    return out


def _cli_start(root: Path, name: str, overrides: tuple[str, ...]):
    """`idrm-ray train` in a subprocess (the embedded default's preset, as make_config's), with a
    local Ray of its own where it starts one (no RAY_ADDRESS); its console goes to two files (two
    such processes at once must not block on a full pipe)."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "idrm_ray.cli", "train", "--output-dir", str(root), f"run.name={name}", *overrides]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "DS_ACCELERATOR": "cpu"}
    with open(root / f"{name}.stdout", "w") as out, open(root / f"{name}.stderr", "w") as err:
        return subprocess.Popen(args, stdout=out, stderr=err, text=True, env=env, cwd=root)


def _cli_finish(root: Path, name: str, proc):
    """The run's summary and its finished process (stdout and stderr as text)."""
    import subprocess

    try:
        proc.wait(timeout=FIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, (root / f"{name}.stdout").read_text(),
                                       (root / f"{name}.stderr").read_text())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((root / name / "summary.json").read_text()), done


def _train_losses(history: list[dict], key: str = "l_bt") -> dict[int, float]:
    """Per-step mean BT loss. `l_bt` rather than `loss`: see test_logged_loss_is_a_per_pair_mean."""
    return {row["step"]: row[key] for row in history if row.get("pairs")}


def _pairs_per_step(history: list[dict]) -> list[int]:
    return [row["pairs"] for row in history if row.get("pairs")]


def test_reference_run_trained(runs):
    ref = runs["one_worker"]
    assert ref["run"]["steps"] == STEPS and ref["run"]["pairs_seen"] == STEPS * 8
    assert _pairs_per_step(ref["history"]) == [8] * STEPS
    losses = _train_losses(ref["history"])
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1] - 0.05, f"one pair, 8 steps at lr 1e-3 must fit it: {losses}"
    moved = sum(float((ref["final"][k] - ref["init"][k]).norm() ** 2) for k in ref["init"]) ** 0.5
    assert moved > 1e-3


@pytest.mark.parametrize("name,ref_name", [("id_zero3", "id_one_worker")])
def test_two_workers_match_one_worker(runs, name, ref_name):
    ref, run = runs[ref_name], runs[name]
    assert run["run"]["steps"] == STEPS
    pairs = _pairs_per_step(run["history"])
    assert run["run"]["pairs_seen"] == sum(pairs) and len(pairs) == STEPS
    assert min(pairs) < 8, f"{name}: no step ran on a filler, the ragged end was not exercised: {pairs}"
    assert set(run["init"]) == set(ref["init"])
    for key in ref["init"]:  # same seeded init, so differences below come from training
        assert torch.equal(run["init"][key], ref["init"][key]), key

    for key in ("loss", "l_bt", "l_id") if name.startswith("id") else ("loss", "l_bt"):
        ref_losses, losses = _train_losses(ref["history"], key), _train_losses(run["history"], key)
        assert sorted(losses) == sorted(ref_losses)
        for step, value in ref_losses.items():
            assert losses[step] == pytest.approx(value, rel=RTOL_LOSS), f"{key} step {step}"
    assert run["run"]["eval_loss"] == pytest.approx(ref["run"]["eval_loss"], rel=RTOL_LOSS)
    assert run["run"]["eval_accuracy"] == ref["run"]["eval_accuracy"]
    for key in ("steps", "nonfinite_skipped"):  # pairs_seen differs: the ragged end's fillers count no pairs
        assert run["run"][key] == ref["run"][key], key

    # The checkpoint holds the consolidated weights (ZeRO-3: gathered from both ranks' shards).
    assert set(run["final"]) == set(ref["final"])
    diff = sum(float((run["final"][k] - ref["final"][k]).norm() ** 2) for k in ref["final"]) ** 0.5
    update = sum(float((ref["final"][k] - ref["init"][k]).norm() ** 2) for k in ref["final"]) ** 0.5
    worst = max(float((run["final"][k] - ref["final"][k]).abs().max()) for k in ref["final"])
    assert diff / update <= REL_PARAMS, f"{name}: |run - ref| / |update| = {diff / update:.2e}"
    assert worst <= ATOL_PARAMS, f"{name}: max elementwise difference {worst:.2e}"


@pytest.mark.parametrize("name", ["one_worker", "id_one_worker", "id_zero3"])
def test_logged_loss_is_a_per_pair_mean(runs, name):
    """The logged `loss` is L_BT (+ λ·L_ID for ID), per-pair means over all ranks: with two
    workers and a ragged end (fillers of weight 0) too."""
    history, lam = runs[name]["history"], runs[name]["lam"]
    loss, l_bt = _train_losses(history, "loss"), _train_losses(history, "l_bt")
    l_id = _train_losses(history, "l_id") if name.startswith("id") else dict.fromkeys(l_bt, 0.0)
    for step, value in l_bt.items():
        want = value + lam * l_id[step]
        assert loss[step] == pytest.approx(want, rel=RTOL_LOSS), f"step {step}: loss {loss[step]} vs {want}"


def test_id_trains_under_zero3_with_gradient_checkpointing(runs):
    """L_ID is computed from Q/K captured under ZeRO-3 partitions with recomputed blocks, and
    it falls: the distillation gradient reaches W_Q/W_K through the checkpointed blocks."""
    l_id = _train_losses(runs["id_zero3"]["history"], "l_id")
    assert all(v == v and v > 0 for v in l_id.values()), l_id
    assert l_id[STEPS] < l_id[1], l_id


def test_inform_trains_under_zero3(runs):
    """InfoRM's IB head under ZeRO-3 (its decoder weight is an empty partition outside a module
    call): the run trains, its KL is logged, and the checkpoint holds the folded, gathered head.
    Its training samples z = μ + σε, so it is not compared number for number with one worker."""
    run = runs["inform_zero3"]
    losses, kl = _train_losses(run["history"]), _train_losses(run["history"], "kl")
    assert losses[STEPS] < losses[1], losses  # z is sampled, so less steadily than plain BT's > 0.05 drop
    assert all(v == v for v in kl.values()) and len(kl) == STEPS
    score = run["final"]["score.weight"]
    assert score.shape == run["init"]["score.weight"].shape and float(score.abs().sum()) > 0
    assert not torch.equal(score, run["init"]["score.weight"]), "the folded IB head did not reach the checkpoint"
    assert not any(k.startswith("head.") for k in run["final"])


def test_local_run_folder_has_the_ray_run_layout(runs):
    """eval, serve and compare read a local run (`run.local`, the in-process loop) as they read
    a Ray Train run: the same files, checkpoints where Ray Train keeps them
    (<storage>/<name>/checkpoint_*, the latest `keep_checkpoints`) with the same contents."""
    from idrm_ray.core.reward_model import load_reward_model

    local_dir, ray_dir = runs["id_one_worker"]["run_dir"], runs["id_zero3"]["run_dir"]
    for rel in ("summary.json", "config.yaml", "id/metrics.jsonl", "id/metrics.csv", "id/curve.png"):
        assert (local_dir / rel).is_file() and (ray_dir / rel).is_file(), rel
    assert {p.name for p in (local_dir / "id" / "checkpoint").iterdir()} == {
        p.name for p in (ray_dir / "id" / "checkpoint").iterdir()}
    for run_dir, name in ((local_dir, "id_one_worker"), (ray_dir, "id_zero3")):
        kept = sorted(p for p in (run_dir / "ray_storage" / f"{name}-id").glob("checkpoint_*") if p.is_dir())
        assert [json.loads((c / "progress.json").read_text())["step"] for c in kept] == [4, STEPS], name
        assert {p.name for p in kept[-1].iterdir()} == {"model", "train_state", "progress.json", "metrics.jsonl"}
    model = load_reward_model(str(local_dir / "id" / "checkpoint"), dtype=torch.float32)
    assert model.config.num_labels == 1


# The quiet console (issue 15 §6) of id_zero3's command line: the run-folder and log lines, about
# one progress line per step here (8 steps, logged at every step), the table and the wall time; Ray's
# progress bars, worker prefixes, DeepSpeed's and the libraries' warnings are in <run>/logs/driver.log
# and Ray's session logs instead.
# About 16 seen: the run-folder, log, dashboard and worker-log lines, 8 progress lines, the 3-line table, the wall time.
QUIET_MAX_LINES = 30


def test_the_console_is_short_and_the_logs_hold_the_rest(runs):
    proc, run_dir = runs["id_zero3"]["console"], runs["id_zero3"]["run_dir"]
    print(proc.stdout)
    lines = proc.stdout.splitlines()
    assert proc.stderr == "" and len(lines) <= QUIET_MAX_LINES, proc.stdout + proc.stderr
    for noise in ("pid=", "RayTrainWorker", "Running Dataset", "Warning", "WARNING", "INFO", "DeepSpeed"):
        assert noise not in proc.stdout, f"{noise!r} on the console:\n{proc.stdout}"
    logs = run_dir / "logs"
    assert lines[:2] == [f"[idrm] run folder {run_dir}: {PAIRS} train / {EVAL_PAIRS} eval pairs, methods ['id']",
                         f"[idrm] logs: {logs / 'driver.log'} (Ray, libraries, warnings; --verbose shows them here)"]
    progress = [line for line in lines if line.startswith("  id seed")]
    assert 4 <= len(progress) <= STEPS and progress[-1].startswith(f"  id seed 42: step {STEPS}/{STEPS} (100%)"), progress
    assert any(line.startswith("id ") for line in lines) and lines[-1].startswith("[idrm] wall time")
    assert "Started a local Ray instance" in (logs / "driver.log").read_text()
    assert any(p.stat().st_size for p in (logs / "ray").glob("worker-*.err")), "Ray's worker logs are linked"
