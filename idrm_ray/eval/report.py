"""`idrm-ray report RUN_DIR [RUN_DIR ...]`: runs and eval folders side by side (one eval
folder's own `report.md` is `dataset_report.py`).

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
from idrm_ray.eval.dataset_report import fmt, md_table

TRAIN_KEYS = ("eval_accuracy", "eval_loss", "pairs_per_s", "step_time_s", "teacher_wait_fraction")


class ReportError(ValueError):
    """A RUN_DIR with nothing to report: printed as one line by the CLI."""


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
        rows = [[e["label"], *(fmt(e["train"].get(k), 3) for k in TRAIN_KEYS)] for e in trained]
        parts += ["", "## Training (held-out eval during training)", "", md_table(["run", *TRAIN_KEYS], rows)]
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
            md_table(["run", *metrics], [[lab, *(fmt(row.get(m)) for m in metrics)] for lab, row in table.items()]),
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
                    fmt(t["accuracy_difference"]["difference"]),
                    f"[{fmt(t['accuracy_difference']['ci'][0])}, {fmt(t['accuracy_difference']['ci'][1])}]",
                    f"{t['wilcoxon']['p_value']:.3g}",
                    f"{t['mcnemar']['p_exact']:.3g}",
                ]
                for t in tests
            ]
            parts += [
                "",
                "Paired tests against the first run (same pairs):",
                "",
                md_table(["A", "B", "acc A-B", "95% CI", "Wilcoxon p", "McNemar p"], rows),
            ]
        comparison["datasets"][d] = {"table": table, "tests": tests}
    if not datasets and not trained:
        raise ReportError("nothing to compare: no training summary and no eval results found")
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2, default=str))
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"[idrm] report: {path}")
    return path
