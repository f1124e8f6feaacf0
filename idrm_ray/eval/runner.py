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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from idrm_ray.eval.bestofn import CompletionSet, encode_completions, split_scores
from idrm_ray.eval.layouts import EvalSet, load_eval_set
from idrm_ray.eval.results import accuracy_metrics, headline, read_scores, write_scores
from idrm_ray.core.scoring import RewardScorer, encode_with_stats, pair_outcomes, split_pairs
from idrm_ray.eval.significance import compare_models

DEFAULT_MAX_LEN = 1024


class EvalError(ValueError):
    """Bad eval request (not bad data): printed as one line by the CLI."""


@dataclass(frozen=True)
class EvalOptions:
    checkpoint: str
    data: tuple[str, ...]
    layout: str = "auto"
    split: str | None = None
    render: str = "auto"  # hh: RewardBench prompts as one HH turn; raw: as they are; auto: raw for chat-trained
    output_dir: str | None = None
    label: str | None = None  # the model's name in reports (default: run/method or dir name)
    max_pairs: int | None = None
    skip_bad_rows: bool = False
    max_len: int | None = None  # None: the run's student.max_len, else 1024
    template: tuple[str, str, str] | str | None = None  # "chat" or a tuple; None: as the checkpoint was trained
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    use_ray: bool = False  # score with a Ray Data actor pool of the Ray the caller started
    ray_concurrency: int = 1
    ray_gpus: float = 0.0
    baseline: str | None = None  # a checkpoint, or an eval folder holding scores.jsonl
    pair_score: str = "prob"
    n_boot: int = 2000
    seed: int = 0
    diagnostics: bool = False
    diag_pairs: int = 64
    token_view_pair: int | None = None  # index into the data set; None: the first diagnosed pair


# -- checkpoints ------------------------------------------------------------------------------


def run_config_of(checkpoint: str) -> tuple[dict, str | None]:
    """The training run's config (`<run>/config.yaml`, JSON) of a `<run>/<method>/checkpoint`."""
    ckpt = Path(checkpoint)
    for path in (ckpt.parent.parent / "config.yaml", ckpt.parent / "config.yaml"):
        if path.is_file():
            import yaml

            return yaml.safe_load(path.read_text()) or {}, str(path)
    return {}, None


def default_label(checkpoint: str) -> str:
    ckpt = Path(checkpoint.rstrip("/"))
    if ckpt.name == "checkpoint" and ckpt.parent.name:
        return f"{ckpt.parent.parent.name}/{ckpt.parent.name}"
    return ckpt.name or checkpoint


def default_output_dir(checkpoint: str) -> Path:
    ckpt = Path(checkpoint.rstrip("/"))
    if ckpt.name == "checkpoint" and ckpt.is_dir():
        return ckpt.parent / "eval"
    return Path("eval") / (ckpt.name or "model")


def checkpoint_render(checkpoint: str, run_cfg: dict) -> dict:
    """How the checkpoint's student read its text: the `render` its metadata records (DESIGN.md
    decision 9), else the run's config.yaml (older checkpoints). `template` is what
    `encode_pairs` takes: "chat", a (prefix, separator, suffix) tuple, or None."""
    from idrm_ray.core.reward_model import read_metadata

    saved = read_metadata(checkpoint).get("render")
    student = run_cfg.get("student", {})
    source = saved if saved is not None else {
        "chat_template": student.get("chat_template", False),
        "template": [(student.get("template") or {}).get(k, "") for k in ("prefix", "separator", "suffix")],
        "max_len": student.get("max_len"),
    }
    parts = tuple(source.get("template") or ("", "", ""))
    template = "chat" if source.get("chat_template") else (parts if any(parts) else None)
    return {"template": template, "max_len": source.get("max_len"), "chat_template": bool(source.get("chat_template")),
            "recorded": saved is not None}


class LoadedModel:
    """A checkpoint with its tokenizer and its encoding settings."""

    def __init__(self, checkpoint: str, opts: EvalOptions) -> None:
        from idrm_ray.core.reward_model import load_student_tokenizer

        cfg, self.config_path = run_config_of(checkpoint)
        render = checkpoint_render(checkpoint, cfg)
        self.checkpoint = checkpoint
        self.max_len = int(opts.max_len or render["max_len"] or DEFAULT_MAX_LEN)
        if opts.template is not None and render["recorded"] and (opts.template == "chat") != render["chat_template"]:
            trained = "chat-templated text" if render["chat_template"] else "raw prompt + response"
            raise EvalError(f"{checkpoint} was trained on {trained} (its metadata records it): --template "
                            f"{opts.template!r} would score text it never saw; drop --template")
        self.template = opts.template if opts.template is not None else render["template"]
        self.opts = opts
        try:  # a path that is not a model is bad input, not a crash
            self.tokenizer = load_student_tokenizer(checkpoint)
            self.scorer: RewardScorer | None = None if opts.use_ray else self.local_scorer()
        except (OSError, ValueError) as exc:
            raise EvalError(f"cannot load checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc

    def local_scorer(self) -> RewardScorer:
        """The in-process scorer (sdpa); with --ray one is made for the diagnostics only."""
        o = self.opts
        return RewardScorer(self.checkpoint, device=o.device, dtype=o.dtype, batch_size=o.batch_size)

    def encode(self, evals: EvalSet | CompletionSet) -> tuple[list[np.ndarray], dict[str, int]]:
        """Pairs: [chosen_0, rejected_0, ...]; a CompletionSet: every completion in order."""
        if isinstance(evals, CompletionSet):
            return encode_completions(evals, self.tokenizer, max_len=self.max_len, template=self.template)
        return encode_with_stats(evals.examples, self.tokenizer, max_len=self.max_len, template=self.template)

    def score(self, seqs: list[np.ndarray]) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer.score(seqs)
        from idrm_ray.eval.ray_scoring import score_with_ray

        o = self.opts
        return score_with_ray(
            self.checkpoint,
            seqs,
            batch_size=o.batch_size,
            concurrency=o.ray_concurrency,
            num_gpus=o.ray_gpus,
            dtype=o.dtype,
        )

    def settings(self) -> dict:
        return {
            "checkpoint": self.checkpoint,
            "max_len": self.max_len,
            "template": self.template,
            "run_config": self.config_path,
        }


# -- baseline ---------------------------------------------------------------------------------


def _baseline_scores_file(baseline: str, name: str) -> Path | None:
    root = Path(baseline)
    for path in (root / name / "scores.jsonl", root / "scores.jsonl"):
        if path.is_file():
            return path
    return None


# -- the command ------------------------------------------------------------------------------


def _unique_dir(root: Path, name: str, taken: set[str]) -> Path:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}_{k}", k + 1
    taken.add(candidate)
    return root / candidate


