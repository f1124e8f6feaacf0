"""Wilcoxon, bootstrap and McNemar against scipy and against numbers worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from idrm_ray.eval.significance import (
    bootstrap_ci,
    compare_models,
    mcnemar,
    pair_scores,
    paired_bootstrap_diff,
    wilcoxon_signed_rank,
)


def test_wilcoxon_by_hand_and_scipy():
    a = np.array([9.0, 8.0, 7.0, 6.0, 5.5, 5.0])
    b = np.array([5.0, 6.0, 8.0, 6.0, 4.5, 3.0])
    # d = 4, 2, -1, 0 (dropped), 1, 2 -> |d| ranks: 1,1 -> 1.5 each; 2,2 -> 3.5 each; 4 -> 5
    # W+ = 5 + 3.5 + 1.5 + 3.5 = 13.5, W- = 1.5, statistic = min = 1.5
    got = wilcoxon_signed_rank(a, b)
    assert got["w_plus"] == pytest.approx(13.5) and got["w_minus"] == pytest.approx(1.5)
    assert got["n_nonzero"] == 5 and got["effect_size"] == pytest.approx(12 / 15)
    ref = stats.wilcoxon(a - b, zero_method="wilcox")
    assert got["statistic"] == pytest.approx(ref.statistic) and got["p_value"] == pytest.approx(ref.pvalue)


def test_wilcoxon_large_sample_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.1, 1, 400), rng.normal(0, 1, 400)
    ref = stats.wilcoxon(a, b)
    got = wilcoxon_signed_rank(a, b)
    assert got["p_value"] == pytest.approx(ref.pvalue) and got["statistic"] == pytest.approx(ref.statistic)
    assert got["w_plus"] + got["w_minus"] == pytest.approx(400 * 401 / 2)


def test_wilcoxon_identical_models():
    x = np.array([0.2, 0.7, 0.9])
    assert wilcoxon_signed_rank(x, x)["p_value"] == 1.0


def test_bootstrap_ci_matches_scipy_percentile():
    rng = np.random.default_rng(1)
    outcomes = (rng.random(300) < 0.7).astype(float)
    lo, hi = bootstrap_ci(outcomes, n_boot=4000, seed=3)
    ref = stats.bootstrap(
        (outcomes,), np.mean, n_resamples=4000, method="percentile", random_state=3
    ).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01) and hi == pytest.approx(ref.high, abs=0.01)
    # and the normal approximation of a proportion: p +- 1.96 sqrt(p(1-p)/n)
    p = outcomes.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / len(outcomes))
    assert lo == pytest.approx(p - half, abs=0.012) and hi == pytest.approx(p + half, abs=0.012)


def test_bootstrap_chunks_agree_with_one_block():
    # Chunking resamples (for large sets) must not change the result: same generator stream.
    x = np.arange(10, dtype=float)
    rng = np.random.default_rng(5)
    means = x[rng.integers(0, 10, size=(500, 10))].mean(axis=1)
    assert bootstrap_ci(x, n_boot=500, seed=5) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))


def test_paired_bootstrap_diff():
    a, b = np.ones(50), np.r_[np.ones(40), np.zeros(10)]
    out = paired_bootstrap_diff(a, b, n_boot=1000)
    assert out["difference"] == pytest.approx(0.2) and out["ci"][0] > 0.05 and out["ci"][1] <= 0.4


def test_mcnemar_against_binomtest_and_chi2():
    # A right & B wrong: 12, A wrong & B right: 3, both right 30, both wrong 5
    a = np.r_[np.ones(12), np.zeros(3), np.ones(30), np.zeros(5)].astype(bool)
    b = np.r_[np.zeros(12), np.ones(3), np.ones(30), np.zeros(5)].astype(bool)
    got = mcnemar(a, b)
    assert got["table"] == [[30, 12], [3, 5]] and (got["b"], got["c"]) == (12, 3)
    assert got["p_exact"] == pytest.approx(stats.binomtest(12, 15, 0.5).pvalue)
    assert got["chi2"] == pytest.approx((12 - 3 - 1) ** 2 / 15)  # 64/15
    assert got["p_chi2"] == pytest.approx(stats.chi2.sf(64 / 15, 1))
    assert mcnemar(a, a)["p_exact"] == 1.0


def test_pair_scores_and_compare():
    rw, rl = np.array([2.0, 0.0, 1.0, 3.0]), np.array([1.0, 0.0, 2.0, 0.0])
    assert pair_scores(rw, rl, "outcome").tolist() == [1.0, 0.5, 0.0, 1.0]
    assert pair_scores(rw, rl, "prob")[0] == pytest.approx(1 / (1 + np.exp(-1)))
    out = compare_models((rw, rl), (rl, rw), n_boot=200)
    assert out["accuracy_a"] == 0.625 and out["accuracy_b"] == 0.375
    assert out["mcnemar"]["ties_a"] == 1 and out["mcnemar"]["b"] == 2 and out["mcnemar"]["c"] == 1
    with pytest.raises(ValueError, match="different pair counts"):
        compare_models((rw, rl), (rw[:2], rl[:2]))
