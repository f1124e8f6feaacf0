"""What one eval writes for a best-of-N set (`bestofn.CompletionSet`): per-prompt outcomes,
the benchmark's official sections and leaderboard number, and `scores.jsonl` with every
completion's reward.

Per-prompt outcome (the unit of the paired tests and of `accuracy`):
- rewardbench2: best-of-N 1/k (`bestofn.first_is_max`); Ties prompts: accurate (0/1);
- rmbench: the fraction of the 9 chosen-vs-rejected comparisons won;
- rmb-bon: 1 when the best answer beats every loser (strict);
- a pairwise set (`CompletionSet.from_pairs`): 1 / 0.5 / 0, the pair outcome.

Leaderboard numbers are means over sections (RewardBench 2: the six subsets; RM-Bench: the
domains chat, math, code, safety). Each section is a function of per-cluster weights (a
cluster is a prompt, or a Ties prompt id with its ref and tied rows), so the bootstrap
resamples clusters within each section and recomputes the official formula
(`significance.leaderboard_bootstrap`); with all weights 1 it is the official number.

`scores.jsonl` rows: {"index", "id", "group", "num_correct", "scores": [...], "outcome"}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from idrm_ray.eval import rewardbench2, rmbench
from idrm_ray.eval.bestofn import CompletionSet, beats_all, correct_margin, first_is_max
from idrm_ray.eval.rmb import GOALS
from idrm_ray.core.scoring import group_accuracy
from idrm_ray.eval.significance import bootstrap_ci, leaderboard_bootstrap

LEADERBOARD = {"rewardbench2": "RewardBench 2 score", "rmbench": "RM-Bench score"}
SectionFn = Callable[[np.ndarray], np.ndarray]  # (B, K) cluster weights -> (B,) section scores


def prompt_outcomes(layout: str, groups: Sequence, scores: Sequence[np.ndarray], num_correct: Sequence[int]):
    if layout == "rewardbench2":
        return np.array([rewardbench2.prompt_outcome(s, k, g) for s, k, g in zip(scores, num_correct, groups)])
    if layout == "rmbench":
        return np.array([rmbench.prompt_outcome(s) for s in scores])
    if layout == "rmb-bon":
        return np.array([beats_all(s, k) for s, k in zip(scores, num_correct)])
    return np.array([first_is_max(s) for s in scores])  # pairs: 1 / 0.5 / 0


def prompt_margins(scores: Sequence[np.ndarray], num_correct: Sequence[int]) -> np.ndarray:
    """Worst correct minus best incorrect per prompt (the continuous per-prompt score)."""
    return np.array([correct_margin(s, k) for s, k in zip(scores, num_correct)])


# -- sections as functions of cluster weights -------------------------------------------------


def _wmean(w: np.ndarray, values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    m = np.ones_like(values) if mask is None else mask
    den = (w * m).sum(axis=-1)
    return np.where(den > 0, (w * (values * m)).sum(axis=-1) / np.maximum(den, 1e-300), 0.0)


def _mean_section(outcomes: np.ndarray) -> SectionFn:
    return lambda w: _wmean(w, outcomes)


def _ties_section(ids, scores, num_correct) -> tuple[SectionFn, int]:
    """The Ties formula with one weight per prompt id (its ref and tied rows move together)."""
    t = rewardbench2.ties_terms(ids, scores, num_correct)
    keys = sorted(set(t["ref_keys"]) | set(t["tied_keys"]))
    pos = {k: i for i, k in enumerate(keys)}
    has_ref, ref_acc, has_tied, tied_acc, both, pref, hard, term = (np.zeros(len(keys)) for _ in range(8))
    for k, a in zip(t["ref_keys"], t["ref_acc"]):
        has_ref[pos[k]], ref_acc[pos[k]] = 1.0, a
    for k, a in zip(t["tied_keys"], t["tied_acc"]):
        has_tied[pos[k]], tied_acc[pos[k]] = 1.0, a
    h = np.minimum(t["ref_margin"], t["tied_margin"])
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.nan_to_num(np.tanh(h / t["spread"] - 1.0), nan=0.0)
    for j, k in enumerate(t["both"]):
        i = pos[k]
        both[i], pref[i], hard[i], term[i] = 1.0, t["tied_margin"][j] > t["spread"][j], h[j] > t["spread"][j], m[j]
    wt = rewardbench2.TIES_WEIGHTS

    def fn(w: np.ndarray) -> np.ndarray:
        return (
            wt["tied_accuracy"] * _wmean(w, tied_acc, has_tied)
            + wt["ref_accuracy"] * _wmean(w, ref_acc, has_ref)
            + wt["preferred"] * _wmean(w, pref, both)
            + wt["preferred_hard"] * _wmean(w, hard, both)
            + wt["margin"] * _wmean(w, term, both)
        )

    return fn, len(keys)


def leaderboard_sections(layout, groups, ids, scores, num_correct) -> dict[str, tuple[SectionFn, int]]:
    """{section: (fn of cluster weights, cluster count)} whose mean is the leaderboard number;
    empty for layouts without one."""
    outcomes = prompt_outcomes(layout, groups, scores, num_correct)
    out: dict[str, tuple[SectionFn, int]] = {}
    if layout == "rewardbench2":
        names = [s for s in rewardbench2.SUBSETS if s in groups] + sorted(set(groups) - set(rewardbench2.SUBSETS))
        for name in names:
            idx = [i for i, g in enumerate(groups) if g == name]
            if rewardbench2.is_ties(name):
                picked = ([ids[i] for i in idx], [scores[i] for i in idx], [num_correct[i] for i in idx])
                out[name] = _ties_section(*picked)
            else:
                out[name] = (_mean_section(outcomes[idx]), len(idx))
    elif layout == "rmbench":
        doms = [rmbench.domain_of(g) or rmbench.POOL for g in groups]
        for name in [d for d in (*rmbench.DOMAINS, rmbench.POOL) if d in doms]:
            idx = [i for i, d in enumerate(doms) if d == name]
            out[name] = (_mean_section(outcomes[idx]), len(idx))
    return out


def _section_value(fn: SectionFn, k: int) -> float:
    return float(fn(np.ones((1, k)))[0])


# -- metrics ----------------------------------------------------------------------------------


def bestofn_metrics(cset: CompletionSet, scores: list[np.ndarray], *, n_boot: int, seed: int) -> dict:
    """Per-prompt accuracy with its CI, per group, and the benchmark's official numbers."""
    k = [c.num_correct for c in cset.items]
    outcomes = prompt_outcomes(cset.layout, cset.groups, scores, k)
    out = {
        "best_of_n": {"layout": cset.layout, "n_prompts": len(cset), "n_completions": cset.n_completions},
        "n_pairs": len(cset),  # prompts: the paired unit
        "accuracy": float(outcomes.mean()),
        "accuracy_ci95": list(bootstrap_ci(outcomes, n_boot=n_boot, seed=seed)),
        "ties": int(sum(np.sum(s == s.max()) > 1 for s in scores)),  # prompts with a tie at the top
        "mean_margin": float(prompt_margins(scores, k).mean()),
    }
    groups = group_accuracy(outcomes, cset.groups)
    if groups:
        out["groups"] = groups
    sections = leaderboard_sections(cset.layout, cset.groups, cset.ids, scores, k)
    if sections:
        out["sections"] = {name: _section_value(fn, n) for name, (fn, n) in sections.items()}
        lo, hi = leaderboard_bootstrap(list(sections.values()), n_boot=n_boot, seed=seed)
        value = float(np.mean(list(out["sections"].values())))
        out["leaderboard"] = {"name": LEADERBOARD[cset.layout], "value": value, "ci95": [lo, hi]}
    if cset.layout == "rewardbench2":
        idx = [i for i, g in enumerate(cset.groups) if rewardbench2.is_ties(g)]
        if idx:
            out["ties_subset"] = rewardbench2.ties_score(
                [cset.ids[i] for i in idx], [scores[i] for i in idx], [k[i] for i in idx]
            )
        out["unknown_subsets"] = sorted({g for g in cset.groups if g not in rewardbench2.SUBSETS})
    if cset.layout == "rmbench":
        out["domains"] = rmbench.domain_scores(cset.groups, scores)
        out["difficulty"] = rmbench.overall(out["domains"])
    if cset.layout == "rmb-bon":
        pooled = {goal: [o for o, g in zip(outcomes, cset.groups) if goal in g.split("/")] for goal in GOALS}
        out["goals"] = {goal: {"n": len(v), "accuracy": float(np.mean(v))} for goal, v in pooled.items() if v}
    return out


