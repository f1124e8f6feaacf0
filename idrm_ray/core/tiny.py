"""Tiny models and tokenizers built offline, for tests and the embedded default.

Nothing here downloads: tokenizers are trained in-process with the `tokenizers`
library on generated text (seconds), models are built from configs with random
weights. The student tokenizer is byte-level BPE (Llama-3 / GPT-2 style, leading
space attached to the next word), the teacher tokenizers are WordPiece (BERT style,
lower-cased, whitespace dropped) and Unigram/Metaspace (DeBERTa-v3 style), so the
cross-tokenizer alignment is exercised exactly as with the real models.
"""
from __future__ import annotations

import random
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "the robot", "a child", "the doctor"]
_VERBS = ["likes", "sees", "helps", "avoids", "answers", "finds", "builds", "reads"]
_OBJECTS = ["the ball", "a book", "the answer", "an apple", "the house", "a letter", "the code", "some music"]
_EXTRAS = ["quickly", "today", "again", "with care", "at night", "café", "naïve", "über", "日本", "🙂", "--", "…"]


def tiny_corpus(num_sentences: int = 2000, *, seed: int = 0) -> list[str]:
    """Simple English-like sentences with punctuation, unicode and repeated spaces."""
    rng = random.Random(seed)
    out = []
    for _ in range(num_sentences):
        words = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
        if rng.random() < 0.4:
            words.append(rng.choice(_EXTRAS))
        sep = "  " if rng.random() < 0.05 else " "
        text = sep.join(words)
        out.append(text[0].upper() + text[1:] + rng.choice([".", "!", "?", "."]))
    return out


def _with_extra_text(corpus: Iterable[str] | None) -> list[str]:
    texts = list(corpus) if corpus is not None else tiny_corpus()
    # Human/Assistant markers and digits so HH-style transcripts tokenise compactly.
    return texts + ["\n\nHuman: hello?\n\nAssistant: yes, 0123456789."] * 20


def train_student_tokenizer(corpus: Iterable[str] | None = None, *, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE like Llama-3: `<s>` is prepended, `</s>` is the EOS, `<pad>` differs
    from EOS (so HF's sequence-classification pooling finds the real last token)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_with_extra_text(corpus), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=4096
    )


def _pair_template(tok: Tokenizer, cls: str, sep: str) -> processors.TemplateProcessing:
    return processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )


def train_teacher_tokenizer(
    corpus: Iterable[str] | None = None, *, kind: str = "wordpiece", vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """`wordpiece`: BERT-style (lower-cased, whitespace dropped from offsets);
    `unigram`: DeBERTa-v3-style sentencepiece (Metaspace, `▁` word starts)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]")
    else:
        raise ValueError(f"unknown teacher tokenizer kind {kind!r}; use 'wordpiece' or 'unigram'")
    tok.train_from_iterator(_with_extra_text(corpus), trainer)
    tok.post_processor = _pair_template(tok, "[CLS]", "[SEP]")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def build_tiny_student(
    tokenizer: PreTrainedTokenizerFast,
    *,
    family: str = "llama",
    num_layers: int = 4,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> PreTrainedModel:
    """A decoder with a 1-output `score` head (`*ForSequenceClassification`): the
    reward-model layout OpenRLHF also uses (`model.*` backbone, `score` value head)."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=4096,
        num_labels=1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn_implementation
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation)
    # Set after construction: a pad id in the config breaks ZeRO-3 init (STACK_NOTES.md).
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_teacher(
    tokenizer: PreTrainedTokenizerFast,
    *,
    family: str = "bert",
    num_layers: int = 3,
    hidden_size: int = 64,
    num_heads: int = 4,
    seed: int = 0,
) -> PreTrainedModel:
    """An encoder cross-encoder with a 3-way NLI head (entailment/neutral/contradiction).
    `family`: `bert` (also MiniLM's architecture) or `deberta-v2` (DeBERTa-v2/v3)."""
    torch.manual_seed(seed)
    extra = {}
    if family == "deberta-v2":
        extra = dict(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_buckets=64)
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=512,
        type_vocab_size=2,
        num_labels=3,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "entailment", 1: "neutral", 2: "contradiction"},
        label2id={"entailment": 0, "neutral": 1, "contradiction": 2},
        **extra,
    )
    return AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
