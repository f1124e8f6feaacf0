"""The config tree of the train job (`idrm-ray train`, `jobs/train.py`).

Field defaults are METHOD.md §7's training defaults on the local machine (tiny models,
CPU, one worker); presets in `idrm_ray/configs/` scale them (`tiny`: the embedded
default, `llama3_8b_hh`: the paper's setup, `local_hf`: local HF directories). Checks here
are for values that cannot work; each message says how to fix it. The larger sections
have files of their own: `student.py`, `teacher.py`, `method.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.configtree.base import Dtype, param, require, section
from idrm_ray.config.method import MethodConfig
from idrm_ray.config.student import StudentConfig
from idrm_ray.config.teacher import TeacherConfig


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
    encode_concurrency: int = param(
        2, "Tokenizing tasks at once (CPU). Each is a process importing the tokenizers (~5 CPU-s); "
           "one tokenizes about 1000 short pairs/s.")
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
        require(self, self.encode_concurrency >= 1, "encode_concurrency", "must be >= 1")
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
    local: bool = param(False, "Train in this process: one worker, no Ray Train, the stages (and the scoring of "
                               "ensembles and compare) called in-process "
                               "(debugging, tests; `idrm-ray train --local`).")
    methods_at_once: int = param(
        0, "Methods of one run trained side by side, e.g. BT beside ID with method.compare_bt (0: as many as "
           "the cluster's student resources fit; 1: one after another). Ensemble methods and local runs: one.")

    def __post_init__(self):
        require(self, bool(self.output_dir.strip()), "output_dir", "give a folder, e.g. runs/")
        for key in ("eval_every", "checkpoint_every", "max_nonfinite_steps"):
            require(self, getattr(self, key) >= 0, key, "must be >= 0")
        require(self, self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        require(self, self.max_failures >= -1, "max_failures", "must be >= -1 (-1: unlimited)")
        require(self, self.log_every >= 1, "log_every", "must be >= 1")
        require(self, self.methods_at_once >= 0, "methods_at_once", "must be >= 0 (0: automatic)")


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
