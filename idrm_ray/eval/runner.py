"""`idrm-ray eval`: score eval sets with a checkpoint, compare with a baseline, run the
attention diagnostics, write the eval folder.

    <out>/report.md                  all data sets: accuracy, sections/goals, significance, figures
    <out>/eval_summary.json          headline numbers per data set
    <out>/<data>/results.json        everything below in one JSON
    <out>/<data>/scores.jsonl        per pair: id, group, r_chosen, r_rejected, outcome; best-of-N sets
                                     (RewardBench 2, RM-Bench, RMB BoN): per prompt every completion's score
    <out>/<data>/accuracy.png        per subset / category; sections.png (RewardBench), goals
    <out>/<data>/stages.png, masking.png, token_view.html, token_view.png   (--diagnostics)

`<out>` defaults to `<run>/<method>/eval` for a checkpoint inside a training run folder
(`<run>/<method>/checkpoint`), else `eval/<checkpoint name>`. The student's `max_len` and
template default to the run's `config.yaml` when there is one (else 1024 and none), so pairs
are encoded as in training. `LoadedModel.template` is the one place the rendering template is
chosen; pairs and best-of-N completions are both encoded through `encode_pairs` with it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from idrm_ray.core.scoring import pair_outcomes, split_pairs
from idrm_ray.eval.baseline import compare_baseline, compare_bestofn_baseline
from idrm_ray.eval.bestofn import CompletionSet, split_scores
from idrm_ray.eval.dataset_report import write_dataset_figures, write_eval_report
from idrm_ray.eval.layouts import EvalSet, load_eval_set
from idrm_ray.eval.model import (
    EvalError,
    EvalOptions,
    LoadedModel,
    checkpoint_render,
    default_label,
    default_output_dir,
    run_config_of,
)
from idrm_ray.eval.results import accuracy_metrics, headline, write_scores

# -- the command ------------------------------------------------------------------------------


def _unique_dir(root: Path, name: str, taken: set[str]) -> Path:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return root / candidate


def run_eval(opts: EvalOptions) -> dict:
    """Score every `opts.data` source; returns the eval summary (also written to disk)."""
    if not opts.data:
        raise EvalError("no eval data: pass --data (a file, folder or hub id) at least once")
    if opts.token_view_pair is not None and not opts.diagnostics:
        raise EvalError("--token-view-pair needs --diagnostics")
    kwargs = dict(layout=opts.layout, split=opts.split, render=_prompt_render(opts), skip_bad_rows=opts.skip_bad_rows)
    sets = [load_eval_set(src, max_rows=opts.max_pairs, **kwargs) for src in opts.data]  # all valid before any model
    if opts.token_view_pair is not None:
        for s in sets:
            _diag_indices(len(s), opts)  # an out-of-range pair fails now, not after scoring
    out_root = Path(opts.output_dir) if opts.output_dir else default_output_dir(opts.checkpoint)
    out_root.mkdir(parents=True, exist_ok=True)
    label = opts.label or default_label(opts.checkpoint)
    model = LoadedModel(opts.checkpoint, opts)
    print(f"[idrm] eval {label}: {', '.join(f'{s.name} ({s.layout}, {_size(s)})' for s in sets)} -> {out_root}")
    taken: set[str] = set()
    done = [_evaluate_one(opts, model, evals, _unique_dir(out_root, evals.name, taken), label) for evals in sets]
    if opts.diagnostics:
        model.scorer = None  # free the sdpa copy before the eager one is loaded
        _attention_diagnostics(opts, model, done)
    for folder, results, _ in done:
        (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
        write_dataset_figures(folder, results)
    summary = {
        "label": label,
        "checkpoint": opts.checkpoint,
        "output_dir": str(out_root),
        "datasets": {folder.name: headline(results) for folder, results, _ in done},
    }
    (out_root / "eval_summary.json").write_text(json.dumps(summary, indent=2))
    write_eval_report(out_root, [r for _, r, _ in done], label=label)
    print(f"[idrm] report: {out_root / 'report.md'}")
    return summary


def _prompt_render(opts: EvalOptions) -> str:
    """`--render auto`: benchmark prompts as one HH turn for a model trained on raw text, as they
    are for one trained with its chat template (the template then makes the turns)."""
    if opts.render != "auto":
        return opts.render
    chat = opts.template == "chat" or checkpoint_render(opts.checkpoint, run_config_of(opts.checkpoint)[0])["chat_template"]
    return "raw" if chat else "hh"


def _size(s: EvalSet | CompletionSet) -> str:
    return f"{len(s)} prompts, {s.n_completions} completions" if isinstance(s, CompletionSet) else f"{len(s)} pairs"


def _evaluate_one(opts: EvalOptions, model: LoadedModel, evals: EvalSet | CompletionSet, folder: Path, label: str):
    """Score one data set: metrics, scores.jsonl, baseline tests, the masking curve.
    Returns (folder, results, diagnostics inputs or None) for the attention pass."""
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(evals, CompletionSet):
        return _evaluate_bestofn(opts, model, evals, folder, label)
    t0 = time.perf_counter()
    seqs, truncated = model.encode(evals)
    r_w, r_l = split_pairs(model.score(seqs))
    seconds = time.perf_counter() - t0
    results = {
        **_results_header(label, folder, evals, model, truncated),
        **accuracy_metrics(evals, r_w, r_l, n_boot=opts.n_boot, seed=opts.seed),
        "pairs_per_s": len(evals) / max(seconds, 1e-9),
        "options": _options_dict(opts),
    }
    write_scores(folder / "scores.jsonl", evals, r_w, r_l)
    print(f"[idrm] {folder.name}: accuracy {results['accuracy']:.4f} on {len(evals)} pairs ({seconds:.1f} s)")
    if opts.baseline:
        results["significance"] = compare_baseline(opts, evals, folder.name, (r_w, r_l))
    if not opts.diagnostics:
        return folder, results, None
    from idrm_ray.eval.diagnostics import masking_curve

    idx = _diag_indices(len(evals), opts)
    diag_seqs = [s for i in idx for s in (seqs[2 * i], seqs[2 * i + 1])]
    masking = masking_curve(model.scorer or model.local_scorer(), diag_seqs, bos_id=model.tokenizer.bos_token_id)
    results["diagnostics"] = {"pairs": idx.tolist(), "masking": masking}
    return folder, results, {"evals": evals, "idx": idx, "seqs": diag_seqs, "r_w": r_w, "r_l": r_l}


def _results_header(label: str, folder: Path, evals: EvalSet | CompletionSet, model: LoadedModel,
                    truncated: dict) -> dict:
    """What every data set's results.json starts with, pairwise or best-of-N."""
    return {
        "label": label,
        "dataset": folder.name,
        "source": evals.source,
        "layout": evals.layout,
        "model": model.settings(),
        "data": {**evals.report.metrics(), **{f"data/{k}": v for k, v in truncated.items()}},
    }


