"""Eval sets of prompts with N completions (some correct, some incorrect), scored per completion.

    cset = load_eval_set("allenai/reward-bench-2")         # a CompletionSet (layouts.py)
    cset = CompletionSet.from_pairs(pair_set)                # a pairwise EvalSet: 1 correct, 1 incorrect
    seqs, cut = encode_completions(cset, tokenizer, max_len=1024, template=None)
    scores = split_scores(scorer.score(seqs), cset)          # [(n_0,), (n_1,), ...] per prompt

A prompt's completions are stored correct first (`num_correct` of them), then incorrect, the
order RewardBench 2 uses (`chosen + rejected`, and the chosen one is at index 0). Every
completion of every prompt is encoded in one batched call and scored in one `RewardScorer`
pass (length-sorted batches), so a best-of-N set costs the same per sequence as a pairwise one.

Encoding goes through `idrm_ray.core.units.encode_pairs` with the caller's `template`, exactly
as pairs are encoded: completions are laid out as pairs (c0, c1), (c2, c3), ... (an odd last
one paired with itself, its copy dropped), so training, pairwise eval and best-of-N eval build
identical sequences for the same (prompt, response).

The benchmark rules (which per-prompt outcome, which section formula) live in
`rewardbench2.py`, `rmbench.py` and `rmb.py`; `bon_results.py` turns scores into metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from idrm_ray.core.types import PreferenceExample
from idrm_ray.data import LoadReport


@dataclass(frozen=True)
class Candidates:
    """One prompt and its completions: `completions[:num_correct]` are correct, the rest not."""

    prompt: str
    completions: tuple[str, ...]
    num_correct: int

    @property
    def n(self) -> int:
        return len(self.completions)


@dataclass
class CompletionSet:
    """Validated prompts with N completions; `groups[i]` is prompt i's subset / domain /
    category; `ids[i]` its id (RewardBench 2's Ties ids are "ref:N" / "tied:N")."""

    name: str
    layout: str  # rewardbench2 | rmbench | rmb-bon | a pairwise layout (from_pairs)
    source: str
    items: list[Candidates]
    groups: list[str | None]
    ids: list[str]
    report: LoadReport = field(repr=False)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_completions(self) -> int:
        return sum(c.n for c in self.items)

    @classmethod
    def from_pairs(cls, evals) -> CompletionSet:
        """A pairwise `layouts.EvalSet` as the special case of one correct and one incorrect."""
        items = [Candidates(e.prompt, (e.chosen, e.rejected), 1) for e in evals.examples]
        return cls(evals.name, evals.layout, evals.source, items, list(evals.groups), list(evals.ids), evals.report)


def as_pairs(items: Sequence[Candidates]) -> list[PreferenceExample]:
    """Completions laid out as pairs for `encode_pairs`: (c0, c1), (c2, c3), ..., (c_last, c_last)."""
    out = []
    for c in items:
        comp = list(c.completions) + ([c.completions[-1]] if c.n % 2 else [])
        out += [PreferenceExample(c.prompt, comp[k], comp[k + 1]) for k in range(0, len(comp), 2)]
    return out


def keep_index(items: Sequence[Candidates]) -> np.ndarray:
    """Positions, in the encoded pair layout, of the real completions (drops odd-count copies)."""
    keep, pos = [], 0
    for c in items:
        keep += range(pos, pos + c.n)
        pos += c.n + c.n % 2
    return np.asarray(keep, dtype=np.int64)


def encode_completions(
    cset: CompletionSet, tokenizer, *, max_len: int, template: tuple[str, str, str] | None = None
) -> tuple[list[np.ndarray], dict[str, int]]:
    """One id array per completion, prompts in order, each prompt's completions in order
    (`CompletionSet.n_completions` arrays); plus what `max_len` cut (counted per pair layout)."""
    from idrm_ray.core.scoring import encode_with_stats

    seqs, cut = encode_with_stats(as_pairs(cset.items), tokenizer, max_len=max_len, template=template)
    return [seqs[i] for i in keep_index(cset.items)], cut


def split_scores(flat: np.ndarray, cset: CompletionSet) -> list[np.ndarray]:
    """(n_completions,) rewards -> one (n_i,) array per prompt."""
    bounds = np.cumsum([0] + [c.n for c in cset.items])
    if bounds[-1] != len(flat):
        raise ValueError(f"{len(flat)} rewards for {bounds[-1]} completions")
    return [np.asarray(flat[lo:hi], dtype=np.float64) for lo, hi in zip(bounds[:-1], bounds[1:])]


# -- per-prompt rules shared by the benchmarks ------------------------------------------------


def first_is_max(scores: np.ndarray) -> float:
    """RewardBench 2's best-of-N outcome: 1/k when completion 0 is tied with k-1 others at
    the maximum (k = 1: it alone is the maximum), 0 when it is not the maximum."""
    scores = np.asarray(scores, dtype=np.float64)
    top = scores.max()
    return 1.0 / float(np.sum(scores == top)) if scores[0] == top else 0.0


def beats_all(scores: np.ndarray, num_correct: int = 1) -> float:
    """1 when every correct completion scores strictly above every incorrect one, else 0."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores[:num_correct].min() > scores[num_correct:].max())


def correct_margin(scores: np.ndarray, num_correct: int) -> float:
    """Worst correct minus best incorrect (> 0: every correct completion ranks first)."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores[:num_correct].min() - scores[num_correct:].max())
