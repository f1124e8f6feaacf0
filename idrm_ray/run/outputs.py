"""The run folder: per method its checkpoint, metrics and learning curve; summary.json
and a printed table at the top.

    <run>/summary.json            {"runs": [{"method", "eval_accuracy", "pairs_per_s",
                                   "step_time_s", "teacher_wait_fraction", "checkpoint"}, ...]}
    <run>/<method>/checkpoint/    HF reward model (OpenRLHF-loadable)
    <run>/<method>/metrics.jsonl  one row per logged step
    <run>/<method>/metrics.csv
    <run>/<method>/curve.png      loss components and eval accuracy against the step
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from idrm_ray import console
from idrm_ray.train import checkpointing as ckpt

SUMMARY_KEYS = ("eval_accuracy", "eval_loss", "pairs_per_s", "step_time_s", "teacher_wait_fraction")


def collect_method(out: Path, result, *, method: str, wall_s: float) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as d:
        ckpt.copy_tree(ckpt.model_dir(d), out / "checkpoint")
        history = ckpt.read_progress(d).history
    write_metrics(out, history)
    plot_curve(out / "curve.png", history, title=method)
    final = dict(result.metrics or {})
    train_rows = [r for r in history if r.get("pairs_per_s") is not None]
    row = {
        "method": method,
        "eval_accuracy": final.get("eval_accuracy"),
        "eval_loss": final.get("eval_loss"),
        "pairs_per_s": _mean(r["pairs_per_s"] for r in train_rows),
        "step_time_s": _mean(r["step_time_s"] for r in train_rows),
        "teacher_wait_fraction": _mean(r["teacher_wait_fraction"] for r in train_rows),
        "final_loss": train_rows[-1].get("loss") if train_rows else None,
        "first_loss": train_rows[0].get("loss") if train_rows else None,
        "steps": final.get("step"),
        "pairs_seen": final.get("pairs_seen"),
        "nonfinite_skipped": final.get("nonfinite_skipped", 0),
        "wall_time_s": wall_s,
        "checkpoint": str(out / "checkpoint"),
    }
    for key in ("teacher_map_bytes", "token_fp32_map_bytes"):
        if train_rows and key in train_rows[0]:
            row[f"{key}_per_pair"] = _mean(r[key] for r in train_rows)
    for key in ("l_id", "l_intra", "l_inter"):
        if train_rows and key in train_rows[0]:
            row[f"first_{key}"], row[f"final_{key}"] = train_rows[0][key], train_rows[-1][key]
    return row


def _mean(values) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None


def write_metrics(out: Path, history: list[dict]) -> None:
    with open(out / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    keys = sorted({k for row in history for k in row})
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def plot_curve(path: Path, history: list[dict], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in history]
    for key in ("loss", "l_bt", "l_id"):
        pts = [(s, r[key]) for s, r in zip(steps, history) if r.get(key) is not None]
        if pts:
            ax_loss.plot(*zip(*pts), label=key)
    ax_loss.set(xlabel="step", ylabel="loss", title=f"{title}: training loss")
    ax_loss.legend()
    pts = [(s, r["eval_accuracy"]) for s, r in zip(steps, history) if r.get("eval_accuracy") is not None]
    if pts:
        ax_acc.plot(*zip(*pts), marker="o")
    ax_acc.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax_acc.set(xlabel="step", ylabel="eval accuracy", title=f"{title}: eval accuracy", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(runs: list[dict]) -> str:
    head = f"{'method':<8}{'eval acc':>10}{'eval loss':>11}{'loss 0->T':>16}{'L_ID 0->T':>16}{'pairs/s':>10}{'step s':>9}{'wait':>7}"
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(
            f"{r['method']:<8}{_f(r['eval_accuracy'], 3):>10}{_f(r['eval_loss'], 3):>11}"
            f"{_f(r.get('first_loss'), 3) + '->' + _f(r.get('final_loss'), 3):>16}"
            f"{_f(r.get('first_l_id'), 3) + '->' + _f(r.get('final_l_id'), 3):>16}"
            f"{_f(r['pairs_per_s'], 1):>10}{_f(r['step_time_s'], 3):>9}{_f(r['teacher_wait_fraction'], 2):>7}"
        )
    return "\n".join(lines)


def _f(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write_summary(run_dir: Path, summary: dict) -> None:
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.result_table(format_table(summary["runs"]))
    print_tiny_student_note(run_dir, summary["runs"])
    console.info(f"[idrm] wall time {summary['wall_time_s']:.1f} s; summary: {run_dir / 'summary.json'}")


STUDY_COMMAND = "idrm-ray compare --preset study_real --methods bt,id --seeds 0,1,2"


def tiny_student_note(student: str | None) -> str:
    """One line under a BT/ID table whose student is the built-in tiny random-init model: it
    cannot show ID's effect, and the command that can. "" for any other student."""
    if student != "tiny":
        return ""
    return ("[idrm] note: the tiny random-init student cannot learn the facts ID steers its attention toward, so "
            "BT and ID differ here by noise only; ID's effect on a real pretrained student (SmolLM2-135M, OOD "
            f"stress sets, ~45 min on 2 CPU cores): {STUDY_COMMAND}")


def print_tiny_student_note(run_dir: Path, runs: list[dict]) -> None:
    """The note under a table of two or more methods, student read from the run's config.yaml
    (JSON, written by the driver)."""
    try:
        student = json.loads((run_dir / "config.yaml").read_text())["student"]["name_or_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if len(runs) > 1 and tiny_student_note(student):
        console.info(tiny_student_note(student))
