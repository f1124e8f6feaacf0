"""Scoring queries with a saved reward model, the way training read them (torch only).

OpenRLHF sends `query` = the decoded prompt + response tokens (special tokens kept, so a
vLLM response that stopped at EOS ends with the EOS text) and `prompts` = the prompt
string. Training read `prefix + prompt + separator + response + suffix` tokenized with the
tokenizer's specials (BOS), EOS appended, the prompt cut from the left and the response
from the right (`core/truncation.py`). The scorer mirrors that on the query: leading
specials unless the text already has them, EOS unless it ends with it, and the same
window when a query is too long (the prompt/response split comes from `prompts`).
Queries are sorted by length before batching, so padding stays small.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from idrm_ray.core.devices import resolve_device, resolve_dtype
from idrm_ray.core.reward_model import load_reward_model, normalize, read_metadata, reward_stats
from idrm_ray.core.scoring import RewardScorer as IdsScorer
from idrm_ray.core.truncation import content_budget, window_keep

__all__ = ["QueryNotAsTrained", "QueryTooLong", "RewardScorer", "Scores", "all_finite", "release_freed_memory"]

class QueryTooLong(ValueError):
    """A query whose special tokens alone exceed `max_len` (nothing sensible to keep)."""


class QueryNotAsTrained(ValueError):
    """A query rendered differently from the model's training text: chat-templated for a model
    trained on raw prompt + response, or raw for one trained with its chat template
    (DESIGN.md decision 9; refused, since the reward of such text is meaningless)."""


@dataclass(frozen=True)
class Scores:
    rewards: list[float]  # what clients get: normalised when the scorer normalises
    raw: list[float]  # r(x, y) straight from the value head

    def split(self, sizes: Sequence[int]) -> list["Scores"]:
        out, start = [], 0
        for n in sizes:
            out.append(Scores(self.rewards[start : start + n], self.raw[start : start + n]))
            start += n
        return out


class RewardScorer:
    """`score(queries, prompts)` -> `Scores`; thread-safe (one forward at a time)."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_len: int = 2048,
        batch_size: int = 16,
        normalize_rewards: bool = False,
        special_tokens: str = "auto",
        append_eos: bool = True,
        chat_template: bool | None = None,
    ):
        if tokenizer.eos_token_id is None and append_eos:
            raise ValueError("the tokenizer has no EOS token, so append_eos cannot work: set append_eos=false")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_len, self.batch_size = int(max_len), int(batch_size)
        self.normalize_rewards = normalize_rewards
        self.stats = reward_stats(model)
        self.special_tokens = special_tokens
        self.append_eos = append_eos
        self.chat_template = chat_template
        self.turn_marker = _turn_marker(tokenizer) if chat_template is not None else None
        self.lead = [] if special_tokens == "never" else list(tokenizer("", add_special_tokens=True)["input_ids"])
        self.special_ids = set(tokenizer.all_special_ids)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)
        self.device = next(model.parameters()).device
        self.ids_scorer = IdsScorer(model=model, device=str(self.device), batch_size=self.batch_size, pad_id=self.pad_id)
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        dtype: str = "auto",
        use_gpu: bool = False,
        attn_implementation: str = "sdpa",
        **kwargs,
    ) -> "RewardScorer":
        from transformers import AutoTokenizer

        device = resolve_device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        torch_dtype = resolve_dtype(dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = load_reward_model(
            path, dtype=torch_dtype, attn_implementation=attn_implementation, tokenizer=tokenizer, init_value_head=False
        )
        render = read_metadata(path).get("render")  # how training read its text (None: not recorded)
        if render is not None:
            kwargs.setdefault("chat_template", bool(render.get("chat_template")))
        return cls(model.to(device), tokenizer, **kwargs)

    # -- tokenization -----------------------------------------------------------------------

    def check_render(self, query: str) -> None:
        """Refuse a query rendered unlike the training text (`QueryNotAsTrained`): OpenRLHF's
        `--data.apply_chat_template` puts the chat template's assistant-turn marker in every
        query; a model trained with the template needs it, one trained without must not see it."""
        if self.turn_marker is None:
            return
        templated = self.turn_marker in query
        if templated and not self.chat_template:
            raise QueryNotAsTrained(
                "this reward model was trained on raw prompt + response, but the query is chat-templated "
                f"(it holds {self.turn_marker!r}): run PPO with data.apply_chat_template=false, or train with "
                "student.chat_template=true")
        if self.chat_template and not templated:
            raise QueryNotAsTrained(
                "this reward model was trained on chat-templated text (student.chat_template), but the query has "
                f"no assistant turn ({self.turn_marker!r}): send queries rendered with the tokenizer's chat template "
                "(OpenRLHF: data.apply_chat_template=true)")

    def encode(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids per query, with BOS/EOS as in training and truncated to `max_len`."""
        for query in queries:
            self.check_render(query)
        enc = self.tokenizer(
            list(queries), add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        out = []
        for i, (ids, offsets) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
            prompt = prompts[i] if prompts is not None else None
            out.append(self._finish(list(ids), offsets, queries[i], prompt))
        return out

    def _finish(self, ids: list[int], offsets, query: str, prompt: str | None) -> list[int]:
        lead = self.lead
        if self.special_tokens == "auto" and ids[: len(lead)] == lead:
            lead = []
        eos = self.tokenizer.eos_token_id
        tail = [eos] if self.append_eos and (not ids or ids[-1] != eos) else []
        if len(lead) + len(ids) + len(tail) <= self.max_len:
            return lead + ids + tail
        # Too long: keep what training would keep (core/truncation.py); specials in the
        # text (BOS/EOS/chat markers) are overhead and always kept.
        ids_np = np.asarray(ids, dtype=np.int64)
        starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
        is_content = ~np.isin(ids_np, list(self.special_ids))
        n_prompt = len(prompt) if prompt is not None and query.startswith(prompt) else len(query)
        overhead = len(lead) + len(tail) + int((~is_content).sum())
        try:
            budget = content_budget(self.max_len, overhead, what="query")
        except ValueError as exc:
            raise QueryTooLong(f"{exc} (model.max_len={self.max_len})") from None
        keep = window_keep(is_content, starts < n_prompt, budget=budget)
        return lead + ids_np[keep].tolist() + tail

    # -- scoring ----------------------------------------------------------------------------

    def score(self, queries: Sequence[str], prompts: Sequence[str] | None = None) -> Scores:
        return self.score_rows(self.encode(queries, prompts) if queries else [])

    def score_rows(self, rows: list[list[int]]) -> Scores:
        """Rewards of encoded rows (`encode`), in order; sorted by length inside."""
        if not rows:
            return Scores([], [])
        with self._lock:  # the shared scorer: sorted by length, right-padded batches
            raw = self.ids_scorer.score(rows).tolist()
        release_freed_memory()
        rewards = raw
        if self.normalize_rewards:
            rewards = normalize(torch.tensor(raw, dtype=torch.float64), self.stats).tolist()
        return Scores(rewards=[float(r) for r in rewards], raw=[float(r) for r in raw])

    def score_many(self, groups: Sequence[list[list[int]]]) -> list[Scores]:
        """Several requests' encoded rows scored as one batch (Ray Serve's dynamic
        batching), split back per request. Encoding stays per request, so one bad query
        fails its own request, not the whole batch."""
        return self.score_rows([r for rows in groups for r in rows]).split([len(rows) for rows in groups])

    def info(self) -> dict:
        return {
            "max_len": self.max_len,
            "normalize": self.normalize_rewards,
            "mean": self.stats.mean,
            "std": self.stats.std,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            "chat_template": self.chat_template,  # the render training used (None: not recorded)
        }


def _turn_marker(tokenizer) -> str | None:
    """The chat template's text between the user's content and the assistant's (e.g.
    `<|im_end|>\n<|im_start|>assistant\n`), stripped of whitespace; None without a template."""
    from idrm_ray.core.chat import chat_parts, has_chat_template

    if not has_chat_template(tokenizer):
        return None
    return chat_parts(tokenizer)[1].strip() or None


def all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc: nothing to do


_TRIM = _malloc_trim()
_TRIM_STATE = {"last": 0.0}
_TRIM_LOCK = threading.Lock()


def release_freed_memory(min_interval_s: float = 1.0) -> bool:
    """Give the heap pages freed by the last forward passes back to the OS (glibc
    `malloc_trim`, a few ms), at most once per `min_interval_s`. Batches of varied shapes
    leave freed activations in malloc's arenas, so without it a long-running server's RSS
    ratchets up to each arena's high-water mark (the reward-server soak measured +12.7% in
    10 minutes). True when it trimmed."""
    if _TRIM is None:
        return False
    now = time.monotonic()
    with _TRIM_LOCK:
        if now - _TRIM_STATE["last"] < min_interval_s:
            return False
        _TRIM_STATE["last"] = now
    _TRIM(0)
    return True
