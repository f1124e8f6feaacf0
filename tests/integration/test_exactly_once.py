"""Exactly-once delivery: every pair reaches the train workers once per epoch, through the
pipeline's own stream (`examples_dataset` -> `encoded_stream` -> `teacher_stream`) and split
(`ExactlyOnceDataConfig`, via `cluster.fit`), with 2 workers and an odd number of pairs (203,
so the shards cannot be equal and one worker runs zero-weight fillers at the ragged end).

The worker loop here only records what it receives, in lock-step through the pipeline's
`synced_batches` (the same gloo all-reduce the real loop uses): pair ids of real batches and
a fingerprint of each pair's tokens and teacher maps, which the test recomputes in-process
with the plain `EncodeStage`/`TeacherStage` classes, so a row carrying another row's data shows.

One fit of two epochs serves both tests (each fit costs ~20 s of Ray start-up): epoch 0 runs
undisturbed; in epoch 1 the teacher actor is killed mid-stream. A `TeacherStage` subclass
(swapped in for the real one inside `dataset.py`) writes its pid and blocks on its 3rd batch of
epoch 1; the test then SIGKILLs that process (checked to be a Ray `MapWorker` first), as an
OOM kill or a lost node would. `ray.util.state.list_actors` + `ray.kill` was not usable: the
state API needs the dashboard, which this session's Ray runs without. Ray Data must restart
the actor (`max_restarts=-1`) and retry the lost batch (`max_task_retries=-1`) without losing
or duplicating a pair.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from ray import cloudpickle

# Ray workers cannot import this test module: ship its functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

NUM_PAIRS = 203
FIT_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def stream_setup(ray_session, make_config, tmp_path_factory):
    from idrm_ray.data import bundled_path, load_preferences
    from idrm_ray.run.assets import prepare_student
    from idrm_ray.stream import cluster
    from idrm_ray.teacher.assets import tiny_teacher_dir

    root = tmp_path_factory.mktemp("exactly_once")
    cfg = make_config(root, "stream", "resources.num_workers=2", "method.name=id",
                      "optim.global_batch_size=8", "optim.micro_batch_size=4")  # only to pass validation
    examples, _ = load_preferences(bundled_path("pref_train"), max_rows=NUM_PAIRS)
    student_dir = prepare_student(cfg, root)
    teacher_dir = tiny_teacher_dir(cfg, root, "teacher")  # a random tiny teacher: delivery only
    encode_kwargs = dict(student_tokenizer_dir=student_dir, teacher_tokenizer_dir=teacher_dir,
                         student_max_len=cfg.student.max_len, teacher_max_len=cfg.teacher.max_len, template=None)
    teacher_kwargs = dict(teacher_path=teacher_dir, top_n=cfg.method.id.top_n, renormalize=True)
    return {"cfg": cfg, "root": root, "examples": examples, "encode_kwargs": encode_kwargs,
            "teacher_kwargs": teacher_kwargs, "placement": cluster.stage_placement(cfg)}


@pytest.fixture(scope="module")
def reference_fingerprints(stream_setup):
    """`_fingerprint` per pair id, computed in-process with the plain stage classes."""
    from idrm_ray.stream.stages import EncodeStage, TeacherStage

    s = stream_setup
    encode, teacher = EncodeStage(**s["encode_kwargs"]), TeacherStage(**s["teacher_kwargs"])
    ex = s["examples"]
    out = teacher(encode({
        "prompt": np.array([e.prompt for e in ex], dtype=object), "chosen": np.array([e.chosen for e in ex], dtype=object),
        "rejected": np.array([e.rejected for e in ex], dtype=object), "pair_id": np.arange(len(ex)),
        "margin": np.full(len(ex), np.nan),
    }))
    cols = zip(out["pair_id"], out["student_ids_w"], out["student_ids_l"], out["teacher_maps"])
    return {int(pid): _fingerprint(w, l, m) for pid, w, l, m in cols}


def _fingerprint(student_ids_w, student_ids_l, maps) -> list:
    """CRC of the pair's student tokens (exact) and the shape of its teacher maps, which
    follows the pair's unit counts: a row carrying another row's tokens or maps shows."""
    ids = np.concatenate([np.asarray(student_ids_w, dtype=np.int64), [-1], np.asarray(student_ids_l, dtype=np.int64)])
    return [zlib.crc32(ids.tobytes()), list(np.asarray(maps).shape)]


def _recording_loop(config: dict) -> None:
    """Runs in each Ray Train worker: record the pair ids and fingerprints of real batches."""
    import json as _json
    from pathlib import Path as _Path

    import ray.train

    from idrm_ray.train.ingest import synced_batches
    from idrm_ray.train.strategy import make_strategy

    strategy = make_strategy("torch", precision="fp32")
    rank = ray.train.get_context().get_world_rank()
    shard = ray.train.get_dataset_shard("train")
    for epoch in range(config["epochs"]):
        pairs, fillers = [], 0
        for item in synced_batches(shard.iter_batches(batch_size=4, batch_format="numpy"), strategy.all_reduce_sum):
            if not item.real:
                fillers += 1
                continue
            b = item.batch
            for pid, w, l, maps in zip(b["pair_id"], b["student_ids_w"], b["student_ids_l"], b["teacher_maps"]):
                pairs.append([int(pid), _fingerprint(w, l, maps)])
        out = _Path(config["out"]) / f"rank{rank}-epoch{epoch}.json"
        out.write_text(_json.dumps({"pairs": pairs, "fillers": fillers}))
    strategy.barrier()


def _fit(setup: dict, *, guard, out: Path, epochs: int) -> None:
    from idrm_ray.stream import cluster
    from idrm_ray.stream.dataset import encoded_stream, examples_dataset, teacher_stream

    out.mkdir()
    ds = encoded_stream(examples_dataset(setup["examples"]), encode_kwargs=setup["encode_kwargs"], placement=setup["placement"])
    ds = teacher_stream(ds, teacher_kwargs=setup["teacher_kwargs"], placement=setup["placement"])
    result = guard(
        lambda: cluster.fit(_recording_loop, loop_config={"epochs": epochs, "out": str(out)}, datasets={"train": ds},
                            cfg=setup["cfg"], run_dir=setup["root"], name=out.name),
        timeout_s=FIT_TIMEOUT_S, what=f"TorchTrainer {out.name}",
    )
    assert result.error is None, result.error


def _assert_exactly_once(out: Path, epoch: int, reference: dict[int, list]) -> None:
    records = [json.loads((out / f"rank{r}-epoch{epoch}.json").read_text()) for r in (0, 1)]
    ids = [pid for rec in records for pid, _ in rec["pairs"]]
    assert len(ids) == NUM_PAIRS and sorted(ids) == list(range(NUM_PAIRS)), (
        f"epoch {epoch}: {len(ids)} deliveries of {len(set(ids))} distinct pairs (want {NUM_PAIRS} once each)")
    assert all(rec["pairs"] for rec in records), f"epoch {epoch}: a worker got no pairs"
    for rec in records:
        for pid, fingerprint in rec["pairs"]:
            assert fingerprint == reference[pid], f"pair {pid}: carries another row's tokens or maps"
    # Lock-step: the shorter shard ran fillers exactly until the longer one was done.
    steps = [(len(rec["pairs"]) + 3) // 4 + rec["fillers"] for rec in records]
    assert steps[0] == steps[1], (steps, [len(rec["pairs"]) for rec in records])


def _holding_teacher_class():
    """The real stage, except that the first actor of the SECOND epoch blocks on its 3rd
    batch until the test kills it (epoch 0 stays the fault-free reference)."""
    from idrm_ray.stream.stages import TeacherStage

    class HoldingTeacher(TeacherStage):
        def __init__(self, teacher_path, *, hold_dir, records_dir, **kwargs):
            super().__init__(teacher_path, **kwargs)
            self.hold_dir, self.records_dir, self.calls = Path(hold_dir), Path(records_dir), 0
            with open(self.hold_dir / "pids", "a") as f:
                f.write(f"{os.getpid()}\n")

        def __call__(self, batch):
            self.calls += 1
            epoch0_done = all((self.records_dir / f"rank{r}-epoch0.json").exists() for r in (0, 1))
            if self.calls == 3 and epoch0_done and not (self.hold_dir / "held").exists():
                (self.hold_dir / "held").write_text(str(os.getpid()))
                time.sleep(300)
            return super().__call__(batch)

    return HoldingTeacher


@pytest.fixture(scope="module")
def delivered(stream_setup, guard):
    """One 2-epoch fit: epoch 0 undisturbed, the teacher actor SIGKILLed mid-stream in epoch 1."""
    from idrm_ray.stream import dataset

    root = stream_setup["root"]
    hold_dir, records_dir = root / "hold", root / "records"
    hold_dir.mkdir()
    teacher_kwargs = {**stream_setup["teacher_kwargs"], "hold_dir": str(hold_dir), "records_dir": str(records_dir)}
    killed: dict = {}

    def kill_when_held() -> None:
        deadline = time.monotonic() + FIT_TIMEOUT_S
        while not (hold_dir / "held").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not (hold_dir / "held").exists():
            return
        pid = int((hold_dir / "held").read_text())
        killed["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        if "MapWorker" in killed["cmdline"]:  # never kill anything but the teacher actor
            os.kill(pid, signal.SIGKILL)
            killed["pid"] = pid

    killer = threading.Thread(target=kill_when_held, daemon=True)
    killer.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dataset, "TeacherStage", _holding_teacher_class())
        _fit({**stream_setup, "teacher_kwargs": teacher_kwargs}, guard=guard, out=records_dir, epochs=2)
    killer.join(5)
    return {"out": records_dir, "killed": killed, "pids": (hold_dir / "pids").read_text().split()}


def test_every_pair_once_per_epoch(delivered, reference_fingerprints):
    _assert_exactly_once(delivered["out"], 0, reference_fingerprints)


def test_every_pair_once_when_the_teacher_actor_is_killed(delivered, reference_fingerprints):
    killed, pids = delivered["killed"], delivered["pids"]
    assert "pid" in killed, f"the teacher actor was not killed mid-stream: {killed}"
    assert str(killed["pid"]) in pids and pids[-1] != str(killed["pid"]), f"no restarted teacher actor: {pids}"
    _assert_exactly_once(delivered["out"], 1, reference_fingerprints)
