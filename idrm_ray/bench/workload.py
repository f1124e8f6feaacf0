"""The benchmark's workload: a small Llama-style student, B preference pairs whose four
sequences hold exactly `length` student tokens, and the unit-level teacher maps of the
real (tiny, random-weight) cross-encoder teacher for those pairs.

Everything is built offline (`idrm_ray.core.tiny`): tokenizers trained in-process, models
from configs. The teacher maps are computed once, outside any timed region, through the
production path (`encode_pairs` -> `TeacherAttention.maps_for_encodings`, fp16 rows then
collate), because in production they come from the teacher actors and only the student
step runs on the train worker.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerFast

from idrm_ray.core import tiny
from idrm_ray.core.collate import collate_pairs
from idrm_ray.core.teacher import TeacherAttention
from idrm_ray.core.types import BlockMaps, PairEncoding, PreferenceBatch, PreferenceExample
from idrm_ray.core.units import encode_pairs


@dataclass(frozen=True)
class StudentShape:
    """Llama-style student; head_dim = hidden // heads, MLP width 2 x hidden (tiny.py)."""

    hidden: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 2

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def describe(self) -> str:
        return (
            f"Llama, hidden {self.hidden}, {self.layers} layers, {self.heads} heads / {self.kv_heads} kv heads, "
            f"head_dim {self.head_dim}, MLP {2 * self.hidden}, sdpa, fp32"
        )


@dataclass
class Workload:
    """One sequence length: the student batch and teacher maps for the top N=1..max blocks."""

    length: int
    batch: PreferenceBatch  # (2B, length): every row exactly `length` tokens, no padding
    teacher: BlockMaps  # (B, N_max, U, U) maps, k=0 the top block
    encodings: list[PairEncoding]

    def teacher_top(self, n: int) -> BlockMaps:
        return top_blocks(self.teacher, n)

    def summary(self) -> dict[str, float]:
        valid = torch.cat([self.batch.unit_valid_w, self.batch.unit_valid_l], 1).float()
        return {
            "tokens_per_seq": int(self.batch.attention_mask.sum(1).min()),
            "units_per_half": round(float(valid.shape[1] / 2), 1),
            "valid_unit_frac": round(float(valid.mean()), 3),
            "teacher_tokens": int(max(len(e.teacher_ids) for e in self.encodings)),
        }


def top_blocks(maps: BlockMaps, n: int) -> BlockMaps:
    """The maps of the top `n` blocks (k=0..n-1), as IDSettings(top_n=n) needs."""
    return BlockMaps(ww=maps.ww[:, :n], ll=maps.ll[:, :n], wl=maps.wl[:, :n], lw=maps.lw[:, :n],
                     valid_w=maps.valid_w, valid_l=maps.valid_l)


@dataclass(frozen=True)
class Tokenizers:
    """Student (byte-level BPE) and teacher (WordPiece) tokenizers."""

    student: PreTrainedTokenizerFast
    teacher: PreTrainedTokenizerFast

    @classmethod
    def train(cls) -> "Tokenizers":
        """Trained in-process on tiny_corpus (~0.5 s)."""
        return cls(student=tiny.train_student_tokenizer(), teacher=tiny.train_teacher_tokenizer(kind="wordpiece"))


def build_student(tokenizers: Tokenizers, shape: StudentShape, *, seed: int = 0) -> PreTrainedModel:
    return tiny.build_tiny_student(
        tokenizers.student, hidden_size=shape.hidden, num_layers=shape.layers,
        num_heads=shape.heads, num_kv_heads=shape.kv_heads, attn_implementation="sdpa", seed=seed,
    )


def _text(num_tokens: int, tokenizer, *, seed: int, overshoot: bool) -> str:
    """Sentences from tiny_corpus worth `num_tokens` student tokens: stop before passing it,
    or (`overshoot`) just after, the excess (< one sentence) then being cut by the student
    window (METHOD.md §6 Truncation) so that every sequence holds exactly its budget."""
    out, count = [], 0
    for sentence in tiny.tiny_corpus(num_tokens + 64, seed=seed):
        size = len(tokenizer(" " + sentence, add_special_tokens=False)["input_ids"])  # additive: BPE
        if count >= num_tokens or (not overshoot and count + size > num_tokens):  # never merges across words
            break
        out.append(" " + sentence)
        count += size
    return "".join(out)


def make_examples(length: int, tokenizer, *, pairs: int, seed: int = 0) -> list[PreferenceExample]:
    """HH-style pairs: a prompt of ~length/4 tokens (with BOS), responses filling the rest."""
    examples = []
    for p in range(pairs):
        s = seed + 3 * p
        prompt = "\n\nHuman:" + _text(length // 4, tokenizer, seed=s, overshoot=False) + "\n\nAssistant:"
        room = length - 1 - len(tokenizer(prompt)["input_ids"])  # -1: the EOS
        chosen, rejected = (_text(room, tokenizer, seed=s + i, overshoot=True) for i in (1, 2))
        examples.append(PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected))
    return examples


def build_teacher(tokenizers: Tokenizers, *, positions: int, seed: int = 0) -> PreTrainedModel:
    """The tiny BERT cross-encoder of tiny.build_tiny_teacher, with enough positions to read
    both whole halves: every unit is then valid for L_ID, the most expensive case for the
    student (a 512-token DeBERTa would leave units outside its window, and those rows out)."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "bert", vocab_size=len(tokenizers.teacher), hidden_size=64, intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=positions,
        type_vocab_size=2, num_labels=3, pad_token_id=tokenizers.teacher.pad_token_id,
    )
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")


def build_workload(tokenizers: Tokenizers, length: int, *, pairs: int = 2, top_n: int = 2, seed: int = 0) -> Workload:
    examples = make_examples(length, tokenizers.student, pairs=pairs, seed=seed)
    half = max(
        len(tokenizers.teacher(ex.prompt + r, add_special_tokens=False)["input_ids"])
        for ex in examples for r in (ex.chosen, ex.rejected)
    )
    teacher_len = 2 * half + 8  # both halves whole, plus [CLS]/[SEP]s
    encodings = encode_pairs(
        examples, tokenizers.student, tokenizers.teacher, student_max_len=length, teacher_max_len=teacher_len
    )
    batch = collate_pairs(encodings, pad_id=tokenizers.student.pad_token_id)
    teacher = TeacherAttention.from_model(
        build_teacher(tokenizers, positions=teacher_len, seed=seed), top_n=top_n, device="cpu"
    )
    maps = teacher.maps_for_encodings(encodings)  # production numbers: fp16 rows, then fp32
    return Workload(length=length, batch=batch, teacher=maps, encodings=encodings)
