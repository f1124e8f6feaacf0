"""Cost of a parameter-efficient student step (issue 14 §1): full fine-tuning, LoRA r=8 and
top-4 block training on SmolLM2-135M shapes, BT and ID (N=1) side by side: trainable
parameters, step time and peak memory, and the ratios to full fine-tuning, from one run.

    python -m idrm_ray.bench.peft_step [--quick] [--length 256] [--pairs 2] [--json OUT]

CPU, in-process. The student is SmolLM2-135M-Instruct's architecture (its config.json: 30
blocks, hidden 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152) with random weights: cost
does not depend on the weights, and nothing is read or downloaded. The three students live
side by side and every timed round runs all six configurations in rotated order after a
warm-up step each (AdamW state allocated), so machine noise hits them alike; medians of CPU
time (robust to other processes on a shared machine) and of wall time. Peak memory is the
profiler's peak of live tensor bytes during one step above its start (`measure.peak_bytes`:
activations, gradients, the optimizer's temporaries), and "total" adds what stays resident
between steps: all weights plus AdamW's two moments of the trainable parameters (frozen
parameters have neither gradients nor optimizer state). Teacher maps come from the bench's
tiny teacher, computed once outside the timed region (`workload.build_workload`).

Measured (defaults, 2 pairs of 256 tokens, 1 thread, a 2-core machine at load ~30, 29 min):

    student  | trainable | BT cpu s | ID cpu s | BT/full | BT total MiB | ID total MiB | total/full
    full     |  134.52M  |   9.72   |   9.81   |  1.00   |     2864     |     2687     | 1.00
    LoRA r=8 |    2.44M  |   7.89   |   7.73   |  0.81   |     1731     |     1735     | 0.60 / 0.65
    top-4    |   14.16M  |   3.78   |   3.87   |  0.39   |      811     |      802     | 0.28 / 0.30

LoRA saves the optimizer state and gradients of the frozen weights but still backpropagates
through all 30 blocks (the adapters sit in every one); top-4 stops the backward below the top
four blocks. ID N=1 adds about 1% at 256 tokens. Wall times were 5x the CPU times (load).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from statistics import median

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from idrm_ray.bench.measure import peak_bytes, print_table
from idrm_ray.bench.workload import Tokenizers, Workload, build_workload, top_blocks
from idrm_ray.core.objective import IDSettings, preference_loss
from idrm_ray.core.peft_student import PeftSettings, apply_peft, trainable_counts

# SmolLM2-135M-Instruct's config.json (packaged:smollm2-135m-instruct), the values that set the cost.
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, vocab_size=49152, rms_norm_eps=1e-5,
                    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"})
QUICK = dict(SMOLLM2_135M, hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=1024)
VARIANTS = {"full": PeftSettings(), "LoRA r=8": PeftSettings(lora_r=8), "top-4": PeftSettings(train_top_blocks=4)}
METHODS: dict[str, IDSettings | None] = {"BT": None, "ID N=1": IDSettings(top_n=1)}
MiB = 2**20


def build_model(shape: dict, settings: PeftSettings, *, pad_id: int, seed: int = 0):
    """A random-init Llama reward model of `shape` with `settings` applied, and its AdamW."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", num_labels=1, max_position_embeddings=8192, tie_word_embeddings=False,
                                  **shape)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    model.config.pad_token_id = pad_id
    apply_peft(model, settings)
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)


def step(model, opt, work: Workload, method: str) -> float:
    """One optimizer step of `method` (zero_grad, forward with Q/K capture for ID, backward, AdamW)."""
    opt.zero_grad(set_to_none=True)
    settings = METHODS[method]
    teacher = top_blocks(work.teacher, settings.top_n) if settings else None
    loss, _ = preference_loss(model, work.batch, teacher, settings=settings)
    loss.backward()
    opt.step()
    return float(loss.detach())


