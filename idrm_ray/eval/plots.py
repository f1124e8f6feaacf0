"""Figures and the HTML token view of the eval report (matplotlib Agg, as the run folder's
`curve.png`). Each function takes plain data (lists, dicts from the results JSON) and a path."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

CORRECT_COLOR, INCORRECT_COLOR = "#2a9d8f", "#e76f51"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(
    path: Path, bars: Mapping[str, float], *, title: str, counts: Mapping[str, int] | None = None
) -> None:
    """Horizontal bars of accuracies (0..1) with a chance line; labels carry n when given."""
    plt = _plt()
    names = list(bars)
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(names) + 1.4))
    labels = [f"{n} (n={counts[n]})" if counts and n in counts else n for n in names]
    ax.barh(range(len(names)), [bars[n] for n in names], color="#457b9d")
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.5, color="grey", linestyle=":", label="chance")
    ax.set(xlim=(0, 1), xlabel="accuracy", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_stages(path: Path, stages: Mapping, *, title: str) -> None:
    """Fig. 1 bars: mean cumulative attention share per stage, correct vs incorrect pairs;
    the per-stage shares beside them."""
    plt = _plt()
    import numpy as np

    s = stages["num_stages"]
    x = np.arange(1, s + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, key, label in (
        (axes[0], "cumulative", "cumulative attention share"),
        (axes[1], "fraction", "attention share of the stage"),
    ):
        for offset, (name, color) in zip((-0.2, 0.2), (("correct", CORRECT_COLOR), ("incorrect", INCORRECT_COLOR))):
            group = stages[name]
            if group["pairs"]:
                ax.bar(x + offset, group[key], width=0.4, color=color, label=f"{name} ({group['pairs']} pairs)")
        ax.set(xlabel="stage (1 = start of the prompt)", ylabel=label, xticks=x)
        ax.legend(fontsize=8)
    axes[0].set_ylim(0, 1.05)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_masking(path: Path, curves: Mapping[str, Mapping], *, title: str) -> None:
    """Fig. 1 line: accuracy against the masked fraction, one line per label."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, curve in curves.items():
        ax.plot(curve["masked_fraction"], curve["accuracy"], marker="o", label=label)
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set(xlabel="fraction of stages masked (front to back)", ylabel="accuracy", ylim=(0, 1.02), title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_metric_table(path: Path, table: Mapping[str, Mapping[str, float]], *, title: str) -> None:
    """Grouped bars: one group per metric, one bar per run (`table[run][metric]`)."""
    plt = _plt()
    import numpy as np

    runs = list(table)
    metrics = sorted({m for row in table.values() for m in row}, key=lambda m: (m.count("/"), m))
    if not metrics:
        return
    width = 0.8 / max(len(runs), 1)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(metrics) * max(1, len(runs) / 2)), 4))
    for i, run in enumerate(runs):
        values = [table[run].get(m, np.nan) for m in metrics]
        ax.bar(np.arange(len(metrics)) + (i - (len(runs) - 1) / 2) * width, values, width=width, label=run)
    ax.axhline(0.5, color="grey", linestyle=":")
    ax.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="accuracy", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rgba(value: float) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["Reds"](0.05 + 0.9 * max(0.0, min(1.0, value)))


def _css(value: float) -> str:
    r, g, b, _ = _rgba(value)
    text = "#fff" if value > 0.6 else "#000"
    return f"background:rgb({int(255 * r)},{int(255 * g)},{int(255 * b)});color:{text}"


def _display(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥") or "∅"


def _html_token(token: str) -> str:
    return html.escape(_display(token)).replace("⏎", "⏎\n")  # the mark, then a real line break


def token_view_html(path: Path, view: Mapping, *, title: str, subtitle: str = "") -> None:
    """Chosen and rejected side by side, each token shaded by its normalised attention,
    with a colour scale; hovering a token shows its raw attention."""

    def column(name: str) -> str:
        side = view[name]
        spans = "".join(
            f'<span class="t" style="{_css(v)}" title="attention {a:.4g}">{_html_token(t)}</span>'
            for t, a, v in zip(side["tokens"], side["attention"], side["normalized"])
        )
        return f'<div class="col"><h3>{name}</h3><div class="seq">{spans}</div></div>'

    stops = ",".join(
        f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)})" for r, g, b, _ in (_rgba(i / 10) for i in range(11))
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.cols {{ display: flex; gap: 2em; }} .col {{ flex: 1; min-width: 0; }}
.seq {{ font-family: monospace; line-height: 1.9; white-space: pre-wrap; word-break: break-word; }}
.t {{ padding: 1px 0; border-radius: 2px; }}
.scale {{ width: 320px; height: 14px; background: linear-gradient(to right, {stops}); border: 1px solid #999; }}
.labels {{ width: 320px; display: flex; justify-content: space-between; font-size: 12px; }}
</style></head><body>
<h2>{html.escape(title)}</h2><p>{html.escape(subtitle)}</p>
<div class="scale"></div><div class="labels"><span>0</span><span>normalised attention of the reward token</span><span>1 (= {view['scale_max']:.4g})</span></div>
<div class="cols">{column('chosen')}{column('rejected')}</div>
</body></html>
"""
    Path(path).write_text(page, encoding="utf-8")


def _wrap(tokens: Sequence[str], values: Sequence[float], width: int) -> list[list[tuple[str, float]]]:
    lines, line, used = [], [], 0
    for t, v in zip(tokens, values):
        text = _display(t)
        if used + len(text) > width and line:
            lines.append(line)
            line, used = [], 0
        line.append((text, v))
        used += len(text)
    return lines + ([line] if line else [])


def plot_token_view(path: Path, view: Mapping, *, title: str, width: int = 90) -> None:
    """The token view as a PNG: tokens as shaded boxes, chosen left, rejected right."""
    plt = _plt()
    wrapped = {name: _wrap(view[name]["tokens"], view[name]["normalized"], width) for name in ("chosen", "rejected")}
    rows = max(len(v) for v in wrapped.values())
    fig, axes = plt.subplots(1, 2, figsize=(16, 0.3 * rows + 1.2))
    char_w = 1.0 / width
    # Monospace glyphs are about 0.6 em wide: size the font so `width` characters fill a panel.
    fontsize = axes[0].get_position().width * fig.get_figwidth() * 72 / width / 0.6
    for ax, name in zip(axes, ("chosen", "rejected")):
        ax.set_axis_off()
        ax.set_title(name)
        for r, line in enumerate(wrapped[name]):
            x = 0.0
            y = 1.0 - (r + 1) / (rows + 1)
            for text, v in line:
                w = len(text) * char_w
                ax.add_patch(
                    plt.Rectangle(
                        (x, y - 0.4 / (rows + 1)),
                        w,
                        0.8 / (rows + 1),
                        facecolor=_rgba(v),
                        edgecolor="white",
                        linewidth=0.6,
                    )
                )
                ax.text(
                    x,
                    y,
                    text,
                    fontsize=fontsize,
                    family="monospace",
                    va="center",
                    color="white" if v > 0.6 else "black",
                )
                x += w
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
