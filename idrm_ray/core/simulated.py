"""Simulated attention maps from the student's captured Q/K, pooled to units.

METHOD.md Eq. 6 (intra: ww, ll) and Eq. 7 (inter: wl, lw). Each map is the head mean of
per-head softmaxes over the valid keys of one sequence (no causal mask), pooled to the
common units of METHOD.md §6 ("Pool": key columns summed, query rows averaged).

Memory: the dense maps would be H x n x n per sequence and block. Query rows are processed
in chunks, all heads of a chunk at once, and each chunk's softmax, head mean and key pooling
run under `torch.utils.checkpoint` (recomputed in backward), so autograd keeps only scatter
indices between chunks and the extra memory grows like B x H x rows x n, not H x n x n, in
forward and backward (DESIGN.md decision 5; measured in tests/unit/test_simulated.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from idrm_ray.core.types import BLOCKS, BlockMaps, CapturedQK, PreferenceBatch

# fp32 elements of one chunk's (B, H, rows, keys) logits: 2**22 x 4 B = 16 MiB. Softmax output,
# its gradient and the recompute add buffers of that size: the peak of one chunk's forward +
# backward is about 5x this, i.e. ~80 MiB whatever n and B are (idrm_ray.bench.id_step:
# 64-row chunks cost ~6% more time than one chunk and 4-6x less memory).
DEFAULT_ELEMENT_BUDGET = 1 << 22
_NEG = torch.finfo(torch.float32).min  # finite "-inf": a row with no valid key stays NaN-free


@dataclass(frozen=True)
class _Half:
    """Token -> unit layout of one half (chosen or rejected) of the batch, tensors (B, n)."""

    valid: torch.Tensor  # (B, n) bool: the token lies in a valid unit
    unit: torch.Tensor  # (B, n) int64 unit index; tokens outside valid units -> U (a dummy slot)
    row_weight: torch.Tensor  # (B, n) fp32: 1 / |tokens of its unit| on valid tokens, else 0
    num_units: int  # U

    @property
    def last_row(self) -> int:
        """One past the last valid token over the batch (right padding: later rows are dropped)."""
        cols = self.valid.any(0).nonzero()
        return int(cols.max()) + 1 if cols.numel() else 0


def _half(unit: torch.Tensor, attention_mask: torch.Tensor, unit_valid: torch.Tensor) -> _Half:
    """Which tokens count (special/pad/invalid-unit tokens are dropped, METHOD.md §6) and how
    each token's row is weighted when query rows are averaged within a unit."""
    num_units = unit_valid.shape[1]
    has_unit = (unit >= 0) & (unit < num_units) & (attention_mask > 0)
    safe = unit.clamp(0, max(num_units - 1, 0))
    valid = has_unit & unit_valid.gather(1, safe) if num_units else has_unit & False
    index = torch.where(valid, safe, num_units)  # (B, n)
    counts = torch.zeros(unit.shape[0], num_units + 1, device=unit.device).scatter_add_(1, index, valid.float())
    row_weight = valid.float() / counts.gather(1, index).clamp(min=1.0)
    return _Half(valid=valid, unit=index, row_weight=row_weight, num_units=num_units)