def bestofn_headline(results: dict) -> dict[str, float]:
    layout = results["best_of_n"]["layout"]
    out = {"accuracy": results["accuracy"]}
    if layout == "rmbench":
        out.update({f"RM-Bench {d}": v["avg"] for d, v in results.get("domains", {}).items()})
        out.update({f"RM-Bench {k}": v for k, v in results.get("difficulty", {}).items() if k != "avg"})
    elif layout == "rewardbench2":
        out.update({f"RB2 {s}": v for s, v in results.get("sections", {}).items()})
    out.update({f"RMB BoN {g}": v["accuracy"] for g, v in results.get("goals", {}).items()})
    if results.get("leaderboard"):
        out[results["leaderboard"]["name"]] = results["leaderboard"]["value"]
    return out


# -- scores files -----------------------------------------------------------------------------


def write_bon_scores(path: Path, cset: CompletionSet, scores: list[np.ndarray]) -> None:
    k = [c.num_correct for c in cset.items]
    outcomes = prompt_outcomes(cset.layout, cset.groups, scores, k)
    with path.open("w", encoding="utf-8") as f:
        for i, s in enumerate(scores):
            row = {
                "index": i,
                "id": cset.ids[i],
                "group": cset.groups[i],
                "num_correct": k[i],
                "scores": [float(x) for x in s],
                "outcome": float(outcomes[i]),
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def is_bon_scores(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    return "scores" in json.loads(first)


def read_bon_scores(path: Path) -> dict:
    """{"ids", "groups", "num_correct", "scores"} of a best-of-N `scores.jsonl`."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {
        "ids": [str(r["id"]) for r in rows],
        "groups": [r["group"] for r in rows],
        "num_correct": [int(r["num_correct"]) for r in rows],
        "scores": [np.asarray(r["scores"], dtype=np.float64) for r in rows],
    }


def significance_inputs(layout, groups, ids, scores, num_correct, score_kind: str = "prob") -> dict:
    """What `significance.compare_prompt_outcomes` needs for one model: per-prompt outcomes,
    the per-prompt score Wilcoxon ranks (prob: sigmoid of the correct-vs-incorrect margin,
    margin: the margin, outcome: the outcome) and the leaderboard sections."""
    from scipy import special

    outcomes = prompt_outcomes(layout, groups, scores, num_correct)
    margins = prompt_margins(scores, num_correct)
    per_prompt = {"prob": special.expit(margins), "margin": margins, "outcome": outcomes}
    if score_kind not in per_prompt:
        raise ValueError(f"unknown per-prompt score {score_kind!r}; use one of {', '.join(per_prompt)}")
    sections = leaderboard_sections(layout, groups, ids, scores, num_correct)
    return {
        "outcome": outcomes,
        "score": per_prompt[score_kind],
        "score_kind": score_kind,
        "sections": list(sections.values()),
    }


# -- `idrm-ray compare --eval`: best-of-N sets as table columns --------------------------------


class BestOfNColumn(list):
    """One section of a best-of-N set as a compare column: a list of pairs
    (prompt, completion k, completion 0) for every completion k of the section's prompts, so
    a pairwise scorer's gaps r_k - r_0 are each prompt's scores up to a constant, which no
    official rule depends on (exactly: the difference of two float32 rewards is exact in
    float64, so ties at the top survive). `score(gaps)` gives the official section score;
    `leaderboard` names the column that averages the set's sections."""

    def __init__(self, cset: CompletionSet, idx: list[int], section: str, leaderboard: str | None):
        from idrm_ray.core.types import PreferenceExample

        items = [cset.items[i] for i in idx]
        super().__init__(PreferenceExample(c.prompt, x, c.completions[0]) for c in items for x in c.completions)
        self.layout, self.section, self.leaderboard = cset.layout, section, leaderboard
        self.groups, self.ids = [cset.groups[i] for i in idx], [cset.ids[i] for i in idx]
        self.sizes, self.num_correct = [c.n for c in items], [c.num_correct for c in items]

    def score(self, gaps: np.ndarray) -> float:
        bounds = np.cumsum([0] + self.sizes)
        scores = [np.asarray(gaps[lo:hi], dtype=np.float64) for lo, hi in zip(bounds[:-1], bounds[1:])]
        sections = leaderboard_sections(self.layout, self.groups, self.ids, scores, self.num_correct)
        if self.section in sections:
            return _section_value(*sections[self.section])
        return float(prompt_outcomes(self.layout, self.groups, scores, self.num_correct).mean())


def compare_columns(cset: CompletionSet) -> list[tuple[str, BestOfNColumn]]:
    """("<set>:<section>", column) per official section (RMB BoN: per goal)."""
    if cset.layout == "rmbench":
        keys = [rmbench.domain_of(g) or rmbench.POOL for g in cset.groups]
    elif cset.layout == "rmb-bon":
        keys = [next((goal for goal in GOALS if goal in g.split("/")), g) for g in cset.groups]
    else:
        keys = list(cset.groups)
    board = f"{cset.name}:{LEADERBOARD[cset.layout]}" if cset.layout in LEADERBOARD else None
    order = list(dict.fromkeys(keys))
    if cset.layout == "rewardbench2":
        order = [s for s in rewardbench2.SUBSETS if s in order] + [s for s in order if s not in rewardbench2.SUBSETS]
    return [
        (f"{cset.name}:{key}", BestOfNColumn(cset, [i for i, k in enumerate(keys) if k == key], key, board))
        for key in order
    ]