def run_eval(opts: EvalOptions) -> dict:
    """Score every `opts.data` source; returns the eval summary (also written to disk)."""
    from idrm_ray.eval import report

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
        report.write_dataset_figures(folder, results)
    summary = {
        "label": label,
        "checkpoint": opts.checkpoint,
        "output_dir": str(out_root),
        "datasets": {folder.name: headline(results) for folder, results, _ in done},
    }
    (out_root / "eval_summary.json").write_text(json.dumps(summary, indent=2))
    report.write_eval_report(out_root, [r for _, r, _ in done], label=label)
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
        results["significance"] = _compare_baseline(opts, evals, folder.name, (r_w, r_l))
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
        results["significance"] = _compare_bestofn_baseline(opts, cset, folder.name, scores)
    if opts.diagnostics:
        print(f"[idrm] {folder.name}: attention diagnostics are pairwise; skipped for a best-of-N set")
    return folder, results, None


def _official_line(results: dict) -> str:
    """One line with the official numbers: the per-prompt accuracy, sections, leaderboard."""
    from idrm_ray.eval.bon_results import bestofn_headline

    return ", ".join(f"{k} {v:.4f}" for k, v in bestofn_headline(results).items())


def _compare_bestofn_baseline(opts: EvalOptions, cset: CompletionSet, name: str, scores: list) -> dict:
    from idrm_ray.eval.bon_results import is_bon_scores, read_bon_scores, significance_inputs
    from idrm_ray.eval.significance import compare_prompt_outcomes

    scores_file = _baseline_scores_file(opts.baseline, name)
    if scores_file is not None:
        base = read_bon_scores(scores_file) if is_bon_scores(scores_file) else None
        if base is None or base["ids"] != cset.ids or [len(s) for s in base["scores"]] != [c.n for c in cset.items]:
            raise EvalError(f"{scores_file}: its prompts or completions differ from {cset.source}")
        b_scores, source = base["scores"], str(scores_file)
    elif Path(opts.baseline, "config.json").is_file() or not Path(opts.baseline).exists():
        other = LoadedModel(opts.baseline, opts)
        b_scores, source = split_scores(other.score(other.encode(cset)[0]), cset), opts.baseline
    else:
        raise EvalError(
            f"--baseline {opts.baseline}: neither a checkpoint (config.json) "
            f"nor an eval folder with {name}/scores.jsonl"
        )
    k = [c.num_correct for c in cset.items]
    a = significance_inputs(cset.layout, cset.groups, cset.ids, scores, k, opts.pair_score)
    b = significance_inputs(cset.layout, cset.groups, cset.ids, b_scores, k, opts.pair_score)
    out = compare_prompt_outcomes(a, b, n_boot=opts.n_boot, seed=opts.seed)
    return {"baseline": source, "baseline_label": default_label(opts.baseline), **out}


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


def _compare_baseline(opts: EvalOptions, evals: EvalSet, name: str, ours: tuple[np.ndarray, np.ndarray]) -> dict:
    scores_file = _baseline_scores_file(opts.baseline, name)
    if scores_file is not None:
        ids, b_w, b_l = read_scores(scores_file)
        if ids != evals.ids:
            raise EvalError(
                f"{scores_file}: its pairs differ from {evals.source} "
                f"({len(ids)} vs {len(evals)} pairs, or another order)"
            )
        source = str(scores_file)
    elif Path(opts.baseline, "config.json").is_file() or not Path(opts.baseline).exists():
        other = LoadedModel(opts.baseline, opts)
        b_w, b_l = split_pairs(other.score(other.encode(evals)[0]))
        source = opts.baseline
    else:
        raise EvalError(
            f"--baseline {opts.baseline}: neither a checkpoint (config.json) "
            f"nor an eval folder with {name}/scores.jsonl"
        )
    out = compare_models(ours, (b_w, b_l), score=opts.pair_score, n_boot=opts.n_boot, seed=opts.seed)
    return {"baseline": source, "baseline_label": default_label(opts.baseline), **out}


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
