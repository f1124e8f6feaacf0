"""The train tree's `method` section: which objective trains (METHOD.md §5-§10) and each
family's settings (`id`, `am`, `lf`, `warm`, `inform`, the ensembles they train)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.config.base import param, require, section
from idrm_ray.core.method_kind import METHODS, MethodKind, method_kind


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
