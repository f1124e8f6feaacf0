"""Evaluation and attention diagnostics of trained reward models (issue 6).

    from idrm_ray.eval import load_eval_set, run_eval, EvalOptions, compare_runs
    evals = load_eval_set("allenai/reward-bench")                  # RewardBench, RMB, HH, generic
    cset = load_eval_set("allenai/reward-bench-2")                 # best-of-N: RB2, RM-Bench, RMB BoN
    run_eval(EvalOptions(checkpoint="runs/default/id/checkpoint", data=("pairs.jsonl",), diagnostics=True))
    compare_runs(["runs/default", "runs/other"])

Modules: `layouts` (reading and validating eval sets), `rewardbench` (the subset-to-section
table, from allenai/reward-bench), `rmb` (RMB pairwise and BoN rows), `bestofn` (sets of
prompts with N completions, batched encoding), `rewardbench2` and `rmbench` (those benchmarks'
official rules), `bon_results` (best-of-N metrics and scores files), `ray_scoring` (the reward
scorer, `core/scoring.py`, as a Ray Data actor pool on a Ray the caller started),
`significance` (Wilcoxon, bootstrap, McNemar), `diagnostics` (the paper's Section 2 analyses),
`plots`, `model` (the checkpoint under evaluation, the options), `baseline` (--baseline),
`dataset_report` (one eval folder's report.md), `report` (comparing runs), `runner` (the eval
command), `commands` (its CLI flags).
"""

_LAZY = {  # imported on first use: `idrm-ray --help` should not pay for torch
    "EvalSet": "layouts",
    "load_eval_set": "layouts",
    "compare_runs": "report",
    "EvalOptions": "model",
    "run_eval": "runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"idrm_ray.eval.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'idrm_ray.eval' has no attribute {name!r}")


__all__ = ["EvalOptions", "EvalSet", "compare_runs", "load_eval_set", "run_eval"]
