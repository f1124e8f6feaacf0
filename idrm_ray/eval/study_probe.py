"""Why ID did or did not beat BT on the stress sets (issue 14 §2): three measurements on the
checkpoints a `compare --preset study_real` run wrote, on held-out stress pairs.

    python -m idrm_ray.eval.study_probe COMPARE_DIR --eval idrm_ray/data/bundled/stress/pref_eval.jsonl \\
        [--pairs 16] [--seeds 0,1,2] [--teacher DIR] [--json OUT]
    python -m idrm_ray.eval.study_probe --teacher-only --teacher DIR --eval EVAL.jsonl [--pairs 48]

(`--teacher-only`: the teacher's `fact_share` alone, top block and every block, to check a
teacher before any student trains.)

- `l_id`: L_ID (Eq. 8, the run's settings) of each checkpoint against the run's NLI teacher:
  do the student's simulated maps sit nearer the teacher's after ID than after BT or before
  training (`init`)?
- `fact_share` (early/* pairs): in the top-block unit maps of the chosen half, the attention
  per unit that response units give to the decisive fact's units, over that plus the mean of
  the other facts' (0.5: no preference). For the teacher's maps and each student's simulated
  maps: does the teacher attend to the decisive fact, and does ID carry that over?
  `teacher_fact_share_inter`: the same from the rejected response's units to the chosen
  half's facts (the teacher's inter block `lw`, the direction NLI premise -> hypothesis trains).
- `reward_fact` / `reward_cue` (early/*): the share of the reward token's top-block attention
  (`diagnostics.reward_token_attention`, head mean) on the decisive fact's tokens and on the
  late cue's tokens (" Tag: blue."), chosen sequences: what the score is read from.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from idrm_ray.configtree.loader import load_config
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core.capture import capture_qk
from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.objective import IDSettings, preference_loss
from idrm_ray.core.reward_model import compute_rewards
from idrm_ray.core.simulated import simulated_maps
from idrm_ray.core.teacher import TeacherAttention
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs
from idrm_ray.data.stress import CUES
from idrm_ray.eval.diagnostics import reward_token_attention

CUE_WORDS = {"tag", ":", "blue", "gold"}


def fact_units(spans: np.ndarray, prompt: str) -> tuple[list[int], list[list[int]]]:
    """Units (indices into `spans`, (U, 2) character spans over prompt+response) of the
    decisive fact of an early/* prompt and of each other fact. A unit's span may begin with
    its leading space."""
    body = prompt.split("\n\nHuman: ")[1].split("\n\n")[0].split(": ", 1)[1]
    subject = prompt.rsplit("What does ", 1)[1].rsplit(" ", 1)[0].lower()
    target: list[int] = []
    others: list[list[int]] = []
    for sentence in body.rstrip(".").split(". "):
        lo = prompt.index(sentence)
        units = [u for u, (a, b) in enumerate(spans) if a >= lo - 1 and b <= lo + len(sentence)]
        if sentence.lower().startswith(subject):
            target = units
        else:
            others.append(units)
    return target, others


def cue_units(spans: np.ndarray, text: str, prompt_len: int) -> list[int]:
    """Response units of the cue (" Tag: blue." / " Tag: gold.")."""
    start = max(text.find(c, prompt_len) for c in CUES)
    if start < 0:
        return []
    end = start + len(CUES[0])
    return [u for u, (a, b) in enumerate(spans) if a >= start and b <= end and text[a:b].strip(" .").lower() in CUE_WORDS]


def fact_share(ww: np.ndarray, rows: np.ndarray, target: list[int], others: list[list[int]]) -> float | None:
    """Attention per unit from query units `rows` to the target fact, over that plus the
    mean per-unit attention to each other fact."""
    if not len(rows) or not target or not others:
        return None
    per_unit = lambda units: float(ww[np.ix_(rows, units)].sum(1).mean()) / len(units)  # noqa: E731
    t, o = per_unit(target), float(np.mean([per_unit(u) for u in others if u]))
    return t / (t + o) if t + o > 0 else None


def token_share(attn: np.ndarray, token_unit: np.ndarray, units: list[int]) -> float:
    """Share of one sequence's (n,) attention row on the tokens of `units`."""
    total = float(attn.sum())
    return float(attn[np.isin(token_unit, units)].sum()) / total if total > 0 and units else 0.0


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def probe_model(model, item: dict, settings, *, pad_id: int) -> dict:
    """L_ID and (early/* sets) the fact and cue shares of one checkpoint on one prepared set."""
    batch, maps, encs = item["batch"], item["maps"], item["encodings"]
    with torch.no_grad():
        _, metrics = preference_loss(model, batch, maps, settings=settings)
        out = {"l_id": float(metrics["l_id"])}
        if not item["early"]:
            return out
        with capture_qk(model, top_n=1) as cap:
            compute_rewards(model, batch.input_ids, batch.attention_mask)
        sim = simulated_maps(cap.result(), batch, scaling=cap.layout.scaling)
    attns, _ = reward_token_attention(model, [e.student_ids_w for e in encs], pad_id=pad_id)
    out["fact_share"] = _mean(fact_share(sim.ww[i, 0].numpy(), *f) for i, f in enumerate(item["facts"]))
    out["reward_fact"] = _mean(token_share(a, e.student_unit_w, f[1]) for a, e, f in zip(attns, encs, item["facts"]))
    out["reward_cue"] = _mean(token_share(a, e.student_unit_w, c) for a, e, c in zip(attns, encs, item["cues"]))
    return out


def prepare(rows: list[dict], cfg, student_tok, teacher_tok, teacher) -> dict:
    """One eval kind: encodings, student batch, teacher maps and (early/*) the unit sets."""
    examples = [PreferenceExample(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in rows]
    encs = encode_pairs(examples, student_tok, teacher_tok, student_max_len=cfg.student.max_len,
                        teacher_max_len=cfg.teacher.max_len, template=cfg.student.render)
    item = {"encodings": encs, "batch": collate_pairs(encs, pad_id=student_tok.pad_token_id),
            "maps": teacher.maps_for_encodings(encs), "early": rows[0]["kind"].startswith("early")}
    if item["early"]:
        item["facts"] = [(np.where(e.unit_response_w)[0], *fact_units(e.unit_spans_w, r["prompt"]))
                         for e, r in zip(encs, rows)]
        item["facts_l"] = [(np.where(e.unit_response_l)[0], *fact_units(e.unit_spans_l, r["prompt"]))
                           for e, r in zip(encs, rows)]
        item["cues"] = [cue_units(e.unit_spans_w, r["prompt"] + r["chosen"], len(r["prompt"])) for e, r in zip(encs, rows)]
        item["teacher_fact_share"] = _mean(fact_share(item["maps"].ww[i, 0].numpy(), *f)
                                           for i, f in enumerate(item["facts"]))
        item["teacher_fact_share_inter"] = _mean(  # rejected's response -> the chosen half's facts (lw)
            fact_share(item["maps"].lw[i, 0].numpy(), np.where(e.unit_response_l)[0], *f[1:])
            for i, (e, f) in enumerate(zip(encs, item["facts"])))
    return item


def load_sets(teacher_dir: str, eval_path: str, *, pairs: int, preset: str = "study_real",
              blocks: int | None = None) -> tuple[dict, dict]:
    """The preset's config, its ID settings and each eval kind `prepare`d with the teacher at
    `teacher_dir` (top N blocks, or `blocks`; renormalisation and head renormalisation as the
    preset sets them)."""
    cfg = load_config(TrainJobConfig, None, preset=preset)
    student_tok, teacher_tok = AutoTokenizer.from_pretrained(cfg.student.name_or_path), AutoTokenizer.from_pretrained(teacher_dir)
    if student_tok.pad_token_id is None:
        student_tok.pad_token = student_tok.eos_token
    idc = cfg.method.id
    teacher = TeacherAttention(teacher_dir, top_n=blocks or idc.top_n, device="cpu", renormalize=idc.mode,
                               head_renorm=idc.teacher_head_renorm)
    all_rows = [json.loads(line) for line in Path(eval_path).read_text(encoding="utf-8").splitlines() if line.strip()]
    sets = {k: prepare([r for r in all_rows if r["kind"] == k][:pairs], cfg, student_tok, teacher_tok, teacher)
            for k in sorted({r["kind"] for r in all_rows})}
    return sets, {"cfg": cfg, "pad_id": student_tok.pad_token_id}


def teacher_shares(teacher_dir: str, eval_path: str, *, pairs: int, preset: str = "study_real") -> dict:
    """Teacher-only mode, before any student trains: per early/* kind the teacher's top-block
    `fact_share` (and `_inter`), and per block (top first, all the teacher's blocks) the share
    in the chosen half (`ww`, its response names the decisive object) and in the rejected half
    (`ll`, it names another fact's object: matching the object alone puts this below 0.5)."""
    sets, _ = load_sets(teacher_dir, eval_path, pairs=pairs, preset=preset, blocks=_num_layers(teacher_dir))
    out = {}
    for kind, s in sets.items():
        if s["early"]:
            by_block = lambda m, facts: [  # noqa: E731
                _mean(fact_share(m[i, k].numpy(), *f) for i, f in enumerate(facts)) for k in range(m.shape[1])]
            out[kind] = {"teacher_fact_share": s["teacher_fact_share"],
                         "teacher_fact_share_inter": s["teacher_fact_share_inter"],
                         "chosen_by_block": by_block(s["maps"].ww, s["facts"]),
                         "rejected_by_block": by_block(s["maps"].ll, s["facts_l"])}
    return out


def _num_layers(model_dir: str) -> int:
    return int(AutoConfig.from_pretrained(model_dir).num_hidden_layers)


def run_probe(compare_dir: Path, eval_path: str, *, pairs: int, seeds: list[int], preset: str = "study_real",
              teacher_dir: str | None = None) -> dict:
    sets, ctx = load_sets(teacher_dir or str(compare_dir / "teachers" / "nli" / "teacher"), eval_path, pairs=pairs,
                          preset=preset)
    cfg, pad_id = ctx["cfg"], ctx["pad_id"]
    idc = cfg.method.id
    settings = IDSettings(lam=1.0, top_n=idc.top_n, distance=idc.distance, intra=idc.intra, inter=idc.inter,
                          inter_keys=idc.inter_keys, mode=idc.mode, response_only_inter=idc.response_only_inter,
                          block_reduction=idc.block_reduction)
    out: dict = {k: {"teacher_fact_share": s.get("teacher_fact_share")} for k, s in sets.items()}
    checkpoints = {"init": cfg.student.name_or_path}
    checkpoints |= {f"{m}/seed{s}": str(compare_dir / f"seed{s}" / m / "checkpoint") for s in seeds for m in ("bt", "id")}
    for name, path in checkpoints.items():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, attn_implementation="eager")
        model.config.pad_token_id = pad_id
        model.eval()
        for kind, item in sets.items():
            out[kind][name] = probe_model(model, item, settings, pad_id=pad_id)
            print(f"[probe] {kind} {name}: {out[kind][name]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="L_ID, fact and cue attention shares of a study's checkpoints.")
    parser.add_argument("compare_dir", nargs="?", help="a `compare --preset study_real` output folder")
    parser.add_argument("--eval", required=True, help="the stress eval JSONL (with `kind`)")
    parser.add_argument("--teacher", default=None, help="teacher folder (default: COMPARE_DIR/teachers/nli/teacher)")
    parser.add_argument("--teacher-only", action="store_true",
                        help="only the teacher's fact share per early/* kind (needs --teacher; no student)")
    parser.add_argument("--pairs", type=int, default=16, help="pairs per eval kind")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.teacher_only != (args.compare_dir is None) or (args.teacher_only and not args.teacher):
        parser.error("give COMPARE_DIR, or --teacher-only with --teacher DIR")
    torch.set_num_threads(1)
    if args.teacher_only:
        res = teacher_shares(args.teacher, args.eval, pairs=args.pairs)
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        res = run_probe(Path(args.compare_dir), args.eval, pairs=args.pairs, seeds=seeds, teacher_dir=args.teacher)
    text = json.dumps(res, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
