"""Row format of the preference stream: what travels through Ray Data between the
CPU encode stage, the teacher-attention stage and the train workers.

One row per pair; ragged token/unit arrays stay numpy (Ray stores them as variable-
shaped tensor columns). Teacher maps are added as fp16 at unit level by the teacher
stage (DESIGN.md §2, decision 4). This module imports no Ray.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from idrm_ray.core.types import AlignmentStats, PairEncoding

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


def encoding_to_row(enc: PairEncoding, *, pair_id: int, margin: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(enc, name) for name in ENCODING_COLUMNS}
    row["pair_id"] = int(pair_id)
    row["margin"] = float("nan") if margin is None else float(margin)
    for key, value in enc.stats.as_dict().items():
        row[STAT_PREFIX + key] = int(value)
    return row


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
