"""Cost of interaction distillation on the student step (METHOD.md §6 "Cost"): BT step vs
ID step (N=1, N=2, N=1 with 64-row chunks), time and peak memory, plus the simulated
maps' memory (chunked vs naive dense) and where the ID time goes.

    python -m idrm_ray.bench.id_step [--quick] [--lengths 256 512 1024] [--json OUT]

CPU, in-process, one run: per length the configurations are interleaved (each round
rotates their order) after a warm-up, so machine noise hits them alike; medians are
reported, of CPU time (robust to other processes on a shared machine) and of wall time.
Teacher maps are computed once, outside the timed region (they come from the teacher
actors in production). Peak memory is measured two ways (see `measure.py`): the
profiler's allocation events in this process, and each configuration in a fresh process
(kernel high-water mark over a post-build, post-warm-up baseline).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from statistics import median

import torch

from idrm_ray.bench.measure import (
    CONFIGS, SMALL_CHUNK, peak_bytes, print_table, save_payload, self_cpu_us, simulated_map_memory, static_bytes,
    train_step,
)
from idrm_ray.bench.workload import StudentShape, Tokenizers, Workload, build_student, build_workload
from idrm_ray.core.capture import capture_qk
from idrm_ray.core.losses import id_loss
from idrm_ray.core.reward_model import compute_rewards
from idrm_ray.core.simulated import simulated_maps
from idrm_ray.core.types import BLOCKS, BlockMaps, CapturedQK

NAMES = list(CONFIGS)  # BT first: the ratios' denominator
MiB = 2**20
WARM_LENGTH = 32


def _step(model, opt, work: Workload, name: str) -> None:
    train_step(model, opt, work.batch, work.teacher, name)


def time_steps(model, opt, work: Workload, reps: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per step, "cpu" (this process's CPU time) and "wall"; `reps` rounds, round r
    running the configurations rotated by r. On a shared machine a step's wall time also
    counts the time other processes held the core (up to 3x here); its CPU time does not."""
    times: dict[str, dict[str, list[float]]] = {"cpu": defaultdict(list), "wall": defaultdict(list)}
    for r in range(reps):
        for name in NAMES[r % len(NAMES):] + NAMES[: r % len(NAMES)]:
            c0, t0 = time.process_time(), time.perf_counter()
            _step(model, opt, work, name)
            times["cpu"][name].append(time.process_time() - c0)
            times["wall"][name].append(time.perf_counter() - t0)
    return times


def profile_steps(model, opt, work: Workload) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
    """One profiled step per configuration (also the warm-up of this length): peak live tensor
    bytes above the step's start (grads freed before it: they count in the peak) and self CPU
    time per op."""
    peaks, ops = {}, {}
    for name in NAMES:
        opt.zero_grad(set_to_none=True)
        peaks[name], prof = peak_bytes(lambda: _step(model, opt, work, name))
        ops[name] = self_cpu_us(prof)
    return peaks, ops


def _captured(model, work: Workload) -> tuple[CapturedQK, float]:
    """Post-RoPE Q/K of the top block from a no-grad forward as fresh leaves, and the seconds
    that building them from the hooked tensors took (RoPE)."""
    with capture_qk(model, top_n=1) as cap, torch.no_grad():
        compute_rewards(model, work.batch.input_ids, work.batch.attention_mask)
    t0 = time.process_time()
    qk = cap.result()  # the family's apply_rotary_pos_emb on the hooked q_proj / k_proj outputs
    rope_s = time.process_time() - t0
    return CapturedQK(q=[qk.q[0].detach().requires_grad_()], k=[qk.k[0].detach().requires_grad_()]), rope_s


def overhead_split(model, work: Workload, reps: int) -> dict[str, float]:
    """Median seconds of each ID part of an N=1 step, each timed alone on leaf tensors."""
    teacher, parts = work.teacher_top(1), defaultdict(list)
    for _ in range(reps):
        leaves, rope_s = _captured(model, work)
        parts["capture+RoPE"].append(rope_s)
        t0 = time.process_time()
        maps = simulated_maps(leaves, work.batch)
        t1 = time.process_time()
        cut = BlockMaps(**{n: maps.block(n).detach().requires_grad_() for n in BLOCKS},
                        valid_w=maps.valid_w, valid_l=maps.valid_l)
        loss, _ = id_loss(cut, teacher)
        t2 = time.process_time()
        loss.backward()
        t3 = time.process_time()
        torch.autograd.backward([maps.block(n) for n in BLOCKS], [cut.block(n).grad for n in BLOCKS])
        t4 = time.process_time()
        for key, dt in (("maps fwd", t1 - t0), ("L_ID fwd", t2 - t1), ("L_ID bwd", t3 - t2), ("maps bwd", t4 - t3)):
            parts[key].append(dt)
    return {k: median(v) for k, v in parts.items()}


