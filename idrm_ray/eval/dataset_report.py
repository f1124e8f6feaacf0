"""One eval folder's report (`idrm-ray eval`): per data set the figures and a Markdown
section (accuracy, groups, sections/goals, significance against a baseline, best-of-N
numbers, diagnostics), and the folder's `report.md`. Comparing runs is `report.py`."""

from __future__ import annotations

from pathlib import Path

from idrm_ray.eval import plots

__all__ = ["dataset_md", "fmt", "md_table", "write_dataset_figures", "write_eval_report"]


def fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def write_dataset_figures(folder: Path, results: dict) -> None:
    name = results["dataset"]
    if results.get("groups"):
        groups = results["groups"]
        plots.plot_accuracy(
            folder / "groups.png",
            {g: v["accuracy"] for g, v in groups.items()},
            counts={g: v["n"] for g, v in groups.items()},
            title=f"{results['label']} on {name}: per group",
        )
    bars = {
        "all pairs": results["accuracy"],
        **{f"RMB {g}": v["accuracy"] for g, v in results.get("goals", {}).items()},
        **results.get("sections", {}),
    }
    plots.plot_accuracy(folder / "accuracy.png", bars, title=f"{results['label']} on {name}")
    diag = results.get("diagnostics")
    if not diag:
        return
    plots.plot_masking(
        folder / "masking.png", {results["label"]: diag["masking"]}, title=f"progressive masking, {name}"
    )
    if "stages" in diag:
        plots.plot_stages(folder / "stages.png", diag["stages"], title=f"reward-token attention per stage, {name}")
    if "token_view" in diag:
        tv = diag["token_view"]
        sub = f"pair {tv['pair']} (id {tv['id']}): r_chosen {tv['r_chosen']:.4f}, r_rejected {tv['r_rejected']:.4f}"
        plots.token_view_html(folder / "token_view.html", tv, title=f"{results['label']}: token view", subtitle=sub)
        plots.plot_token_view(folder / "token_view.png", tv, title=f"{results['label']}: {sub}")


def _significance_md(sig: dict) -> str:
    w, m, d = sig["wilcoxon"], sig["mcnemar"], sig["accuracy_difference"]
    lb = sig.get("leaderboard_difference")
    rows = [
        ["leaderboard A - B, 95% paired bootstrap CI", f"{fmt(lb['difference'])} [{fmt(lb['ci'][0])}, {fmt(lb['ci'][1])}]"]
    ] if lb else []
    rows += [
        ["accuracy (A = this model, B = baseline)", f"{fmt(sig['accuracy_a'])} vs {fmt(sig['accuracy_b'])}"],
        ["accuracy A - B, 95% bootstrap CI", f"{fmt(d['difference'])} [{fmt(d['ci'][0])}, {fmt(d['ci'][1])}]"],
        [
            f"Wilcoxon signed-rank on per-pair {w['score']}",
            f"W={w['statistic']:.1f}, p={w['p_value']:.3g}, n_nonzero={w['n_nonzero']}, r_rb={w['effect_size']:.3f}",
        ],
        [
            "McNemar (exact)",
            f"A-only right {m['b']}, B-only right {m['c']}, p={m['p_exact']:.3g} (chi2 p={m['p_chi2']:.3g})",
        ],
    ]
    return f"Baseline: `{sig['baseline']}`\n\n" + md_table(["test", "result"], rows)


def _bestofn_md(results: dict) -> list[str]:
    """Best-of-N sets: the official table (sections, leaderboard number with its bootstrap CI)."""
    b = results["best_of_n"]
    lo, hi = results["accuracy_ci95"]
    parts = [
        f"## {results['dataset']} ({b['layout']}, {b['n_prompts']} prompts, {b['n_completions']} completions)",
        "",
        f"Source `{results['source']}`. Mean per-prompt outcome **{fmt(results['accuracy'])}** "
        f"(95% CI {fmt(lo)}-{fmt(hi)}); prompts with a tie at the top {results['ties']}.",
    ]
    rows = []
    if b["layout"] == "rmbench":
        rows += [
            [d, *(fmt(v[k]) for k in ("hard", "normal", "easy", "avg"))] for d, v in results.get("domains", {}).items()
        ]
        if results.get("difficulty"):
            rows.append(["mean of domains", *(fmt(results["difficulty"][k]) for k in ("hard", "normal", "easy", "avg"))])
        parts += ["", md_table(["domain", "hard", "normal", "easy", "avg"], rows)]
    else:
        counts = {g: v["n"] for g, v in results.get("groups", {}).items()}
        rows += [[s, str(counts.get(s, "")), fmt(v)] for s, v in results.get("sections", {}).items()]
        rows += [[f"RMB BoN {g}", str(v["n"]), fmt(v["accuracy"])] for g, v in results.get("goals", {}).items()]
        if rows:
            parts += ["", md_table(["section", "prompts", "score"], rows)]
    lb = results.get("leaderboard")
    if lb:
        parts += ["", f"**{lb['name']}** (unweighted mean of the sections): **{fmt(lb['value'])}** "
                  f"(95% bootstrap CI {fmt(lb['ci95'][0])}-{fmt(lb['ci95'][1])})."]
    ties = results.get("ties_subset")
    if ties:
        terms = ", ".join(f"{k} {fmt(v)}" for k, v in ties.items() if k != "score")
        parts += ["", f"Ties = 0.30 tied + 0.30 ref + 0.20 preferred + 0.20 preferred_hard + 0.01 margin: {terms}."]
    if results.get("unknown_subsets"):
        parts += ["", f"Subsets outside RewardBench 2's six: {', '.join(results['unknown_subsets'])}."]
    return parts


