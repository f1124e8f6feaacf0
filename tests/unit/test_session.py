"""The in-process session of the train loop (`train/session.py`): batches as Ray Data cuts
them, checkpoints kept and found as Ray Train keeps and finds them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from idrm_ray.train.session import LocalSession, LocalShard


def _rows(n: int) -> list[dict]:
    return [{"pair_id": i, "ids": np.arange(i + 1), "margin": float("nan")} for i in range(n)]


def test_local_shard_cuts_batches_in_order_with_a_short_last_one():
    shard = LocalShard(lambda: _rows(10))
    batches = list(shard.iter_batches(batch_size=4, batch_format="numpy", prefetch_batches=2))
    assert [b["pair_id"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert isinstance(batches[0]["ids"], list) and [len(x) for x in batches[0]["ids"]] == [1, 2, 3, 4]
    assert batches[0]["margin"].dtype == np.float64


def test_local_shard_shuffle_is_seeded_and_keeps_every_row():
    shard = LocalShard(lambda: _rows(50))

    def order(seed):
        return [i for b in shard.iter_batches(batch_size=8, local_shuffle_buffer_size=16, local_shuffle_seed=seed)
                for i in b["pair_id"].tolist()]

    assert sorted(order(1)) == list(range(50)) and order(1) == order(1) and order(1) != order(2)
    assert order(1) != list(range(50))


def test_local_session_keeps_the_latest_checkpoints_and_resumes_from_them(tmp_path):
    storage = tmp_path / "run-bt"
    session = LocalSession(shards={}, storage=storage, keep=2)
    assert session.resume_candidates() == [] and session.result().checkpoint is None
    for step in (1, 2, 3):
        src = tmp_path / f"src{step}"
        src.mkdir()
        (src / "progress.json").write_text(json.dumps({"step": step}))
        session.report({"step": step}, checkpoint_dir=str(src))
    session.report({"step": 3, "eval_accuracy": 0.5})  # metrics only
    kept = [json.loads((storage / p.name / "progress.json").read_text())["step"] for p in sorted(storage.iterdir())]
    assert kept == [2, 3]
    result = session.result()
    assert result.metrics == {"step": 3, "eval_accuracy": 0.5} and result.error is None
    with result.checkpoint.as_directory() as d:
        assert json.loads((storage / d.split("/")[-1] / "progress.json").read_text())["step"] == 3
    # The same storage again (a restarted driver): newest first, as Ray Train's latest + older ones.
    again = LocalSession(shards={}, storage=storage, keep=2)
    steps = [json.loads(open(f"{c.path}/progress.json").read())["step"] for c in again.resume_candidates()]
    assert steps == [3, 2]


def test_a_checkpoint_cut_off_mid_write_is_never_a_resume_candidate(tmp_path, monkeypatch):
    """The folder is moved under a hidden partial name, then renamed: a failure in between
    leaves the last whole checkpoint as the latest, and the source's owner an empty folder."""
    import shutil

    from idrm_ray.train import session as session_mod

    storage = tmp_path / "run-bt"
    session = LocalSession(shards={}, storage=storage, keep=3)
    src = tmp_path / "src1"
    src.mkdir()
    (src / "progress.json").write_text(json.dumps({"step": 1}))
    session.report({"step": 1}, checkpoint_dir=str(src))
    assert list(src.iterdir()) == []  # moved, not copied

    src2 = tmp_path / "src2"
    src2.mkdir()
    for name in ("model.safetensors", "progress.json"):
        (src2 / name).write_text(json.dumps({"step": 2}))
    real_move = shutil.move

    def move_then_die(a, b):
        real_move(a, b)
        raise OSError("disk full")

    monkeypatch.setattr(session_mod.shutil, "move", move_then_die)
    with pytest.raises(OSError, match="disk full"):
        session.report({"step": 2}, checkpoint_dir=str(src2))
    again = LocalSession(shards={}, storage=storage, keep=3)
    steps = [json.loads(open(f"{c.path}/progress.json").read())["step"] for c in again.resume_candidates()]
    assert steps == [1]
