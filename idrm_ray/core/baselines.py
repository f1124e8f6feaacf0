"""The baselines' own math (METHOD.md §10): AM-RM margins, LF-RM flips and label smoothing,
WARM weight averaging and the InfoRM information-bottleneck head. Pure torch (WARM's file
average also reads and writes safetensors); the procedures that train ensembles live in
`idrm_ray.multirun.tools`.

    preference_strength   (M, P) member reward gaps -> mean μ̂ and spread σ̂ per pair (Secrets-II)
    am_margins            μ̂ clipped at >= 0 (the proxy margin of AM-RM without ratings)
    flip_mask             pairs whose labels LF-RM swaps (μ̂ < threshold, optionally a capped fraction)
    smoothed_bt_terms     -( (1-α) log σ(Δ) + α log(1-σ(Δ)) ) per pair (LF-RM's label smoothing)
    average_state_dicts   φ_WARM = Σ w_i φ_i / Σ w_i (uniform by default), streaming over members
    average_safetensors   φ_WARM from the members' safetensors files, tensor by tensor (8B-sized models)
    IBRewardHead          InfoRM: Linear(d->2k) -> z = μ + σ ε (train) / μ (eval) -> Linear(k->1)
    inform_kl             InfoRM's KL term, as its code computes it (or per dimension)
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

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


# -- WARM from files ------------------------------------------------------------------------
# average_state_dicts needs every member loaded as a model; at 8B that is 32 GB per fp32 copy.
# Here each tensor is read from the members' safetensors files in row chunks, averaged in
# fp64 and streamed into the output file, so the peak is one chunk per member, not one model.

SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
CHUNK_BYTES = 16 << 20  # fp64 accumulator per chunk of rows (a 4096-wide fp32 row is 32 KiB)
SHARD_BYTES = 5 << 30  # output file size, as `save_pretrained` shards
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


def safetensors_layout(model_dir: str | Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """key -> (file, safetensors dtype, shape) of an HF checkpoint directory, single-file or
    sharded (`model.safetensors.index.json`). Tied weights are stored once by
    `save_pretrained`, so only the stored names appear (and are averaged once)."""
    from safetensors import safe_open

    folder = Path(model_dir)
    if (folder / SAFE_INDEX).exists():
        files = sorted({folder / f for f in json.loads((folder / SAFE_INDEX).read_text())["weight_map"].values()})
    elif (folder / SAFE_WEIGHTS).exists():
        files = [folder / SAFE_WEIGHTS]
    else:
        raise ValueError(f"{folder}: no {SAFE_WEIGHTS} or {SAFE_INDEX}; WARM averages safetensors checkpoints")
    layout = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                if part.get_dtype() not in _DTYPES:
                    raise ValueError(f"{file}: {key} is stored as {part.get_dtype()}, which WARM cannot average")
                layout[key] = (file, part.get_dtype(), tuple(part.get_shape()))
    return layout


def _check_members(members: Sequence[str | Path], layouts: list[dict]) -> None:
    """One line naming the member that cannot be averaged with member 0."""
    first = layouts[0]
    for member, layout in zip(members[1:], layouts[1:]):
        if set(layout) != set(first):
            diff = sorted(set(first) ^ set(layout))[:3]
            raise ValueError(f"WARM member {member} has different parameters than {members[0]} (e.g. {diff}); "
                             "WARM needs members fine-tuned from the same initialisation")
        for key, (file, _, shape) in layout.items():
            if shape != first[key][2]:
                raise ValueError(f"WARM member {file}: parameter {key} has shape {shape}, "
                                 f"{first[key][0]} has {first[key][2]}")


def _read(file: Path, key: str, rows: slice | None) -> torch.Tensor:
    """Rows of one stored tensor (all of it when rows is None). The file is opened per read
    so its memory map, and the pages the read touched, are released at once."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        return f.get_tensor(key) if rows is None else f.get_slice(key)[rows]


def _mean_chunks(layouts: list[dict], key: str, *, chunk_bytes: int) -> Iterator[torch.Tensor]:
    """The member mean of one tensor, chunk by chunk of rows, in member 0's dtype; integer
    buffers (not weights) are taken from member 0, as average_state_dicts does."""
    file, dtype, shape = layouts[0][key]
    out_dtype = _DTYPES[dtype]
    if not out_dtype.is_floating_point:
        yield _read(file, key, None)
        return
    step = max(1, chunk_bytes // max(1, math.prod(shape[1:]) * 8))  # rows per fp64 chunk
    spans = [slice(s, min(s + step, shape[0])) for s in range(0, shape[0], step)] if shape else [None]
    for rows in spans:
        acc = _read(file, key, rows).to(torch.float64, copy=True)
        for layout in layouts[1:]:
            acc += _read(layout[key][0], key, rows)  # cast element-wise, no fp64 copy of the read
        yield acc.div_(len(layouts)).to(out_dtype)


def _write_safetensors(path: Path, entries: list[tuple[str, str, tuple]], chunks) -> None:
    """A safetensors file written as a stream: the header is known from dtypes and shapes,
    then each tensor's bytes follow from `chunks(key)` in order, never the whole file in
    memory (safetensors' own writers take a complete dict)."""
    header, offset = {}, 0
    for key, dtype, shape in entries:
        size = math.prod(shape) * _DTYPES[dtype].itemsize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}  # transformers refuses files without it
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data aligned to 8 bytes, as safetensors pads
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, _, _ in entries:
            for chunk in chunks(key):
                f.write(chunk.contiguous().reshape(-1).view(torch.uint8).numpy())


def average_safetensors(
    members: Sequence[str | Path], out_dir: str | Path, *, shard_bytes: int = SHARD_BYTES,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[Path]:
    """φ_WARM = mean of the members' weights, written to `out_dir` as `model.safetensors` (or
    shards plus `model.safetensors.index.json`, as `save_pretrained` names them) in member
    0's names, order and dtypes. Members must have the same stored names and shapes (refused
    with one line naming the file otherwise). Memory: about `chunk_bytes` of fp64 plus one
    chunk per member, whatever the model size. Returns the written files."""
    if not members:
        raise ValueError("nothing to average: no members")
    layouts = [safetensors_layout(m) for m in members]
    _check_members(members, layouts)
    entries = [(key, dtype, shape) for key, (_, dtype, shape) in layouts[0].items()]
    shards, size = [[]], 0
    for entry in entries:
        n = math.prod(entry[2]) * _DTYPES[entry[1]].itemsize
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += n
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("model*.safetensors"), out / SAFE_INDEX]:
        stale.unlink(missing_ok=True)  # a previous average's shards
    names = [SAFE_WEIGHTS] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    def chunks(key):
        return _mean_chunks(layouts, key, chunk_bytes=chunk_bytes)

    for name, shard in zip(names, shards):
        _write_safetensors(out / name, shard, chunks)
    if len(shards) > 1:
        total = sum(math.prod(s) * _DTYPES[d].itemsize for _, d, s in entries)
        weight_map = {key: name for name, shard in zip(names, shards) for key, _, _ in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / SAFE_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [out / n for n in names]


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
