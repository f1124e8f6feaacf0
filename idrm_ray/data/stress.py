"""Deterministic generator of attention-hacking stress sets (issue 14 §2), in the world of
facts of `idrm_ray.data.generate` (same subjects, verbs, objects, HH-style prompts).

    python -m idrm_ray.data.stress --out DIR [--seed 0] [--check]

writes `pref_train.jsonl`, `pref_eval.jsonl`, `nli_train.jsonl`, `nli_eval.jsonl`,
`nli_bind_train.jsonl`, `nli_bind_eval.jsonl` and `baselines.json`; same seed, same bytes. The committed copy under
`idrm_ray/data/bundled/stress/` is what `configs/study_real.yaml` trains on. Every preference
row has a `kind` field, so `idrm-ray compare` makes one table column per kind:

- `early/*` (the paper's first mechanism, forward-decaying attention): the first turn states
  3-4 facts; an acknowledgement and 1-2 turns of small talk follow; the last turn asks what one
  subject does. Both responses name an object of the context in the same template (the
  rejected one another fact's object, so only binding the subject to its fact decides), then
  a late spurious cue, then a closer drawn independently for each response. In `early/id` (and
  in training) the chosen carries " Tag: blue." and the rejected " Tag: gold."; in `early/ood`
  the cue is reversed. A model that reads the cue instead of the early fact scores ~1 in
  distribution and ~0 out of it.
- `copy/*` (the second mechanism, no inter-sequence attention): the prompt gives a list of 4-5
  things to repeat in order; the chosen repeats it, the rejected swaps two neighbours. The two
  responses have the same words and length; only comparing them with the prompt (or with each
  other) finds the difference. `copy/id` (and training) swaps the last two items, `copy/ood`
  the first two, where attention that favours late tokens does not look.

Training pairs are half `early/id`, half `copy/id`; eval pairs are drawn first, from their own
random stream, and no eval prompt repeats a training prompt. NLI pairs (the teacher's
fine-tune) are `generate.nli_row`s of the same world, balanced labels. `nli_bind_*.jsonl` (`nli_bind_row`) are
NLI pairs that need the binding `early/*` needs, for a teacher that attends to the decisive
fact: the premise is an `early/*` prompt (3-4 facts, small talk, the question about one
subject), the hypothesis an answer of the same templates; entailment names that subject's
object, contradiction another fact's object, neutral answers a question about a subject the
premise has no fact about (with one of its objects). Half the hypotheses carry a cue and a
closer drawn independently of the label. `baselines.json` holds
the length-only, last-token-only and spurious-cue baselines of every set
(`idrm_ray.data.shortcuts`), fitted on the training pairs.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from idrm_ray.data.generate import ACKS, INTROS, OBJECTS, SMALL_TALK, SUBJECTS, VERBS, Fact, _unique, cap, nli_row, \
    sample_facts, to_jsonl
from idrm_ray.data.shortcuts import chance_band, shortcut_baselines

STRESS_DIR = Path(__file__).resolve().parent / "bundled" / "stress"
DEFAULT_SEED = 0
SIZES = {"pref_train": 480, "per_eval_kind": 48, "nli_train": 1200, "nli_eval": 240,
         "nli_bind_train": 1200, "nli_bind_eval": 240}
NLI_SPLITS = ("nli_train", "nli_eval", "nli_bind_train", "nli_bind_eval")
EVAL_KINDS = ("copy/id", "copy/ood", "early/id", "early/ood")
CUES = (" Tag: blue.", " Tag: gold.")  # chosen's cue in training, rejected's; same length
CLOSERS = [" Thanks!", " Bye.", " Hope this helps.", " Cheers.", " Okay.", " Good luck."]
ANSWERS = [lambda f, o: f" {cap(f.subj)} {VERBS[f.verb][0]} {o}.", lambda f, o: f" The answer is {o}.",
           lambda f, o: f" According to the context, {f.subj} {VERBS[f.verb][0]} {o}.", lambda f, o: f" {cap(o)}."]
THINGS = OBJECTS + SUBJECTS
LIST_INTROS = ["My list:", "Here is a list:", "Remember these, in order:", "Items:"]
LIST_ASKS = ["Please repeat the list in the same order.", "Can you say it back exactly?", "Repeat it, please."]
LEADS = ["", " Sure:", " Here it is:", " The list is:"]


def early_prompt(rng: random.Random, facts: list[Fact], question: str) -> str:
    """The facts in the first turn, far from the response; the question in the last."""
    turns = [("Human", f"{rng.choice(INTROS)} " + " ".join(cap(f.clause()) + "." for f in facts)),
             ("Assistant", rng.choice(ACKS))]
    for talk, reply in rng.sample(SMALL_TALK, rng.choice((1, 2))):
        turns += [("Human", talk), ("Assistant", reply)]
    turns.append(("Human", question))
    return "".join(f"\n\n{role}: {text}" for role, text in turns) + "\n\nAssistant:"


def early_row(rng: random.Random, *, reverse_cue: bool) -> dict:
    facts = sample_facts(rng, rng.choice((3, 4)), mod_p=0.0)
    target = rng.choice(facts)  # any position: "first-mentioned wins" is no shortcut
    wrong = rng.choice([f for f in facts if f is not target]).obj
    answer = rng.choice(ANSWERS)
    good_cue, bad_cue = CUES[::-1] if reverse_cue else CUES
    question = f"What does {target.subj} {VERBS[target.verb][1]}?"
    return {"prompt": early_prompt(rng, facts, question),
            "chosen": answer(target, target.obj) + good_cue + rng.choice(CLOSERS),
            "rejected": answer(target, wrong) + bad_cue + rng.choice(CLOSERS),
            "kind": "early/ood" if reverse_cue else "early/id"}


def nli_bind_row(rng: random.Random, label: int) -> dict:
    """An NLI pair decided by binding the question's subject to its fact (0 entailment, 1 neutral,
    2 contradiction); see the module docstring."""
    facts = sample_facts(rng, rng.choice((3, 4)), mod_p=0.0)
    target = rng.choice(facts)
    obj = target.obj if label == 0 else rng.choice([f for f in facts if f is not target]).obj
    if label == 1:  # the question's subject has no fact: the premise does not say
        absent = rng.choice([s for s in SUBJECTS if s not in {f.subj for f in facts}])
        target, obj = Fact(absent, rng.randrange(len(VERBS)), target.obj), rng.choice(facts).obj
    question = f"What does {target.subj} {VERBS[target.verb][1]}?"
    tail = rng.choice(CUES) + rng.choice(CLOSERS) if rng.random() < 0.5 else ""
    premise = early_prompt(rng, facts, question)
    return {"premise": premise, "hypothesis": rng.choice(ANSWERS)(target, obj).strip() + tail, "label": label}


def copy_row(rng: random.Random, *, swap_first: bool) -> dict:
    items = rng.sample(THINGS, rng.choice((4, 5)))
    i = 0 if swap_first else len(items) - 2
    swapped = items[:i] + [items[i + 1], items[i]] + items[i + 2:]
    prompt = f"\n\nHuman: {rng.choice(LIST_INTROS)} {', '.join(items)}. {rng.choice(LIST_ASKS)}\n\nAssistant:"
    lead = rng.choice(LEADS)
    return {"prompt": prompt, "chosen": f"{lead} {cap(', '.join(items))}.",
            "rejected": f"{lead} {cap(', '.join(swapped))}.", "kind": "copy/ood" if swap_first else "copy/id"}


MAKERS = {"early/id": lambda rng: early_row(rng, reverse_cue=False), "early/ood": lambda rng: early_row(rng, reverse_cue=True),
          "copy/id": lambda rng: copy_row(rng, swap_first=False), "copy/ood": lambda rng: copy_row(rng, swap_first=True)}


def generate_rows(*, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """{"pref_train", "pref_eval", "nli_train", "nli_eval", "nli_bind_train", "nli_bind_eval"}: lists of dicts."""
    sizes = {**SIZES, **(sizes or {})}
    prompt = lambda r: r["prompt"]  # noqa: E731
    rng = random.Random(seed * 1000 + 501)
    taken: set = set()
    pref_eval = []
    for kind in EVAL_KINDS:
        rows = _unique(lambda i, k=kind: MAKERS[k](rng), sizes["per_eval_kind"], prompt, taken)
        taken |= {r["prompt"] for r in rows}
        pref_eval += rows
    rng.shuffle(pref_eval)
    rng = random.Random(seed * 1000 + 500)
    pref_train = _unique(lambda i: MAKERS["early/id" if i % 2 else "copy/id"](rng), sizes["pref_train"], prompt, taken)
    rng.shuffle(pref_train)
    out = {"pref_train": pref_train, "pref_eval": pref_eval}
    out.update(_nli_splits(nli_row, "nli", seed * 1000 + 510, sizes))
    out.update(_nli_splits(nli_bind_row, "nli_bind", seed * 1000 + 520, sizes))
    return {name: out[name] for name in ("pref_train", "pref_eval", *NLI_SPLITS)}


def _nli_splits(make_row, prefix: str, stream: int, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """`<prefix>_eval` (random stream `stream + 1`) and `<prefix>_train` (stream `stream`, no
    (premise, hypothesis) of the eval split), balanced labels, both shuffled by the train stream."""
    def key(r):
        return r["premise"], r["hypothesis"]

    rng = random.Random(stream + 1)
    evals = _unique(lambda i: make_row(rng, i % 3), sizes[f"{prefix}_eval"], key, set())
    rng = random.Random(stream)
    train = _unique(lambda i: make_row(rng, i % 3), sizes[f"{prefix}_train"], key, {key(r) for r in evals})
    for rows in (evals, train):
        rng.shuffle(rows)
    return {f"{prefix}_eval": evals, f"{prefix}_train": train}


def baselines(rows: dict[str, list[dict]]) -> dict:
    """The shortcut baselines of the training pairs and of each eval kind, with the chance band
    (`shortcuts.chance_band`) each set's size allows."""
    sets = {"train": rows["pref_train"]}
    sets |= {k: [r for r in rows["pref_eval"] if r["kind"] == k] for k in EVAL_KINDS}
    out = shortcut_baselines(rows["pref_train"], sets, cue=CUES[0])
    for name, row in out.items():
        row["chance_band"] = chance_band(row["pairs"])
    return out


