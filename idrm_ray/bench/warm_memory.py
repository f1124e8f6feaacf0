"""Peak memory of WARM averaging: the old in-process average (every member loaded as a model
in turn, an fp64 accumulator of the whole model, a copy of member 0, a model to load the mean
into, then `save_pretrained`) against `methods.write_average` (tensor by tensor from the
members' safetensors, streamed into the output file).

    python -m idrm_ray.bench.warm_memory [--members 3] [--model packaged:smollm2-135m-instruct] [--dir DIR]

Members are the model (by default the packaged SmolLM2-135M, an fp32 Llama of about 540 MB)
saved as reward models with perturbed weights. Each method runs in a fresh process (`--child`)
that first imports everything, loads the tokenizer and model class and runs the same method once
on two one-block members (`warm_members`), so that one-time costs (library code paged in on
first use, allocator arenas: about 10 MB, whatever the model's size) are not counted. It then
takes its resident set as the baseline, resets the kernel's high-water mark (VmHWM,
`measure._reset_hwm`) and reports the mark's growth over the baseline: what averaging itself
added, against one member's weights. glibc's mmap threshold is fixed (as `id_step.rss_all`
does), so buffers the warm-up freed leave the resident set instead of being reused unseen.
Both outputs are compared tensor by tensor at the end.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from idrm_ray.bench.measure import _reset_hwm, _status_kib
from idrm_ray.core.baselines import SAFE_INDEX, SAFE_WEIGHTS, average_state_dicts, safetensors_layout

METHODS = ("old", "new")


def make_members(model, tokenizer, folder: Path, count: int, *, noise: float = 1e-3, seed: int = 0,
                 metadata: dict | None = None) -> list[str]:
    """`count` reward-model checkpoints of `model`, each with Gaussian noise (std `noise`)
    added to every parameter on top of the previous member's (members differ pairwise), and
    `metadata` plus its index in `idrm_meta.json`."""
    from idrm_ray.core.reward_model import save_reward_model

    gen = torch.Generator().manual_seed(seed)
    paths = []
    for i in range(count):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * noise)
        paths.append(str(save_reward_model(model, tokenizer, folder / f"member{i}", metadata={**(metadata or {}), "member": i})))
    return paths


def old_average(sources: list[str], out: str, *, metadata: dict) -> str:
    """The averaging `methods.average_checkpoints` did before it streamed (kept here, as it
    was, only to measure against)."""
    from idrm_ray.core.reward_model import cached_tokenizer, load_reward_model, save_reward_model

    states = (load_reward_model(s, dtype=torch.float32).state_dict() for s in sources)
    averaged = average_state_dicts(states)
    model = load_reward_model(sources[0], dtype=torch.float32)
    model.load_state_dict(averaged)
    return str(save_reward_model(model, cached_tokenizer(sources[0]), out, metadata={**metadata, "averaged": sources}))


def weight_bytes(model_dir: str) -> int:
    """Bytes of the stored weights of one checkpoint (what one member costs in memory)."""
    from idrm_ray.core.baselines import _DTYPES

    return sum(math.prod(shape) * _DTYPES[dtype].itemsize for _, dtype, shape in safetensors_layout(model_dir).values())


def warm_members(tokenizer, folder: Path) -> list[str]:
    """Two one-block members (a few MB) for `child`'s warm-up run."""
    from idrm_ray.core import tiny

    return make_members(tiny.build_tiny_student(tokenizer, num_layers=1), tokenizer, folder, 2)


def child(method: str, out: str, sources: list[str], warm: list[str]) -> dict:
    """One averaging in this (fresh) process, after a warm-up averaging of `warm` by the same
    method; growth of VmHWM over the baseline taken after the warm-up."""
    from transformers import AutoConfig, AutoModelForSequenceClassification  # noqa: F401 - imported before the baseline

    from idrm_ray.core.reward_model import cached_tokenizer
    from idrm_ray.multirun.tools import write_average

    config = AutoConfig.from_pretrained(sources[0])
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]  # imports the model class now
    cached_tokenizer(sources[0])
    fn = old_average if method == "old" else write_average
    with tempfile.TemporaryDirectory() as tmp:
        fn(warm, tmp, metadata={"method": "warm", "bench": "warm-up"})
    gc.collect()
    base = _status_kib("VmRSS")
    exact = _reset_hwm()
    t0 = time.perf_counter()
    fn(sources, out, metadata={"method": "warm", "bench": method})
    wall = time.perf_counter() - t0
    return {"peak_growth": 1024 * (_status_kib("VmHWM") - base), "baseline_rss": 1024 * base,
            "exact": exact, "wall_s": wall}


def measure(method: str, out: Path, sources: list[str], warm: list[str], *, threads: int = 1) -> dict:
    """`child` in a fresh interpreter (no high-water mark inherited from this one)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, "-m", "idrm_ray.bench.warm_memory", "--child", method, str(out), *warm, "--", *sources]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} averaging failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_difference(a: str, b: str) -> float:
    """max |a - b| over every stored tensor of two checkpoints with the same names."""
    from safetensors import safe_open

    la, lb = safetensors_layout(a), safetensors_layout(b)
    if set(la) != set(lb):
        raise ValueError(f"{a} and {b} store different names: {sorted(set(la) ^ set(lb))[:3]}")
    worst = 0.0
    for key, (file, _, _) in la.items():
        with safe_open(str(file), "pt") as fa, safe_open(str(lb[key][0]), "pt") as fb:
            diff = (fa.get_tensor(key).double() - fb.get_tensor(key).double()).abs()
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    from idrm_ray import packaged
    from idrm_ray.core.reward_model import load_reward_model, load_student_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        path = packaged.resolve(args.model)
        model = load_reward_model(path, dtype=torch.float32)
        tokenizer = load_student_tokenizer(path)
        sources = make_members(model, tokenizer, folder, args.members)
        warm = warm_members(tokenizer, folder / "warm-up")
        del model
        size = weight_bytes(sources[0])
        print(f"WARM averaging of {args.members} members of {args.model}: {size / 2**20:.0f} MiB of weights each "
              f"({SAFE_WEIGHTS if not (Path(sources[0]) / SAFE_INDEX).exists() else 'sharded'})")
        print(f"{'method':<8}{'peak RSS growth':>18}{'x one member':>14}{'wall s':>9}")
        rows = {}
        for method in METHODS:
            rows[method] = measure(method, folder / f"avg-{method}", sources, warm)
            r = rows[method]
            flag = "" if r["exact"] else "  (VmHWM not reset: upper bound)"
            print(f"{method:<8}{r['peak_growth'] / 2**20:>14.0f} MiB{r['peak_growth'] / size:>14.2f}"
                  f"{r['wall_s']:>9.1f}{flag}")
        diff = max_difference(str(folder / "avg-old"), str(folder / "avg-new"))
        print(f"old/new peak: {rows['old']['peak_growth'] / max(rows['new']['peak_growth'], 1):.1f}x; "
              f"max |old - new| over all weights: {diff:.2e}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        torch.set_num_threads(1)
        rest = sys.argv[4:]
        cut = rest.index("--")
        print(json.dumps(child(sys.argv[2], sys.argv[3], rest[cut + 1:], rest[:cut])))
    else:
        main()