def dataset_md(results: dict, *, link_prefix: str = "") -> str:
    lo, hi = results["accuracy_ci95"]
    parts = [
        f"## {results['dataset']} ({results['layout']}, {results['n_pairs']} pairs)",
        "",
        f"Source `{results['source']}`. Accuracy **{fmt(results['accuracy'])}** "
        f"(95% CI {fmt(lo)}-{fmt(hi)}), ties {results['ties']}.",
    ]
    if results.get("best_of_n"):
        parts = _bestofn_md(results)
    parts += [
        "",
        "Rows read {}, skipped {}; pairs cut to max_len {} ({} tokens).".format(
            *(
                results.get("data", {}).get(f"data/{k}", 0)
                for k in ("rows_read", "rows_skipped", "pairs_truncated", "tokens_truncated")
            )
        ),
    ]
    rows = [[f"RMB {g}", str(v["n"]), fmt(v["accuracy"])] for g, v in results.get("goals", {}).items()]
    rows += [[s, "", fmt(v)] for s, v in results.get("sections", {}).items()]
    if results.get("rewardbench_score") is not None:
        rows.append(["RewardBench score (mean of sections)", "", fmt(results["rewardbench_score"])])
    if rows and not results.get("best_of_n"):  # best-of-N sets have their table above
        parts += ["", md_table(["metric", "pairs", "accuracy"], rows)]
    if results.get("unknown_subsets") and not results.get("best_of_n"):
        parts += [
            "",
            f"Subsets outside RewardBench's table (not in any section): {', '.join(results['unknown_subsets'])}.",
        ]
    if results.get("groups"):
        parts += [
            "",
            "<details><summary>per group</summary>",
            "",
            md_table(
                ["group", "pairs", "accuracy"],
                [[g, str(v["n"]), fmt(v["accuracy"])] for g, v in results["groups"].items()],
            ),
            "",
            "</details>",
        ]
    if results.get("significance"):
        parts += ["", "### Significance against the baseline", "", _significance_md(results["significance"])]
    p = link_prefix
    parts += ["", f"![accuracy]({p}accuracy.png)"] + ([f"![groups]({p}groups.png)"] if results.get("groups") else [])
    diag = results.get("diagnostics")
    if diag:
        m = diag["masking"]
        parts += [
            "",
            "### Attention diagnostics",
            "",
            f"{len(diag['pairs'])} pairs. Accuracy with the first k of 10 stages masked: "
            + ", ".join(f"{int(f * 100)}%: {a:.3f}" for f, a in zip(m["masked_fraction"], m["accuracy"]))
            + ".",
        ]
        if "stages" in diag:
            st = diag["stages"]
            parts += [
                "",
                f"Correct pairs {st['correct']['pairs']}, incorrect {st['incorrect']['pairs']}, ties {st['ties']}.",
                "",
                f"![stages]({p}stages.png)",
            ]
        parts += ["", f"![masking]({p}masking.png)"]
        if "token_view" in diag:
            parts += [
                "",
                f"Token view: [{p}token_view.html]({p}token_view.html)",
                "",
                f"![token view]({p}token_view.png)",
            ]
    return "\n".join(parts)


def write_eval_report(out_root: Path, results: list[dict], *, label: str) -> Path:
    first = results[0]["model"] if results else {}
    head = [
        f"# Eval report: {label}",
        "",
        f"Checkpoint `{first.get('checkpoint')}`, max_len {first.get('max_len')}, "
        f"template {first.get('template')!r}. Pair outcome: 1 if r(chosen) > r(rejected), 0.5 on a tie.",
    ]
    if any(r.get("best_of_n") for r in results):
        head[-1] += (
            " Best-of-N sets: per-prompt outcome by the benchmark's rule (RewardBench 2: 1/k for a k-way tie"
            " at the top, 0 below it; RM-Bench: share of the 9 style pairs won; RMB BoN: best above all losers)."
        )
    body = [dataset_md(r, link_prefix=f"{r['dataset']}/") for r in results]
    path = Path(out_root) / "report.md"
    path.write_text("\n\n".join(["\n".join(head), *body]) + "\n", encoding="utf-8")
    return path
