"""The config tree of the train job (`idrm-ray train`, `jobs/train.py`).

Field defaults are METHOD.md §7's training defaults on the local machine (tiny models,
CPU, one worker); presets in `idrm_ray/configs/` scale them (`tiny`: the embedded
default, `llama3_8b_hh`: the paper's setup, `local_hf`: local HF directories). Checks here
are for values that cannot work; each message says how to fix it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.config.base import param, require, section
from idrm_ray.core.method_kind import METHODS, MethodKind, method_kind

Dtype = Literal["auto", "bf16", "fp16", "fp32"]
MIN_LEN = 16  # room for the specials plus a few tokens of each half


@dataclass(frozen=True)
class StudentTinyConfig:
    """Sizes of the built-in tiny student (`student.name_or_path=tiny`, random init)."""

    family: Literal["llama", "qwen2", "mistral"] = param("llama", "Decoder architecture of the tiny student.")
    num_layers: int = param(4, "Transformer blocks (M).")
    hidden_size: int = param(64, "Hidden size d.")
    num_heads: int = param(4, "Query heads H_s.")
    num_kv_heads: int = param(2, "Key/value heads (GQA when fewer than num_heads).")
    seed: int = param(0, "Seed of the random init.")

    def __post_init__(self):
        require(self, self.num_layers >= 1, "num_layers", "needs at least one block")
        require(self, self.num_heads >= 1 and self.hidden_size % self.num_heads == 0, "hidden_size",
                f"must be a positive multiple of num_heads ({self.num_heads})")
        require(self, self.num_kv_heads >= 1 and self.num_heads % self.num_kv_heads == 0, "num_kv_heads",
                f"must divide num_heads ({self.num_heads}) for GQA")


@dataclass(frozen=True)
class TemplateConfig:
    """How prompt and response become the student's text: prefix + prompt + separator +
    response + suffix (HH transcripts need none; instruct models may want their chat markers)."""

    prefix: str = param("", "Text before the prompt.")
    separator: str = param("", "Text between prompt and response.")
    suffix: str = param("", "Text after the response (e.g. the EOS string read by the reward head).")


@dataclass(frozen=True)
class StudentLoraConfig:
    """LoRA adapters on the student (`peft`); the value head still trains in full. The saved
    checkpoint is merged (an ordinary reward model), with the adapter alone beside it in
    `adapter/`. With student.train_top_blocks = K > 0, adapters go into the top K blocks only."""

    r: int = param(0, "Adapter rank (0: no LoRA, the blocks train as student.train_top_blocks says).")
    alpha: float = param(16.0, "LoRA alpha; the update is scaled by alpha / r (OpenRLHF's default 16).")
    dropout: float = param(0.0, "Dropout on the adapters' input.")
    target_modules: tuple[str, ...] = param(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        "Linear layers (by name) in each block that get adapters. ID needs q_proj and k_proj among them to "
        "steer the distilled maps through the adapters.")

    def __post_init__(self):
        require(self, self.r >= 0, "r", "must be >= 0 (0 turns LoRA off)")
        require(self, self.alpha > 0, "alpha", "must be > 0")
        require(self, 0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        require(self, not self.r or len(self.target_modules) > 0, "target_modules",
                "name at least one Linear layer, e.g. [q_proj, k_proj, v_proj, o_proj]")


@dataclass(frozen=True)
class StudentConfig:
    """The reward model being trained (decoder-only, value head on the last token, Eq. 1)."""

    name_or_path: str = param("tiny", "Hub id, local HF directory, or `tiny` for the built-in tiny model.")
    tiny: StudentTinyConfig = section(StudentTinyConfig)
    max_len: int = param(1024, "Max tokens of prompt+response per sequence (METHOD.md §7).")
    dtype: Dtype = param("auto", "Weight dtype at load; auto follows deepspeed.precision (fp32 without DeepSpeed).")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"] = param(
        "sdpa", "transformers attention kernel of the student's own forward.")
    gradient_checkpointing: bool = param(False, "Recompute activations in backward (saves memory on large students).")
    chat_template: bool = param(
        False, "Render the prompt as a user turn and the response as the assistant turn with the student "
               "tokenizer's own chat template (as OpenRLHF's reward dataset with --apply_chat_template). Saved in "
               "the checkpoint; eval, the reward server and the PPO builder follow it. Instruct models want it.")
    template: TemplateConfig = section(TemplateConfig)
    train_top_blocks: int = param(
        0, "0: every parameter trains; K: only the top K decoder blocks, the final norm and the value head "
           "(embeddings and lower blocks frozen, no gradients or optimizer state). ID's top_n blocks must be "
           "among them. With LoRA: adapters in the top K blocks only.")
    lora: StudentLoraConfig = section(StudentLoraConfig)

    def __post_init__(self):
        require(self, bool(self.name_or_path.strip()), "name_or_path", "give a hub id, a local directory or `tiny`")
        require(self, self.train_top_blocks >= 0, "train_top_blocks", "must be >= 0 (0 trains all blocks)")
        require(self, self.name_or_path != "tiny" or self.train_top_blocks <= self.tiny.num_layers,
                "train_top_blocks", f"exceeds the tiny student's {self.tiny.num_layers} blocks: lower it "
                                    "or raise student.tiny.num_layers")
        require(self, self.max_len >= MIN_LEN, "max_len", f"must be >= {MIN_LEN} tokens (METHOD.md §7 uses 1024)")
        t = self.template
        require(self, not (self.chat_template and (t.prefix or t.separator or t.suffix)), "chat_template",
                "the chat template and student.template (prefix/separator/suffix) both render the text: use one")

    @property
    def render(self) -> "str | tuple[str, str, str] | None":
        """How prompt and response become the student's text, as `core.units.encode_pairs` takes
        it: "chat", a (prefix, separator, suffix) template, or None (prompt + response)."""
        if self.chat_template:
            return "chat"
        t = self.template
        return (t.prefix, t.separator, t.suffix) if (t.prefix or t.separator or t.suffix) else None


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


@dataclass(frozen=True)
class DataConfig:
    """Preference pairs (prompt, chosen, rejected), validated before any GPU time is spent."""

    train: str = param("bundled", "Training pairs: JSONL/Parquet path, HF dataset id or dir, or `bundled`.")
    eval: str = param("", "Held-out pairs, same forms as `train` (empty: split eval_fraction off train).")
    train_split: str = param("train", "Split of `train` when it is an HF dataset.")
    eval_split: str = param("test", "Split of `eval` when it is an HF dataset.")
    format: Literal["auto", "generic", "hh", "ultrafeedback"] = param(
        "auto", "Row layout: generic prompt/chosen/rejected, hh transcripts, ultrafeedback, or auto-detect.")
    eval_fraction: float = param(0.05, "Fraction of train held out when `eval` is empty (0: no eval).")
    max_pairs: int | None = param(None, "Use at most this many training pairs (null: all).")
    max_eval_pairs: int | None = param(None, "Evaluate on at most this many held-out pairs (null: all).")
    skip_bad_rows: bool = param(False, "Skip and count bad rows instead of failing on the first one.")
    seed: int = param(0, "Seed of the eval split and shuffling.")
    shuffle_buffer: int = param(
        0, "Shuffle the training stream in a buffer of this many pairs, seeded by optim.seed and the epoch "
           "(0: the stream's order). Seeds then differ in data order as well as in init.")

    def __post_init__(self):
        require(self, bool(self.train.strip()), "train", "give a path, an HF dataset id or `bundled`")
        require(self, 0 <= self.eval_fraction < 1, "eval_fraction", "must be in [0, 1)")
        require(self, self.max_pairs is None or self.max_pairs >= 1, "max_pairs", "use null for all, or >= 1")
        require(self, self.max_eval_pairs is None or self.max_eval_pairs >= 1, "max_eval_pairs",
                "use null for all, or >= 1")
        require(self, self.shuffle_buffer >= 0, "shuffle_buffer", "must be >= 0 (0: no shuffle)")


@dataclass(frozen=True)
class IDConfig:
    """Interaction distillation (METHOD.md §5-§6); field names match `core.objective.IDSettings`."""

    lam: float = param(1.0, "λ, weight of L_ID in L_BT + λ·L_ID (Eq. 3); the paper finds 0.4-1 stable.")
    top_n: int = param(1, "N, top blocks distilled, top-aligned student/teacher pairing (Eq. 8).")
    distance: Literal["frobenius", "mse", "kl"] = param(
        "frobenius", "D of Eq. 8: length-normalized Frobenius (default), TinyBERT mse, or MiniLM row KL.")
    intra: bool = param(True, "Distil the intra-sequence maps ww, ll (Eq. 6).")
    inter: bool = param(True, "Distil the inter-sequence maps wl, lw (Eq. 7).")
    inter_keys: Literal["post_rope", "pre_rope"] = param(
        "post_rope", "Q/K of the inter maps after RoPE (each half from position 0) or before it.")
    mode: Literal["separate", "joint"] = param(
        "separate", "Separate softmax per block (VIRT, default) or one joint softmax over [y_w; y_l] (§5).")
    response_only_inter: bool = param(False, "Restrict L_inter to response units (drop the prompt copies).")
    block_reduction: Literal["sum", "mean"] = param(
        "sum", "Combine the four block terms as Eq. 8 (sum) or average them (factor 4 folds into λ).")
    chunk_rows: int | None = param(None, "Query rows per chunk of the simulated maps (null: from a memory budget).")
    teacher_head_renorm: bool = param(
        False, "Renormalise each teacher head over the kept keys before the head mean (default: head mean first, "
               "then renormalise, METHOD.md §6); part of the map-cache key.")

    def __post_init__(self):
        require(self, self.lam >= 0, "lam", "λ must be >= 0 (use method.name=bt for no distillation)")
        require(self, self.top_n >= 1, "top_n", "N must be >= 1 (the paper's default is 1)")
        require(self, self.intra or self.inter, "inter",
                "intra and inter are both false, so L_ID is empty: enable one, or use method.name=bt")
        require(self, self.chunk_rows is None or self.chunk_rows >= 1, "chunk_rows", "use null (auto) or >= 1")
        require(self, not (self.mode == "joint" and self.inter_keys == "pre_rope"), "inter_keys",
                "pre_rope keys apply to the separate mode only; set inter_keys=post_rope or mode=separate")


@dataclass(frozen=True)
class AMConfig:
    """AM-RM (METHOD.md §10): loss -log σ(Δr - m) with a per-pair margin m."""

    source: Literal["auto", "rating", "ensemble"] = param(
        "auto", "Margin from the data's rating field (`margin`), from the ensemble preference strength "
                "max(μ̂, 0), or auto: the rating when every training pair has one, else the ensemble.")
    scale: float = param(1.0, "Multiply every margin by this (Llama-2's `Margin Small` is 1/3 of `Large`).")

    def __post_init__(self):
        require(self, self.scale >= 0, "scale", "must be >= 0 (0 turns AM into BT)")


@dataclass(frozen=True)
class LFConfig:
    """LF-RM (METHOD.md §10, Secrets-II recipe): swap chosen/rejected where the ensemble's
    mean reward gap μ̂ is below `threshold`, then train with label smoothing α."""

    smoothing: float = param(0.1, "Label smoothing α of the final RM (0: plain BT on the flipped data).")
    threshold: float = param(0.0, "Flip pairs whose mean ensemble gap μ̂ is below this.")
    max_flip_fraction: float = param(1.0, "Flip at most this fraction of pairs (the lowest μ̂; Secrets-II: 0.2).")

    def __post_init__(self):
        require(self, 0 <= self.smoothing < 1, "smoothing", "α must be in [0, 1)")
        require(self, 0 <= self.max_flip_fraction <= 1, "max_flip_fraction", "must be in [0, 1]")


@dataclass(frozen=True)
class WARMConfig:
    """WARM (METHOD.md §10): average M reward models fine-tuned from the same init."""

    variant: Literal["members", "checkpoints"] = param(
        "members", "members: M runs with diverse seeds / data orders / learning rates, averaged; "
                   "checkpoints: the cheap variant, the average of the last checkpoints along one run.")
    lr_multipliers: tuple[float, ...] = param((1.0, 0.7, 1.4), "Member i trains with lr x multipliers[i % len].")
    checkpoints: int = param(5, "Checkpoints averaged by the `checkpoints` variant (evenly spaced over the run).")

    def __post_init__(self):
        require(self, len(self.lr_multipliers) >= 1 and all(m > 0 for m in self.lr_multipliers),
                "lr_multipliers", "give at least one positive multiplier, e.g. [1.0, 0.7, 1.4]")
        require(self, self.checkpoints >= 1, "checkpoints", "must be >= 1")


@dataclass(frozen=True)
class InfoRMConfig:
    """InfoRM (METHOD.md §10): IB head Linear(d->2k), z = μ + σε in training, μ in eval,
    Linear(k->1); loss -log σ(Δr) + β·KL."""

    latent_dim: int = param(512, "Latent size k (InfoRM's LLaMA3-8B script: 512).")
    beta: float = param(1.0, "β, weight of the KL term (`kl_loss_coef`).")
    kl_form: Literal["dim_mean", "per_dim"] = param(
        "dim_mean", "KL on latents averaged over dimensions (InfoRM's code) or the per-dimension KL.")

    def __post_init__(self):
        require(self, self.latent_dim >= 1, "latent_dim", "must be >= 1")
        require(self, self.beta >= 0, "beta", "must be >= 0")


@dataclass(frozen=True)
class EnsembleConfig:
    """The M reward models behind LF flips, AM proxy margins and WARM members; they run as
    parallel Ray Train runs, as many at once as the student resources allow."""

    members: int = param(3, "M (Secrets-II uses 10 for LF; WARM's paper 5-10).")
    max_steps: int | None = param(None, "Optimizer steps per member (null: as optim).")
    concurrency: int = param(0, "Members trained at once (0: as many as the cluster's student resources fit).")

    def __post_init__(self):
        require(self, self.members >= 1, "members", "must be >= 1")
        require(self, self.max_steps is None or self.max_steps >= 1, "max_steps", "use null, or >= 1")
        require(self, self.concurrency >= 0, "concurrency", "must be >= 0 (0: automatic)")


@dataclass(frozen=True)
class MethodConfig:
    """Which reward-model objective to train: ID-RM, the paper's baselines and their combinations."""

    name: Literal[METHODS] = param(
        "id", "`bt`: Bradley-Terry (Eq. 2); `id`: BT + λ·L_ID (Eq. 3); baselines `am`, `lf`, `warm`, `inform` "
              "(METHOD.md §10); `id+am`, `id+lf`, `id+warm`: ID combined with them (Table 3).")
    compare_bt: bool = param(False, "With any method but bt, also train a BT student on the same data and report both.")
    id: IDConfig = section(IDConfig)
    am: AMConfig = section(AMConfig)
    lf: LFConfig = section(LFConfig)
    warm: WARMConfig = section(WARMConfig)
    inform: InfoRMConfig = section(InfoRMConfig)
    ensemble: EnsembleConfig = section(EnsembleConfig)

    @property
    def kind(self) -> MethodKind:
        """The parsed name (`core/method_kind.py`)."""
        return method_kind(self.name)

    @property
    def distills(self) -> bool:
        """Whether the final RM trains with L_ID (needs the teacher)."""
        return self.kind.distills

    @property
    def baseline(self) -> str:
        """The baseline part of the name: bt, am, lf, warm or inform (`id` alone: bt)."""
        return self.kind.base


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule of the student (METHOD.md §7 defaults)."""

    lr: float = param(1e-5, "AdamW peak learning rate.")
    weight_decay: float = param(0.0, "AdamW weight decay.")
    betas: tuple[float, float] = param((0.9, 0.95), "AdamW betas (OpenRLHF's RM default).")
    warmup_ratio: float = param(0.03, "Linear warmup as a fraction of the total steps.")
    schedule: Literal["cosine", "linear", "constant"] = param("cosine", "LR decay after warmup.")
    max_grad_norm: float = param(1.0, "Clip the gradient norm to this (0: no clipping).")
    epochs: int = param(1, "Passes over the training pairs.")
    max_steps: int | None = param(None, "Stop after this many optimizer steps (null: epochs decide).")
    global_batch_size: int = param(64, "Pairs per optimizer step over all workers.")
    micro_batch_size: int = param(1, "Pairs per forward/backward on one worker.")
    seed: int = param(42, "Seed of the student init, data order and dropout.")

    def __post_init__(self):
        require(self, self.lr > 0, "lr", "must be > 0 (METHOD.md §7 uses 1e-5)")
        require(self, self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self, all(0 <= b < 1 for b in self.betas), "betas", "both must be in [0, 1)")
        require(self, 0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1) (0.03 is 3% warmup)")
        require(self, self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 turns clipping off)")
        require(self, self.epochs >= 1, "epochs", "must be >= 1")
        require(self, self.max_steps is None or self.max_steps >= 1, "max_steps", "use null, or >= 1")
        require(self, self.global_batch_size >= 1, "global_batch_size", "must be >= 1")
        require(self, self.micro_batch_size >= 1, "micro_batch_size", "must be >= 1")


@dataclass(frozen=True)
class DeepSpeedConfig:
    """DeepSpeed ZeRO for the student; off means the plain-torch path (DDP across workers)."""

    enabled: bool = param(True, "Train the student under DeepSpeed.")
    zero_stage: Literal[0, 1, 2, 3] = param(3, "ZeRO stage (3 shards parameters, gradients and optimizer state).")
    offload_optimizer: bool = param(False, "Keep optimizer state in CPU memory (cpu_adam).")
    offload_params: bool = param(False, "Keep parameters in CPU memory (ZeRO-3 only).")
    precision: Dtype = param("auto", "Training precision, DeepSpeed or plain torch; auto: bf16 on GPU, fp32 on CPU.")

    def __post_init__(self):
        require(self, not self.offload_params or self.zero_stage == 3, "offload_params",
                "parameter offload needs ZeRO-3: set deepspeed.zero_stage=3 or deepspeed.offload_params=false")
        require(self, not self.offload_optimizer or self.zero_stage >= 1, "offload_optimizer",
                "optimizer offload needs ZeRO stage >= 1")


@dataclass(frozen=True)
class ResourcesConfig:
    """Where the stages run (DESIGN.md §2): train workers on `student_gpu` nodes, the
    teacher actor pool on `teacher_gpu` nodes."""

    ray_address: str = param("", "Ray cluster to join (`auto`, ray://...); empty: start Ray in process.")
    num_workers: int = param(1, "Ray Train workers (data-parallel student ranks).")
    use_gpu: bool = param(False, "Train workers use GPUs.")
    cpus_per_worker: float = param(1.0, "CPUs per train worker.")
    gpus_per_worker: float = param(1.0, "GPUs per train worker when use_gpu (a fraction shares one GPU).")
    student_resource: str = param("student_gpu", "Custom resource each train worker asks for (empty: none).")
    student_resource_amount: float = param(1.0, "Amount of student_resource per worker.")
    teacher_concurrency: tuple[int, int] = param((1, 1), "Teacher actor pool size (min, max).")
    teacher_num_gpus: float = param(0.0, "GPUs per teacher actor (0: CPU; 0.2 shares one GPU with the student).")
    teacher_num_cpus: float = param(
        0.25, "CPUs per teacher actor; keep it a fraction (or 0): a whole CPU deadlocks 2-core machines.")
    teacher_resource: str = param("teacher_gpu", "Custom resource each teacher actor asks for (empty: none).")
    teacher_resource_amount: float = param(1.0, "Amount of teacher_resource per actor.")
    custom_resources: Literal["auto", "require", "ignore"] = param(
        "auto", "auto: ask for the custom resources only if the cluster declares them; require: always; ignore: never.")
    check_cluster: bool = param(
        True, "Before any worker starts, fail if no live node can host a train worker or teacher actor "
              "(false for autoscaling clusters whose nodes start on demand).")

    def __post_init__(self):
        require(self, self.num_workers >= 1, "num_workers", "must be >= 1")
        for key in ("cpus_per_worker", "student_resource_amount", "teacher_num_gpus", "teacher_num_cpus",
                    "teacher_resource_amount"):
            require(self, getattr(self, key) >= 0, key, "must be >= 0")
        require(self, not self.use_gpu or self.gpus_per_worker > 0, "gpus_per_worker",
                "must be > 0 when use_gpu (or set resources.use_gpu=false)")
        lo, hi = self.teacher_concurrency
        require(self, 1 <= lo <= hi, "teacher_concurrency", "needs 1 <= min <= max, e.g. [1, 4]")


@dataclass(frozen=True)
class RunConfig:
    """Run folder, checkpoints, evaluation cadence and failure handling."""

    name: str = param("", "Run name (empty: <method>-<timestamp>).")
    output_dir: str = param("runs/", "Parent folder of run folders (checkpoint, metrics, plots).")
    storage_path: str = param(
        "", "Ray Train storage shared by all nodes (empty: output_dir; a cluster needs shared storage).")
    eval_every: int = param(0, "Evaluate every this many steps (0: at the end only).")
    checkpoint_every: int = param(0, "Checkpoint every this many steps (0: at the end only).")
    keep_checkpoints: int = param(2, "Checkpoints kept (the latest ones).")
    max_failures: int = param(0, "Worker-group restarts from the latest checkpoint (-1: unlimited).")
    max_nonfinite_steps: int = param(10, "Skip non-finite steps (counted), abort after this many.")
    log_every: int = param(10, "Report metrics every this many steps.")
    local: bool = param(False, "Train in this process: one worker, no Ray Train, the stages called in-process "
                               "(debugging, tests; `idrm-ray train --local`).")

    def __post_init__(self):
        require(self, bool(self.output_dir.strip()), "output_dir", "give a folder, e.g. runs/")
        for key in ("eval_every", "checkpoint_every", "max_nonfinite_steps"):
            require(self, getattr(self, key) >= 0, key, "must be >= 0")
        require(self, self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        require(self, self.max_failures >= -1, "max_failures", "must be >= -1 (-1: unlimited)")
        require(self, self.log_every >= 1, "log_every", "must be >= 1")


@dataclass(frozen=True)
class LoggingConfig:
    """Metrics sinks: Weights & Biases (offline by default) and files in the run folder."""

    wandb_project: str = param("", "W&B project; empty keeps W&B offline (files in the run folder).")
    wandb_mode: Literal["offline", "online", "disabled"] = param("offline", "W&B mode.")
    csv: bool = param(True, "Write metrics.csv.")
    jsonl: bool = param(True, "Write metrics.jsonl.")
    plots: bool = param(True, "Write loss/accuracy plots at the end.")
    summary_table: bool = param(True, "Print the summary table at the end.")

    def __post_init__(self):
        require(self, self.wandb_mode != "online" or bool(self.wandb_project), "wandb_project",
                "online W&B needs a project: set logging.wandb_project=... or logging.wandb_mode=offline")


@dataclass(frozen=True)
class TrainJobConfig:
    """Everything `idrm-ray train` needs; derived numbers are in `TrainPlan` (plan.py)."""

    job: Literal["train"] = param("train", "Which job this tree configures (lets tools tell config files apart).")
    student: StudentConfig = section(StudentConfig)
    teacher: TeacherConfig = section(TeacherConfig)
    data: DataConfig = section(DataConfig)
    method: MethodConfig = section(MethodConfig)
    optim: OptimConfig = section(OptimConfig)
    deepspeed: DeepSpeedConfig = section(DeepSpeedConfig)
    resources: ResourcesConfig = section(ResourcesConfig)
    run: RunConfig = section(RunConfig)
    logging: LoggingConfig = section(LoggingConfig)

    def __post_init__(self):
        self._check_batch()
        require(self, self.resources.use_gpu or self.deepspeed.precision in ("auto", "fp32"), "deepspeed.precision",
                "CPU training runs in fp32: set deepspeed.precision=fp32 (or auto), or resources.use_gpu=true")
        if self.method.distills:
            self._check_top_n()
        require(self, not self.teacher.is_tiny or self.teacher.max_len <= 512, "teacher.max_len",
                "the tiny teacher has 512 positions: set teacher.max_len <= 512")

    def _check_batch(self) -> None:
        g, m, w = self.optim.global_batch_size, self.optim.micro_batch_size, self.resources.num_workers
        if g % (m * w) == 0:
            return
        lo = g // (m * w) * (m * w)
        near = " or ".join(str(x) for x in (lo, lo + m * w) if x > 0)
        micros = [d for d in range(1, g // w + 1) if g % (d * w) == 0][:6]
        hint = f"; or optim.micro_batch_size in {micros}" if micros else ""
        require(self, False, "optim.global_batch_size",
                f"must be divisible by optim.micro_batch_size ({m}) x resources.num_workers ({w}) = {m * w}: "
                f"try optim.global_batch_size={near}{hint}")

    def _check_top_n(self) -> None:
        n, s, t = self.method.id.top_n, self.student.tiny.num_layers, self.teacher.tiny.num_layers
        k = self.student.train_top_blocks
        require(self, not k or n <= k, "method.id.top_n",
                f"N={n} distills blocks that student.train_top_blocks={k} freezes: set student.train_top_blocks "
                f">= {n} (or 0 to train all blocks)")
        if self.student.name_or_path == "tiny":
            require(self, n <= s, "method.id.top_n",
                    f"N exceeds the tiny student's {s} blocks: lower it or raise student.tiny.num_layers")
        if self.teacher.is_tiny:
            require(self, n <= t, "method.id.top_n",
                    f"N exceeds the tiny teacher's {t} blocks: lower it or raise teacher.tiny.num_layers")
