"""A simulated multi-node cluster (`ray.cluster_utils.Cluster`, CPU only) running the production
pipeline (`driver.run_train` -> `train_one` -> `dataset.teacher_stream` -> `cluster.fit`) with
`resources.custom_resources=require`, and the faults a real cluster sees:

- nodes: a head with no custom resources (the driver, the Train controller, the split
  coordinator), a "teacher" node offering `teacher_gpu`, two "student" nodes offering
  `student_gpu`; one logical CPU each (the train workers take a whole one, so nothing else fits
  on a student node; the stages ask for fractions, STACK_NOTES.md);
- placement, from Ray's own state: each teacher actor and train worker records
  `ray.get_runtime_context().get_node_id()`, checked against the node table (`ray.nodes()`):
  teacher actors only on the teacher node, train workers only on student nodes, none on the head;
- epoch 0: the teacher actor is SIGKILLed mid-stream (after two batches, as an OOM kill would):
  Ray Data restarts it and retries the lost batch, and every pair reaches the students exactly
  once in that epoch (the same approach as test_exactly_once.py, here across nodes);
- epoch 1: the student node of rank 1 is removed (`cluster.remove_node`) two steps after a
  checkpoint, and an empty student node is added to restore capacity: Ray Train restarts the
  group from the latest checkpoint (`run.max_failures=1`), the step count continues, at most
  `run.checkpoint_every` steps are lost, and the final eval metrics stay close to an uninterrupted
  run with the same config and seed (on the same cluster).

Instrumentation without product hooks: `driver._loop` is swapped for a loop that patches
`_WorkerRun.micro_step` / `_after_step` inside the worker (this module ships by value), and
`dataset.TeacherStage` for a subclass that records its node and holds on its 3rd batch.

One module-scoped cluster serves every test; any Ray started before (the session's
`ray_session`) is shut down first and started again afterwards with the same settings, so later
modules keep their local Ray.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from ray import cloudpickle

from idrm_ray.data import bundled_path

cloudpickle.register_pickle_by_value(sys.modules[__name__])

NUM_PAIRS, GLOBAL_BATCH, MICRO = 128, 8, 4  # 2 workers x 4 pairs: ~16 steps per epoch
EPOCHS, CHECKPOINT_EVERY = 2, 4
HOLD_AFTER_STEPS_IN_EPOCH = 6  # rank 1's node goes at the first step >= 6 into epoch 1 with step % 4 == 2
FIT_TIMEOUT_S = 300
NODE_CPUS = 1


def _overrides(root: Path, evals: Path, *, failures: int) -> list[str]:
    return [
        "method.name=id", "method.compare_bt=false", "teacher.name_or_path=tiny",
        f"data.max_pairs={NUM_PAIRS}", f"data.eval={evals}",
        "resources.num_workers=2", "resources.custom_resources=require", f"resources.cpus_per_worker={NODE_CPUS}",
        f"optim.global_batch_size={GLOBAL_BATCH}", f"optim.micro_batch_size={MICRO}",
        f"optim.epochs={EPOCHS}", "optim.max_steps=null",
        f"run.checkpoint_every={CHECKPOINT_EVERY}", f"run.max_failures={failures}",
        "run.log_every=1", "run.eval_every=0", f"run.storage_path={root / 'shared_storage'}",
    ]


@pytest.fixture(scope="module")
def sim_cluster():
    """Head (no custom resources), a teacher node, two student nodes; the driver joins the head."""
    import ray
    from ray.cluster_utils import Cluster

    had_ray = ray.is_initialized()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    teacher = cluster.add_node(num_cpus=NODE_CPUS, resources={"teacher_gpu": 1})
    students = [cluster.add_node(num_cpus=NODE_CPUS, resources={"student_gpu": 1}) for _ in range(2)]
    cluster.wait_for_nodes()
    # RAY_ADDRESS for every worker of the job: Train V2's detached PlacementGroupCleaner asks the
    # State API whether the controller lives, and without an address that API picks the newest Ray
    # on the machine; where another Ray runs beside this one (other test runs, a local `idrm-ray`
    # with its dashboard), it answers "no such actor" and the cleaner removes the live run's
    # placement group, killing every train worker (seen here: a spurious failure 6 s into a fit).
    ray.init(address=cluster.address, log_to_driver=False, runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
    try:
        yield {"cluster": cluster, "head": cluster.head_node.node_id, "teacher": teacher.node_id,
               "students": [n.node_id for n in students]}
    finally:
        ray.shutdown()
        cluster.shutdown()
        if had_ray:  # as conftest's ray_session started it, for the modules that follow
            ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)


def _instrumented_loop(*, log_dir: str, hold_marker: str):
    """The production worker loop, recording node, pairs and steps; rank 1 holds once in epoch 1
    (two steps after a checkpoint) until the test removes its node."""

    def loop(config: dict) -> None:
        import json as _json
        import os as _os
        import time as _time
        from pathlib import Path as _Path

        import ray
        import ray.train
        import torch

        from idrm_ray.pipeline import worker

        torch.set_num_threads(1)
        node, rank = ray.get_runtime_context().get_node_id(), ray.train.get_context().get_world_rank()
        log = _Path(log_dir) / f"worker-{_os.getpid()}.jsonl"

        def write(row: dict) -> None:
            with open(log, "a") as f:
                f.write(_json.dumps({"pid": _os.getpid(), "node": node, "rank": rank, "t": _time.time(), **row}) + "\n")

        write({"event": "start"})
        micro_step, after_step = worker._WorkerRun.micro_step, worker._WorkerRun._after_step

        def recording_micro_step(self, micro, item):
            if item.real:
                write({"event": "pairs", "epoch": self.progress.epoch, "ids": [int(i) for i in item.batch["pair_id"]]})
            return micro_step(self, micro, item)

        def holding_after_step(self) -> None:
            after_step(self)  # logs, evaluates, checkpoints when due
            p = self.progress
            write({"event": "step", "step": p.step, "epoch": p.epoch})
            marker = _Path(hold_marker)
            if (rank == 1 and p.epoch == 1 and p.micro_in_epoch >= HOLD_AFTER_STEPS_IN_EPOCH
                    and p.step % CHECKPOINT_EVERY == 2 and not marker.exists()):
                marker.write_text(_json.dumps({"node": node, "pid": _os.getpid(), "step": p.step}))
                _time.sleep(600)  # until the node goes

        worker._WorkerRun.micro_step = recording_micro_step
        worker._WorkerRun._after_step = holding_after_step
        worker.train_loop_per_worker(config)

    return loop


def _recording_teacher_class():
    """The real teacher stage, recording each actor's node; the first actor holds on its 3rd
    batch (epoch 0: 8 batches of 16 pairs per epoch) until the test kills it."""
    from idrm_ray.pipeline.stages import TeacherStage

    class RecordingTeacher(TeacherStage):
        def __init__(self, teacher_path, *, log_dir, **kwargs):
            import ray

            super().__init__(teacher_path, **kwargs)
            self.log_dir, self.calls = Path(log_dir), 0
            with open(self.log_dir / "teachers.jsonl", "a") as f:
                f.write(json.dumps({"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}) + "\n")

        def __call__(self, batch):
            self.calls += 1
            held = self.log_dir / "teacher_held"
            if self.calls == 3 and not held.exists():
                held.write_text(str(os.getpid()))
                time.sleep(300)
            return super().__call__(batch)

    return RecordingTeacher


def _fit_while_watching(fn, watchers: list, *, timeout_s: float, what: str):
    """`fn()` in a daemon thread while the main thread runs the fault actions (Ray's `Cluster.add_node`
    registers signal handlers: main thread only); a test failure after `timeout_s` (like conftest's
    `guard`; the module teardown then shuts the cluster down, which ends the stuck fit)."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"fit: {what}", daemon=True)
    start = time.perf_counter()
    thread.start()
    pending = list(watchers)
    while thread.is_alive() and time.perf_counter() - start < timeout_s:
        for condition, action in list(pending):
            if condition():
                action()
                pending.remove((condition, action))
        thread.join(0.2)
    if thread.is_alive():
        pytest.fail(f"{what} did not finish within {timeout_s:.0f} s (a silent Ray deadlock?)", pytrace=False)
    if "error" in box:
        raise box["error"]
    print(f"[integration] {what}: {time.perf_counter() - start:.1f} s")
    return box["value"]


