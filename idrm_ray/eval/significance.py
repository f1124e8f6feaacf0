"""Paired significance for two reward models scored on the same pairs.

- Wilcoxon signed-rank test (the paper's test, at 5%) on per-pair scores of A minus B.
  The default per-pair score is the model's preference probability sigma(r_w - r_l), so a
  pair counts by how confidently each model prefers the chosen response; "margin" uses
  r_w - r_l (only comparable between models on one reward scale), "outcome" the 0/0.5/1
  correctness. Zero differences are dropped (Wilcoxon's rule, scipy's default).
- Percentile bootstrap confidence intervals for each accuracy and for the paired accuracy
  difference (pairs resampled together).
- McNemar's test on the paired correct/incorrect table: exact two-sided binomial p-value on
  the discordant pairs, and the continuity-corrected chi-square alongside. A tie (0.5) is
  "not correct" in this table; how many ties there were is reported.

Pure numpy/scipy; tests check the numbers against scipy and by hand.
"""

from __future__ import annotations

import numpy as np
from scipy import special, stats

PAIR_SCORES = ("prob", "margin", "outcome")


def pair_scores(r_chosen: np.ndarray, r_rejected: np.ndarray, kind: str = "prob") -> np.ndarray:
    diff = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    if kind == "prob":
        return special.expit(diff)
    if kind == "margin":
        return diff
    if kind == "outcome":
        return np.where(diff == 0, 0.5, (diff > 0).astype(np.float64))
    raise ValueError(f"unknown pair score {kind!r}; use one of {', '.join(PAIR_SCORES)}")


def wilcoxon_signed_rank(a: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of paired samples a, b (differences a - b).

    W+ / W- are the rank sums of the positive / negative differences (average ranks for
    ties in |d|, zeros dropped); `statistic` = min(W+, W-) as scipy reports it; `p_value`
    from scipy (exact for small samples without ties, else the normal approximation);
    `effect_size` is the matched-pairs rank-biserial correlation (W+ - W-) / (W+ + W-).
    With no nonzero difference the test is undefined: p = 1, statistic 0."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.shape != np.asarray(b).shape or d.ndim != 1:
        raise ValueError(f"paired samples must be 1-D of equal length, got {np.shape(a)} and {np.shape(b)}")
    nz = d[d != 0]
    out = {"n": int(d.size), "n_nonzero": int(nz.size), "median_difference": float(np.median(d)) if d.size else 0.0}
    if nz.size == 0:
        return {**out, "w_plus": 0.0, "w_minus": 0.0, "statistic": 0.0, "p_value": 1.0, "effect_size": 0.0}
    ranks = stats.rankdata(np.abs(nz))
    w_plus, w_minus = float(ranks[nz > 0].sum()), float(ranks[nz < 0].sum())
    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return {
        **out,
        "w_plus": w_plus,
        "w_minus": w_minus,
        "statistic": float(res.statistic),
        "p_value": float(res.pvalue),
        "effect_size": (w_plus - w_minus) / (w_plus + w_minus),
    }


def _boot_indices(n: int, n_boot: int, rng: np.random.Generator):
    """Index resamples (k, n) in chunks of about 2M entries (RMB-sized sets stay small)."""
    step = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, step):
        yield rng.integers(0, n, size=(min(step, n_boot - start), n))


