"""The driver's side of methods that are more than one training run (METHOD.md §10): the
procedures live in the method families (`idrm_ray/methods/`, one module per family, found
through `methods.registry.FAMILIES`); this module runs one (`run_method`) and gives it its
Ray tools (`RayTools`): ensemble members, scoring, the streamed WARM average.

The ensemble members are ordinary Ray Train runs (bt members for the preference strength,
bt or id members for WARM), run in parallel as Ray tasks, as many as the student resources
fit (`method.ensemble.concurrency`). Members, flips and margins are written to the method's
folder: <run>/<method>/members/member<i>/, strength.jsonl (μ̂, σ̂, flipped per pair).
The averaged WARM model is an ordinary reward-model checkpoint (OpenRLHF layout).

`train_one` (one run: `driver.train_one`) comes in as an argument, so this module does not
import the driver that calls it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import ray

from idrm_ray import console
from idrm_ray.core.scoring import pair_outcomes
from idrm_ray.core.types import PreferenceExample
from idrm_ray.methods.base import MethodRun
from idrm_ray.methods.registry import family
from idrm_ray.stream import cluster

SHUFFLE_BUFFER_PAIRS = 256  # members' seeded local shuffle: different data orders, same data


def run_method(cfg, plan, *, train_one: Callable[..., dict], method: str, student_dir: str, teacher_dir: str | None,
               train, evals, run_dir: Path, members: dict[str, list[dict]] | None = None,
               out_name: str | None = None) -> list[dict]:
    """Train `method` into run_dir/(out_name or method) by its family's procedure and return
    its summary row(s). `members` reuses ensembles already trained by the caller ({"bt":
    rows, "id": rows}, e.g. shared by `idrm-ray compare`)."""
    r = MethodRun(cfg=cfg, plan=plan, method=method, name=out_name or method, train=train, evals=evals,
                  student_dir=student_dir, teacher_dir=teacher_dir, run_dir=run_dir,
                  tools=RayTools(train_one), members=members or {})
    return family(method).run(r)


@dataclass(frozen=True)
class RayTools:
    """`methods.base.Tools` over Ray: what a family's procedure may call on the driver."""

    train_one: Callable[..., dict]

    def train_members(self, cfg, plan, **kwargs) -> list[dict]:
        return train_members(cfg, plan, train_one=self.train_one, **kwargs)

    def score_gaps(self, cfg, checkpoints, examples):
        return score_gaps(cfg, checkpoints, examples)

    def average_checkpoints(self, cfg, sources, out, *, metadata):
        return average_checkpoints(cfg, sources, out, metadata=metadata)

    def evaluate_checkpoint(self, cfg, checkpoint, examples):
        return evaluate_checkpoint(cfg, checkpoint, examples)


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


def train_members(cfg, plan, *, train_one: Callable[..., dict], kind: str, folder: str, train, student_dir,
                  teacher_dir, evals, run_dir: Path, diverse_lr: bool = True) -> list[dict]:
    """M runs of `kind` (bt | id) from the same init, in parallel where resources allow."""
    jobs = [dict(method=kind, out_name=f"{folder}/member{i}",
                 spec_overrides=member_overrides(cfg, plan, i, diverse_lr=diverse_lr))
            for i in range(cfg.method.ensemble.members)]
    limit = cfg.method.ensemble.concurrency or cluster.runs_that_fit(cfg)
    console.info(f"[idrm] {len(jobs)} {kind} ensemble members under {run_dir / folder} "
                 f"({min(limit, len(jobs))} at a time)")
    common = dict(student_dir=student_dir, teacher_dir=teacher_dir, evals=evals, run_dir=run_dir)
    return run_parallel(cfg, plan, jobs, train_one=train_one, train=train, limit=limit, **common)


def run_parallel(cfg, plan, jobs: list[dict], *, train_one: Callable[..., dict], train, limit: int,
                 **common) -> list[dict]:
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


# -- WARM's average ---------------------------------------------------------------------


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
    student-like slot, all submitted at once; in this process for a local run (`run.local`,
    whose runs trained here too: no worker to start and import torch for each checkpoint)."""
    options = _encode_options(cfg)
    if cfg.run.local:
        pairs = [score_pairs(c, examples, options) for c in checkpoints]
    else:
        task, ref = _score_task(cfg), ray.put(examples)
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