def _read_jsonl(paths) -> list[dict]:
    return [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]


def _run(sim_cluster, make_config, root: Path, *, faults: bool) -> dict:
    from idrm_ray.pipeline import dataset, driver

    root.mkdir(parents=True)
    evals = root / "eval32.jsonl"
    evals.write_text("\n".join(bundled_path("pref_eval").read_text(encoding="utf-8").splitlines()[:32]) + "\n")
    log_dir, hold_marker = root / "log", root / "student_held"
    log_dir.mkdir()
    cfg = make_config(root, "cluster", *_overrides(root, evals, failures=1 if faults else 0))
    cluster, events, t0 = sim_cluster["cluster"], {}, time.perf_counter()

    def kill_teacher() -> None:
        pid = int((log_dir / "teacher_held").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        events.update(teacher_cmdline=cmdline, teacher_killed_at_s=time.perf_counter() - t0)
        if "MapWorker" in cmdline:  # never kill anything but the teacher actor
            os.kill(pid, signal.SIGKILL)
            events["teacher_killed"] = pid

    def replace_student_node() -> None:
        held = json.loads(hold_marker.read_text())
        node = next(n for n in cluster.worker_nodes if n.node_id == held["node"])
        t1 = time.perf_counter()
        cluster.remove_node(node)
        added = cluster.add_node(num_cpus=NODE_CPUS, resources={"student_gpu": 1})
        events.update(removed=held, added=added.node_id, replace_s=time.perf_counter() - t1, removed_at_s=t1 - t0)

    watchers = [((log_dir / "teacher_held").exists, kill_teacher), (hold_marker.exists, replace_student_node)]
    loop = _instrumented_loop(log_dir=str(log_dir), hold_marker=str(hold_marker))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(driver, "_loop", lambda: loop)
        if faults:
            mp.setattr(dataset, "TeacherStage", _recording_teacher_class())
            orig = driver.teacher_stream
            mp.setattr(driver, "teacher_stream", lambda ds, *, teacher_kwargs, placement: orig(
                ds, teacher_kwargs={**teacher_kwargs, "log_dir": str(log_dir)}, placement=placement))
        summary = _fit_while_watching(lambda: driver.run_train(cfg), watchers if faults else [], timeout_s=FIT_TIMEOUT_S,
                                      what=f"run_train on the simulated cluster ({'with' if faults else 'no'} faults)")
    rows = _read_jsonl(sorted(log_dir.glob("worker-*.jsonl"), key=lambda p: p.stat().st_mtime))
    teachers = _read_jsonl([log_dir / "teachers.jsonl"]) if (log_dir / "teachers.jsonl").exists() else []
    return {"summary": summary, "run": summary["runs"][0], "rows": rows, "teachers": teachers,
            "events": events, "wall_s": time.perf_counter() - t0, "cfg": cfg}


@pytest.fixture(scope="module")
def faulty(sim_cluster, make_config, tmp_path_factory):
    return _run(sim_cluster, make_config, tmp_path_factory.mktemp("cluster") / "faulty", faults=True)


@pytest.fixture(scope="module")
def reference(sim_cluster, make_config, tmp_path_factory, faulty):
    """The same run, undisturbed (after `faulty`, on the cluster as it is then)."""
    return _run(sim_cluster, make_config, tmp_path_factory.mktemp("cluster") / "reference", faults=False)


def _node_table() -> dict[str, dict]:
    import ray

    return {n["NodeID"]: n["Resources"] for n in ray.nodes()}


def _worker_attempts(rows: list[dict]) -> list[dict[int, dict]]:
    """Worker processes grouped by attempt: {rank: start row} per attempt, in start order."""
    attempts: list[dict[int, dict]] = []
    for row in sorted((r for r in rows if r["event"] == "start"), key=lambda r: r["t"]):
        if not attempts or row["rank"] in attempts[-1]:
            attempts.append({})
        attempts[-1][row["rank"]] = row
    return attempts


def test_placement_follows_the_custom_resources(sim_cluster, faulty):
    table = _node_table()
    head = sim_cluster["head"]
    assert "teacher_gpu" not in table[head] and "student_gpu" not in table[head]
    teacher_nodes = {t["node"] for t in faulty["teachers"]}
    assert faulty["teachers"] and teacher_nodes == {sim_cluster["teacher"]}, faulty["teachers"]
    assert all(table[n].get("teacher_gpu", 0) > 0 for n in teacher_nodes)
    worker_nodes = {r["node"] for r in faulty["rows"] if r["event"] == "start"}
    assert head not in worker_nodes and sim_cluster["teacher"] not in worker_nodes, worker_nodes
    assert all(table.get(n, {}).get("student_gpu", 0) > 0 or n == faulty["events"]["removed"]["node"]
               for n in worker_nodes), (worker_nodes, table)
    first = _worker_attempts(faulty["rows"])[0]
    assert {r["node"] for r in first.values()} == set(sim_cluster["students"]), first


def test_teacher_actor_killed_every_pair_once(faulty):
    ev = faulty["events"]
    assert "teacher_killed" in ev, f"the teacher actor was not killed mid-stream: {ev}"
    pids = [t["pid"] for t in faulty["teachers"]]
    assert ev["teacher_killed"] in pids and pids[-1] != ev["teacher_killed"], f"no restarted teacher actor: {pids}"
    ids = [i for r in faulty["rows"] if r["event"] == "pairs" and r["epoch"] == 0 for i in r["ids"]]
    assert sorted(ids) == list(range(NUM_PAIRS)), (
        f"epoch 0: {len(ids)} deliveries of {len(set(ids))} distinct pairs (want {NUM_PAIRS} once each)")


def test_student_node_removed_run_resumes(faulty):
    ev, rows = faulty["events"], faulty["rows"]
    assert "removed" in ev and "added" in ev, f"no student node was removed: {ev}"
    attempts = _worker_attempts(rows)
    assert len(attempts) == 2, attempts
    second_pids = {r["pid"] for r in attempts[1].values()}
    steps = {a: [r["step"] for r in rows if r["event"] == "step" and r["rank"] == 0
                 and (r["pid"] in second_pids) == (a == 1)] for a in (0, 1)}
    failed_at = ev["removed"]["step"]
    resumed_from = steps[1][0] - 1
    assert resumed_from > 0, f"restarted from scratch: {steps}"
    assert resumed_from % CHECKPOINT_EVERY == 0 and 0 <= failed_at - resumed_from <= CHECKPOINT_EVERY, (failed_at, steps)
    assert steps[1] == list(range(resumed_from + 1, faulty["run"]["steps"] + 1)), steps
    nodes_after = {r["node"] for r in attempts[1].values()}
    assert ev["removed"]["node"] not in nodes_after and ev["added"] in nodes_after, (ev, nodes_after)
    print(f"[cluster] node removed at step {failed_at}, resumed from {resumed_from}: "
          f"{failed_at - resumed_from} steps lost; replace took {ev['replace_s']:.1f} s")


def test_final_metrics_close_to_an_uninterrupted_run(faulty, reference):
    f, r = faulty["run"], reference["run"]
    print(f"[cluster] faulty: steps {f['steps']} eval_loss {f.get('eval_loss')} acc {f.get('eval_accuracy')} "
          f"({faulty['wall_s']:.0f} s); reference: steps {r['steps']} eval_loss {r.get('eval_loss')} "
          f"acc {r.get('eval_accuracy')} ({reference['wall_s']:.0f} s)")
    assert f["steps"] > 0 and abs(f["steps"] - r["steps"]) <= 1, (f["steps"], r["steps"])
    assert abs(f["eval_loss"] - r["eval_loss"]) < 0.05
    assert abs(f["eval_accuracy"] - r["eval_accuracy"]) <= 0.25