def bootstrap_ci(
    values: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (e.g. 0/0.5/1 outcomes -> accuracy)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.concatenate([values[idx].mean(axis=1) for idx in _boot_indices(values.size, n_boot, rng)])
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_bootstrap_diff(
    a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Mean of a - b and its percentile CI, resampling pairs (a_i, b_i) together."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = bootstrap_ci(d, n_boot=n_boot, confidence=confidence, seed=seed)
    return {"difference": float(d.mean()) if d.size else float("nan"), "ci": [lo, hi], "confidence": confidence}


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test on two boolean correctness vectors over the same pairs.
    b = A right & B wrong, c = A wrong & B right. Exact: two-sided binomial test of b
    successes in b + c trials at 1/2; chi2: (|b - c| - 1)^2 / (b + c), 1 dof."""
    a, bb = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    table = [[int(np.sum(a & bb)), int(np.sum(a & ~bb))], [int(np.sum(~a & bb)), int(np.sum(~a & ~bb))]]
    b, c = table[0][1], table[1][0]
    n = b + c
    if n == 0:
        return {"table": table, "b": b, "c": c, "p_exact": 1.0, "chi2": 0.0, "p_chi2": 1.0}
    p_exact = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))
    chi2 = (abs(b - c) - 1.0) ** 2 / n
    return {"table": table, "b": b, "c": c, "p_exact": p_exact, "chi2": chi2, "p_chi2": float(stats.chi2.sf(chi2, 1))}


def compare_models(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    *,
    score: str = "prob",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """A vs B from their (r_chosen, r_rejected) on the same pairs, in one JSON-able dict."""
    (aw, al), (bw, bl) = a, b
    if len(aw) != len(bw):
        raise ValueError(f"models were scored on different pair counts: {len(aw)} vs {len(bw)}")
    out_a, out_b = pair_scores(aw, al, "outcome"), pair_scores(bw, bl, "outcome")
    wil = wilcoxon_signed_rank(pair_scores(aw, al, score), pair_scores(bw, bl, score))
    mc = mcnemar(out_a == 1.0, out_b == 1.0)
    return {
        "n_pairs": int(len(aw)),
        "accuracy_a": float(out_a.mean()),
        "accuracy_b": float(out_b.mean()),
        "ci_a": list(bootstrap_ci(out_a, n_boot=n_boot, confidence=confidence, seed=seed)),
        "ci_b": list(bootstrap_ci(out_b, n_boot=n_boot, confidence=confidence, seed=seed + 1)),
        "accuracy_difference": paired_bootstrap_diff(out_a, out_b, n_boot=n_boot, confidence=confidence, seed=seed + 2),
        "wilcoxon": {"score": score, **wil, "significant": wil["p_value"] < alpha},
        "mcnemar": {
            **mc,
            "significant": mc["p_exact"] < alpha,
            "ties_a": int(np.sum(out_a == 0.5)),
            "ties_b": int(np.sum(out_b == 0.5)),
        },
        "alpha": alpha,
    }


# -- best-of-N sets: per-prompt outcomes and leaderboard numbers ------------------------------


def _weights(n_clusters: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, K) multiplicities of K clusters drawn with replacement."""
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot).astype(np.float64)


def leaderboard_draws(sections: list, *, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot,) leaderboard numbers (mean over sections) with clusters resampled within each
    section; `sections` holds (fn of (B, K) weights -> (B,), K) as `bon_results` builds them."""
    rng = np.random.default_rng(seed)
    return np.mean([fn(_weights(k, n_boot, rng)) for fn, k in sections], axis=0)


def leaderboard_bootstrap(sections: list, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0):
    if not sections:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(leaderboard_draws(sections, n_boot=n_boot, seed=seed), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def compare_prompt_outcomes(
    a: dict, b: dict, *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, alpha: float = 0.05
) -> dict:
    """A vs B on the same prompts of a best-of-N set. `a` / `b`: {"outcome": (P,) per-prompt
    outcomes in [0, 1], "score": (P,) the per-prompt score Wilcoxon ranks, "sections": the
    leaderboard sections or []}. Same layout as `compare_models` (McNemar on outcome == 1),
    plus the paired bootstrap of the leaderboard difference (the same clusters drawn for both)."""
    out_a, out_b = np.asarray(a["outcome"], dtype=np.float64), np.asarray(b["outcome"], dtype=np.float64)
    if out_a.shape != out_b.shape:
        raise ValueError(f"models were scored on different prompt counts: {out_a.size} vs {out_b.size}")
    wil = wilcoxon_signed_rank(a["score"], b["score"])
    mc = mcnemar(out_a == 1.0, out_b == 1.0)
    res = {
        "n_pairs": int(out_a.size),
        "accuracy_a": float(out_a.mean()),
        "accuracy_b": float(out_b.mean()),
        "ci_a": list(bootstrap_ci(out_a, n_boot=n_boot, confidence=confidence, seed=seed)),
        "ci_b": list(bootstrap_ci(out_b, n_boot=n_boot, confidence=confidence, seed=seed + 1)),
        "accuracy_difference": paired_bootstrap_diff(out_a, out_b, n_boot=n_boot, confidence=confidence, seed=seed + 2),
        "wilcoxon": {"score": a.get("score_kind", "outcome"), **wil, "significant": wil["p_value"] < alpha},
        "mcnemar": {
            **mc,
            "significant": mc["p_exact"] < alpha,
            "ties_a": int(np.sum((out_a > 0) & (out_a < 1))),  # partial credit: "not correct" here
            "ties_b": int(np.sum((out_b > 0) & (out_b < 1))),
        },
        "alpha": alpha,
    }
    if a.get("sections") and b.get("sections"):
        diff = leaderboard_draws(a["sections"], n_boot=n_boot, seed=seed + 3) - leaderboard_draws(
            b["sections"], n_boot=n_boot, seed=seed + 3
        )
        q = (1.0 - confidence) / 2
        value = float(np.mean([fn(np.ones((1, k)))[0] for fn, k in a["sections"]])) - float(
            np.mean([fn(np.ones((1, k)))[0] for fn, k in b["sections"]])
        )
        lo, hi = np.quantile(diff, [q, 1.0 - q])
        res["leaderboard_difference"] = {"difference": value, "ci": [float(lo), float(hi)], "confidence": confidence}
    return res