def rss_all(model, warm: Workload, works: list[Workload], *, jobs: int, threads: int) -> dict[int, dict[str, dict]]:
    """Each configuration in its own fresh process (all lengths there, `measure.rss_child`),
    `jobs` at a time: memory only, so contention slows them but does not change their RSS.
    MALLOC_MMAP_THRESHOLD_ fixes glibc's mmap threshold so that large buffers go back to the
    kernel when freed and RSS follows live memory instead of the heap's high-water mark."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out: dict[int, dict[str, dict]] = defaultdict(dict)
    with tempfile.TemporaryDirectory(prefix="idrm_bench_") as tmp:
        save_payload(Path(tmp), model, warm, works)
        todo, running = list(NAMES), []
        while todo or running:
            while todo and len(running) < jobs:
                name = todo.pop(0)
                cmd = [sys.executable, "-m", "idrm_ray.bench.measure", tmp, name, str(threads)]
                running.append((name, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)))
            name, proc = running.pop(0)
            stdout, _ = proc.communicate()
            if proc.returncode:
                raise RuntimeError(f"RSS child for {name!r} failed with code {proc.returncode}")
            for length, row in json.loads(stdout.strip().splitlines()[-1]).items():
                out[int(length)][name] = row
    return out


def bench_length(model, opt, work: Workload, args) -> dict:
    peaks, ops = profile_steps(model, opt, work)
    times = time_steps(model, opt, work, args.reps)
    med = {n: median(times["cpu"][n]) for n in NAMES}
    split = overhead_split(model, work, args.split_reps)
    split["rest"] = med["ID N=1"] - med["BT"] - sum(split.values())
    extra = {op: ops["ID N=1"].get(op, 0.0) - ops["BT"].get(op, 0.0) for op in ops["ID N=1"]}
    top_ops = sorted(extra.items(), key=lambda kv: -kv[1])[:6]
    qk, _ = _captured(model, work)
    sim = simulated_map_memory(qk, work.batch, work.teacher_top(1))
    return {
        "workload": work.summary(), "time_s": med, "wall_time_s": {n: median(times["wall"][n]) for n in NAMES},
        "time_all_s": times,
        "peak_bytes": peaks, "split_s": split, "top_extra_ops_us": dict(top_ops), "simulated_maps_bytes": sim,
    }


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def _per_config(res: dict, title: str, values, *, fmt: str, extra=None) -> None:
    """One row per length: the value of each configuration, then each ID config / BT."""
    ids = NAMES[1:]
    head = ["length", *NAMES, *(f"{n}/BT" for n in ids), *(extra[0] if extra else [])]
    rows = []
    for length, r in res["lengths"].items():
        v = values(r)
        if v is None:
            continue
        rows.append([str(length), *(format(v[n], fmt) for n in NAMES), *(_ratio(v[n], v["BT"]) for n in ids),
                     *(extra[1](r) if extra else [])])
    if rows:
        print_table(title, head, rows)


def print_report(res: dict, args) -> None:
    print(f"\nStudent: {res['student']}; B={args.pairs} pairs = {2 * args.pairs} sequences per step; "
          f"{res['threads']} torch thread(s); warm-up, then {args.reps} interleaved rounds, medians.")
    print("Teacher maps: the real tiny BERT teacher (random weights) via TeacherAttention.maps_for_encodings on "
          "the encoded pairs, fp16 rows, every unit inside its window; computed once, outside the timed region.")
    _per_config(res, "Step time (s), CPU time of this process: forward + backward + AdamW via preference_loss",
                lambda r: r["time_s"], fmt=".3f")
    _per_config(res, "Step time (s), wall clock (also counts other processes' use of the shared cores)",
                lambda r: r["wall_time_s"], fmt=".3f")
    static = res["static_bytes"]
    total = (["total N=1/BT"], lambda r: [_ratio(static + r["peak_bytes"]["ID N=1"], static + r["peak_bytes"]["BT"])])
    _per_config(res, "Peak memory of a step (MiB), profiler: live tensor bytes above the step's start (raw alloc "
                f"events); total: plus weights + AdamW state ({static / MiB:.1f} MiB)",
                lambda r: {k: v / MiB for k, v in r["peak_bytes"].items()}, fmt=".1f", extra=total)
    exact = (["exact"], lambda r: ["yes" if all(v["exact"] for v in r["rss"].values()) else "lower bound"])
    _per_config(res, "Peak memory of a step (MiB), fresh process per configuration: VmHWM - VmRSS after "
                "build + warm-up step", lambda r: {k: v["rss_step"] / MiB for k, v in r["rss"].items()}
                if "rss" in r else None, fmt=".1f", extra=exact)
    rows = []
    for length, r in res["lengths"].items():
        s = r["simulated_maps_bytes"]
        small = s[f"chunked_{SMALL_CHUNK}"]
        rows.append([str(length), f"{s['naive'] / MiB:.1f}", f"{s['chunked'] / MiB:.1f}", _ratio(s["naive"], s["chunked"]),
                     f"{small / MiB:.1f}", _ratio(s["naive"], small), f"{s['max_abs_diff']:.1e}"])
    print_table("Simulated maps alone (top block; maps forward + L_ID + backward into Q/K), peak MiB, profiler",
           ["length", "naive dense H x n x n", "chunked default", "naive/default", f"chunked {SMALL_CHUNK} rows",
            f"naive/{SMALL_CHUNK} rows", "max |naive-chunked|"], rows)
    keys = ["capture+RoPE", "maps fwd", "maps bwd", "L_ID fwd", "L_ID bwd", "rest"]
    rows = [[str(n), f"{r['time_s']['ID N=1'] - r['time_s']['BT']:.3f}", *(f"{r['split_s'][k]:.3f}" for k in keys)]
            for n, r in res["lengths"].items()]
    print_table("Where the ID N=1 time goes (s; each part timed alone on leaf tensors, CPU time; maps bwd includes "
           "the checkpoint recompute; rest = (ID - BT) - parts)", ["length", "ID - BT", *keys], rows)
    longest = list(res["lengths"])[-1]
    ops = ", ".join(f"{op} {us / 1e3:.0f} ms" for op, us in res["lengths"][longest]["top_extra_ops_us"].items())
    print(f"\nOps with the most extra self CPU time, one profiled ID N=1 step vs BT at {longest}: {ops}")
    print(f"\nTotal wall time {res['wall_s']:.0f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m idrm_ray.bench.id_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short length, 3 reps (< 1 min)")
    p.add_argument("--lengths", type=int, nargs="+", help="student tokens per sequence (default 256 512 1024)")
    p.add_argument("--reps", type=int, help="timed rounds per length (default 5, quick 3)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS measurement")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=2, help="preference pairs per step (2 sequences each)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: on a shared "
                   "machine a 2-thread step stalls whenever one thread is descheduled, up to 10x here)")
    args = p.parse_args(argv)
    args.lengths = args.lengths or ([256] if args.quick else [256, 512, 1024])
    args.reps = args.reps or (3 if args.quick else 5)
    args.split_reps = 1 if args.quick else 2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    shape = StudentShape(hidden=args.hidden, layers=args.layers, heads=args.heads, kv_heads=args.kv_heads)
    tokenizers = Tokenizers.train()
    model = build_student(tokenizers, shape)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    warm = build_workload(tokenizers, WARM_LENGTH, pairs=args.pairs)
    for name in NAMES:  # AdamW state, one-time buffers
        _step(model, opt, warm, name)
    works = [build_workload(tokenizers, n, pairs=args.pairs) for n in args.lengths]
    res = {"student": shape.describe(), "threads": torch.get_num_threads(), "static_bytes": static_bytes(model),
           "lengths": {}}
    for work in works:
        res["lengths"][work.length] = bench_length(model, opt, work, args)
    if not args.no_rss:
        for length, rss in rss_all(model, warm, works, jobs=2, threads=args.threads).items():
            res["lengths"][length]["rss"] = rss
    res["wall_s"] = time.perf_counter() - start
    print_report(res, args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
    return res


if __name__ == "__main__":
    main()
