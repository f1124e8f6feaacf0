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
import shutil
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


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from (message names it and what is wrong)."""


def check_complete(directory: str | os.PathLike) -> Progress:
    """Progress of a checkpoint after checking every part a resume needs is there and
    readable: progress.json, metrics.jsonl, the model directory (config + weights) and the
    training state. Raises CheckpointError naming the directory and the problem."""
    d = Path(directory)
    try:
        progress = read_progress(d)
    except RuntimeError as exc:
        raise CheckpointError(str(exc)) from exc
    model = model_dir(d)
    weights = [p for p in model.glob("*.safetensors")] + [p for p in model.glob("*.bin")]
    if not (model / "config.json").is_file() or not weights:
        raise CheckpointError(f"checkpoint {d} has no complete model directory (config.json and weights in {model})")
    if any(w.stat().st_size == 0 for w in weights):
        raise CheckpointError(f"checkpoint {d} has an empty weights file in {model}")
    if not state_dir(d).is_dir() or not any(state_dir(d).iterdir()):
        raise CheckpointError(f"checkpoint {d} has no training state ({state_dir(d)})")
    return progress


def older_checkpoints(checkpoint) -> list:
    """The other `checkpoint_*` directories of the same run (newest first), as Ray Train
    Checkpoints on the same filesystem: the fall-backs when the latest one is unreadable."""
    import pyarrow.fs

    from ray.train import Checkpoint

    parent = checkpoint.path.rstrip("/").rsplit("/", 1)[0]
    infos = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(parent))
    names = sorted((i.path for i in infos if i.type == pyarrow.fs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.path.rstrip("/") != checkpoint.path.rstrip("/")),
                   reverse=True)  # checkpoint_<timestamp>: newest first
    return [Checkpoint(path, filesystem=checkpoint.filesystem) for path in names]


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # written once, never edited in place


def copy_tree(src: str | Path, dst: str | Path) -> None:
    """`dst` replaced by a copy of `src` in which weight files are hard links where both are on
    one filesystem (a checkpoint in local storage and the run folder: an 8B model's 16 GB is not
    written twice); every other file (configs, tokenizer, metadata: small, and sometimes edited
    by hand) is a real copy. Across filesystems every file is copied."""
    if Path(dst).exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=_link_weights)


def _link_weights(src: str, dst: str) -> str:
    if src.endswith(WEIGHT_SUFFIXES):
        try:
            os.link(src, dst)
            return dst
        except OSError:  # another filesystem, or one without hard links
            pass
    return shutil.copy2(src, dst)
