"""The train tree's `teacher` section: the NLI cross-encoder whose attention is distilled (a
ready one, a tiny random one, or a fine-tune of `finetune.base`), and how its maps are made."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.configtree.base import MIN_LEN, Dtype, param, require, section


@dataclass(frozen=True)
class TeacherTinyConfig:
    """Sizes of the built-in tiny teacher (used wherever `tiny` names the teacher or its base)."""

    family: Literal["bert", "deberta-v2"] = param("bert", "Encoder architecture of the tiny teacher.")
    num_layers: int = param(3, "Transformer blocks (N_T).")
    hidden_size: int = param(64, "Hidden size.")
    num_heads: int = param(4, "Attention heads H_t.")
    seed: int = param(0, "Seed of the random init.")

    def __post_init__(self):
        require(self, self.num_layers >= 1, "num_layers", "needs at least one block")
        require(self, self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "hidden_size",
                f"must be a positive multiple of num_heads ({self.num_heads})")


@dataclass(frozen=True)
class TeacherFinetuneConfig:
    """NLI fine-tuning of the teacher, run first when `teacher.name_or_path` is empty."""

    base: str = param("tiny", "Encoder to fine-tune: hub id, local directory, or `tiny`.")
    data: str = param("bundled", "NLI data (premise, hypothesis, label): JSONL/Parquet path, HF id, or `bundled`.")
    split: str = param("train", "Split to read when `data` is an HF dataset id.")
    max_examples: int | None = param(None, "Use at most this many NLI examples (null: all).")
    eval_fraction: float = param(0.05, "Fraction held out to report NLI accuracy.")
    epochs: int = param(1, "Passes over the NLI data.")
    lr: float = param(2e-5, "AdamW learning rate.")
    weight_decay: float = param(0.01, "AdamW weight decay.")
    warmup_ratio: float = param(0.1, "Linear warmup as a fraction of the steps, then linear decay to 0.")
    batch_size: int = param(32, "Examples per optimizer step, all workers together (batch_size / num_workers each).")
    num_workers: int = param(
        1, "Ray Train workers of the fine-tune (data-parallel), each on the teacher node type: "
           "resources.teacher_resource, resources.teacher_num_gpus GPUs (0: CPU), cpus_per_worker CPUs.")
    cpus_per_worker: float = param(1.0, "CPUs per fine-tune worker.")
    log_every: int = param(50, "Print progress (step/total, loss, examples/s, ETA) every this many steps (0: per epoch only).")
    max_len: int = param(128, "Max teacher tokens of premise+hypothesis.")
    output_dir: str = param("", "Where the fine-tuned teacher is saved (empty: <run dir>/teacher).")
    seed: int = param(0, "Seed of data order and head init.")

    def __post_init__(self):
        require(self, bool(self.base.strip()), "base", "give the encoder to fine-tune (hub id, directory or `tiny`)")
        require(self, bool(self.data.strip()), "data", "give NLI data (a path, an HF id or `bundled`)")
        require(self, self.max_examples is None or self.max_examples >= 1, "max_examples", "use null for all, or >= 1")
        require(self, 0 <= self.eval_fraction < 1, "eval_fraction", "must be in [0, 1)")
        require(self, self.epochs >= 1, "epochs", "must be >= 1")
        require(self, self.lr > 0, "lr", "must be > 0")
        require(self, self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self, 0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        require(self, self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self, self.num_workers >= 1, "num_workers", "must be >= 1")
        require(self, self.batch_size % self.num_workers == 0, "batch_size",
                f"{self.batch_size} examples per step do not split evenly over num_workers={self.num_workers}; "
                f"use a multiple of {self.num_workers}")
        require(self, self.cpus_per_worker >= 0, "cpus_per_worker", "must be >= 0")
        require(self, self.log_every >= 0, "log_every", "must be >= 0 (0: per epoch only)")
        require(self, self.max_len >= MIN_LEN, "max_len", f"must be >= {MIN_LEN}")


@dataclass(frozen=True)
class TeacherConfig:
    """The frozen NLI cross-encoder whose top-N attention maps are distilled (METHOD.md §4)."""

    name_or_path: str = param(
        "", "Ready NLI checkpoint (hub id or local dir), `tiny` (random init, the w/o-NLI ablation), "
            "or empty: fine-tune `teacher.finetune.base` on NLI data first.")
    tiny: TeacherTinyConfig = section(TeacherTinyConfig)
    max_len: int = param(512, "Max teacher tokens of [CLS] x y_w [SEP] x y_l [SEP]; each half gets about half.")
    dtype: Dtype = param("auto", "Teacher weights/maps dtype; auto: fp16 on GPU, fp32 on CPU.")
    batch_size: int = param(16, "Pairs per call of the teacher stage (Ray Data map_batches batch_size).")
    cache_dir: str = param("", "Cache the teacher maps here, reused by runs that only change λ or N (empty: off).")
    cache_blocks: int = param(0, "Blocks kept in the map cache (N_max; 0: method.id.top_n). Runs with N <= N_max reuse it.")
    map_format: Literal["fp16", "u8"] = param(
        "fp16", "Unit maps as shipped and cached: fp16, or u8 (8-bit square-root companded rows with an fp16 row "
                "max, half the bytes; `core.teacher_maps.encode_map`). Part of the map-cache key.")
    finetune: TeacherFinetuneConfig = section(TeacherFinetuneConfig)

    @property
    def is_tiny(self) -> bool:
        """Whether the teacher actually used is the built-in tiny encoder."""
        return self.name_or_path == "tiny" or (self.name_or_path == "" and self.finetune.base == "tiny")

    def __post_init__(self):
        require(self, self.max_len >= MIN_LEN, "max_len", f"must be >= {MIN_LEN} (DeBERTa/BERT allow 512)")
        require(self, self.batch_size >= 1, "batch_size", "must be >= 1")
