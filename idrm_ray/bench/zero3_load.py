"""Peak memory of each rank while loading the student: ZeRO-3 (partitioned at load through
`DeepSpeedStrategy.load_reward_model`, as the train worker loads) vs a plain fp32 load.

    python -m idrm_ray.bench.zero3_load [--model packaged:smollm2-135m-instruct] [--workers 2]

Each setting runs in fresh processes (torch.multiprocessing, gloo on 127.0.0.1, DeepSpeed's CPU
accelerator), so the high-water marks are the load's own. Per rank it prints the resident set
before loading (Python, torch, DeepSpeed), the peak during the load (VmHWM) and their
difference, next to the fp32 size of the model's parameters. Measured here (SmolLM2-135M,
513 MB fp32, CPU): a plain load 1.02x the model per rank; ZeRO-3 streamed 0.90x with 2 ranks and
0.65-1.04x with 4 (each holds 1/world; the rest is the build, where zero.Init partitions a module
only after creating it whole, SmolLM2's embedding being 22% of the model, and gloo's gather
buffers); transformers 5.15's own ZeRO-3 `from_pretrained`, which merges every shard on every
rank first, was 1.2-2.0x.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile

import torch
import torch.multiprocessing as mp


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _rank(rank: int, world: int, port: int, model_dir: str, zero3: bool, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from idrm_ray.core.reward_model import cached_tokenizer
    from idrm_ray.train.strategy import make_strategy

    dist.init_process_group("gloo", rank=rank, world_size=world)
    strategy = make_strategy("deepspeed" if zero3 else "torch", zero_stage=3, precision="fp32", micro_batch_size=1)
    tokenizer = cached_tokenizer(model_dir)
    before = _status_kb("VmRSS")
    model = strategy.load_reward_model(model_dir, dtype=torch.float32, attn_implementation="sdpa", tokenizer=tokenizer)
    for p in model.parameters():  # touch every held tensor: mmapped weights count once read
        float(p.data.sum()) if p.numel() else None
    local = sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() for p in model.parameters()) * 4  # held
    peak = _status_kb("VmHWM")
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"rank": rank, "before_mb": before / 1024, "peak_mb": peak / 1024,
                   "load_mb": (peak - before) / 1024, "params_held_mb": local / 2**20}, f)
    dist.barrier()
    dist.destroy_process_group()


def measure(model_dir: str, *, workers: int, zero3: bool) -> list[dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank")
        mp.start_processes(_rank, args=(workers, port, model_dir, zero3, out), nprocs=workers, start_method="spawn")
        return [json.loads(open(f"{out}.{r}").read()) for r in range(workers)]


def fp32_size_mb(model_dir: str) -> float:
    from idrm_ray.core.reward_model import load_reward_model

    model = load_reward_model(model_dir, dtype=torch.float32)
    return sum(p.numel() for p in model.parameters()) * 4 / 2**20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:smollm2-135m-instruct")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from idrm_ray.packaged import resolve

    model_dir = resolve(args.model)
    size = fp32_size_mb(model_dir)
    print(f"model {args.model}: fp32 parameters {size:.0f} MB; {args.workers} ranks, CPU, gloo")
    print(f"{'load':<22} {'rank':>4} {'RSS before MB':>14} {'peak MB':>9} {'peak - before':>14} "
          f"{'x model':>8} {'params held MB':>15}")
    for zero3 in (False, True):
        name = "ZeRO-3 (zero.Init)" if zero3 else "plain fp32 (no shard)"
        for r in measure(model_dir, workers=args.workers, zero3=zero3):
            print(f"{name:<22} {r['rank']:>4} {r['before_mb']:>14.0f} {r['peak_mb']:>9.0f} {r['load_mb']:>14.0f} "
                  f"{r['load_mb'] / size:>8.2f} {r['params_held_mb']:>15.0f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
