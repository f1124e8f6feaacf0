"""InfoRM (METHOD.md §10): an information-bottleneck head in place of the scalar head,
loss -log σ(Δr) + β·KL; one run."""
from __future__ import annotations

from idrm_ray.methods import bt

run = bt.run


def worker_asks(m) -> dict:
    i = m.inform
    return {"bt": {"ib_beta": i.beta}, "ib_latent_dim": i.latent_dim}