def _logits(q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Masked scaled logits (B, H, rows, n_k) in fp32; GQA: head h reads kv head h // (H // H_kv)."""
    bsz, heads, rows, dim = q.shape
    kv_heads = k.shape[1]
    # (B, H, rows, d) -> (B, H_kv, G*rows, d): heads h = j*G + g share kv head j
    qg = q.float().reshape(bsz, kv_heads, (heads // kv_heads) * rows, dim) * (1.0 / math.sqrt(dim))
    logits = qg @ k.float().transpose(-1, -2)  # (B, H_kv, G*rows, n_k)
    logits = logits.view(bsz, heads, rows, -1)  # (B, H, rows, n_k)
    # An additive bias, not masked_fill: its backward passes the gradient through as is,
    # where an in-place fill on the matmul output costs a zero-filled full-size copy.
    bias = torch.zeros(key_valid.shape, device=logits.device).masked_fill_(~key_valid, _NEG)  # (B, n_k)
    return logits + bias[:, None, None, :]


def _pool_keys(probs: torch.Tensor, key: _Half) -> torch.Tensor:
    """Sum key columns into units (B, rows, n_k) -> (B, rows, U_k); dropped keys go to the dummy
    slot, which also absorbs the uniform row of a query with no valid key (METHOD.md §6 Pool)."""
    bsz, rows, n_k = probs.shape
    index = key.unit[:, None, :].expand(bsz, rows, n_k)  # a view: no (B, rows, n_k) int64 copy
    pooled = probs.new_zeros(bsz, rows, key.num_units + 1).scatter_add(2, index, probs)
    return pooled[..., : key.num_units]


def _chunk(
    qs: tuple[torch.Tensor, ...], ks: tuple[torch.Tensor, ...], keys: tuple[_Half, ...], row_weight: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """One chunk of query rows against one or more key groups, softmax over all groups jointly.

    Separate mode passes one group (METHOD.md Eq. 6 or Eq. 7); the joint variant (§5) passes
    the own and the other sequence, so the split parts are not renormalised per block.
    Returns per group the head-mean, key-pooled rows scaled by their row weight (B, rows, U_k).
    """
    logits = [_logits(q, k, key.valid) for q, k, key in zip(qs, ks, keys)]
    joint = logits[0] if len(logits) == 1 else torch.cat(logits, dim=-1)  # (B, H, rows, sum n_k)
    probs = torch.softmax(joint, dim=-1).mean(1)  # (B, rows, sum n_k): mean after softmax (§5 Heads)
    parts = probs.split([k.shape[2] for k in ks], dim=-1)
    return tuple(_pool_keys(p, key) * row_weight[..., None] for p, key in zip(parts, keys))


def _attend(
    qs: tuple[torch.Tensor, ...],
    ks: tuple[torch.Tensor, ...],
    query: _Half,
    keys: tuple[_Half, ...],
    *,
    chunk_rows: int,
    checkpoint: bool,
) -> tuple[torch.Tensor, ...]:
    """Unit maps (B, U_q, U_k) per key group, accumulated chunk by chunk over query rows.

    Query rows are averaged within units by scattering the weighted rows into unit slots
    (METHOD.md §6 Pool, diag(G_q^T 1)^-1 G_q^T); tokens outside valid units go to a dummy slot.
    """
    bsz = qs[0].shape[0]
    use_ckpt = checkpoint and torch.is_grad_enabled() and any(t.requires_grad for t in (*qs, *ks))
    accs = [qs[0].new_zeros(bsz, query.num_units + 1, key.num_units, dtype=torch.float32) for key in keys]
    last = query.last_row  # rows past it are padding for every pair: skipped
    # split (not per-chunk slicing): one backward node gathers all chunk grads, instead of a
    # zero-filled full-size gradient per chunk
    q_chunks = [q[:, :, :last].split(chunk_rows, dim=2) for q in qs]  # each (B, H, rows, d)
    for c, r0 in enumerate(range(0, last, chunk_rows)):
        r1 = min(r0 + chunk_rows, last)
        args = (tuple(chunks[c] for chunks in q_chunks), ks, keys, query.row_weight[:, r0:r1])
        if use_ckpt:  # no randomness inside: skip the RNG stash
            parts = _checkpoint(_chunk, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            parts = _chunk(*args)
        for i, part in enumerate(parts):  # part (B, rows, U_k)
            index = query.unit[:, r0:r1, None].expand_as(part)
            accs[i] = accs[i].scatter_add(1, index, part)  # out of place: autograd keeps the index only
    return tuple(acc[:, : query.num_units] for acc in accs)


def _rows_per_chunk(q: torch.Tensor, n_keys: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        return chunk_rows
    bsz, heads = q.shape[:2]
    return max(1, DEFAULT_ELEMENT_BUDGET // (bsz * heads * max(n_keys, 1)))


def simulated_maps(
    qk: CapturedQK,
    batch: PreferenceBatch,
    *,
    inter_keys: str = "post_rope",
    mode: str = "separate",
    chunk_rows: int | None = None,
    checkpoint: bool = True,
) -> BlockMaps:
    """Student maps of the top-N captured blocks (N = len(qk.q)), unit-level, fp32, differentiable.

    qk.q[k] (2B, H, n, d) and qk.k[k] (2B, H_kv, n, d), chosen rows [0, B), rejected [B, 2B).
    inter_keys: "post_rope" (default) or "pre_rope" Q/K for the inter maps (METHOD.md §5
    Positions). mode: "separate" softmaxes per block (default) or "joint" (§5 Joint variant).
    chunk_rows: query rows per chunk; None picks it from DEFAULT_ELEMENT_BUDGET.
    """
    if inter_keys not in ("post_rope", "pre_rope"):
        raise ValueError(f"inter_keys must be 'post_rope' or 'pre_rope', got {inter_keys!r}")
    if mode not in ("separate", "joint"):
        raise ValueError(f"mode must be 'separate' or 'joint', got {mode!r}")
    if inter_keys == "pre_rope" and (qk.q_pre is None or qk.k_pre is None):
        raise ValueError("inter_keys='pre_rope' needs CapturedQK.q_pre and k_pre")
    for q, k in zip(qk.q, qk.k):
        if q.shape[1] % k.shape[1] or q.shape[0] != batch.input_ids.shape[0]:
            rows = batch.input_ids.shape[0]
            raise ValueError(f"Q {tuple(q.shape)} / K {tuple(k.shape)} do not fit a batch of {rows} rows")
    bsz = batch.num_pairs
    unit, mask = batch.student_unit, batch.attention_mask
    halves = {
        "w": (slice(0, bsz), _half(unit[:bsz], mask[:bsz], batch.unit_valid_w)),
        "l": (slice(bsz, 2 * bsz), _half(unit[bsz:], mask[bsz:], batch.unit_valid_l)),
    }
    blocks = [
        _block_maps(qk, k, halves, inter=inter_keys, mode=mode, chunk_rows=chunk_rows, checkpoint=checkpoint)
        for k in range(len(qk.q))
    ]
    stacked = {name: torch.stack([b[name] for b in blocks], dim=1) for name in BLOCKS}  # (B, N, U_q, U_k)
    return BlockMaps(**stacked, valid_w=batch.unit_valid_w.bool(), valid_l=batch.unit_valid_l.bool())


def _block_maps(
    qk: CapturedQK, k: int, halves: dict, *, inter: str, mode: str, chunk_rows: int | None, checkpoint: bool
) -> dict[str, torch.Tensor]:
    """The four (B, U_q, U_k) maps of captured block k (METHOD.md Eq. 6-7).
    `halves` maps "w" / "l" to (row slice of the 2B batch, its _Half)."""
    q, key = qk.q[k], qk.k[k]
    q_x, k_x = (qk.q_pre[k], qk.k_pre[k]) if inter == "pre_rope" else (q, key)
    out: dict[str, torch.Tensor] = {}
    for a, b in (("w", "l"), ("l", "w")):
        (rows_a, half_a), (rows_b, half_b) = halves[a], halves[b]
        intra = (q[rows_a], key[rows_a], half_a)  # Eq. 6: post-RoPE, own sequence
        cross = (q_x[rows_a], k_x[rows_b], half_b)  # Eq. 7: the other sequence of the same pair
        groups = [(intra, cross)] if mode == "joint" else [(intra,), (cross,)]
        maps: list[torch.Tensor] = []
        for group in groups:
            qs, ks, keys = zip(*group)
            step = _rows_per_chunk(qs[0], sum(t.shape[2] for t in ks), chunk_rows)
            maps.extend(_attend(qs, ks, half_a, keys, chunk_rows=step, checkpoint=checkpoint))
        out[a + a], out[a + b] = maps
    return out
