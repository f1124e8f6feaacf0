"""A text as a tokenizer sees it, for the unit alignment (`units.py`): ids, character
offsets and which tokens are specials (those the post-processor added and those written in
the text), and a teacher's own pair template (`PairFormat`), read off a probe so truncated
ids can be spliced back exactly. CPU numpy only."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Tokens(NamedTuple):
    ids: np.ndarray  # (n,) int64
    offsets: np.ndarray  # (n, 2) int64 character spans into the tokenized string
    special: np.ndarray  # (n,) bool, added by the tokenizer's post-processor


def tokenize(tokenizer, texts: list[str], *, add_special_tokens: bool) -> list[Tokens]:
    # One call for the whole list: fast tokenizers batch in Rust, and the Python
    # overhead of a call dominates for ~200-token texts.
    enc = tokenizer(
        texts,
        add_special_tokens=add_special_tokens,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # long inputs are truncated here, not by the tokenizer
    )
    rows = zip(texts, enc["input_ids"], enc["offset_mapping"], enc["special_tokens_mask"])
    specials = _special_texts(tokenizer)
    return [_mark_specials(t, np.asarray(i, np.int64), np.asarray(o, np.int64), m, specials) for t, i, o, m in rows]


def _special_texts(tokenizer) -> dict[int, str]:
    """{id: casefolded text} of the special tokens: the named ones and every added token
    flagged special (e.g. Llama-3's <|eot_id|>, <|start_header_id|>)."""
    out = {int(i): str(t) for i, t in zip(tokenizer.all_special_ids, tokenizer.all_special_tokens)}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            out[int(i)] = str(tok.content)
    return {i: t.casefold() for i, t in out.items()}


def _mark_specials(text: str, ids: np.ndarray, offsets: np.ndarray, mask, specials: dict[int, str]) -> Tokens:
    # The mask flags only what the post-processor added; special tokens written in the text
    # (chat markers such as <|im_end|>, a prompt quoting [SEP]) are specials too: made
    # zero-width, they get no unit on either side but keep their place for truncation.
    # A special id over other characters (UNK for an emoji) stands for real text: kept.
    offsets = offsets.reshape(-1, 2).copy()
    special = np.asarray(mask, bool).copy()
    for j in np.flatnonzero(np.isin(ids, list(specials)) & (offsets[:, 1] > offsets[:, 0])):
        a, b = offsets[j]
        if text[a:b].casefold() == specials[int(ids[j])]:
            special[j] = True
            offsets[j, 1] = a
    return Tokens(ids, offsets, special)


def with_eos(tokens: Tokens, eos_id: int) -> Tokens:
    # The reward is read at the last token (OpenRLHF style), so it must be EOS.
    if len(tokens.ids) and tokens.ids[-1] == eos_id:
        return tokens
    return Tokens(
        np.append(tokens.ids, eos_id), np.vstack([tokens.offsets, [[0, 0]]]), np.append(tokens.special, True)
    )


@dataclass(frozen=True)
class PairFormat:
    """A teacher's own pair template, split around the two texts: e.g. BERT/DeBERTa
    `[CLS] A [SEP] B [SEP]`, RoBERTa `<s> A </s></s> B </s>`."""

    ids: tuple[np.ndarray, np.ndarray, np.ndarray]  # special ids before A, between, after B
    type_ids: tuple[np.ndarray, np.ndarray, np.ndarray]  # their segment ids
    type_a: int
    type_b: int

    @property
    def num_specials(self) -> int:
        return sum(len(part) for part in self.ids)

    def join(self, a: np.ndarray, b: np.ndarray, *, specials: int | None = None) -> np.ndarray:
        """before + a + between + b + after; `specials` replaces the special ids by a
        constant (-1 for the unit column)."""
        before, between, after = (p if specials is None else np.full(len(p), specials) for p in self.ids)
        return np.concatenate([before, a, between, b, after]).astype(np.int64)

    def type_ids_for(self, len_a: int, len_b: int) -> np.ndarray:
        before, between, after = self.type_ids
        a, b = np.full(len_a, self.type_a), np.full(len_b, self.type_b)
        return np.concatenate([before, a, between, b, after]).astype(np.int64)


def teacher_pair_format(tokenizer) -> PairFormat:
    """Read the pair format off a probe `tokenizer("a", "b")`, so any post-processor
    (BERT, DeBERTa, RoBERTa, ...) is reproduced exactly when we splice truncated ids."""
    part_a, part_b = (tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("a", "b"))
    probe = tokenizer("a", "b", return_special_tokens_mask=True, return_token_type_ids=True)
    ids = np.asarray(probe["input_ids"], dtype=np.int64)
    types = np.asarray(probe.get("token_type_ids") or np.zeros_like(ids), dtype=np.int64)
    content = np.flatnonzero(~np.asarray(probe["special_tokens_mask"], dtype=bool))
    a_pos, b_pos = content[: len(part_a)], content[len(part_a) :]
    contiguous = all(len(p) and np.all(np.diff(p) == 1) for p in (a_pos, b_pos))
    if not contiguous or ids[a_pos].tolist() != part_a or ids[b_pos].tolist() != part_b:
        raise ValueError(f"cannot read the pair format of {type(tokenizer).__name__}: probe ids {ids.tolist()}")
    i0, i1, j0, j1 = a_pos[0], a_pos[-1] + 1, b_pos[0], b_pos[-1] + 1
    return PairFormat(
        ids=(ids[:i0], ids[i1:j0], ids[j1:]),
        type_ids=(types[:i0], types[i1:j0], types[j1:]),
        type_a=int(types[i0]),
        type_b=int(types[j0]),
    )
