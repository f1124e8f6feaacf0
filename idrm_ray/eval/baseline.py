"""`idrm-ray eval --baseline`: the same data scored by another checkpoint, or read from
its eval folder's `scores.jsonl`, and the paired significance tests against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from idrm_ray.core.scoring import split_pairs
from idrm_ray.eval.bestofn import CompletionSet, split_scores
from idrm_ray.eval.layouts import EvalSet
from idrm_ray.eval.model import EvalError, EvalOptions, LoadedModel, default_label
from idrm_ray.eval.results import read_scores
from idrm_ray.eval.significance import compare_models

__all__ = ["compare_baseline", "compare_bestofn_baseline"]


def _baseline_scores_file(baseline: str, name: str) -> Path | None:
    root = Path(baseline)
    for path in (root / name / "scores.jsonl", root / "scores.jsonl"):
        if path.is_file():
            return path
    return None


def compare_baseline(opts: EvalOptions, evals: EvalSet, name: str, ours: tuple[np.ndarray, np.ndarray]) -> dict:
    scores_file = _baseline_scores_file(opts.baseline, name)
    if scores_file is not None:
        ids, b_w, b_l = read_scores(scores_file)
        if ids != evals.ids:
            raise EvalError(
                f"{scores_file}: its pairs differ from {evals.source} "
                f"({len(ids)} vs {len(evals)} pairs, or another order)"
            )
        source = str(scores_file)
    elif Path(opts.baseline, "config.json").is_file() or not Path(opts.baseline).exists():
        other = LoadedModel(opts.baseline, opts)
        b_w, b_l = split_pairs(other.score(other.encode(evals)[0]))
        source = opts.baseline
    else:
        raise EvalError(
            f"--baseline {opts.baseline}: neither a checkpoint (config.json) "
            f"nor an eval folder with {name}/scores.jsonl"
        )
    out = compare_models(ours, (b_w, b_l), score=opts.pair_score, n_boot=opts.n_boot, seed=opts.seed)
    return {"baseline": source, "baseline_label": default_label(opts.baseline), **out}


def compare_bestofn_baseline(opts: EvalOptions, cset: CompletionSet, name: str, scores: list) -> dict:
    from idrm_ray.eval.bon_results import is_bon_scores, read_bon_scores, significance_inputs
    from idrm_ray.eval.significance import compare_prompt_outcomes

    scores_file = _baseline_scores_file(opts.baseline, name)
    if scores_file is not None:
        base = read_bon_scores(scores_file) if is_bon_scores(scores_file) else None
        if base is None or base["ids"] != cset.ids or [len(s) for s in base["scores"]] != [c.n for c in cset.items]:
            raise EvalError(f"{scores_file}: its prompts or completions differ from {cset.source}")
        b_scores, source = base["scores"], str(scores_file)
    elif Path(opts.baseline, "config.json").is_file() or not Path(opts.baseline).exists():
        other = LoadedModel(opts.baseline, opts)
        b_scores, source = split_scores(other.score(other.encode(cset)[0]), cset), opts.baseline
    else:
        raise EvalError(
            f"--baseline {opts.baseline}: neither a checkpoint (config.json) "
            f"nor an eval folder with {name}/scores.jsonl"
        )
    k = [c.num_correct for c in cset.items]
    a = significance_inputs(cset.layout, cset.groups, cset.ids, scores, k, opts.pair_score)
    b = significance_inputs(cset.layout, cset.groups, cset.ids, b_scores, k, opts.pair_score)
    out = compare_prompt_outcomes(a, b, n_boot=opts.n_boot, seed=opts.seed)
    return {"baseline": source, "baseline_label": default_label(opts.baseline), **out}
