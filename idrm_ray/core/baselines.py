"""The baselines' own math (METHOD.md §10): AM-RM margins, LF-RM flips and label smoothing,
WARM weight averaging and the InfoRM information-bottleneck head. Pure torch; the procedures
that train ensembles live in `idrm_ray.pipeline.methods`.

    preference_strength   (M, P) member reward gaps -> mean μ̂ and spread σ̂ per pair (Secrets-II)
    am_margins            μ̂ clipped at >= 0 (the proxy margin of AM-RM without ratings)
    flip_mask             pairs whose labels LF-RM swaps (μ̂ < threshold, optionally a capped fraction)
    smoothed_bt_terms     -( (1-α) log σ(Δ) + α log(1-σ(Δ)) ) per pair (LF-RM's label smoothing)
    average_state_dicts   φ_WARM = Σ w_i φ_i / Σ w_i (uniform by default), streaming over members
    IBRewardHead          InfoRM: Linear(d->2k) -> z = μ + σ ε (train) / μ (eval) -> Linear(k->1)
    inform_kl             InfoRM's KL term, as its code computes it (or per dimension)
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

KL_FORMS = ("dim_mean", "per_dim")


def preference_strength(gaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Secrets-II Eq. 4-5: gaps (M, P) = r_m(x_i, y_c) - r_m(x_i, y_r) of M members on P
    pairs -> (μ̂ (P,), σ̂ (P,)), σ̂ the population standard deviation over members."""
    if gaps.dim() != 2 or gaps.shape[0] < 1:
        raise ValueError(f"gaps must be (members, pairs), got shape {tuple(gaps.shape)}")
    gaps = gaps.double()
    mu = gaps.mean(dim=0)
    sigma = ((gaps - mu) ** 2).mean(dim=0).sqrt()
    return mu, sigma


def am_margins(mu: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
    """AM-RM's proxy margin: scale · max(μ̂, 0) (METHOD.md §10, clipped at >= 0)."""
    return scale * mu.clamp(min=0.0)


def flip_mask(mu: torch.Tensor, *, threshold: float = 0.0, max_fraction: float = 1.0) -> torch.Tensor:
    """(P,) bool: pairs LF-RM swaps, those with μ̂ < threshold (default: the ensemble prefers
    the rejected response), at most the `max_fraction` of all pairs with the lowest μ̂
    (Secrets-II flips the bottom 20%, which on HH is within the μ̂ < 0 quarter)."""
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    mask = mu < threshold
    cap = int(max_fraction * mu.numel())
    if int(mask.sum()) > cap:
        keep = torch.argsort(mu, stable=True)[:cap]
        mask = torch.zeros_like(mask)
        mask[keep] = True
    return mask


def smoothed_bt_terms(gap: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """(B,) -((1-α) log σ(Δ) + α log(1-σ(Δ))) per pair; α = 0 is Eq. 2's -log σ(Δ)."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"label smoothing α must be in [0, 1), got {alpha}")
    per_pair = -F.logsigmoid(gap)
    if alpha == 0.0:
        return per_pair
    return (1.0 - alpha) * per_pair - alpha * F.logsigmoid(-gap)  # log(1 - σ(Δ)) = log σ(-Δ)


def average_state_dicts(
    states: Iterable[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """WARM: φ = Σ_i w_i φ_i / Σ_i w_i over members with identical keys and shapes (uniform by
    default). `states` may be a generator: one member is held at a time (plus an fp64
    running sum), so averaging large models needs about two models' memory. Each tensor
    keeps its own dtype; integer buffers are taken from the first member (not weights)."""
    acc: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    total = 0.0
    for i, state in enumerate(states):
        w = 1.0 if weights is None else float(weights[i])
        if i == 0:
            first = {k: v.detach().to("cpu") for k, v in state.items()}
            acc = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in first.items() if v.is_floating_point()}
        elif list(state) != list(first):
            diff = sorted(set(first) ^ set(state))[:3]
            raise ValueError(f"member {i} has different parameters than member 0 (e.g. {diff}); "
                             "WARM needs members fine-tuned from the same initialisation")
        for key in acc:
            value = state[key]
            if value.shape != first[key].shape:
                raise ValueError(f"parameter {key} has shape {tuple(value.shape)} in member {i} and "
                                 f"{tuple(first[key].shape)} in member 0")
            acc[key] += w * value.detach().to("cpu", torch.float64)
        total += w
    if total <= 0:
        raise ValueError("nothing to average: no members (or weights summing to 0)")
    return {k: (acc[k] / total).to(v.dtype) if k in acc else v.clone() for k, v in first.items()}


class IBRewardHead(nn.Module):
    """InfoRM's head on the last-token hidden state h (B, d): encoder Linear(d -> 2k) gives
    μ and log σ²; z = μ + σ ⊙ ε in training, z = μ in eval; decoder Linear(k -> 1) is the
    reward. The latest (μ, log σ²) stay on the module for the KL term of the same step."""

    def __init__(self, hidden_size: int, latent_dim: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Linear(hidden_size, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, 1)
        for layer in (self.encoder, self.decoder):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)
        self.latest: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encoder(h.to(self.encoder.weight.dtype)).float().chunk(2, dim=-1)  # (B, k) each
        self.latest = (mu, logvar)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        # A module call, not F.linear on `.weight`: under ZeRO-3 the weight outside a call is an
        # empty partition; the call gathers it.
        return self.decoder(z.to(self.encoder.weight.dtype)).float().squeeze(-1)  # (B,)

    def folded(self) -> tuple[torch.Tensor, float]:
        """`fold_ib_state` of this head's parameters."""
        return fold_ib_state(self.state_dict())


def fold_ib_state(head: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """The eval-mode IB head as one linear map: r = w·h + b with w = W_dec W_μ (1, d) and
    b = W_dec b_μ + b_dec, from the head's state (`encoder.*`, `decoder.*`). This is what
    makes an InfoRM checkpoint an ordinary reward model (bias-free `score` head, OpenRLHF
    layout); b shifts every reward by the same constant, so preferences are unchanged."""
    k = head["decoder.weight"].shape[1]
    w_mu, b_mu = head["encoder.weight"][:k].double(), head["encoder.bias"][:k].double()
    w_dec, b_dec = head["decoder.weight"].double(), head["decoder.bias"].double()
    return (w_dec @ w_mu).float(), float((w_dec @ b_mu + b_dec).item())


def inform_kl_terms(mu: torch.Tensor, logvar: torch.Tensor, *, form: str = "dim_mean") -> torch.Tensor:
    """(S,) KL(N(μ, σ²) || N(0, 1)) per sequence from latents (S, k).

    dim_mean (default, as InfoRM's code does): μ and log σ² are first averaged over the k
    latent dimensions, then -½(1 + l̄ - μ̄² - e^l̄). per_dim: the textbook per-dimension KL,
    summed over k (what the IB objective's variational bound states)."""
    mu, logvar = mu.float(), logvar.float()
    if form == "dim_mean":
        m, lv = mu.mean(dim=-1), logvar.mean(dim=-1)
        return -0.5 * (1 + lv - m**2 - lv.exp())
    if form == "per_dim":
        return (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(dim=-1)
    raise ValueError(f"unknown InfoRM KL form {form!r}; use one of {', '.join(KL_FORMS)}")


def inform_kl(mu: torch.Tensor, logvar: torch.Tensor, *, form: str = "dim_mean") -> torch.Tensor:
    """InfoRM's KL term: `inform_kl_terms` averaged over the sequences (chosen and rejected)."""
    return inform_kl_terms(mu, logvar, form=form).mean()