def resident_bytes(model) -> int:
    """Weights (all) + AdamW's exp_avg and exp_avg_sq (trainable only): held between steps."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def run(shape: dict, work: Workload, *, pad_id: int, reps: int) -> dict:
    students = {name: build_model(shape, s, pad_id=pad_id) for name, s in VARIANTS.items()}
    configs = [(v, m) for v in VARIANTS for m in METHODS]
    res = {v: {"trainable": trainable_counts(students[v][0])[0], "total": trainable_counts(students[v][0])[1],
               "resident_bytes": resident_bytes(students[v][0]), "peak_bytes": {}} for v in VARIANTS}
    for v, m in configs:  # warm-up: AdamW state and one-time buffers, then the profiled step
        step(*students[v], work, m)
        res[v]["peak_bytes"][m], _ = peak_bytes(lambda v=v, m=m: step(*students[v], work, m))
    times = {"cpu": defaultdict(list), "wall": defaultdict(list)}
    for r in range(reps):
        for v, m in configs[r % len(configs):] + configs[: r % len(configs)]:
            c0, t0 = time.process_time(), time.perf_counter()
            step(*students[v], work, m)
            times["cpu"][(v, m)].append(time.process_time() - c0)
            times["wall"][(v, m)].append(time.perf_counter() - t0)
    for v, m in configs:
        res[v].setdefault("time_s", {})[m] = median(times["cpu"][(v, m)])
        res[v].setdefault("wall_time_s", {})[m] = median(times["wall"][(v, m)])
    return res


def print_report(res: dict, args, shape: dict, work: Workload) -> None:
    print(f"\nStudent: SmolLM2-135M shapes ({shape['num_hidden_layers']} blocks, hidden {shape['hidden_size']}, "
          f"{shape['num_attention_heads']}/{shape['num_key_value_heads']} heads, vocab {shape['vocab_size']}), "
          f"random init, fp32, sdpa; {args.pairs} pairs = {2 * args.pairs} sequences of "
          f"{work.summary()['tokens_per_seq']} tokens per step; {torch.get_num_threads()} torch thread(s); "
          f"{args.reps} interleaved rounds, medians. LoRA: r=8, alpha 16, all 7 block Linears; top-4: the top 4 "
          "blocks, the final norm and the value head.")
    full = res["full"]
    rows = []
    for v, r in res.items():
        rows.append([v, f"{r['trainable'] / 1e6:.2f}M", f"{100 * r['trainable'] / r['total']:.2f}%",
                     *(f"{r['time_s'][m]:.2f}" for m in METHODS), *(f"{r['wall_time_s'][m]:.2f}" for m in METHODS),
                     f"{r['time_s']['ID N=1'] / r['time_s']['BT']:.2f}",
                     *(f"{r['time_s'][m] / full['time_s'][m]:.2f}" for m in METHODS)])
    print_table("Trainable parameters and step time (s; CPU time of this process, then wall clock)",
           ["student", "trainable", "share", "BT cpu", "ID cpu", "BT wall", "ID wall", "ID/BT",
            "BT/full", "ID/full"], rows)
    rows = []
    for v, r in res.items():
        total = {m: r["resident_bytes"] + r["peak_bytes"][m] for m in METHODS}
        full_total = {m: full["resident_bytes"] + full["peak_bytes"][m] for m in METHODS}
        rows.append([v, f"{r['resident_bytes'] / MiB:.0f}", *(f"{r['peak_bytes'][m] / MiB:.0f}" for m in METHODS),
                     *(f"{total[m] / MiB:.0f}" for m in METHODS),
                     *(f"{total[m] / full_total[m]:.2f}" for m in METHODS)])
    print_table("Memory (MiB): resident = weights + AdamW moments of the trainable parameters; step peak = profiler's "
           "live tensor bytes above the step's start; total = resident + step peak",
           ["student", "resident", "BT step peak", "ID step peak", "BT total", "ID total", "BT total/full",
            "ID total/full"], rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m idrm_ray.bench.peft_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 6-block 64-wide student, 64 tokens, 1 round (seconds)")
    p.add_argument("--length", type=int, help="student tokens per sequence (default 256, quick 64)")
    p.add_argument("--pairs", type=int, default=2, help="preference pairs per step (2 sequences each)")
    p.add_argument("--reps", type=int, help="timed rounds (default 3, quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as bench.id_step)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    args.length = args.length or (64 if args.quick else 256)
    args.reps = args.reps or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else SMOLLM2_135M
    tokenizers = Tokenizers.train()
    work = build_workload(tokenizers, args.length, pairs=args.pairs, top_n=1)
    res = run(shape, work, pad_id=tokenizers.student.pad_token_id, reps=args.reps)
    wall = time.perf_counter() - start
    print_report(res, args, shape, work)
    print(f"\nTotal wall time {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"shape": shape, "args": vars(args) | {"json": str(args.json)},
                                         "results": res, "wall_s": wall}, indent=2, default=float) + "\n")
    return res


if __name__ == "__main__":
    main()
