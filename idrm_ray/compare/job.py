"""`idrm-ray compare` (and `jobs/compare.py`): train a list of methods over several seeds on
the same data with the same pipeline, and write the paper's Table 2/3 layout.

Order: validate data -> prepare the student and each needed teacher once (NLI, and for the
ablations the teacher without NLI and the other encoder family) -> stage 1, in parallel as
Ray tasks (each the driver of its own TorchTrainer): every single-run method per seed, and
per seed the shared ensembles (bt members: LF flips, AM proxy margins, WARM; id members:
ID+WARM) -> stage 2: per seed the methods built on those members (flip/margin then train,
or average) -> score every final checkpoint on the eval columns -> tables and plot.

    <compare dir>/seed<s>/<method>/checkpoint      every final RM (OpenRLHF layout)
    <compare dir>/seed<s>/members/<bt|id>/member<i>
    <compare dir>/table.md, table.csv, results.csv, accuracy.png, compare.json
    <compare dir>/significance.csv, per_seed.md   each method against BT per seed and eval set
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import ray

from idrm_ray import console
from idrm_ray.compare.table import bar_plot, summarise, write_significance, write_tables
from idrm_ray.compare.variants import Variant, needs_members
from idrm_ray.config import derive
from idrm_ray.config.plan import make_plan
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core.method_kind import am_from_ratings, method_kind
from idrm_ray.data import bundled_path
from idrm_ray.run import (
    init_ray,
    load_data,
    member_overrides,
    prepare_student,
    prepare_teacher,
    run_method,
    run_tasks,
    runs_that_fit,
    score_gaps,
    tiny_student_note,
    tiny_teacher_dir,
    train_one,
)

DEFAULT_SHUFFLE = 256  # seeds differ in data order (and any new head's init)
# `idrm-ray compare` with no config: the embedded default (preset tiny) cut so that the nine
# methods x 3 seeds (33 Ray Train runs) fit in 20 minutes on 2 CPU cores: 1200 pairs, one
# pass, batch 8 (150 steps), 2 ensemble members, half a CPU per train worker so two runs train
# at once. A tiny run is ~10 s of steps and ~30 s of Ray start-up; 1600 pairs and 3 members
# (45 runs) took over 30 minutes.
EMBEDDED_DEFAULTS = [
    "data.max_pairs=1200", "optim.epochs=1", "optim.max_steps=null", "optim.global_batch_size=8",
    "optim.micro_batch_size=8", "run.eval_every=0", "run.log_every=25", "teacher.finetune.epochs=2",
    "method.ensemble.members=2", "method.inform.latent_dim=16", "resources.cpus_per_worker=0.5",
    "logging.wandb_mode=disabled",
]


def run_compare(cfg: TrainJobConfig, variants: list[Variant], seeds: list[int], *,
                out_dir: str | Path | None = None, eval_sources: list[str] | None = None) -> dict:
    t_start = time.perf_counter()
    out = Path(out_dir or Path(cfg.run.output_dir) / (cfg.run.name or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"))
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train, evals, counts = load_data(cfg, out)
    columns = eval_columns(cfg, evals, eval_sources)
    console.run_folder(out, f"[idrm] compare in {out}: {[v.name for v in variants]} x seeds {seeds}; "
                            f"{len(train)} train pairs, eval columns {[c for c, _ in columns]}")
    init_ray(cfg.resources.ray_address)
    base = derive(cfg, {"student.name_or_path": prepare_student(cfg, out),
                        "teacher.cache_dir": cfg.teacher.cache_dir or str(out / "map_cache"),
                        "data.shuffle_buffer": cfg.data.shuffle_buffer or DEFAULT_SHUFFLE, "method.compare_bt": False})
    teachers = prepare_teachers(cfg, variants, out)
    plan = make_plan(base, len(train))
    limit = cfg.method.ensemble.concurrency or runs_that_fit(cfg)
    am_rated = am_from_ratings(cfg.method.am.source, train)
    kinds = sorted(needs_members(variants, am_from_ratings=am_rated))

    def config(v: Variant | None, seed: int, method: str) -> TrainJobConfig:
        return derive(base, {**(v.values if v else {}), "method.name": method, "optim.seed": seed,
                             "teacher.name_or_path": teachers.get(v.teacher if v else "nli") or ""})

    def common(seed: int, teacher: str) -> dict:
        return {"plan": plan, "student_dir": base.student.name_or_path, "teacher_dir": teachers.get(teacher),
                "evals": evals, "run_dir": out / f"seed{seed}"}

    staged = [v for v in variants if _needs_stage2(v, am_rated)]
    direct = [v for v in variants if v not in staged]
    calls, keys = [], []
    for seed in seeds:
        for v in direct:
            calls.append({"fn": run_method, "cfg": config(v, seed, v.method), "method": v.method, "out_name": v.name,
                          **common(seed, v.teacher)})
            keys.append(("final", v.name, seed))
        for kind in kinds:
            c = config(None, seed, kind)
            for i in range(cfg.method.ensemble.members):
                calls.append({"fn": train_one, "cfg": c, "method": kind, "out_name": f"members/{kind}/member{i}",
                              "spec_overrides": member_overrides(c, plan, i, diverse_lr=True), **common(seed, "nli")})
                keys.append((kind, i, seed))
    console.phase("stage 1", f"{len(calls)} training runs, {min(limit, len(calls))} at a time")
    rows = dict(zip(keys, _first(run_tasks(_dispatch, calls, limit=limit, shared={"train": train}))))

    stage2, keys = [], []
    for seed in seeds:
        members = {k: [rows[(k, i, seed)] for i in range(cfg.method.ensemble.members)] for k in kinds}
        for v in staged:
            stage2.append({"fn": run_method, "cfg": config(v, seed, v.method), "method": v.method, "out_name": v.name,
                           "members": members, **common(seed, v.teacher)})
            keys.append(("final", v.name, seed))
    if stage2:
        console.phase("stage 2", f"{len(stage2)} methods built on the shared ensembles")
        rows.update(zip(keys, _first(run_tasks(_dispatch, stage2, limit=limit, shared={"train": train}))))
    results = score_finals(cfg, rows, variants, seeds, columns)
    names = [c for c, _ in columns] + _leaderboards(columns)  # leaderboard columns: beside, not in the avg
    summary = summarise(results, columns=names, methods=[v.name for v in variants],
                        average_over=[c for c, _ in columns])
    title = f"Accuracy by eval set ({len(seeds)} seeds, {len(train)} training pairs)"
    write_tables(out, results, summary, columns=names, title=title)
    bar_plot(out / "accuracy.png", summary, title=title)
    per_seed = write_significance(out, results)
    report = {"compare_dir": str(out), "wall_time_s": time.perf_counter() - t_start, "seeds": seeds,
              "methods": [v.name for v in variants], "columns": names, "data": counts,
              "teachers": teachers, "concurrency": limit, "summary": summary,
              "runs": {f"{k[1]}/seed{k[2]}" if k[0] == "final" else f"{k[0]}-member{k[1]}/seed{k[2]}": r
                       for k, r in rows.items()}}
    (out / "compare.json").write_text(json.dumps(report, indent=2, default=str))
    console.result_table((out / "table.md").read_text() + (f"\n{per_seed}" if per_seed else ""))
    if tiny_student_note(cfg.student.name_or_path):  # the embedded default cannot show ID's effect
        console.info(tiny_student_note(cfg.student.name_or_path))
    console.info(f"[idrm] compare done in {report['wall_time_s']:.0f} s: {out}")
    return report


def _dispatch(fn, **kwargs):
    return fn(**kwargs)


def _first(results: list) -> list[dict]:
    """run_method returns [row]; train_one returns row."""
    return [r[0] if isinstance(r, list) else r for r in results]


def _needs_stage2(v: Variant, am_rated: bool) -> bool:
    return method_kind(v.method).needs_members(am_from_ratings=am_rated)


def prepare_teachers(cfg: TrainJobConfig, variants: list[Variant], out: Path) -> dict[str, str]:
    """Each teacher the variants distil from, prepared once: `nli` (the configured teacher),
    `no_nli` (its encoder before NLI fine-tuning) and `alt` (the other encoder family,
    fine-tuned on NLI; built-in tiny teachers only, else teacher.name_or_path must name it)."""
    wanted = {v.teacher for v in variants if v.distills}
    teachers: dict[str, str] = {}
    if "nli" in wanted:
        teachers["nli"], _ = prepare_teacher(cfg, out / "teachers" / "nli", needed=True)
    if "no_nli" in wanted:
        if cfg.teacher.is_tiny:
            teachers["no_nli"] = tiny_teacher_dir(cfg, out / "teachers" / "no_nli", "teacher")
        elif cfg.teacher.name_or_path:
            raise ValueError("the id-no-nli ablation needs the teacher's encoder before NLI fine-tuning: set "
                             "teacher.name_or_path empty and teacher.finetune.base to that encoder")
        else:
            teachers["no_nli"] = cfg.teacher.finetune.base
    if "alt" in wanted:
        if not cfg.teacher.is_tiny:
            raise ValueError("the id-alt-teacher ablation swaps the built-in tiny teacher's family; for real "
                             "teachers run compare twice with teacher.name_or_path set to each NLI checkpoint")
        family = "deberta-v2" if cfg.teacher.tiny.family == "bert" else "bert"
        alt = derive(cfg, {"teacher.name_or_path": "", "teacher.tiny.family": family})
        teachers["alt"], _ = prepare_teacher(alt, out / "teachers" / family, needed=True)
    return teachers


def eval_columns(cfg: TrainJobConfig, evals, sources: list[str] | None) -> list[tuple[str, list]]:
    """(column name, pairs) of the table. Default: the run's eval pairs, split by their
    `kind` / `subset` / `category` field when the file has one (the bundled set: kinds of
    question). Given sources load through `idrm-ray eval`'s layouts (RewardBench, RMB, ...);
    a best-of-N set (RewardBench 2, RM-Bench, RMB BoN) gives one column per official section,
    scored by its rule (`eval.bon_results.compare_columns`)."""
    if not sources:
        path = bundled_path("pref_eval") if (cfg.data.eval in ("", "bundled") and cfg.data.train == "bundled") \
            else cfg.data.eval
        groups = _group_field(path, len(evals)) if path else None
        return _split(evals, groups) if groups else [("eval", evals)]
    from idrm_ray.eval.bestofn import CompletionSet
    from idrm_ray.eval.bon_results import compare_columns
    from idrm_ray.eval.layouts import load_eval_set

    columns = []
    for src in sources:
        es = load_eval_set(bundled_path("pref_eval") if src == "bundled" else src)
        if isinstance(es, CompletionSet):
            columns += compare_columns(es)
            continue
        groups = es.groups if any(g is not None for g in es.groups) else _group_field(src, len(es))
        if groups:
            columns += [(f"{es.name}:{g}", ex) for g, ex in _split(es.examples, groups)]
        else:
            columns.append((es.name, es.examples))
    return columns


def _group_field(path, count: int) -> list[str] | None:
    path = Path(str(path))
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for key in ("kind", "subset", "category"):
        if len(rows) == count and all(key in r for r in rows):
            return [str(r[key]) for r in rows]
    return None


def _split(examples, groups) -> list[tuple[str, list]]:
    names = sorted({g for g in groups if g is not None})
    return [(g, [e for e, h in zip(examples, groups) if h == g]) for g in names]


def score_finals(cfg, rows: dict, variants, seeds, columns) -> list[dict]:
    """Accuracy of every final checkpoint on every column (Ray tasks, all at once)."""
    flat = [e for _, ex in columns for e in ex]
    bounds = np.cumsum([0] + [len(ex) for _, ex in columns])
    jobs = [(v.name, s, rows[("final", v.name, s)]["checkpoint"]) for v in variants for s in seeds]
    results = []
    for (name, seed, _), g in zip(jobs, score_gaps(cfg, [c for _, _, c in jobs], flat)):
        for (col, ex), lo, hi in zip(columns, bounds[:-1], bounds[1:]):
            score = getattr(ex, "score", None)  # best-of-N sections carry their official rule
            acc = score(g[lo:hi]) if score else float(np.mean(g[lo:hi] > 0))
            results.append({"method": name, "seed": seed, "column": col, "accuracy": acc, "pairs": int(hi - lo),
                            **({} if score else {"gaps": g[lo:hi]})})  # pairs' r_w - r_l: significance.csv
        mine = {r["column"]: r["accuracy"] for r in results[-len(columns):]}  # this run's columns
        for board in _leaderboards(columns):  # unweighted mean of the set's sections, per run
            parts = [mine[c] for c, ex in columns if getattr(ex, "leaderboard", None) == board]
            results.append({"method": name, "seed": seed, "column": board, "accuracy": float(np.mean(parts)),
                            "pairs": 0})
    return results


def _leaderboards(columns) -> list[str]:
    return list(dict.fromkeys(b for _, ex in columns if (b := getattr(ex, "leaderboard", None))))
