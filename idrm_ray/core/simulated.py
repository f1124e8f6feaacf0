"""Simulated attention maps from the student's captured Q/K, pooled to units.

METHOD.md Eq. 6 (intra: ww, ll) and Eq. 7 (inter: wl, lw). Each map is the head mean of
per-head softmaxes over the valid keys of one sequence (no causal mask), pooled to the
common units of METHOD.md §6 ("Pool": key columns summed, query rows averaged).

Only tokens of valid units enter the logits: each half's valid tokens are gathered to the
left first (B, n_v), so a row's softmax over its gathered keys is exactly the masked softmax
over the valid keys of the whole sequence, and the work scales with the units inside the
teacher's window (DESIGN.md decision 8), not with the student's window.

Memory: the dense maps would be H x n x n per sequence and block. Query rows are processed
in chunks, all heads of a chunk at once, and each chunk's softmax, head mean and key pooling
run under `torch.utils.checkpoint` (recomputed in backward), so autograd keeps only scatter
indices between chunks and the extra memory grows like B x H x rows x n, not H x n x n, in
forward and backward (DESIGN.md decision 5; measured in tests/unit/test_simulated.py).
"""
from __future__ import annotations

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
    """The valid tokens of one half (chosen or rejected) of the batch, gathered to the left:
    column j of a pair is its j-th token in a valid unit; shorter pairs are padded."""

    index: torch.Tensor  # (B, n_v) int64 token position in the sequence (0 on padding)
    valid: torch.Tensor  # (B, n_v) bool: a real token of a valid unit (False on padding)
    unit: torch.Tensor  # (B, n_v) int64 unit index; padding -> U (a dummy slot)
    row_weight: torch.Tensor  # (B, n_v) fp32: 1 / |tokens of its unit| on valid tokens, else 0
    num_units: int  # U

    @property
    def num_tokens(self) -> int:
        return self.index.shape[1]  # n_v

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, n, d) captured Q or K -> (B, H, n_v, d), this half's valid tokens only."""
        bsz, heads, _, dim = x.shape
        return x.gather(2, self.index[:, None, :, None].expand(bsz, heads, self.num_tokens, dim))


def _half(unit: torch.Tensor, attention_mask: torch.Tensor, unit_valid: torch.Tensor) -> _Half:
    """Which tokens count (special/pad/invalid-unit and unit -1 tokens are dropped, METHOD.md
    §6) and how each token's row is weighted when query rows are averaged within a unit."""
    num_units = unit_valid.shape[1]
    has_unit = (unit >= 0) & (unit < num_units) & (attention_mask > 0)
    safe = unit.clamp(0, max(num_units - 1, 0))
    keep = has_unit & unit_valid.gather(1, safe) if num_units else has_unit & False  # (B, n)
    n_v = int(keep.sum(1).max()) if keep.numel() else 0
    # Kept tokens first, in sequence order: a stable sort of the 0/1 "dropped" flag.
    index = torch.sort((~keep).to(torch.int32), dim=1, stable=True).indices[:, :n_v]  # (B, n_v)
    valid = keep.gather(1, index)  # (B, n_v)
    slot = torch.where(valid, safe.gather(1, index), num_units)  # (B, n_v)
    counts = torch.zeros(unit.shape[0], num_units + 1, device=unit.device).scatter_add_(1, slot, valid.float())
    row_weight = valid.float() / counts.gather(1, slot).clamp(min=1.0)
    return _Half(index=index, valid=valid, unit=slot, row_weight=row_weight, num_units=num_units)


