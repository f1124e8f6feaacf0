"""Methods that are more than one training run (METHOD.md §10), on the driver.

    bt, id, inform, am (rating)    one run (`driver.train_one`)
    am (no rating), id+am          ensemble -> μ̂ per pair -> margins max(μ̂, 0) -> final run
    lf, id+lf                      ensemble -> μ̂ per pair -> flip μ̂ < 0 -> final run with smoothing α
    warm, id+warm                  M members from the same init (seeds, data orders, lrs) -> average
                                   (variant `checkpoints`: the last K checkpoints of one run)

The ensemble members are ordinary Ray Train runs (bt members for the preference strength,
bt or id members for WARM), run in parallel as Ray tasks, as many as the student resources
fit (`method.ensemble.concurrency`). Members, flips and margins are written to the method's
folder: <run>/<method>/members/member<i>/, strength.jsonl (μ̂, σ̂, flipped per pair).
The averaged WARM model is an ordinary reward-model checkpoint (OpenRLHF layout).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray
import torch

from idrm_ray.config import derive
from idrm_ray.core.method_kind import method_kind
from idrm_ray import console
from idrm_ray.core.baselines import am_margins, flip_mask, preference_strength
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.scoring import pair_outcomes
from idrm_ray.pipeline import cluster
from idrm_ray.pipeline.driver import train_one

SHUFFLE_BUFFER_PAIRS = 256  # members' seeded local shuffle: different data orders, same data


def run_method(cfg, plan, *, method: str, student_dir: str, teacher_dir: str | None, train, evals,
               run_dir: Path, members: dict[str, list[dict]] | None = None, out_name: str | None = None) -> list[dict]:
    """Train `method` into run_dir/(out_name or method) and return its summary row(s).
    `members` reuses ensembles already trained by the caller ({"bt": rows, "id": rows},
    e.g. shared by `idrm-ray compare`)."""
    kind = method_kind(method)
    name = out_name or method
    common = dict(student_dir=student_dir, teacher_dir=teacher_dir, evals=evals, run_dir=run_dir)
    members = members or {}
    if kind.base == "warm":
        return [_warm(cfg, plan, method=method, name=name, train=train, members=members, **common)]
    extra: dict = {}
    if kind.base == "am":
        train, extra = _am_data(cfg, plan, name=name, train=train, members=members, common=common)
    elif kind.base == "lf":
        train, extra = _lf_data(cfg, plan, name=name, train=train, members=members, common=common)
    row = train_one(cfg, plan, method=method, train=train, out_name=name, **common)
    return [{**row, **extra}]


# -- ensembles ------------------------------------------------------------------------------


def member_overrides(cfg, plan, index: int, *, diverse_lr: bool) -> dict:
    """Member i: its own seed (init of any new head, dropout) and data order (seeded local
    shuffle), and for WARM a learning rate from `method.warm.lr_multipliers`."""
    o, e = cfg.optim, cfg.method.ensemble
    mults = cfg.method.warm.lr_multipliers
    steps = min(plan.total_steps, e.max_steps or plan.total_steps)
    warmup = min(plan.warmup_steps, max(steps - 1, 0))
    return dict(seed=o.seed + 1 + index, shuffle_buffer=cfg.data.shuffle_buffer or SHUFFLE_BUFFER_PAIRS,
                lr=o.lr * (mults[index % len(mults)] if diverse_lr else 1.0),
                max_steps=e.max_steps or o.max_steps, total_steps=steps, warmup_steps=warmup,
                eval_every=0, checkpoint_every=0)


def train_members(cfg, plan, *, kind: str, folder: str, train, student_dir, teacher_dir, evals, run_dir: Path,
                  diverse_lr: bool = True) -> list[dict]:
    """M runs of `kind` (bt | id) from the same init, in parallel where resources allow."""
    jobs = [dict(method=kind, out_name=f"{folder}/member{i}",
                 spec_overrides=member_overrides(cfg, plan, i, diverse_lr=diverse_lr))
            for i in range(cfg.method.ensemble.members)]
    limit = cfg.method.ensemble.concurrency or cluster.runs_that_fit(cfg)
    console.info(f"[idrm] {len(jobs)} {kind} ensemble members under {run_dir / folder} "
                 f"({min(limit, len(jobs))} at a time)")
    common = dict(student_dir=student_dir, teacher_dir=teacher_dir, evals=evals, run_dir=run_dir)
    return run_parallel(cfg, plan, jobs, train=train, limit=limit, **common)


def run_parallel(cfg, plan, jobs: list[dict], *, train, limit: int, **common) -> list[dict]:
    """`train_one` per job, at most `limit` at a time; results in job order."""
    calls = [{"cfg": cfg, "plan": plan, **common, **job} for job in jobs]
    return run_tasks(train_one, calls, limit=limit, shared={"train": train})


def run_tasks(fn, calls: list[dict], *, limit: int, shared: dict | None = None) -> list:
    """fn(**shared, **call) per call, at most `limit` at a time, each as a Ray task (a driver
    of its own TorchTrainer: the Train V2 shape Tune trials use), or in this process when
    `limit` is 1. `shared` (e.g. the training pairs) goes to the object store once. Results
    come back in call order; a failed call raises here (a member never fails silently)."""
    shared = shared or {}
    if limit <= 1 or len(calls) <= 1:
        return [fn(**shared, **call) for call in calls]
    remote = ray.remote(num_cpus=0.01, max_retries=0)(_call)
    shared_ref = ray.put(shared)
    pending, results = {}, {}
    queue = list(enumerate(calls))
    while queue or pending:
        while queue and len(pending) < limit:
            i, call = queue.pop(0)
            pending[remote.remote(fn, shared_ref, call)] = i
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results[pending.pop(ref)] = ray.get(ref)
    return [results[i] for i in range(len(calls))]


def _call(fn, shared: dict, call: dict):
    return fn(**shared, **call)


def strength(cfg, plan, *, name: str, train, members: dict, common: dict) -> tuple[torch.Tensor, torch.Tensor, list]:
    """μ̂, σ̂ per training pair (Secrets-II) from the bt ensemble (trained here unless given)."""
    rows = members.get("bt") or train_members(cfg, plan, kind="bt", folder=f"{name}/members", train=train,
                                              diverse_lr=False, **common)
    gaps = torch.from_numpy(np.stack(score_gaps(cfg, [r["checkpoint"] for r in rows], train)))  # (M, P)
    mu, sigma = preference_strength(gaps)
    return mu, sigma, rows


def _am_data(cfg, plan, *, name, train, members, common) -> tuple[list[PreferenceExample], dict]:
    am = cfg.method.am
    rated = all(e.margin is not None for e in train)
    source = am.source if am.source != "auto" else ("rating" if rated else "ensemble")
    if source == "rating":
        if not rated:
            missing = sum(e.margin is None for e in train)
            raise ValueError(f"method.am.source=rating but {missing} of {len(train)} training pairs have no "
                             "`margin` field: use method.am.source=ensemble (or auto)")
        margins = torch.tensor([float(e.margin) for e in train]) * am.scale
        extra = {"margin_source": "rating"}
    else:
        mu, sigma, rows = strength(cfg, plan, name=name, train=train, members=members, common=common)
        margins = am_margins(mu, scale=am.scale)
        _write_strength(common["run_dir"] / name, train, mu, sigma, flipped=None, margins=margins)
        extra = {"margin_source": "ensemble", **_member_summary(rows)}
    extra.update(margin_mean=float(margins.mean()), margin_zero_fraction=float((margins == 0).float().mean()))
    return [replace(e, margin=float(m)) for e, m in zip(train, margins)], extra


def _lf_data(cfg, plan, *, name, train, members, common) -> tuple[list[PreferenceExample], dict]:
    lf = cfg.method.lf
    mu, sigma, rows = strength(cfg, plan, name=name, train=train, members=members, common=common)
    flips = flip_mask(mu, threshold=lf.threshold, max_fraction=lf.max_flip_fraction)
    _write_strength(common["run_dir"] / name, train, mu, sigma, flipped=flips, margins=None)
    flipped = [replace(e, chosen=e.rejected, rejected=e.chosen) if f else e for e, f in zip(train, flips.tolist())]
    console.info(f"[idrm] {name}: flipped {int(flips.sum())} of {len(train)} pairs (μ̂ < {lf.threshold}; "
                 f"{float((mu < 0).double().mean()):.1%} have μ̂ < 0)")
    return flipped, {"flipped_pairs": int(flips.sum()), "flipped_fraction": float(flips.double().mean()),
                     "negative_strength_fraction": float((mu < 0).double().mean()),
                     "label_smoothing": lf.smoothing, **_member_summary(rows)}


# -- WARM -----------------------------------------------------------------------------------


def _warm(cfg, plan, *, method, name, train, members, student_dir, teacher_dir, evals, run_dir) -> dict:
    kind = method_kind(method).member_kind
    t0 = time.perf_counter()
    common = dict(student_dir=student_dir, teacher_dir=teacher_dir, evals=evals, run_dir=run_dir)
    if cfg.method.warm.variant == "checkpoints":
        k = cfg.method.warm.checkpoints
        every = max(1, plan.total_steps // k)
        run_cfg = derive(cfg, {"run.keep_checkpoints": k})
        row = train_one(run_cfg, plan, method=kind, train=train, out_name=f"{name}/run", keep_checkpoints=True,
                        spec_overrides=dict(checkpoint_every=every), **common)
        sources, rows = row["checkpoints"], [row]
    else:
        rows = members.get(kind) or train_members(cfg, plan, kind=kind, folder=f"{name}/members", train=train,
                                                  **common)
        sources = [r["checkpoint"] for r in rows]
    out = run_dir / name / "checkpoint"
    average_checkpoints(cfg, sources, out, metadata={"method": method, "variant": cfg.method.warm.variant})
    metrics = evaluate_checkpoint(cfg, str(out), evals)
    console.info(f"[idrm] {name}: averaged {len(sources)} models -> {out} "
                 f"(eval accuracy {metrics['eval_accuracy']:.3f})")
    return {"method": method, **metrics, "checkpoint": str(out), "averaged_models": len(sources),
            "wall_time_s": time.perf_counter() - t0, "steps": rows[0].get("steps"), **_member_summary(rows)}


def average_checkpoints(cfg, sources: list[str], out: Path, *, metadata: dict) -> Path:
    """φ_WARM of reward-model checkpoints with one architecture and init (`write_average`),
    in a Ray task placed like a student worker: the driver never holds a member, and the
    task holds one chunk of each tensor at a time (DESIGN.md decision 10)."""
    task = ray.remote(write_average).options(**_student_slot(cfg), max_retries=1)
    return Path(ray.get(task.remote([str(s) for s in sources], str(out), metadata=metadata)))


def write_average(sources: list[str], out: str, *, metadata: dict, **limits) -> str:
    """The uniform average of `sources`, streamed tensor by tensor from their safetensors
    (`average_safetensors`; `limits`: its shard/chunk sizes), saved as an ordinary reward-model
    directory: member 0's config with OpenRLHF's reward fields reset, its tokenizer, and
    `idrm_meta.json` with `metadata` over the settings every member's metadata agrees on
    (e.g. the chat template; numbers are the members' own metrics and are left out)."""
    from transformers import AutoConfig

    from idrm_ray.core.baselines import average_safetensors
    from idrm_ray.core.reward_model import META_FILE, VALUE_HEAD_PREFIX, cached_tokenizer, read_metadata

    average_safetensors(sources, out, **limits)
    config = AutoConfig.from_pretrained(sources[0])
    config.value_head_prefix, config.mean, config.std, config.normalize_reward = VALUE_HEAD_PREFIX, 0.0, 1.0, False
    config.save_pretrained(out)
    cached_tokenizer(sources[0]).save_pretrained(out)
    metas = [read_metadata(s) for s in sources]
    agreed = {k: v for k, v in metas[0].items() if all(m.get(k) == v for m in metas)}
    settings = {k: v for k, v in agreed.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    meta = {**settings, **metadata, "averaged": list(sources)}
    (Path(out) / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return str(out)


# -- scoring --------------------------------------------------------------------------------


def score_gaps(cfg, checkpoints: list[str], examples: list[PreferenceExample]) -> list[np.ndarray]:
    """Per checkpoint, (P,) r(chosen) - r(rejected) on `examples`: one Ray task each on a
    student-like slot, all submitted at once."""
    task, options, ref = _score_task(cfg), _encode_options(cfg), ray.put(examples)
    pairs = ray.get([task.remote(c, ref, options) for c in checkpoints])
    return [r_w - r_l for r_w, r_l in pairs]


def pair_gaps(cfg, checkpoint: str, examples: list[PreferenceExample]) -> np.ndarray:
    return score_gaps(cfg, [checkpoint], examples)[0]


def evaluate_checkpoint(cfg, checkpoint: str, examples: list[PreferenceExample]) -> dict:
    """BT accuracy and loss of a checkpoint on pairs, as the workers' periodic eval counts them."""
    gaps = pair_gaps(cfg, checkpoint, examples)
    loss = float(np.mean(np.logaddexp(0.0, -gaps))) if len(gaps) else math.nan  # -log σ(Δ)
    accuracy = float(np.mean(pair_outcomes(gaps, np.zeros_like(gaps)))) if len(gaps) else math.nan  # ties: 0.5
    return {"eval_accuracy": accuracy, "eval_loss": loss, "eval_pairs": int(len(gaps))}


def score_pairs(checkpoint: str, examples, options: dict) -> tuple[np.ndarray, np.ndarray]:
    from idrm_ray.core.reward_model import cached_tokenizer
    from idrm_ray.core.scoring import RewardScorer, encode_sequences, split_pairs

    scorer = RewardScorer(checkpoint, batch_size=options["batch_size"])
    seqs = encode_sequences(examples, cached_tokenizer(checkpoint), max_len=options["max_len"],
                            template=options["template"])
    return split_pairs(scorer.score(seqs))


def _encode_options(cfg) -> dict:
    return {"max_len": cfg.student.max_len, "template": cfg.student.render, "batch_size": 32}


def _score_task(cfg):
    return ray.remote(score_pairs).options(**_student_slot(cfg), max_retries=1)


def _student_slot(cfg) -> dict:
    """Ray options that put a task where a train worker goes: one CPU (its CPUs and GPUs
    when use_gpu) and the student node type's custom resource when the cluster asks for it."""
    res = cfg.resources
    options: dict = {"num_cpus": 1}
    if res.use_gpu:
        options.update(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker)
    custom = {k: v for k, v in cluster.scaling_config(cfg).resources_per_worker.items() if k not in ("CPU", "GPU")}
    return {**options, "resources": custom} if custom else options


# -- records --------------------------------------------------------------------------------


def _member_summary(rows: list[dict]) -> dict:
    accs = [r["eval_accuracy"] for r in rows if r.get("eval_accuracy") is not None]
    return {"members": len(rows), "member_eval_accuracy": float(np.mean(accs)) if accs else None,
            "member_checkpoints": [r["checkpoint"] for r in rows]}


def _write_strength(out: Path, train, mu, sigma, *, flipped, margins) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "strength.jsonl", "w") as f:
        for i in range(len(train)):
            row = {"pair": i, "mu": float(mu[i]), "sigma": float(sigma[i])}
            if flipped is not None:
                row["flipped"] = bool(flipped[i])
            if margins is not None:
                row["margin"] = float(margins[i])
            f.write(json.dumps(row) + "\n")
