"""The comparison table in the layout of the paper's Tables 2/3: one row per method, one
column per eval set (or subset), the average, and the change against BT; each cell the mean ±
standard deviation over seeds, with the seed count shown. Written as Markdown and CSV, plus a
bar plot of the average.

    results.csv        long form: method, seed, eval set, accuracy, pairs
    table.csv          wide form: method, seeds, <set> mean, <set> std, ..., avg, avg std, delta_vs_bt
    table.md           the same as a Markdown table
    accuracy.png       average accuracy per method (mean ± std over seeds), chance and BT marked
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

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
    colors = ["tab:orange" if n.startswith("id") else "tab:blue" for n in names]
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
