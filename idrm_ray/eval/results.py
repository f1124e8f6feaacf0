"""What one eval writes per data set: accuracy metrics (per group, RewardBench sections, RMB
goals), the headline numbers reports compare, and the per-pair `scores.jsonl`.

`scores.jsonl` rows: {"index", "id", "group", "r_chosen", "r_rejected", "outcome"}, in data
order; two eval folders on the same data have equal id lists, which is what the paired tests
(`--baseline EVAL_DIR`, `idrm-ray report`) check before comparing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from idrm_ray.eval import rewardbench
from idrm_ray.eval.layouts import EvalSet
from idrm_ray.eval.rmb import GOALS
from idrm_ray.core.scoring import group_accuracy, pair_outcomes
from idrm_ray.eval.significance import bootstrap_ci


def accuracy_metrics(evals: EvalSet, r_w: np.ndarray, r_l: np.ndarray, *, n_boot: int, seed: int) -> dict:
    """Accuracy with its 95% bootstrap CI and ties; per group; RewardBench sections and score
    (`rewardbench.section_scores`); RMB goals (the pairs of each goal pooled)."""
    outcomes = pair_outcomes(r_w, r_l)
    out = {
        "n_pairs": len(evals),
        "accuracy": float(outcomes.mean()),
        "accuracy_ci95": list(bootstrap_ci(outcomes, n_boot=n_boot, seed=seed)),
        "ties": int(np.sum(outcomes == 0.5)),
        "mean_margin": float(np.mean(r_w - r_l)),
    }
    groups = group_accuracy(outcomes, evals.groups)
    if groups:
        out["groups"] = groups
    if evals.layout == "rewardbench":
        subset_acc = {g: v["accuracy"] for g, v in groups.items()}
        out["sections"] = rewardbench.section_scores(subset_acc)
        out["rewardbench_score"] = rewardbench.overall_score(out["sections"])
        out["unknown_subsets"] = rewardbench.unknown_subsets(groups)
    if evals.layout == "rmb":
        goal_of = {g: next(goal for goal in GOALS if goal in g.split("/")) for g in groups}
        pooled = {goal: [o for o, g in zip(outcomes, evals.groups) if goal_of[g] == goal] for goal in GOALS}
        out["goals"] = {goal: {"n": len(v), "accuracy": float(np.mean(v))} for goal, v in pooled.items() if v}
    return out


def headline(results: dict) -> dict[str, float]:
    """The numbers a comparison table shows for one data set."""
    if results.get("best_of_n"):
        from idrm_ray.eval.bon_results import bestofn_headline

        return bestofn_headline(results)
    out = {"accuracy": results["accuracy"]}
    out.update({f"RMB {k}": v["accuracy"] for k, v in results.get("goals", {}).items()})
    out.update(dict(results.get("sections", {})))
    if results.get("rewardbench_score") is not None:
        out["RewardBench score"] = results["rewardbench_score"]
    return out


# -- scores files -----------------------------------------------------------------------------


def write_scores(path: Path, evals: EvalSet, r_w: np.ndarray, r_l: np.ndarray) -> None:
    outcomes = pair_outcomes(r_w, r_l)
    with path.open("w", encoding="utf-8") as f:
        for i in range(len(evals)):
            row = {
                "index": i,
                "id": evals.ids[i],
                "group": evals.groups[i],
                "r_chosen": float(r_w[i]),
                "r_rejected": float(r_l[i]),
                "outcome": float(outcomes[i]),
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_scores(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return (
        [str(r["id"]) for r in rows],
        np.array([r["r_chosen"] for r in rows]),
        np.array([r["r_rejected"] for r in rows]),
    )
