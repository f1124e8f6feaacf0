"""Aligned pair encodings (`units.encode_pairs`, or stream rows read back) padded into one
`PreferenceBatch` of tensors: chosen rows then rejected rows."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from idrm_ray.core.types import PairEncoding, PreferenceBatch


def _pad(rows: list[np.ndarray], *, value, dtype: torch.dtype) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=dtype)  # a copy: stream rows are read-only arrays
    return out


def collate_pairs(
    encodings: Sequence[PairEncoding], *, pad_id: int, margins: Sequence[float] | None = None
) -> PreferenceBatch:
    """Stack B encodings into one student batch: chosen rows [0, B), rejected rows
    [B, 2B), right padding to the longest sequence; unit masks padded with False."""
    if margins is not None and len(margins) != len(encodings):
        raise ValueError(f"{len(margins)} margins for {len(encodings)} pairs")
    seqs = [e.student_ids_w for e in encodings] + [e.student_ids_l for e in encodings]
    units = [e.student_unit_w for e in encodings] + [e.student_unit_l for e in encodings]
    masks = [np.ones(len(s), dtype=np.int64) for s in seqs]
    unit_masks = {
        name: _pad([getattr(e, name) for e in encodings], value=False, dtype=torch.bool)
        for name in ("unit_valid_w", "unit_valid_l", "unit_response_w", "unit_response_l")
    }  # each (B, U_max)
    return PreferenceBatch(
        input_ids=_pad(seqs, value=pad_id, dtype=torch.long),  # (2B, n)
        attention_mask=_pad(masks, value=0, dtype=torch.long),  # (2B, n)
        student_unit=_pad(units, value=-1, dtype=torch.long),  # (2B, n)
        margin=None if margins is None else torch.as_tensor(margins, dtype=torch.float32),  # (B,)
        **unit_masks,
    )
