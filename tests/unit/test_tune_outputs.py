"""The sweep's tables and heatmap on a full λ × N grid (the integration sweep in
test_tune.py runs one λ and two N to keep its Ray Train fits to three): every trial a row,
a trial stopped by ASHA, one that failed, and one with no eval drawn as an empty cell."""
from __future__ import annotations

import csv
import math

from idrm_ray.tune.outputs import heatmap, write_table

LAMS, TOP_NS = [0.2, 0.6, 1.2], [1, 2]


def _row(lam, top_n, acc, **extra):
    row = {"lam": lam, "top_n": top_n, "eval_accuracy": acc, "eval_loss": None if acc is None else 0.6,
           "steps": 4, "total_steps": 4, "completed": acc is not None, "stopped_early": False, "reports": 3,
           "eval_steps": [2, 4], "wall_time_s": 3.5, "cache_hit": True, "cache_unchanged": True,
           "checkpoint_path": f"/x/lam{lam:g}_n{top_n}", "config_path": None, "error": None}
    return {**row, **extra}


ROWS = [_row(0.2, 1, 0.61), _row(0.2, 2, 0.64),
        _row(0.6, 1, 0.55, steps=2, completed=False, stopped_early=True, checkpoint_path=None, eval_steps=[2]),
        _row(0.6, 2, 0.66),
        _row(1.2, 1, None, steps=None, reports=0, eval_steps=[], checkpoint_path=None, error="RuntimeError('x')"),
        _row(1.2, 2, 0.63)]


def test_results_tables_have_one_row_per_trial(tmp_path):
    write_table(tmp_path, ROWS)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [(float(r["lam"]), int(r["top_n"])) for r in rows] == [(l, n) for l in LAMS for n in TOP_NS]
    assert rows[2]["stopped_early"] == "True" and rows[4]["error"] == "RuntimeError('x')"
    md = (tmp_path / "results.md").read_text().splitlines()
    assert md[0].startswith("| lam | top_n | eval_accuracy |") and len(md) == 2 + len(ROWS)
    assert md[2].startswith("| 0.2000 | 1 | 0.6100 |")
    assert md[6].startswith("| 1.2000 | 1 | - | - | - |") and md[6].rstrip().endswith("| RuntimeError('x') |")


def test_heatmap_draws_every_cell_marks_asha_stops_and_leaves_failures_empty(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.axes

    drawn = {}
    real_imshow, real_text = matplotlib.axes.Axes.imshow, matplotlib.axes.Axes.text

    def imshow(self, grid, *a, **k):
        drawn["grid"] = grid.copy()
        return real_imshow(self, grid, *a, **k)

    def text(self, x, y, s, *a, **k):
        drawn.setdefault("text", {})[(y, x)] = s
        return real_text(self, x, y, s, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", imshow)
    monkeypatch.setattr(matplotlib.axes.Axes, "text", text)
    heatmap(tmp_path / "heatmap.png", ROWS, lams=LAMS, top_ns=TOP_NS)
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = drawn["grid"]
    assert grid.shape == (3, 2) and grid[0, 1] == 0.64 and grid[1, 1] == 0.66 and math.isnan(grid[2, 0])
    assert drawn["text"][(1, 0)] == "0.550\n(ASHA stop @2)" and drawn["text"][(2, 1)] == "0.630"
    assert (2, 0) not in drawn["text"]
