"""Trivial-shortcut baselines of a preference set: how far a rule that never reads the
meaning gets. A stress set is only a test of attention if these stay near chance (or, for
the planted spurious feature, at 1 in distribution and 0 out of it, by construction).

- `length`: prefer the longer response (in characters), or the shorter one if that is the
  better direction on the training pairs.
- `last_token`: score each response by its last whitespace token alone (the token a reward
  model's head reads), with log-odds counted on the training pairs (add-one smoothing).
- `spurious`: prefer the response that carries the training set's chosen-side cue; 0.5 when
  both or neither carry it.

Every rule scores a tie 0.5. Pure Python; rows are dicts with `chosen` and `rejected`.
"""
from __future__ import annotations

import math
from collections import Counter


def _vote(a: float, b: float) -> float:
    return 1.0 if a > b else 0.0 if a < b else 0.5


def _last(text: str) -> str:
    words = text.split()
    return words[-1] if words else ""


def fit_length(train: list[dict]) -> int:
    """+1: longer wins on the training pairs at least as often as shorter; else -1."""
    score = sum(_vote(len(r["chosen"]), len(r["rejected"])) for r in train)
    return 1 if score >= len(train) / 2 else -1


def fit_last_token(train: list[dict]) -> dict[str, float]:
    good, bad = Counter(_last(r["chosen"]) for r in train), Counter(_last(r["rejected"]) for r in train)
    return {w: math.log((good[w] + 1) / (bad[w] + 1)) for w in good.keys() | bad.keys()}


def length_accuracy(rows: list[dict], sign: int) -> float:
    return _mean(_vote(sign * len(r["chosen"]), sign * len(r["rejected"])) for r in rows)


def last_token_accuracy(rows: list[dict], odds: dict[str, float]) -> float:
    return _mean(_vote(odds.get(_last(r["chosen"]), 0.0), odds.get(_last(r["rejected"]), 0.0)) for r in rows)


def spurious_accuracy(rows: list[dict], cue: str) -> float:
    return _mean(_vote(cue in r["chosen"], cue in r["rejected"]) for r in rows)


def shortcut_baselines(train: list[dict], sets: dict[str, list[dict]], *, cue: str | None = None) -> dict:
    """{set name: {"pairs", "length", "last_token"[, "spurious"]}}, rules fitted on `train`.
    A set that is `train` itself is scored two-fold (fitted on one half, scored on the
    other), so the fitted rules are not graded on the pairs they counted."""
    out = {}
    for name, rows in sets.items():
        halves = [(rows[1::2], rows[0::2]), (rows[0::2], rows[1::2])] if rows is train else [(train, rows)]
        row: dict = {"pairs": len(rows), "length": 0.0, "last_token": 0.0}
        for fit, scored in halves:
            weight = len(scored) / len(rows) if rows else 0.0
            row["length"] += weight * length_accuracy(scored, fit_length(fit))
            row["last_token"] += weight * last_token_accuracy(scored, fit_last_token(fit))
        if cue is not None:
            row["spurious"] = spurious_accuracy(rows, cue)
        out[name] = row
    return out


def chance_band(pairs: int, *, z: float = 3.29) -> float:
    """Half-width of the band around 0.5 that an accuracy of a rule with no signal leaves with
    probability about 1e-3 (two-sided, z = 3.29): z * 0.5 / sqrt(n), the binomial standard
    error at p = 1/2. Ties (0.5 per pair) only narrow the spread, so the band is conservative."""
    return z * 0.5 / math.sqrt(max(pairs, 1))


def _mean(values) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else math.nan
