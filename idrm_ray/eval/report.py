"""Reports: the eval folder's `report.md` and `idrm-ray report RUN_DIR [RUN_DIR ...]`.

A RUN_DIR is any of
- a training run folder (`summary.json`; its methods' evals under `<method>/eval/*/`),
- an eval folder (`eval_summary.json`, one sub-folder per data set with `results.json`),
- one data set's eval folder (`results.json`).
The comparison writes `<output>/report.md`, `comparison.json` and per data set a grouped bar
chart of the headline numbers (`compare_<data>.png`) and, where diagnostics were run, the
masking curves of all runs on one plot (`masking_<data>.png`). Runs that scored the same
pairs (equal ids in `scores.jsonl`) are tested against the first one (Wilcoxon, McNemar,
bootstrap CI of the accuracy difference). `<output>` defaults to `<RUN_DIR>/report` for
one folder and `./report` for several.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from idrm_ray.eval import plots

TRAIN_KEYS = ("eval_accuracy", "eval_loss", "pairs_per_s", "step_time_s", "teacher_wait_fraction")


class ReportError(ValueError):
    """A RUN_DIR with nothing to report: printed as one line by the CLI."""


def _f(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# -- one eval folder --------------------------------------------------------------------------


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
        ["leaderboard A - B, 95% paired bootstrap CI", f"{_f(lb['difference'])} [{_f(lb['ci'][0])}, {_f(lb['ci'][1])}]"]
    ] if lb else []
    rows += [
        ["accuracy (A = this model, B = baseline)", f"{_f(sig['accuracy_a'])} vs {_f(sig['accuracy_b'])}"],
        ["accuracy A - B, 95% bootstrap CI", f"{_f(d['difference'])} [{_f(d['ci'][0])}, {_f(d['ci'][1])}]"],
        [
            f"Wilcoxon signed-rank on per-pair {w['score']}",
            f"W={w['statistic']:.1f}, p={w['p_value']:.3g}, n_nonzero={w['n_nonzero']}, r_rb={w['effect_size']:.3f}",
        ],
        [
            "McNemar (exact)",
            f"A-only right {m['b']}, B-only right {m['c']}, p={m['p_exact']:.3g} (chi2 p={m['p_chi2']:.3g})",
        ],
    ]
    return f"Baseline: `{sig['baseline']}`\n\n" + _table(["test", "result"], rows)


def _bestofn_md(results: dict) -> list[str]:
    """Best-of-N sets: the official table (sections, leaderboard number with its bootstrap CI)."""
    b = results["best_of_n"]
    lo, hi = results["accuracy_ci95"]
    parts = [
        f"## {results['dataset']} ({b['layout']}, {b['n_prompts']} prompts, {b['n_completions']} completions)",
        "",
        f"Source `{results['source']}`. Mean per-prompt outcome **{_f(results['accuracy'])}** "
        f"(95% CI {_f(lo)}-{_f(hi)}); prompts with a tie at the top {results['ties']}.",
    ]
    rows = []
    if b["layout"] == "rmbench":
        rows += [
            [d, *(_f(v[k]) for k in ("hard", "normal", "easy", "avg"))] for d, v in results.get("domains", {}).items()
        ]
        if results.get("difficulty"):
            rows.append(["mean of domains", *(_f(results["difficulty"][k]) for k in ("hard", "normal", "easy", "avg"))])
        parts += ["", _table(["domain", "hard", "normal", "easy", "avg"], rows)]
    else:
        counts = {g: v["n"] for g, v in results.get("groups", {}).items()}
        rows += [[s, str(counts.get(s, "")), _f(v)] for s, v in results.get("sections", {}).items()]
        rows += [[f"RMB BoN {g}", str(v["n"]), _f(v["accuracy"])] for g, v in results.get("goals", {}).items()]
        if rows:
            parts += ["", _table(["section", "prompts", "score"], rows)]
    lb = results.get("leaderboard")
    if lb:
        parts += ["", f"**{lb['name']}** (unweighted mean of the sections): **{_f(lb['value'])}** "
                  f"(95% bootstrap CI {_f(lb['ci95'][0])}-{_f(lb['ci95'][1])})."]
    ties = results.get("ties_subset")
    if ties:
        terms = ", ".join(f"{k} {_f(v)}" for k, v in ties.items() if k != "score")
        parts += ["", f"Ties = 0.30 tied + 0.30 ref + 0.20 preferred + 0.20 preferred_hard + 0.01 margin: {terms}."]
    if results.get("unknown_subsets"):
        parts += ["", f"Subsets outside RewardBench 2's six: {', '.join(results['unknown_subsets'])}."]
    return parts


def dataset_md(results: dict, *, link_prefix: str = "") -> str:
    lo, hi = results["accuracy_ci95"]
    parts = [
        f"## {results['dataset']} ({results['layout']}, {results['n_pairs']} pairs)",
        "",
        f"Source `{results['source']}`. Accuracy **{_f(results['accuracy'])}** "
        f"(95% CI {_f(lo)}-{_f(hi)}), ties {results['ties']}.",
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
    rows = [[f"RMB {g}", str(v["n"]), _f(v["accuracy"])] for g, v in results.get("goals", {}).items()]
    rows += [[s, "", _f(v)] for s, v in results.get("sections", {}).items()]
    if results.get("rewardbench_score") is not None:
        rows.append(["RewardBench score (mean of sections)", "", _f(results["rewardbench_score"])])
    if rows and not results.get("best_of_n"):  # best-of-N sets have their table above
        parts += ["", _table(["metric", "pairs", "accuracy"], rows)]
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
            _table(
                ["group", "pairs", "accuracy"],
                [[g, str(v["n"]), _f(v["accuracy"])] for g, v in results["groups"].items()],
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


# -- comparing runs ---------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _evals_under(folder: Path) -> dict[str, tuple[Path, dict]]:
    found = {}
    for results in sorted(folder.glob("*/results.json")):
        data = _read_json(results)
        found[data.get("dataset", results.parent.name)] = (results.parent, data)
    return found


def collect_entries(path: str | os.PathLike) -> list[dict]:
    """One entry per model found under `path`: label, training numbers, evals by data set."""
    root = Path(path)
    if (root / "summary.json").is_file():
        summary = _read_json(root / "summary.json")
        entries = []
        for run in summary.get("runs", []):
            method = run.get("method", "?")
            entries.append(
                {
                    "label": f"{root.name}/{method}",
                    "path": str(root),
                    "train": {k: run.get(k) for k in TRAIN_KEYS},
                    "curve": str(root / method / "curve.png") if (root / method / "curve.png").is_file() else None,
                    "evals": _evals_under(root / method / "eval"),
                }
            )
        return entries
    if (root / "results.json").is_file():
        data = _read_json(root / "results.json")
        return [
            {
                "label": data.get("label", root.name),
                "path": str(root),
                "train": None,
                "curve": None,
                "evals": {data.get("dataset", root.name): (root, data)},
            }
        ]
    evals = _evals_under(root)
    if evals:
        label = next(iter(evals.values()))[1].get("label", root.name)
        return [{"label": label, "path": str(root), "train": None, "curve": None, "evals": evals}]
    raise ReportError(f"{root}: no summary.json (training run), eval_summary.json or results.json (eval folder) found")


def _unique_labels(entries: list[dict]) -> None:
    seen: dict[str, int] = {}
    for e in entries:
        n = seen.get(e["label"], 0)
        seen[e["label"]] = n + 1
        if n:
            e["label"] = f"{e['label']} ({n + 1})"


def _paired_tests(entries: list[dict], dataset: str, *, n_boot: int) -> list[dict]:
    from idrm_ray.eval.results import read_scores
    from idrm_ray.eval.significance import compare_models

    have = [(e, e["evals"][dataset][0] / "scores.jsonl") for e in entries if dataset in e["evals"]]
    have = [(e, p) for e, p in have if p.is_file()]
    if len(have) < 2:
        return []
    (ref, ref_path), rest = have[0], have[1:]
    from idrm_ray.eval.bon_results import is_bon_scores

    if is_bon_scores(ref_path):
        return _paired_bestofn_tests(entries, dataset, ref, ref_path, rest, n_boot=n_boot)
    ref_ids, rw, rl = read_scores(ref_path)
    out = []
    for e, p in rest:
        ids, w, l = read_scores(p)
        if ids == ref_ids:
            out.append({"a": e["label"], "b": ref["label"], **compare_models((w, l), (rw, rl), n_boot=n_boot)})
    return out


def _paired_bestofn_tests(entries, dataset: str, ref: dict, ref_path: Path, rest: list, *, n_boot: int) -> list[dict]:
    """Best-of-N sets: per-prompt paired tests and the paired leaderboard bootstrap."""
    from idrm_ray.eval.bon_results import is_bon_scores, read_bon_scores, significance_inputs
    from idrm_ray.eval.significance import compare_prompt_outcomes

    layout = entries[0]["evals"][dataset][1].get("best_of_n", {}).get("layout", "")
    base = read_bon_scores(ref_path)
    inputs = lambda s: significance_inputs(layout, s["groups"], s["ids"], s["scores"], s["num_correct"])  # noqa: E731
    out = []
    for e, p in rest:
        other = read_bon_scores(p) if is_bon_scores(p) else None
        same = other and other["ids"] == base["ids"]
        if same and [len(x) for x in other["scores"]] == [len(x) for x in base["scores"]]:
            test = compare_prompt_outcomes(inputs(other), inputs(base), n_boot=n_boot)
            out.append({"a": e["label"], "b": ref["label"], **test})
    return out


def compare_runs(paths: list[str], *, output_dir: str | None = None, n_boot: int = 2000) -> Path:
    """`idrm-ray report`: side-by-side table and plots of every model under `paths`."""
    from idrm_ray.eval.results import headline

    if not paths:
        raise ReportError("no RUN_DIR given")
    entries = [e for p in paths for e in collect_entries(p)]
    _unique_labels(entries)
    out = Path(output_dir) if output_dir else (Path(paths[0]) / "report" if len(paths) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Run comparison", "", "Sources: " + ", ".join(f"`{p}`" for p in paths)]
    trained = [e for e in entries if e["train"]]
    if trained:
        rows = [[e["label"], *(_f(e["train"].get(k), 3) for k in TRAIN_KEYS)] for e in trained]
        parts += ["", "## Training (held-out eval during training)", "", _table(["run", *TRAIN_KEYS], rows)]
        accs = {
            e["label"]: {"eval_accuracy": e["train"]["eval_accuracy"]}
            for e in trained
            if e["train"].get("eval_accuracy")
        }
        if accs:
            plots.plot_metric_table(out / "compare_training.png", accs, title="held-out accuracy during training")
            parts += ["", "![training](compare_training.png)"]
        curves = [f"![{e['label']} curve]({os.path.relpath(e['curve'], out)})" for e in trained if e["curve"]]
        parts += ["", " ".join(curves)] if curves else []
    datasets = sorted({d for e in entries for d in e["evals"]})
    comparison = {"entries": [e["label"] for e in entries], "datasets": {}}
    for d in datasets:
        table = {e["label"]: headline(e["evals"][d][1]) for e in entries if d in e["evals"]}
        metrics = list(dict.fromkeys(m for row in table.values() for m in row))
        parts += [
            "",
            f"## {d}",
            "",
            _table(["run", *metrics], [[lab, *(_f(row.get(m)) for m in metrics)] for lab, row in table.items()]),
        ]
        plots.plot_metric_table(out / f"compare_{d}.png", table, title=d)
        parts += ["", f"![{d}](compare_{d}.png)"]
        curves = {
            e["label"]: e["evals"][d][1]["diagnostics"]["masking"]
            for e in entries
            if d in e["evals"] and e["evals"][d][1].get("diagnostics")
        }
        if curves:
            plots.plot_masking(out / f"masking_{d}.png", curves, title=f"progressive masking, {d}")
            parts += ["", f"![masking {d}](masking_{d}.png)"]
        tests = _paired_tests(entries, d, n_boot=n_boot)
        if tests:
            rows = [
                [
                    t["a"],
                    t["b"],
                    _f(t["accuracy_difference"]["difference"]),
                    f"[{_f(t['accuracy_difference']['ci'][0])}, {_f(t['accuracy_difference']['ci'][1])}]",
                    f"{t['wilcoxon']['p_value']:.3g}",
                    f"{t['mcnemar']['p_exact']:.3g}",
                ]
                for t in tests
            ]
            parts += [
                "",
                "Paired tests against the first run (same pairs):",
                "",
                _table(["A", "B", "acc A-B", "95% CI", "Wilcoxon p", "McNemar p"], rows),
            ]
        comparison["datasets"][d] = {"table": table, "tests": tests}
    if not datasets and not trained:
        raise ReportError("nothing to compare: no training summary and no eval results found")
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str))
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"[idrm] report: {path}")
    return path
