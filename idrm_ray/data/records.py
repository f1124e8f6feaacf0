"""The stream schema: the one place that names the columns of a pair as it travels through
Ray Data (CPU encode stage -> teacher stage or map cache -> train workers) and converts
between them and the in-memory types. This module imports no Ray.

One row per pair; ragged token/unit arrays stay numpy (Ray stores them as variable-shaped
tensor columns). The stream starts as text rows (`pair_id`, `prompt`, `chosen`, `rejected`,
`margin`); after the encode stage a row holds

- the encoded pair (`ENCODING_COLUMNS`, the fields of `core.types.PairEncoding`), its
  `pair_id`, its rating `margin` (NaN: none) and its truncation counts (`stat_*`);
- its teacher maps, added by the teacher stage: `teacher_maps`, per row (N, U, U) fp16
  at unit level (or u8 (N, U, U + 2)), and `teacher_map_bytes` (DESIGN.md §2, decision 4).

The map cache stores the maps as one column per block (`teacher_maps_k0`, ...; k=0 the
top block), so a run with a smaller N reads only its blocks; `blocks_to_maps` turns them
back into `teacher_maps` as the cache is read, so a worker sees one form either way.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from idrm_ray.core.types import AlignmentStats, PairEncoding, PreferenceExample

ENCODING_COLUMNS = (
    "student_ids_w",
    "student_ids_l",
    "student_unit_w",
    "student_unit_l",
    "teacher_ids",
    "teacher_type_ids",
    "teacher_unit",
    "unit_valid_w",
    "unit_valid_l",
    "unit_response_w",
    "unit_response_l",
    "unit_spans_w",
    "unit_spans_l",
)
STAT_PREFIX = "stat_"
MAPS = "teacher_maps"  # per row (N, U, U): the teacher's unit-level maps of the top-N blocks
MAP_BYTES = "teacher_map_bytes"  # per row: bytes of its maps as shipped
BLOCK_PREFIX = "teacher_maps_k"  # the map cache's per-block columns


def pair_columns() -> list[str]:
    """The columns of an encoded pair (what the encode stage emits)."""
    return [*ENCODING_COLUMNS, "pair_id", "margin", *(STAT_PREFIX + name for name in AlignmentStats().as_dict())]


def cache_columns(num_blocks: int) -> list[str]:
    """The columns a run with N = `num_blocks` reads from the map cache."""
    return [*pair_columns(), *(f"{BLOCK_PREFIX}{k}" for k in range(num_blocks))]


# -- text pair <-> row --------------------------------------------------------------------


def example_rows(examples: list[PreferenceExample]) -> list[dict[str, Any]]:
    """The stream's first rows: one per pair, its index as `pair_id`."""
    return [{"pair_id": i, "prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected,
             "margin": np.nan if ex.margin is None else float(ex.margin)} for i, ex in enumerate(examples)]


def batch_examples(batch: dict[str, Any]) -> list[PreferenceExample]:
    """A numpy batch of text rows back to PreferenceExamples (NaN margin: none)."""
    margins = batch.get("margin", np.full(len(batch["prompt"]), np.nan))
    return [PreferenceExample(str(p), str(c), str(r), None if np.isnan(m) else float(m))
            for p, c, r, m in zip(batch["prompt"], batch["chosen"], batch["rejected"], margins)]


# -- encoded pair <-> row ---------------------------------------------------------------


def encoded_batch(encodings: list[PairEncoding], examples: list[PreferenceExample], pair_ids) -> dict[str, Any]:
    """The encode stage's output batch: each pair's encoding, id, margin and counts."""
    return rows_to_batch([encoding_to_row(enc, pair_id=int(pid), margin=ex.margin)
                          for enc, ex, pid in zip(encodings, examples, pair_ids)])



def encoding_to_row(enc: PairEncoding, *, pair_id: int, margin: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(enc, name) for name in ENCODING_COLUMNS}
    row["pair_id"] = int(pair_id)
    row["margin"] = float("nan") if margin is None else float(margin)
    for key, value in enc.stats.as_dict().items():
        row[STAT_PREFIX + key] = int(value)
    return row


def rows_to_batch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Row dicts -> one numpy batch: scalar columns become arrays, per-row arrays stay a
    list (a ragged tensor column)."""
    return {key: _column([row[key] for row in rows]) for key in rows[0]} if rows else {}


def _column(values: list) -> Any:
    if isinstance(values[0], np.ndarray):
        return values
    return np.asarray(values)


def row_to_encoding(batch: dict[str, Any], i: int) -> PairEncoding:
    """Row i of a numpy batch (ragged columns are object arrays) back to a PairEncoding."""
    fields = {name: np.asarray(batch[name][i]) for name in ENCODING_COLUMNS}
    stats = AlignmentStats(**{k: int(batch[STAT_PREFIX + k][i]) for k in AlignmentStats().as_dict()})
    return PairEncoding(**fields, stats=stats)


def batch_margins(batch: dict[str, Any]) -> list[float] | None:
    """Margins of a batch, or None when no row carries one (NaN marks "no margin")."""
    values = [float(v) for v in batch["margin"]]
    return None if all(math.isnan(v) for v in values) else [0.0 if math.isnan(v) else v for v in values]


def batch_size(batch: dict[str, Any]) -> int:
    return len(batch["pair_id"])


# -- teacher maps <-> the map cache's block columns ---------------------------------------


def maps_to_blocks(batch: dict[str, Any]) -> dict[str, Any]:
    """`teacher_maps` (per row (N, U, U)) -> one column per block k, as the cache stores them."""
    out = {k: v for k, v in batch.items() if k not in (MAPS, MAP_BYTES)}
    num_blocks = batch[MAPS][0].shape[0] if len(batch[MAPS]) else 0
    for k in range(num_blocks):
        out[f"{BLOCK_PREFIX}{k}"] = [m[k] for m in batch[MAPS]]
    return out


def blocks_to_maps(batch: dict[str, Any]) -> dict[str, Any]:
    """The cache's block columns (all of them, or the top ones a run reads) -> `teacher_maps`
    and `teacher_map_bytes`, the teacher stage's form."""
    blocks = sorted((k for k in batch if k.startswith(BLOCK_PREFIX)), key=lambda k: int(k[len(BLOCK_PREFIX):]))
    out = {k: v for k, v in batch.items() if k not in blocks}
    maps = [np.stack([np.asarray(batch[k][i]) for k in blocks]) for i in range(batch_size(batch))]
    out[MAPS] = maps
    out[MAP_BYTES] = np.array([m.nbytes for m in maps], dtype=np.int64)
    return out
