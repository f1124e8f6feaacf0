"""InfoRM (METHOD.md §10): an information-bottleneck head in place of the scalar head,
loss -log σ(Δr) + β·KL; one run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from idrm_ray.configtree.base import param, require
from idrm_ray.methods import bt


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


run = bt.run


def worker_asks(m) -> dict:
    i = m.inform
    return {"bt": {"ib_beta": i.beta}, "ib_latent_dim": i.latent_dim}
