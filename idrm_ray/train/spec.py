"""WorkerSpec: the plain values a train worker needs, resolved by the driver.

Workers never see the config tree (STYLE.md §7, "builders take values"): the driver
resolves presets, paths and the plan, and hands each worker this flat, picklable spec.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from idrm_ray.core.objective import BTSettings, IDSettings
from idrm_ray.core.peft_student import PeftSettings


@dataclass(frozen=True)
class WorkerSpec:
    method: str  # the run's name in logs: a method (bt, id, am, lf, inform, id+am, ...) or an ensemble member
    student_dir: str  # HF directory of the initial reward model (backbone + score head)
    pad_id: int
    id_settings: IDSettings | None  # None for BT
    use_margin: bool = False  # feed the pairs' margins to the BT loss (AM-RM)
    bt_settings: BTSettings = field(default_factory=BTSettings)  # LF smoothing, InfoRM β
    ib_latent_dim: int = 0  # InfoRM's IB head with this latent size (0: the plain `score` head)
    shuffle_buffer: int = 0  # seeded local shuffle of the stream (ensemble members' data orders)
    # optimisation (values from the plan, METHOD.md §7 defaults)
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    schedule: str = "cosine"
    warmup_steps: int = 0
    total_steps: int = 1  # planned optimizer steps (LR schedule length)
    max_steps: int | None = None  # stop after this many steps (optim.max_steps); None: epochs decide
    epochs: int = 1
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    # parallelism / precision
    strategy: str = "torch"  # "deepspeed" | "torch"
    zero_stage: int = 3
    precision: str = "fp32"
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False
    student_dtype: str = "fp32"  # weights at load (plan.student_dtype: the precision under DeepSpeed)
    attn_implementation: str = "sdpa"  # the student's own attention kernel (student.attn_implementation)
    peft: PeftSettings = field(default_factory=PeftSettings)  # student.train_top_blocks, student.lora.*
    # run control
    eval_every: int = 0  # optimizer steps; 0: only at the end
    checkpoint_every: int = 0  # optimizer steps; 0: only at the end
    log_every: int = 1
    max_nonfinite_steps: int = 5
    prefetch_batches: int = 2
    # logging (rank 0): W&B offline unless a project is configured
    run_name: str = ""
    wandb_project: str = ""
    wandb_mode: str = "offline"
    wandb_dir: str = ""
    tags: dict = field(default_factory=dict)
    render: dict = field(default_factory=dict)  # how the text was rendered (driver.render_metadata), saved with checkpoints

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorkerSpec":
        d = dict(d)
        if d.get("id_settings") is not None and not isinstance(d["id_settings"], IDSettings):
            d["id_settings"] = IDSettings(**d["id_settings"])
        if isinstance(d.get("bt_settings"), dict):
            d["bt_settings"] = BTSettings(**d["bt_settings"])
        if isinstance(d.get("peft"), dict):
            d["peft"] = PeftSettings(**{**d["peft"], "lora_target_modules": tuple(d["peft"]["lora_target_modules"])})
        d["betas"] = tuple(d.get("betas", (0.9, 0.95)))
        return cls(**d)


def peft_settings(student) -> PeftSettings:
    """The worker's PeftSettings from the `student` config section (train_top_blocks, lora.*)."""
    lora = student.lora
    return PeftSettings(train_top_blocks=student.train_top_blocks, lora_r=lora.r, lora_alpha=float(lora.alpha),
                        lora_dropout=float(lora.dropout), lora_target_modules=tuple(lora.target_modules))
