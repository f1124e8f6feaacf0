"""Integration tier (STYLE.md §10): one local Ray per session, tiny models, CPU.

- `ray_session`: `ray.init(num_cpus=4)` once; 4 logical CPUs on a 2-core machine so the Ray
  Data stages' CPU fractions fit beside two train workers (STACK_NOTES.md, "Ray on 2 cores").
- `shared_run`: ONE `run_train` of the embedded default (preset `tiny`), reduced so it stays
  under about 100 s on 2 cores, whose run folder several tests assert on.
- `guard(fn, timeout_s=..., what=...)`: runs `fn` in a thread and fails the test when it has
  not returned in time (then restarts Ray, so one hang does not stall every later test). Ray
  deadlocks are silent (STACK_NOTES.md) and pytest-timeout is not installed, so every fit
  goes through it.

Environment read by Ray workers is fixed when Ray starts, so it is set here, at import:
`TORCH_EXTENSIONS_DIR` is the same cache test_strategy.py uses, so a DeepSpeed op that a test
JIT-compiles is built at most once per machine (none is today: the strategy skips the CPU shm op).
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))

# The reduced embedded default: the preset `tiny` as it stands (tiny student and teacher, lr and
# schedule, N=1, λ=1, the bundled data with its 300 eval pairs), cut to one pass over 1200 of the
# training pairs per student and two NLI epochs for the teacher. The global batch is 8 instead
# of the preset's 16: for the same 1200 pairs, 150 smaller steps learn more than 75 larger ones
# (BT eval loss 0.604 vs 0.661 measured in process), at about the same wall time on 2 cores; and
# 1200 pairs learn nearly what 2400 did (BT eval loss 0.604 vs 0.595, accuracy 0.59 vs 0.58) in
# half the steps. The
# teacher fine-tune runs on two Ray Train workers (the same global batch of 32, 16 each), so
# this run also shows the fine-tune's split and schedule across workers (test_pipeline.py).
SHARED_PAIRS, SHARED_BATCH = 1200, 8
SHARED_EVALS = 3  # evaluations per student run (the last one at the final step)


def shared_overrides() -> list[str]:
    steps = SHARED_PAIRS // SHARED_BATCH
    return [f"data.max_pairs={SHARED_PAIRS}", "optim.epochs=1", "optim.max_steps=null",
            f"optim.global_batch_size={SHARED_BATCH}", f"optim.micro_batch_size={SHARED_BATCH}",
            "teacher.finetune.epochs=2", "teacher.finetune.num_workers=2", "teacher.finetune.cpus_per_worker=0.5",
            "resources.cpus_per_worker=0.5",  # BT and ID fit side by side (run.methods_at_once=0: automatic)
            f"run.eval_every={steps // SHARED_EVALS}", f"run.log_every={steps // 30}"]


SHARED_TIMEOUT_S = 480  # ~85-100 s measured on 2 cores


def call_guarded(fn, *, timeout_s: float, what: str):
    """`fn()` in a daemon thread; its result, its exception, or a test failure after `timeout_s`."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"guard: {what}", daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        _restart_ray()  # the stuck fit holds the CPUs: later tests get a fresh Ray, not a second hang
        pytest.fail(f"{what} did not finish within {timeout_s:.0f} s (a silent Ray deadlock?)", pytrace=False)
    if "error" in box:
        raise box["error"]
    print(f"[integration] {what}: {time.perf_counter() - start:.1f} s")
    return box["value"]


def _start_ray() -> None:
    import ray

    from idrm_ray import local_ray

    if not ray.is_initialized():
        # address="local": without it Ray joins the cluster this machine started last
        # (/tmp/ray/ray_current_cluster, e.g. a ray.cluster_utils.Cluster of another test run);
        # local_ray pins the workers to this one (another Ray beside it, e.g. a second pytest
        # process, would otherwise be asked whether our Train runs live).
        local_ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)


def _restart_ray() -> None:
    import ray

    try:
        ray.shutdown()
    finally:
        _start_ray()


@pytest.fixture(scope="session")
def guard():
    return call_guarded


@pytest.fixture(scope="session")
def ray_session():
    import ray

    _start_ray()
    yield ray
    ray.shutdown()


def tiny_config(output_dir: str | Path, name: str, *overrides: str):
    """The `tiny` preset (the embedded default) with dotted overrides, as the CLI builds it."""
    from idrm_ray.config import load_config
    from idrm_ray.config.train import TrainJobConfig

    base = [f"run.output_dir={output_dir}", f"run.name={name}"]
    return load_config(TrainJobConfig, None, [*base, *overrides], preset="tiny")


@pytest.fixture(scope="session")
def make_config():
    return tiny_config


@pytest.fixture(scope="session")
def shared_run(ray_session, tmp_path_factory):
    """The embedded default, reduced (`shared_overrides`): teacher fine-tune, then BT and ID."""
    from idrm_ray.run.driver import run_train

    cfg = tiny_config(tmp_path_factory.mktemp("shared"), "default", *shared_overrides())
    summary = call_guarded(lambda: run_train(cfg), timeout_s=SHARED_TIMEOUT_S, what="shared run_train")
    return {"cfg": cfg, "summary": summary, "run_dir": Path(summary["run_dir"]), "pairs": SHARED_PAIRS}


@pytest.fixture(scope="session")
def openrlhf_loader():
    """OpenRLHF 0.11.2's own reward loader (`get_llm_for_sequence_regression`) with the flash-attn
    stand-in of test_serve_openrlhf.py (CPU has no flash-attn)."""
    import importlib.util
    import sys

    path = Path(__file__).parent / "test_serve_openrlhf.py"
    spec = importlib.util.spec_from_file_location("_idrm_openrlhf_contract", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import transformers.modeling_utils  # noqa: F401 - let transformers probe the real flash_attn first

    patch = pytest.MonkeyPatch()
    if importlib.util.find_spec("flash_attn") is None:
        for name, mod in module._flash_attn_stand_in().items():
            patch.setitem(sys.modules, name, mod)
    from openrlhf.models import get_llm_for_sequence_regression

    yield get_llm_for_sequence_regression
    patch.undo()
