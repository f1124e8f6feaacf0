"""PAR reference rewards, precomputed once (METHOD.md §10; the shaping is in `par_reward.py`).

Input rows: {"prompt": ..., "references": [y_ref_1, ...]} with the references sampled from
the SFT policy; output rows add "ref_rewards": [r(x, y_ref_k), ...] scored with the same
scorer settings as the server (`idrm-ray serve --score-references IN --out OUT`), so
`reward_func` never scores references during PPO. The prompt must be the string OpenRLHF
passes as `prompts` (after its input template / chat template).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from idrm_ray.serve.par_reward import par_reward, read_references

__all__ = ["par_reward", "read_references", "score_references"]


def score_references(
    refs_in: str | os.PathLike,
    refs_out: str | os.PathLike,
    score: Callable[[Sequence[str], Sequence[str]], object],
    *,
    suffix: str = "",
    prompts_per_call: int = 16,
) -> int:
    """Write `refs_out` with `ref_rewards` for every prompt; returns the number of prompts.
    `score(queries, prompts)` returns an object with `.rewards` (a `RewardScorer.score`)."""
    rows = list(read_references(refs_in).items())
    out = Path(refs_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, len(rows), prompts_per_call):
            chunk = rows[start : start + prompts_per_call]
            queries = [p + ref + suffix for p, row in chunk for ref in row["references"]]
            prompts = [p for p, row in chunk for _ in row["references"]]
            rewards = list(score(queries, prompts).rewards)
            for prompt, row in chunk:
                k = len(row["references"])
                record = {"prompt": prompt, "references": row["references"], "ref_rewards": rewards[:k]}
                rewards = rewards[k:]
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)  # never leave a half-written file where the PPO job looks
    return len(rows)
