"""The comparison table (paper Tables 2/3 layout) from per-seed results, and the variant list."""
from __future__ import annotations

import csv
import math

import pytest

from idrm_ray.compare.table import bar_plot, markdown, summarise, write_tables
from idrm_ray.compare.variants import ABLATIONS, DEFAULT_METHODS, needs_members, parse_variants

RESULTS = [
    {"method": m, "seed": s, "column": c, "accuracy": acc, "pairs": 10}
    for m, accs in {"bt": [(0.5, 0.7), (0.6, 0.8), (0.7, 0.9)], "id": [(0.6, 0.8), (0.7, 0.9), (0.8, 1.0)]}.items()
    for s, pair in enumerate(accs)
    for c, acc in zip(("who", "what"), pair)
]


def test_summary_mean_std_average_and_delta():
    rows = summarise(RESULTS, columns=["who", "what"], methods=["bt", "id"])
    bt, id_ = rows
    assert bt["seeds"] == 3 and id_["seeds"] == 3
    assert bt["who"] == pytest.approx(0.6) and bt["who std"] == pytest.approx(0.1)  # sample std over seeds
    assert bt["avg"] == pytest.approx(0.7) and bt["avg std"] == pytest.approx(0.1)  # per-seed averages 0.6/0.7/0.8
    assert id_["delta_vs_bt"] == pytest.approx(0.1) and bt["delta_vs_bt"] == 0.0


def test_markdown_csv_and_plot(tmp_path):
    rows = summarise(RESULTS, columns=["who", "what"], methods=["bt", "id"])
    text = markdown(rows, columns=["who", "what"], title="t")
    assert "| Method | seeds | who | what | Avg | Δ vs BT |" in text
    assert "| id | 3 | **70.00 ± 10.00** | **90.00 ± 10.00** | **80.00 ± 10.00** | +10.00 |" in text
    write_tables(tmp_path, RESULTS, rows, columns=["who", "what"], title="t")
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["bt", "id"] and table[1]["seeds"] == "3"
    assert len(list(csv.DictReader(open(tmp_path / "results.csv")))) == len(RESULTS)
    bar_plot(tmp_path / "accuracy.png", rows, title="t")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000


def test_one_seed_has_zero_std_and_missing_baseline_no_delta():
    rows = summarise([r for r in RESULTS if r["seed"] == 0 and r["method"] == "id"], columns=["who"], methods=["id"])
    assert rows[0]["who std"] == 0.0 and rows[0]["delta_vs_bt"] is None
    assert math.isnan(summarise([], columns=["who"], methods=["x"])[0]["who"])


def test_variants_parse_and_members_needed():
    names = [v.name for v in parse_variants("all,ablations")]
    assert names == list(DEFAULT_METHODS) + list(ABLATIONS)
    assert [v.method for v in parse_variants("id-no-intra,id-no-nli")] == ["id", "id"]
    assert parse_variants("id-no-intra")[0].values == {"method": {"id": {"intra": False}}}
    assert needs_members(parse_variants("bt,id,am,inform"), am_from_ratings=True) == set()
    assert needs_members(parse_variants("am"), am_from_ratings=False) == {"bt"}
    assert needs_members(parse_variants("lf,id+warm"), am_from_ratings=True) == {"bt", "id"}
    with pytest.raises(ValueError, match="unknown method"):
        parse_variants("bt,dpo")


def test_significance_per_seed_against_bt(tmp_path):
    from idrm_ray.compare.table import significance, write_significance

    bt = [-1.0] * 8 + [1.0] * 12  # 60% right
    id_ = [1.0] * 20  # right everywhere: 8 wins, 0 losses
    rows = [{"method": "bt", "seed": 0, "column": "ood", "accuracy": 0.6, "gaps": bt},
            {"method": "id", "seed": 0, "column": "ood", "accuracy": 1.0, "gaps": id_},
            {"method": "id", "seed": 0, "column": "board", "accuracy": 1.0}]  # no gaps: skipped
    (sig,) = significance(rows)
    assert (sig["wins"], sig["losses"], sig["pairs"]) == (8, 0, 20)
    assert sig["mcnemar_p"] == pytest.approx(2 * 0.5 ** 8)  # exact binomial, two-sided
    assert sig["wilcoxon_p"] < 0.01
    text = write_significance(tmp_path, rows)
    assert "| 0 | id | ood | 20 | 100.0 | 60.0 | 8/0 |" in text and (tmp_path / "significance.csv").exists()
    assert write_significance(tmp_path, rows[1:]) == ""  # no BT: nothing to test against


def test_id_settings_variants():
    """`id@key=value`: ID (or an ID ablation) with method.id values, read as YAML; bad keys fail."""
    a, b = parse_variants("id@lam=0.4,id-no-inter@top_n=2@teacher_head_renorm=true")
    assert (a.name, a.method, a.values) == ("id@lam=0.4", "id", {"method": {"id": {"lam": 0.4}}})
    assert b.values == {"method": {"id": {"inter": False, "top_n": 2, "teacher_head_renorm": True}}}
    for bad in ("id@nope=1", "bt@lam=1", "id@lam"):
        with pytest.raises(ValueError, match="bad ID setting"):
            parse_variants(bad)
