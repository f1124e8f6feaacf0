"""Deterministic generator of the bundled data of the embedded default.

    python -m idrm_ray.data.generate --out DIR [--seed 0] [--check]

writes `pref_train.jsonl`, `pref_eval.jsonl` (generic format, plus a `kind` field) and
`nli_train.jsonl`, `nli_eval.jsonl`. Same seed, same bytes (Python's `random.Random`
with an int seed; no set or dict ordering leaks into the output). `--check` compares
with what is already in DIR instead of writing. The committed files under
`idrm_ray/data/bundled/` are `generate_bundled()` with the defaults.

Preference pairs are HH-style prompts ("\\n\\nHuman: ... \\n\\nAssistant:") whose first turn
states 1-3 facts (weights 6:3:1) "<subject> <verb> <object>" (distinct subjects and
objects, optional modifier such as "in the café"); a question follows, in the same turn
or 1-2 turns later (multi-turn, about one in seven). Judging needs the early context and a token-level
comparison of the two responses, which mostly share one template:

- `what` (40%): "What does the cat like?" chosen names the context's object; rejected
  names another object (a quarter of the time a distractor fact's object, so binding
  matters),
  or negates the fact; 10% ask about an absent subject, where the chosen says the
  context does not say and the rejected invents an answer.
- `who` (25%): "Who likes the ball?" with a wrong subject in the rejected.
- `yesno` (25%): "Does the cat like the ball?", half yes and half no. Long answers
  state a fact, the chosen the context's ("No, the cat likes the house."), the rejected
  one the context does not hold ("Yes, the cat likes the ball."); short answers (20%,
  "Yes." / "No.") hinge on the polarity alone, so negation sits in chosen and rejected
  alike.
- `style` (10%): both state the right fact, the chosen politely, the rejected rudely.

`margin` is a synthetic rating gap: 1 style, 2 wrong entity, 3 contradiction.
NLI pairs (exactly balanced labels 0 entailment, 1 neutral, 2 contradiction) use the
same words: entailment restates (passive, modifier dropped, one of two facts) or
generalises ("an animal", "something"); contradiction negates or changes the object
(convention of this world: one object per subject and verb); neutral adds a modifier,
an unrelated fact, or another verb. 15% of premises are negated. Eval rows never
repeat a train prompt (or premise+hypothesis).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEFAULT_SIZES = {"pref_train": 6000, "pref_eval": 300, "nli_train": 3000, "nli_eval": 300}
DEFAULT_SEED = 0

# Words of `idrm_ray.core.tiny.tiny_corpus` (kept in sync by hand; tiny.py imports torch).
SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the robot", "a child", "the doctor"]
VERBS = [  # (3rd person, base, participle)
    ("likes", "like", "liked"), ("sees", "see", "seen"), ("helps", "help", "helped"), ("avoids", "avoid", "avoided"),
    ("answers", "answer", "answered"), ("finds", "find", "found"), ("builds", "build", "built"), ("reads", "read", "read"),
]
OBJECTS = ["the ball", "a book", "the answer", "an apple", "the house", "a letter", "the code", "some music"]
MODIFIERS = [" today", " again", " at night", " with care", " in the café", " in 日本", " with a naïve smile"]
GENERAL = {"the cat": "an animal", "a dog": "an animal", "my friend": "a person", "the teacher": "a person",
           "our team": "a group", "the robot": "a machine", "a child": "a person", "the doctor": "a person"}
INTROS = ["Context:", "Read this:", "Here is a short story:", "Facts:", "Remember this:"]
ACKS = ["Okay, I have read it.", "Got it.", "Sure, go on.", "Thanks, I will remember that."]
SMALL_TALK = [("Is it a nice day?", "Yes, it is a nice day 🙂"), ("Can you count to three?", "One, two, three."),
              ("Do you like stories?", "I do, they are fun…"), ("Are you ready?", "Yes, I am ready.")]
POLITE = (["Sure, happy to help!", "Of course!", "Good question!", "Thanks for asking."],
          ["I hope this helps 🙂", "Have a nice day.", "", "Let me know if you need more."])
RUDE = (["Ugh, fine, if you must.", "Whatever.", "Seriously? Pay attention.", "Fine."],
        ["Stop asking me this.", "Read it yourself next time.", "", "Do not bother me again."])


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Fact:
    subj: str
    verb: int  # index into VERBS
    obj: str
    mod: str = ""

    def clause(self, *, mod: bool = True) -> str:
        return f"{self.subj} {VERBS[self.verb][0]} {self.obj}{self.mod if mod else ''}"

    def negated(self) -> str:
        return f"{self.subj} does not {VERBS[self.verb][1]} {self.obj}"

    def passive(self, *, negate: bool = False) -> str:
        return f"{self.obj} is {'not ' if negate else ''}{VERBS[self.verb][2]} by {self.subj}"


def sample_facts(rng: random.Random, k: int, *, mod_p: float = 0.3) -> list[Fact]:
    """k facts with distinct subjects and distinct objects, so every question is unambiguous."""
    subjects, objects = rng.sample(SUBJECTS, k), rng.sample(OBJECTS, k)
    return [Fact(s, rng.randrange(len(VERBS)), o, rng.choice(MODIFIERS) if rng.random() < mod_p else "")
            for s, o in zip(subjects, objects)]


def hh_prompt(rng: random.Random, facts: list[Fact], question: str) -> str:
    """Single-turn "\\n\\nHuman: <context> <question>\\n\\nAssistant:", or multi-turn with the
    context in the first turn (far from the response) and the question last."""
    context = f"{rng.choice(INTROS)} " + " ".join(cap(f.clause()) + "." for f in facts)
    if rng.random() < 0.15:
        turns = [("Human", context), ("Assistant", rng.choice(ACKS))]
        if rng.random() < 0.5:
            talk, reply = rng.choice(SMALL_TALK)
            turns += [("Human", talk), ("Assistant", reply)]
        turns.append(("Human", question))
    else:
        sep = rng.choice([" ", " Question: "])
        turns = [("Human", context + sep + question)]
    return "".join(f"\n\n{role}: {text}" for role, text in turns) + "\n\nAssistant:"


def _other(rng: random.Random, pool: list[str], avoid: str, distractors: list[str]) -> str:
    """A wrong entity: a quarter of the time one that appears elsewhere in the context."""
    if distractors and rng.random() < 0.25:
        return rng.choice(distractors)
    return rng.choice([x for x in pool if x != avoid and x not in distractors])


def _what(rng: random.Random, facts: list[Fact], t: Fact) -> tuple[str, str, str, float]:
    verb, base = VERBS[t.verb][0], VERBS[t.verb][1]
    roll = rng.random()
    if roll < 0.1:  # unanswerable: the subject is not in the context
        subj = rng.choice([s for s in SUBJECTS if s not in {f.subj for f in facts}])
        return (f"What does {subj} {base}?", f" The context does not say what {subj} {verb}.",
                f" {cap(subj)} {verb} {rng.choice(OBJECTS)}.", 2.0)
    question = f"What does {t.subj} {base}?"
    mod = t.mod if rng.random() < 0.5 else ""
    if roll < 0.2:
        return question, f" {cap(t.subj)} {verb} {t.obj}{mod}.", f" {cap(t.subj)} does not {base} {t.obj}{mod}.", 3.0
    wrong = _other(rng, OBJECTS, t.obj, [f.obj for f in facts if f is not t])
    forms = [lambda o: f" {cap(t.subj)} {verb} {o}{mod}.", lambda o: f" The answer is {o}.",
             lambda o: f" According to the context, {t.subj} {verb} {o}{mod}.", lambda o: f" {cap(o)}.",
             lambda o: f" I think {t.subj} {verb} {o}."]
    good = rng.choice(forms)
    bad = good if rng.random() < 0.8 else rng.choice(forms)
    return question, good(t.obj), bad(wrong), 2.0


def _who(rng: random.Random, facts: list[Fact], t: Fact) -> tuple[str, str, str, float]:
    verb = VERBS[t.verb][0]
    wrong = _other(rng, SUBJECTS, t.subj, [f.subj for f in facts if f is not t])
    forms = [lambda s: f" {cap(s)} {verb} {t.obj}.", lambda s: f" It is {s}.", lambda s: f" {cap(s)} does.",
             lambda s: f" The answer is {s}."]
    good = rng.choice(forms)
    bad = good if rng.random() < 0.8 else rng.choice(forms)
    return f"Who {verb} {t.obj}?", good(t.subj), bad(wrong), 2.0


def _yesno(rng: random.Random, facts: list[Fact], t: Fact) -> tuple[str, str, str, float]:
    verb, base = VERBS[t.verb][0], VERBS[t.verb][1]
    yes = rng.random() < 0.5
    obj = t.obj if yes else _other(rng, OBJECTS, t.obj, [f.obj for f in facts if f is not t])
    short = rng.random() < 0.2
    affirm = " Yes." if short else f" Yes, {t.subj} {verb} {obj}."
    deny = " No." if short else f" No, {t.subj} does not {base} {obj}."
    good, bad = (affirm, deny) if yes else (deny, affirm)
    if not short:  # the chosen states the context's fact, the rejected one it does not hold
        wrong = _other(rng, OBJECTS, t.obj, [f.obj for f in facts if f is not t])
        right = f" {t.subj} {verb} {t.obj}."
        good, bad = (" Yes," + right, f" No, {t.subj} {verb} {wrong}.") if yes else (" No," + right, affirm)
    return f"Does {t.subj} {base} {obj}?", good, bad, 3.0


def _style(rng: random.Random, facts: list[Fact], t: Fact) -> tuple[str, str, str, float]:
    answer = cap(t.clause(mod=rng.random() < 0.5)) + "."

    def wrap(openers: list[str], closers: list[str]) -> str:
        return " " + " ".join(x for x in (rng.choice(openers), answer, rng.choice(closers)) if x)

    question = rng.choice([f"Please tell me what {t.subj} {VERBS[t.verb][0]}.", f"What does {t.subj} {VERBS[t.verb][1]}?"])
    return question, wrap(*POLITE), wrap(*RUDE), 1.0


KINDS = [("what", 0.40, _what), ("who", 0.25, _who), ("yesno", 0.25, _yesno), ("style", 0.10, _style)]


def preference_row(rng: random.Random) -> dict:
    kind, _, make = rng.choices(KINDS, weights=[w for _, w, _ in KINDS])[0]
    facts = sample_facts(rng, rng.choices((1, 2, 3), weights=(6, 3, 1))[0])
    question, chosen, rejected, margin = make(rng, facts, rng.choice(facts))
    return {"prompt": hh_prompt(rng, facts, question), "chosen": chosen, "rejected": rejected,
            "margin": margin, "kind": kind}


def _nli_premise(rng: random.Random) -> tuple[str, list[Fact], bool]:
    facts, roll = sample_facts(rng, 2, mod_p=0.35), rng.random()
    if roll < 0.15:
        return cap(facts[0].negated()) + ".", facts[:1], True
    if roll < 0.40:
        return cap(facts[0].clause()) + " and " + facts[1].clause() + ".", facts, False
    return cap(facts[0].clause()) + ".", facts[:1], False


def _nli_hypothesis(rng: random.Random, facts: list[Fact], negated: bool, label: int) -> str:
    f, outside = facts[0], sample_facts(rng, 1)[0]
    while outside.subj in {x.subj for x in facts}:
        outside = sample_facts(rng, 1)[0]
    other_obj = rng.choice([o for o in OBJECTS if o not in {x.obj for x in facts}])
    if negated:
        options = {0: [f.passive(negate=True)], 1: [outside.clause()], 2: [f.clause(mod=False), f.passive()]}
    else:
        options = {
            0: [f.passive(), f"{GENERAL[f.subj]} {VERBS[f.verb][0]} {f.obj}",
                f"{f.subj} {VERBS[f.verb][0]} something"]
               + ([f.clause(mod=False)] if f.mod or len(facts) > 1 else []) + ([facts[1].clause()] if len(facts) > 1 else []),
            1: [outside.clause(), f"{f.subj} {VERBS[(f.verb + rng.randrange(1, len(VERBS))) % len(VERBS)][0]} {other_obj}"]
               + ([f.clause(mod=False) + rng.choice(MODIFIERS)] if not f.mod else []),
            2: [f.negated(), f"{f.subj} never {VERBS[f.verb][0]} {f.obj}", f"nobody {VERBS[f.verb][0]} {f.obj}",
                f"{f.subj} {VERBS[f.verb][0]} {other_obj}"],
        }
    return cap(rng.choice(options[label])) + "."


def nli_row(rng: random.Random, label: int) -> dict:
    premise, facts, negated = _nli_premise(rng)
    return {"premise": premise, "hypothesis": _nli_hypothesis(rng, facts, negated, label), "label": label}


def _unique(make, n: int, key, exclude: set) -> list[dict]:
    rows, seen = [], set(exclude)
    for _ in range(n * 50):
        if len(rows) == n:
            return rows
        row = make(len(rows))
        if key(row) not in seen:
            seen.add(key(row))
            rows.append(row)
    raise RuntimeError(f"could not draw {n} distinct rows")  # only for absurd sizes


def generate_rows(*, seed: int = DEFAULT_SEED, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """All four splits as lists of dicts. Eval splits are drawn first (their own streams)
    and excluded from the train splits."""
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    out = {}
    for task, key in (("pref", lambda r: r["prompt"]), ("nli", lambda r: (r["premise"], r["hypothesis"]))):
        taken: set = set()
        for split, offset in (("eval", 1), ("train", 0)):
            rng = random.Random(seed * 1000 + offset * 10 + (task == "nli"))
            make = (lambda i: preference_row(rng)) if task == "pref" else (lambda i: nli_row(rng, i % 3))
            rows = _unique(make, sizes[f"{task}_{split}"], key, taken)
            taken |= {key(r) for r in rows}
            rng.shuffle(rows)
            out[f"{task}_{split}"] = rows
    return {name: out[name] for name in DEFAULT_SIZES}


def to_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def generate_bundled(out_dir: str | Path = BUNDLED_DIR, *, seed: int = DEFAULT_SEED,
                     sizes: dict[str, int] | None = None) -> dict[str, Path]:
    """Write the four JSONL files into `out_dir`; returns {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in generate_rows(seed=seed, sizes=sizes).items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_bytes(to_jsonl(rows))
    return paths


def bundled_path(name: str) -> Path:
    """Path of a bundled file: "pref_train", "pref_eval", "nli_train" or "nli_eval"."""
    if name not in DEFAULT_SIZES:
        raise ValueError(f"unknown bundled file {name!r}; use one of {', '.join(DEFAULT_SIZES)}")
    return BUNDLED_DIR / f"{name}.jsonl"


def tokenizer_corpus() -> list[str]:
    """Every text of the bundled files (prompts, responses, premises, hypotheses), in file
    order, for training tiny tokenizers on the same text the models will read. Falls back
    to an in-memory generation if the bundled files are absent."""
    if all(bundled_path(n).exists() for n in DEFAULT_SIZES):
        splits = {n: [json.loads(line) for line in bundled_path(n).read_text("utf-8").splitlines()] for n in DEFAULT_SIZES}
    else:
        splits = generate_rows()
    fields = ("prompt", "chosen", "rejected", "premise", "hypothesis")
    return [row[k] for rows in splits.values() for row in rows for k in fields if k in row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the bundled ID-RM preference and NLI data.")
    parser.add_argument("--out", default=str(BUNDLED_DIR), help="output folder (default: the package's bundled/)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        paths = {n: Path(args.out) / f"{n}.jsonl" for n in DEFAULT_SIZES}
        stale = [n for n, rows in generate_rows(seed=args.seed).items()
                 if not paths[n].exists() or paths[n].read_bytes() != to_jsonl(rows)]
        print("up to date" if not stale else f"stale: {', '.join(stale)}")
        return 1 if stale else 0
    for name, path in generate_bundled(args.out, seed=args.seed).items():
        print(f"{name}: {sum(1 for _ in path.open(encoding='utf-8'))} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
