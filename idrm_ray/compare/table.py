"""The comparison table in the layout of the paper's Tables 2/3: one row per method, one
column per eval set (or subset), the average, and the change against BT; each cell the mean ±
standard deviation over seeds, with the seed count shown. Written as Markdown and CSV, plus a
bar plot of the average.

    results.csv        long form: method, seed, eval set, accuracy, pairs
    table.csv          wide form: method, seeds, <set> mean, <set> std, ..., avg, avg std, delta_vs_bt
    table.md           the same as a Markdown table
    accuracy.png       average accuracy per method (mean ± std over seeds), chance and BT marked
    significance.csv   per seed and eval set, each method against BT on the same pairs: Wilcoxon
                       signed-rank on sigma(r_w - r_l) and exact McNemar (`eval.significance`)
    per_seed.md        accuracy per seed, method and eval set with those p-values
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from idrm_ray.compare.variants import variant
from idrm_ray.eval.significance import compare_models

AVG = "avg"


def summarise(
    results: list[dict], *, columns: list[str], methods: list[str], baseline: str = "bt", average_over=None
) -> list[dict]:
    """results: {"method", "seed", "column", "accuracy"} rows -> one summary row per method.
    The average is over `average_over` (default: all columns; leaderboard columns stay out)."""
    average_over = columns if average_over is None else average_over
    rows = []
    for method in methods:
        mine = [r for r in results if r["method"] == method]
        seeds = sorted({r["seed"] for r in mine})
        row: dict = {"method": method, "seeds": len(seeds)}
        per_seed_avg = []
        for seed in seeds:
            accs = [r["accuracy"] for r in mine if r["seed"] == seed and r["column"] in average_over]
            per_seed_avg.append(float(np.mean(accs)) if accs else math.nan)
        for col in columns:
            vals = [r["accuracy"] for r in mine if r["column"] == col]
            row[col], row[f"{col} std"] = _mean_std(vals)
        row[AVG], row[f"{AVG} std"] = _mean_std(per_seed_avg)
        rows.append(row)
    base = next((r for r in rows if r["method"] == baseline), None)
    for row in rows:
        row["delta_vs_bt"] = None if base is None else row[AVG] - base[AVG]
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def write_tables(out: Path, results: list[dict], summary: list[dict], *, columns: list[str], title: str) -> None:
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "seed", "column", "accuracy", "pairs"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    keys = ["method", "seeds"] + [k for c in [*columns, AVG] for k in (c, f"{c} std")] + ["delta_vs_bt"]
    with open(out / "table.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(summary)
    (out / "table.md").write_text(markdown(summary, columns=columns, title=title))


def markdown(summary: list[dict], *, columns: list[str], title: str) -> str:
    head = ["Method", "seeds", *columns, "Avg", "Δ vs BT"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {c: max((r[c] for r in summary if not math.isnan(r[c])), default=math.nan) for c in [*columns, AVG]}
    for r in summary:
        cells = [r["method"], str(r["seeds"])]
        for c in [*columns, AVG]:
            cell = _pm(r[c], r[f"{c} std"])
            cells.append(f"**{cell}**" if r[c] == best[c] and len(summary) > 1 else cell)
        delta = r["delta_vs_bt"]
        cells.append("-" if delta is None or r["method"] == "bt" else f"{100 * delta:+.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % (mean ± std over seeds; best per column in bold); Δ vs BT in points of the average."]
    return "\n".join(lines) + "\n"


def _pm(mean: float, std: float) -> str:
    return "-" if math.isnan(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def bar_plot(path: Path, summary: list[dict], *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in summary]
    means = [100 * r[AVG] for r in summary]
    stds = [100 * r[f"{AVG} std"] for r in summary]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(names), 3.8))
    colors = ["tab:orange" if variant(n).distills else "tab:blue" for n in names]  # ID runs stand out
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color=colors)
    ax.axhline(50, color="grey", linestyle=":", label="chance")
    bt = next((r for r in summary if r["method"] == "bt"), None)
    if bt is not None:
        ax.axhline(100 * bt[AVG], color="tab:blue", linestyle="--", linewidth=1, label="BT")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    low = min([m - s for m, s in zip(means, stds) if not math.isnan(m)] + [50])
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("average accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SIG_KEYS = ["method", "seed", "column", "pairs", "accuracy", "bt_accuracy", "wins", "losses", "wilcoxon_p",
            "mcnemar_p"]


def significance(results: list[dict], *, baseline: str = "bt") -> list[dict]:
    """Each method against `baseline` per seed and column, from the per-pair reward gaps the
    result rows carry (`gaps`; rows without them, e.g. leaderboard means, are skipped). `wins`
    / `losses`: pairs the method gets right and the baseline wrong / the reverse."""
    base = {(r["seed"], r["column"]): r for r in results if r["method"] == baseline and "gaps" in r}
    rows = []
    for r in results:
        b = base.get((r["seed"], r["column"]))
        if r["method"] == baseline or b is None or "gaps" not in r:
            continue
        zeros = np.zeros(len(r["gaps"]))
        res = compare_models((np.asarray(r["gaps"]), zeros), (np.asarray(b["gaps"]), zeros), n_boot=200)
        rows.append({"method": r["method"], "seed": r["seed"], "column": r["column"], "pairs": res["n_pairs"],
                     "accuracy": r["accuracy"], "bt_accuracy": b["accuracy"], "wins": res["mcnemar"]["b"],
                     "losses": res["mcnemar"]["c"], "wilcoxon_p": res["wilcoxon"]["p_value"],
                     "mcnemar_p": res["mcnemar"]["p_exact"]})
    return rows


def per_seed_markdown(sig: list[dict]) -> str:
    head = ["seed", "method", "eval set", "pairs", "method acc", "BT acc", "wins/losses", "Wilcoxon p", "McNemar p"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(sig, key=lambda r: (r["seed"], r["method"], r["column"])):
        lines.append(f"| {r['seed']} | {r['method']} | {r['column']} | {r['pairs']} | {100 * r['accuracy']:.1f} | "
                     f"{100 * r['bt_accuracy']:.1f} | {r['wins']}/{r['losses']} | {r['wilcoxon_p']:.3g} | "
                     f"{r['mcnemar_p']:.3g} |")
    lines += ["", "Per seed, each method against BT on the same pairs: wins = pairs it gets right and BT wrong; "
              "Wilcoxon signed-rank on sigma(r_w - r_l), exact McNemar on the discordant pairs (two-sided)."]
    return "\n".join(lines) + "\n"


def write_significance(out: Path, results: list[dict]) -> str:
    """significance.csv and per_seed.md; returns the Markdown ("" when there is no BT row)."""
    sig = significance(results)
    if not sig:
        return ""
    with open(out / "significance.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SIG_KEYS)
        writer.writeheader()
        writer.writerows(sig)
    text = per_seed_markdown(sig)
    (out / "per_seed.md").write_text(text)
    return text
