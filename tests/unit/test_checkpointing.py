"""Checkpoint completeness checks and the fall-back order used on resume."""
from __future__ import annotations

import json
import shutil

import pytest
from ray.train import Checkpoint

from idrm_ray.train import checkpointing as ckpt


def _complete(d, step: int):
    ckpt.write_progress(d, ckpt.Progress(step=step, history=[{"step": step}]))
    (d / "model").mkdir()
    (d / "model" / "config.json").write_text("{}")
    (d / "model" / "model.safetensors").write_bytes(b"x" * 16)
    (d / "train_state").mkdir()
    (d / "train_state" / "state.pt").write_bytes(b"y")
    return d


def test_check_complete_names_the_checkpoint_and_the_problem(tmp_path):
    good = _complete(tmp_path / "checkpoint_a", 3)
    assert ckpt.check_complete(good).step == 3
    (good / "progress.json").write_text('{"step": ')  # truncated
    with pytest.raises(ckpt.CheckpointError, match=f"checkpoint {good} is unreadable"):
        ckpt.check_complete(good)
    no_weights = _complete(tmp_path / "checkpoint_b", 6)
    (no_weights / "model" / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no complete model directory"):
        ckpt.check_complete(no_weights)
    empty = _complete(tmp_path / "checkpoint_c", 9)
    (empty / "model" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="empty weights file"):
        ckpt.check_complete(empty)
    no_state = _complete(tmp_path / "checkpoint_d", 12)
    (no_state / "train_state" / "state.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match="no training state"):
        ckpt.check_complete(no_state)


def test_older_checkpoints_newest_first_without_the_latest_or_other_files(tmp_path):
    for name in ("checkpoint_2026-01-01_00-00-01", "checkpoint_2026-01-01_00-00-03", "checkpoint_2026-01-01_00-00-02"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps({}))
    latest = Checkpoint.from_directory(str(tmp_path / "checkpoint_2026-01-01_00-00-03"))
    older = [c.path.rsplit("/", 1)[-1] for c in ckpt.older_checkpoints(latest)]
    assert older == ["checkpoint_2026-01-01_00-00-02", "checkpoint_2026-01-01_00-00-01"]


def test_copy_tree_links_weights_and_copies_the_rest(tmp_path):
    """The run folder's checkpoint shares the weight files' blocks with the stored checkpoint (an
    8B model is not written twice); configs and tokenizer files are copies, so editing one side
    leaves the other as it was; a second collection replaces the first."""
    from idrm_ray.train.checkpointing import copy_tree

    src = tmp_path / "storage" / "checkpoint_1" / "model"
    src.mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"weights" * 100)
    (src / "config.json").write_text('{"a": 1}')
    dst = tmp_path / "run" / "checkpoint"
    dst.mkdir(parents=True)
    (dst / "stale.txt").write_text("old")
    copy_tree(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["config.json", "model.safetensors"]
    assert (dst / "model.safetensors").stat().st_ino == (src / "model.safetensors").stat().st_ino
    assert (dst / "config.json").stat().st_ino != (src / "config.json").stat().st_ino
    (dst / "config.json").write_text('{"a": 2}')
    assert (src / "config.json").read_text() == '{"a": 1}'
    shutil.rmtree(src)  # the storage's checkpoint rotated out: the run folder's weights remain
    assert (dst / "model.safetensors").read_bytes() == b"weights" * 100
