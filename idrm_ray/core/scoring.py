"""The reward scorer: batched rewards of token-id sequences with a trained RM (CPU or GPU,
in-process), used by eval, the reward server (`serve/scoring.py` adds its text front end)
and the ensemble procedures.

Sequences are built exactly as training builds them (`idrm_ray.core.units.encode_pairs`:
`[BOS] prefix + prompt + separator + response + suffix [EOS]`, prompt cut from the left and
response from the right past `max_len`), and scored with `compute_rewards` (METHOD.md
Eq. 1, the reward at the last real token). Sequences are sorted by length before batching,
so a batch pads to similar lengths; results come back in the input order.

A pair's outcome is 1 when r(chosen) > r(rejected), 0 when lower and 0.5 on a tie: a
model that cannot tell the two apart scores chance, not 0 (RewardBench counts ties as 0;
with real-valued rewards ties only happen when the inputs are identical, as in the
progressive-masking diagnostic when everything but the reward token is masked).

`RewardScorer` is a plain class (torch + transformers); `eval/ray_scoring.py` runs the same
class as a Ray Data actor for large sets.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from idrm_ray.core.devices import resolve_device, resolve_dtype
from idrm_ray.core.reward_model import compute_rewards, load_reward_model
from idrm_ray.core.types import PreferenceExample
from idrm_ray.core.units import encode_pairs

ENCODE_CHUNK = 256  # pairs per tokenizer call
ENCODE_MEMO = 8  # encoded pair lists kept per process (a compare scores the same pairs per checkpoint)

_encoded: OrderedDict[tuple, tuple[list[np.ndarray], dict[str, int]]] = OrderedDict()
_tokenizer_keys: dict[int, tuple[object, int, str]] = {}


def encode_sequences(
    examples: Sequence[PreferenceExample], tokenizer, *, max_len: int, template: tuple[str, str, str] | None = None
) -> list[np.ndarray]:
    """2N student id arrays ordered [chosen_0, rejected_0, chosen_1, ...], as training builds them."""
    return encode_with_stats(examples, tokenizer, max_len=max_len, template=template)[0]


def encode_with_stats(
    examples: Sequence[PreferenceExample], tokenizer, *, max_len: int, template: tuple[str, str, str] | None = None
) -> tuple[list[np.ndarray], dict[str, int]]:
    """`encode_sequences` plus how many pairs and tokens `max_len` cut (nothing is dropped
    silently, DESIGN.md §5). The student tokenizer stands in for the teacher's (BT-only
    training runs do the same); only the student ids are kept.

    Remembered per process (the newest ENCODE_MEMO lists, fresh arrays on every call): the same
    pairs through the same tokenizer, as an ensemble's members, a compare's checkpoints or an
    eval's models read them, are encoded once. Same tokenizer means the same ids for any text:
    its serialised vocabulary, merges, normaliser and specials, its special tokens and chat
    template (`_tokenizer_key`), so two folders holding copies of one tokenizer share it."""
    shape = tuple(template) if isinstance(template, list) else template
    key = (_tokenizer_key(tokenizer), max_len, shape, tuple((e.prompt, e.chosen, e.rejected) for e in examples))
    if key in _encoded:
        _encoded.move_to_end(key)
    else:
        _encoded[key] = _encode_with_stats(examples, tokenizer, max_len=max_len, template=template)
        while len(_encoded) > ENCODE_MEMO:
            _encoded.popitem(last=False)
    seqs, truncated = _encoded[key]
    return [s.copy() for s in seqs], dict(truncated)


def _tokenizer_key(tokenizer) -> str:
    """A digest of what decides the ids a tokenizer gives (see `encode_with_stats`), kept per object
    while its vocabulary keeps its size (a token added later gives a new digest)."""
    held = _tokenizer_keys.get(id(tokenizer))
    if held is not None and held[0] is tokenizer and held[1] == len(tokenizer):
        return held[2]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = repr((type(tokenizer).__name__, tokenizer.special_tokens_map, getattr(tokenizer, "chat_template", None),
                  getattr(tokenizer, "padding_side", None), getattr(tokenizer, "truncation_side", None)))
    digest = hashlib.sha256((spec + extra).encode()).hexdigest()
    if len(_tokenizer_keys) >= 64:
        _tokenizer_keys.clear()
    _tokenizer_keys[id(tokenizer)] = (tokenizer, len(tokenizer), digest)
    return digest


def _encode_with_stats(
    examples: Sequence[PreferenceExample], tokenizer, *, max_len: int, template: tuple[str, str, str] | None
) -> tuple[list[np.ndarray], dict[str, int]]:
    seqs: list[np.ndarray] = []
    truncated = {"pairs_truncated": 0, "tokens_truncated": 0}
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start : start + ENCODE_CHUNK]
        encs = encode_pairs(
            chunk, tokenizer, tokenizer, student_max_len=max_len, teacher_max_len=2 * max_len + 16, template=template
        )
        seqs += [ids for e in encs for ids in (e.student_ids_w, e.student_ids_l)]
        truncated["pairs_truncated"] += sum(e.stats.pairs_student_truncated for e in encs)
        truncated["tokens_truncated"] += sum(e.stats.student_tokens_truncated for e in encs)
    return seqs, truncated


def pad_batch(
    seqs: Sequence[np.ndarray], *, pad_id: int, masks: Sequence[np.ndarray] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, n) ids and attention mask; `masks` (per sequence 0/1) replace the
    all-ones mask of the real tokens (progressive masking)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(np.asarray(s), dtype=torch.long)  # a copy: Ray hands read-only arrays
        mask[i, : len(s)] = 1 if masks is None else torch.tensor(np.asarray(masks[i]), dtype=torch.long)
    return ids, mask


class RewardScorer:
    """A reward model in eval mode on one device; `score(seqs)` -> (len(seqs),) float64.

    Also a Ray Data callable: `__call__({"row": (B,), "ids": B arrays})` -> rows + rewards.
    `model=` takes an already loaded model (tests, or to share one across calls)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        device: str | None = "auto",
        dtype: str | None = "auto",
        batch_size: int = 16,
        attn_implementation: str = "sdpa",
        model=None,
        pad_id: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        if model is None:
            model = load_reward_model(
                checkpoint, dtype=resolve_dtype(dtype, self.device), attn_implementation=attn_implementation
            )
        self.model = model.to(self.device).eval()
        if pad_id is None:  # the model's own, else 0 (right padding: the reward reads the last real token)
            pad_id = self.model.config.pad_token_id if self.model.config.pad_token_id is not None else 0
        self.pad_id = int(pad_id)
        self.batch_size = int(batch_size)

    def score(self, seqs: Sequence[np.ndarray], *, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        order = np.argsort([len(s) for s in seqs], kind="stable")
        out = np.empty(len(seqs), dtype=np.float64)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            ids, mask = pad_batch(
                [seqs[i] for i in idx], pad_id=self.pad_id, masks=None if masks is None else [masks[i] for i in idx]
            )
            with torch.inference_mode():
                rewards = compute_rewards(self.model, ids.to(self.device), mask.to(self.device))  # (B,)
            out[idx] = rewards.float().cpu().numpy()
        return out

    def __call__(self, batch: dict) -> dict:
        return {"row": np.asarray(batch["row"]), "reward": self.score([np.asarray(s) for s in batch["ids"]])}


def split_pairs(rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[chosen_0, rejected_0, ...] -> (chosen (N,), rejected (N,))."""
    return rewards[0::2], rewards[1::2]


def pair_outcomes(r_chosen: np.ndarray, r_rejected: np.ndarray, *, tie_tol: float = 0.0) -> np.ndarray:
    """(N,) 1 if chosen wins, 0 if rejected wins, 0.5 if |difference| <= tie_tol."""
    diff = np.asarray(r_chosen, dtype=np.float64) - np.asarray(r_rejected, dtype=np.float64)
    return np.where(np.abs(diff) <= tie_tol, 0.5, (diff > 0).astype(np.float64))


def group_accuracy(outcomes: np.ndarray, groups: Sequence[str | None]) -> dict[str, dict]:
    """{group: {"n", "accuracy"}} in first-seen order; pairs with group None are left out."""
    out: dict[str, list[float]] = {}
    for value, group in zip(outcomes, groups):
        if group is not None:
            out.setdefault(group, []).append(float(value))
    return {g: {"n": len(v), "accuracy": float(np.mean(v))} for g, v in out.items()}