def _evaluate_bestofn(opts: EvalOptions, model: LoadedModel, cset: CompletionSet, folder: Path, label: str):
    """A best-of-N set: all completions scored in one pass, official sections, scores.jsonl.
    The attention diagnostics are pairwise and are not run on these sets."""
    from idrm_ray.eval.bon_results import bestofn_metrics, write_bon_scores

    t0 = time.perf_counter()
    seqs, truncated = model.encode(cset)
    scores = split_scores(model.score(seqs), cset)
    seconds = time.perf_counter() - t0
    results = {
        **_results_header(label, folder, cset, model, truncated),
        **bestofn_metrics(cset, scores, n_boot=opts.n_boot, seed=opts.seed),
        "completions_per_s": cset.n_completions / max(seconds, 1e-9),
        "options": _options_dict(opts),
    }
    write_bon_scores(folder / "scores.jsonl", cset, scores)
    print(f"[idrm] {folder.name}: {_official_line(results)} ({len(cset)} prompts, {seconds:.1f} s)")
    if opts.baseline:
        results["significance"] = compare_bestofn_baseline(opts, cset, folder.name, scores)
    if opts.diagnostics:
        print(f"[idrm] {folder.name}: attention diagnostics are pairwise; skipped for a best-of-N set")
    return folder, results, None


def _official_line(results: dict) -> str:
    """One line with the official numbers: the per-prompt accuracy, sections, leaderboard."""
    from idrm_ray.eval.bon_results import bestofn_headline

    return ", ".join(f"{k} {v:.4f}" for k, v in bestofn_headline(results).items())


def _options_dict(opts: EvalOptions) -> dict:
    return {k: v for k, v in asdict(opts).items() if k not in ("checkpoint", "data")}


def _diag_indices(n: int, opts: EvalOptions) -> np.ndarray:
    """Up to `diag_pairs` pairs, a seeded random sample in data order, plus the token-view pair."""
    rng = np.random.default_rng(opts.seed)
    idx = np.sort(rng.choice(n, size=min(opts.diag_pairs, n), replace=False)) if opts.diag_pairs < n else np.arange(n)
    if opts.token_view_pair is not None:
        if not 0 <= opts.token_view_pair < n:
            raise EvalError(f"--token-view-pair {opts.token_view_pair} is out of range: the data set has {n} pairs")
        idx = np.unique(np.append(idx, opts.token_view_pair))
    return idx


def _attention_diagnostics(opts: EvalOptions, model: LoadedModel, done: list) -> None:
    """Stage analysis and token view from one eager copy of the checkpoint (all data sets)."""
    from idrm_ray.core.reward_model import load_reward_model
    from idrm_ray.eval.diagnostics import reward_token_attention, stage_analysis, token_view
    from idrm_ray.core.devices import resolve_device, resolve_dtype

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    eager = load_reward_model(opts.checkpoint, dtype=dtype, attn_implementation="eager").to(device).eval()
    bos, pad = model.tokenizer.bos_token_id, int(eager.config.pad_token_id or 0)
    for _, results, d in done:
        if d is None:  # a best-of-N set: no pairwise diagnostics
            continue
        idx, seqs, r_w, r_l = d["idx"], d["seqs"], d["r_w"], d["r_l"]
        attns, _ = reward_token_attention(eager, seqs, pad_id=pad, batch_size=max(1, opts.batch_size // 2))
        diag = results["diagnostics"]
        diag["stages"] = stage_analysis(attns, seqs, pair_outcomes(r_w[idx], r_l[idx]), bos_id=bos)
        pos = int(np.searchsorted(idx, opts.token_view_pair)) if opts.token_view_pair is not None else 0
        pair = int(idx[pos])
        view = token_view(
            model.tokenizer, seqs[2 * pos], attns[2 * pos], seqs[2 * pos + 1], attns[2 * pos + 1], bos_id=bos
        )
        diag["token_view"] = {
            "pair": pair,
            "id": d["evals"].ids[pair],
            "r_chosen": float(r_w[pair]),
            "r_rejected": float(r_l[pair]),
            **view,
        }
