"""Shared fixtures. Tests never download: tokenizers are trained in-process and models
are built from configs (idrm_ray.core.tiny)."""
from __future__ import annotations

import os

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray's dashboard gives each of its module processes 30 s to start; two pytest workers on 2 cores
# (each with its Ray, plus the `ray start` heads of test_auth.py and the CLI runs) can take longer.
os.environ.setdefault("RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT", "120")
# Ray Train V2's controller polls its workers (results, reports, the end of the run) every 2 s by
# default; a fit of the tests' size spends several of those waits. 0.5 s: a one-worker ID fit of 8
# steps took 21-29 s instead of 26-36 s (3 fits each way, twice, same machine). Propagated to the
# controller and workers, CLI subprocesses included, by the environment.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest
import torch

from idrm_ray.core import tiny

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two pytest workers on 2 cores: one intra-op thread each, or their OpenMP threads spin
    # against each other (the in-process runs of the realmodel tier, the methods' compare).
    torch.set_num_threads(1)


# `-m "not slow"` (the edit-test loop) leaves out what starts Ray or Ray Train, loads the real
# models or spawns multi-process DeepSpeed: tests using the fixtures below, the realmodel tier,
# and these modules.
SLOW_FIXTURES = {"ray_session", "shared_run", "guard"}
SLOW_MODULES = {"test_auth.py", "test_bad_input.py", "test_cluster.py", "test_eval.py", "test_local_run.py",
                "test_pipeline.py", "test_serve_ray.py", "test_strategy.py", "test_strategy_peft.py",
                "test_zero_under_ray.py"}


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        path = str(item.fspath)
        if (SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or os.path.basename(path) in SLOW_MODULES
                or f"{os.sep}realmodel{os.sep}" in path):
            item.add_marker(pytest.mark.slow)
        if f"{os.sep}gpu{os.sep}" in path:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(skip_gpu)
        elif f"{os.sep}integration{os.sep}" in path:
            item.add_marker(pytest.mark.integration)
        elif f"{os.sep}realmodel{os.sep}" in path:
            item.add_marker(pytest.mark.realmodel)


@pytest.fixture(scope="session")
def student_tokenizer():
    return tiny.train_student_tokenizer()


@pytest.fixture(scope="session")
def teacher_tokenizer():
    return tiny.train_teacher_tokenizer(kind="wordpiece")


@pytest.fixture(scope="session")
def unigram_tokenizer():
    return tiny.train_teacher_tokenizer(kind="unigram")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's
    spinning threads make them many times slower; restored afterwards. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