def write_sets(out_dir: str | Path, *, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = rendered(seed=seed, sizes=sizes)
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    return files


def rendered(*, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict[str, bytes]:
    rows = generate_rows(seed=seed, sizes=sizes)
    files = {f"{name}.jsonl": to_jsonl(r) for name, r in rows.items()}
    files["baselines.json"] = (json.dumps(baselines(rows), indent=2, sort_keys=True) + "\n").encode()
    return files


def format_baselines(table: dict) -> str:
    lines = [f"{'set':<11}{'pairs':>6}{'length':>8}{'last tok':>10}{'spurious':>10}{'±chance':>9}"]
    for name, r in table.items():
        lines.append(f"{name:<11}{r['pairs']:>6}{r['length']:>8.3f}{r['last_token']:>10.3f}"
                     f"{r['spurious']:>10.3f}{r['chance_band']:>9.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the attention-hacking stress sets and their NLI data.")
    parser.add_argument("--out", default=str(STRESS_DIR), help="output folder (default: the package's bundled/stress)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        out = Path(args.out)
        stale = [n for n, data in rendered(seed=args.seed).items()
                 if not (out / n).exists() or (out / n).read_bytes() != data]
        print("up to date" if not stale else f"stale: {', '.join(stale)}")
        return 1 if stale else 0
    files = write_sets(args.out, seed=args.seed)
    for name, data in files.items():
        print(f"{name}: {len(data.splitlines())} lines -> {Path(args.out) / name}")
    print(format_baselines(json.loads(files["baselines.json"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
