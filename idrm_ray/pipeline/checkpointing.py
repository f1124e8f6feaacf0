"""Checkpoints of a train run: a consolidated reward-model HF directory (OpenRLHF-
loadable, DESIGN.md §2 decision 6), the strategy's full training state for resume,
progress counters and the metric history, in one directory Ray Train persists.

Layout of one checkpoint directory:
    model/          HF reward model (backbone + `score` head, tokenizer, idrm_meta.json)
    train_state/    optimizer/scheduler/engine state (per-rank shards under DeepSpeed)
    progress.json   {"step", "epoch", "micro_in_epoch", "pairs_seen"}
    metrics.jsonl   every logged step so far
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROGRESS = "progress.json"
METRICS = "metrics.jsonl"
MODEL_DIR = "model"
STATE_DIR = "train_state"


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    micro_in_epoch: int = 0  # real micro-batches consumed by this rank in the current epoch
    pairs_seen: int = 0  # pairs all ranks trained on (all epochs)
    nonfinite_skipped: int = 0  # non-finite steps skipped in total (reported)
    nonfinite_streak: int = 0  # consecutive ones (the run stops at max_nonfinite_steps)
    history: list[dict] = field(default_factory=list)


def write_progress(directory: str | os.PathLike, progress: Progress) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in asdict(progress).items() if k != "history"}
    (d / PROGRESS).write_text(json.dumps(state))
    with open(d / METRICS, "w") as f:
        for row in progress.history:
            f.write(json.dumps(row) + "\n")


def read_progress(directory: str | os.PathLike) -> Progress:
    """Read progress from a checkpoint; a missing or corrupt file is an error naming it
    (never a silent fresh start)."""
    d = Path(directory)
    try:
        state = json.loads((d / PROGRESS).read_text())
        history = [json.loads(line) for line in (d / METRICS).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"checkpoint {d} is unreadable ({exc}); cannot resume from it") from exc
    return Progress(**state, history=history)


def model_dir(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / MODEL_DIR


def state_dir(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / STATE_DIR
