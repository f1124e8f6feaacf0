"""Which tokens of a prompt+response sequence survive a length budget, and what that
does to the common units (METHOD.md §6, "Truncation" [D]).

The prompt is cut from the LEFT (the latest turns of a dialogue matter most for the
reply) and the response from the RIGHT (its opening is what the preference is about).
Non-content tokens (specials, chat-template pieces) are overhead: always kept, and
the caller subtracts them from the budget. Pure numpy, no tokenizer here.
"""
from __future__ import annotations

import numpy as np

from idrm_ray.core.types import AlignmentStats


def keep_counts(n_prompt: int, n_response: int, budget: int) -> tuple[int, int]:
    """How many prompt and response tokens to keep within `budget` content tokens.

    The prompt gets at least half the budget (or all of it if shorter) and whatever
    the response leaves unused; the response gets the rest:
        p_keep = min(P, max(H // 2, H - R)),  r_keep = min(R, H - p_keep).
    Both halves fit untouched whenever P + R <= H.
    """
    budget = max(int(budget), 0)
    p_keep = min(n_prompt, max(budget // 2, budget - n_response))
    r_keep = min(n_response, budget - p_keep)
    return p_keep, r_keep


def window_keep(is_content: np.ndarray, is_prompt: np.ndarray, *, budget: int) -> np.ndarray:
    """(n,) bool mask of the tokens kept: all non-content tokens, the LAST `p_keep`
    prompt tokens and the FIRST `r_keep` response tokens (`keep_counts`).

    `is_content` (n,) bool marks tokens that hold prompt/response characters;
    `is_prompt` (n,) bool marks those that start inside the prompt (a token
    straddling the prompt/response boundary counts as prompt). Tokens are in
    sequence order, so "last" and "first" are by position.
    """
    is_content = np.asarray(is_content, dtype=bool)
    is_prompt = np.asarray(is_prompt, dtype=bool)
    prompt_idx = np.flatnonzero(is_content & is_prompt)
    response_idx = np.flatnonzero(is_content & ~is_prompt)
    p_keep, r_keep = keep_counts(len(prompt_idx), len(response_idx), budget)
    keep = ~is_content
    keep[prompt_idx[len(prompt_idx) - p_keep :]] = True
    keep[response_idx[:r_keep]] = True
    return keep


def content_budget(max_len: int, num_overhead: int, *, what: str) -> int:
    """Content tokens allowed once the overhead (specials, template) is paid.
    A template longer than the window is a configuration error, not a truncation."""
    budget = int(max_len) - int(num_overhead)
    if budget < 0:
        raise ValueError(
            f"{what}: max length {max_len} is smaller than its {num_overhead} special/template tokens"
        )
    return budget


def _unit_counts(unit: np.ndarray, keep: np.ndarray, num_units: int) -> np.ndarray:
    return np.bincount(unit[keep & (unit >= 0)], minlength=num_units)  # (U,) tokens per unit


def window_units(
    s_unit: np.ndarray, s_keep: np.ndarray, t_unit: np.ndarray, t_keep: np.ndarray, *, num_units: int
) -> tuple[AlignmentStats, np.ndarray, np.ndarray]:
    """Units of one half after both windows are cut. `*_unit` (n,) token->unit (-1 none),
    `*_keep` (n,) bool. Returns the half's counts, `valid` (U,) (>=1 kept student AND
    >=1 kept teacher token: only these enter L_ID) and `present` (U,) (a kept token in
    at least one window: the rest appear in neither forward)."""
    all_s, all_t = np.ones_like(s_keep), np.ones_like(t_keep)
    full_s, kept_s = _unit_counts(s_unit, all_s, num_units), _unit_counts(s_unit, s_keep, num_units)
    full_t, kept_t = _unit_counts(t_unit, all_t, num_units), _unit_counts(t_unit, t_keep, num_units)
    valid = (kept_s > 0) & (kept_t > 0)
    stats = AlignmentStats(
        units=num_units,
        units_valid=int(valid.sum()),
        units_outside_teacher=int(((full_t > 0) & (kept_t == 0)).sum()),
        units_outside_student=int(((full_s > 0) & (kept_s == 0)).sum()),
        teacher_tokens_truncated=int((~t_keep).sum()),
        student_tokens_truncated=int((~s_keep).sum()),
    )
    return stats, valid, (kept_s > 0) | (kept_t > 0)


MAP_UNITS = ("teacher_window", "either_window")


def units_for_maps(valid: np.ndarray, present: np.ndarray, rule: str) -> np.ndarray:
    """(U,) bool: the units a pair's maps are built over (DESIGN.md decision 8).

    "teacher_window" (default): the valid units, all inside the teacher's window, so the
    maps scale with the teacher's window; tokens of the other units (student tokens past
    the teacher's window, whitespace the teacher drops) get unit -1: they stay in the
    forwards but not in L_ID, exactly as an invalid unit's tokens did.
    "either_window": the former rule, every unit with a kept token in either window
    (invalid units shipped as zero rows/columns; kept for the byte comparison)."""
    if rule not in MAP_UNITS:
        raise ValueError(f"map_units must be one of {MAP_UNITS}, got {rule!r}")
    return valid if rule == "teacher_window" else present


def renumber_units(unit: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Token->unit after dropping the units where `present` (U,) is False; tokens of a
    dropped unit and -1 map to -1."""
    present = np.asarray(present, dtype=bool)
    # (U + 1,) old unit -> new unit; the trailing -1 is what index -1 (no unit) reads.
    new_index = np.append(np.where(present, np.cumsum(present) - 1, -1), -1)
    return new_index[unit]