def _logits(q: torch.Tensor, k: torch.Tensor, key_valid: torch.Tensor, scaling: float) -> torch.Tensor:
    """Masked scaled logits (B, H, rows, n_k) in fp32; GQA: head h reads kv head h // (H // H_kv).
    `scaling` is the model's own logit scale (1/sqrt(d) for Llama-style attention)."""
    bsz, heads, rows, dim = q.shape
    kv_heads = k.shape[1]
    # (B, H, rows, d) -> (B, H_kv, G*rows, d): heads h = j*G + g share kv head j
    qg = q.float().reshape(bsz, kv_heads, (heads // kv_heads) * rows, dim) * scaling
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
    qs: tuple[torch.Tensor, ...],
    ks: tuple[torch.Tensor, ...],
    keys: tuple[_Half, ...],
    row_weight: torch.Tensor,
    scaling: float,
) -> tuple[torch.Tensor, ...]:
    """One chunk of query rows against one or more key groups, softmax over all groups jointly.

    Separate mode passes one group (METHOD.md Eq. 6 or Eq. 7); the joint variant (§5) passes
    the own and the other sequence, so the split parts are not renormalised per block.
    Returns per group the head-mean, key-pooled rows scaled by their row weight (B, rows, U_k).
    """
    logits = [_logits(q, k, key.valid, scaling) for q, k, key in zip(qs, ks, keys)]
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
    scaling: float,
) -> tuple[torch.Tensor, ...]:
    """Unit maps (B, U_q, U_k) per key group, accumulated chunk by chunk over query rows.
    qs (B, H, n_v, d) and ks are already gathered to the valid tokens of `query` / `keys`.

    Query rows are averaged within units by scattering the weighted rows into unit slots
    (METHOD.md §6 Pool, diag(G_q^T 1)^-1 G_q^T); tokens outside valid units go to a dummy slot.
    """
    bsz = qs[0].shape[0]
    use_ckpt = checkpoint and torch.is_grad_enabled() and any(t.requires_grad for t in (*qs, *ks))
    accs = [qs[0].new_zeros(bsz, query.num_units + 1, key.num_units, dtype=torch.float32) for key in keys]
    last = query.num_tokens  # gathered: every row up to n_v is some pair's valid token
    # split (not per-chunk slicing): one backward node gathers all chunk grads, instead of a
    # zero-filled full-size gradient per chunk
    q_chunks = [q[:, :, :last].split(chunk_rows, dim=2) for q in qs]  # each (B, H, rows, d)
    for c, r0 in enumerate(range(0, last, chunk_rows)):
        r1 = min(r0 + chunk_rows, last)
        args = (tuple(chunks[c] for chunks in q_chunks), ks, keys, query.row_weight[:, r0:r1], scaling)
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
    scaling: float | None = None,
) -> BlockMaps:
    """Student maps of the top-N captured blocks (N = len(qk.q)), unit-level, fp32, differentiable.

    qk.q[k] (2B, H, n, d) and qk.k[k] (2B, H_kv, n, d), chosen rows [0, B), rejected [B, 2B).
    inter_keys: "post_rope" (default) or "pre_rope" Q/K for the inter maps (METHOD.md §5
    Positions). mode: "separate" softmaxes per block (default) or "joint" (§5 Joint variant).
    chunk_rows: query rows per chunk; None picks it from DEFAULT_ELEMENT_BUDGET.
    scaling: the logit scale; None takes the captured model's own (`qk.scaling`, from its
    `AttentionLayout`), else 1/sqrt(d).
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
    if scaling is None:
        scaling = qk.scaling if qk.scaling is not None else qk.q[0].shape[-1] ** -0.5
    bsz = batch.num_pairs
    unit, mask = batch.student_unit, batch.attention_mask
    halves = {
        "w": (slice(0, bsz), _half(unit[:bsz], mask[:bsz], batch.unit_valid_w)),
        "l": (slice(bsz, 2 * bsz), _half(unit[bsz:], mask[bsz:], batch.unit_valid_l)),
    }
    blocks = [
        _block_maps(
            qk, k, halves, inter=inter_keys, mode=mode, chunk_rows=chunk_rows, checkpoint=checkpoint, scaling=scaling
        )
        for k in range(len(qk.q))
    ]
    stacked = {name: torch.stack([b[name] for b in blocks], dim=1) for name in BLOCKS}  # (B, N, U_q, U_k)
    return BlockMaps(**stacked, valid_w=batch.unit_valid_w.bool(), valid_l=batch.unit_valid_l.bool())


def _block_maps(
    qk: CapturedQK,
    k: int,
    halves: dict,
    *,
    inter: str,
    mode: str,
    chunk_rows: int | None,
    checkpoint: bool,
    scaling: float,
) -> dict[str, torch.Tensor]:
    """The four (B, U_q, U_k) maps of captured block k (METHOD.md Eq. 6-7).
    `halves` maps "w" / "l" to (row slice of the 2B batch, its _Half)."""
    q, key = qk.q[k], qk.k[k]
    q_x, k_x = (qk.q_pre[k], qk.k_pre[k]) if inter == "pre_rope" else (q, key)
    out: dict[str, torch.Tensor] = {}
    for a, b in (("w", "l"), ("l", "w")):
        (rows_a, half_a), (rows_b, half_b) = halves[a], halves[b]
        q_a = half_a.take(q[rows_a])  # (B, H, n_v, d): the valid tokens only
        qx_a = q_a if q_x is q else half_a.take(q_x[rows_a])
        intra = (q_a, half_a.take(key[rows_a]), half_a)  # Eq. 6: post-RoPE, own sequence
        cross = (qx_a, half_b.take(k_x[rows_b]), half_b)  # Eq. 7: the other sequence of the same pair
        groups = [(intra, cross)] if mode == "joint" else [(intra,), (cross,)]
        maps: list[torch.Tensor] = []
        for group in groups:
            qs, ks, keys = zip(*group)
            step = _rows_per_chunk(qs[0], sum(t.shape[2] for t in ks), chunk_rows)
            maps.extend(_attend(qs, ks, half_a, keys, chunk_rows=step, checkpoint=checkpoint, scaling=scaling))
        out[a + a], out[a + b] = maps
    return out
