"""Named containers shared by the ID-RM core (METHOD.md notation).

Shapes use: B pairs, N distilled blocks (k=0 is the top block), n student tokens,
n_t teacher tokens, H query heads, H_kv key/value heads, d head dim, U_w / U_l the
number of common units in the chosen / rejected half (METHOD.md §6, "Token alignment").

Only numpy is imported here (torch where a batch moves to a device): the containers travel
through Ray Data and DeepSpeed workers unchanged, but never import either, and reading a
config or a data file (`PreferenceExample`) loads no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair as raw strings: the student reads prompt+chosen and
    prompt+rejected separately; the teacher reads both halves jointly."""

    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None  # optional rating margin (AM-RM); None when the data has none


@dataclass
class AlignmentStats:
    """Counts from aligning one pair (summed over a batch by `merge`)."""

    units: int = 0  # common units over both halves
    units_valid: int = 0  # units with >=1 student and >=1 teacher token inside both windows
    units_outside_teacher: int = 0  # units cut by the teacher's max length (masked out of L_ID)
    units_outside_student: int = 0  # units cut by the student's max length
    teacher_tokens_truncated: int = 0
    student_tokens_truncated: int = 0
    pairs_teacher_truncated: int = 0  # pairs whose teacher input was truncated at all
    pairs_student_truncated: int = 0

    def merge(self, other: "AlignmentStats") -> "AlignmentStats":
        return AlignmentStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class PairEncoding:
    """One aligned pair, CPU numpy (the output of `units.encode_pair`).

    Units are numbered per half: chosen units 0..U_w-1 over the content string
    prompt+chosen, rejected units 0..U_l-1 over prompt+rejected. On the teacher the
    rejected half's units are offset by U_w (one global numbering over the joint input).
    -1 marks a token with no unit: specials (BOS/EOS/CLS/SEP), chat-template tokens, padding,
    and (default `map_units="teacher_window"`, DESIGN.md decision 8) tokens of units that are
    not valid, e.g. student tokens past the teacher's window: the maps then cover only valid
    units, so `unit_valid_*` is all True and U_w + U_l is bounded by the teacher's window.
    """

    student_ids_w: np.ndarray  # (n_w,) int64: [BOS] prompt+chosen [EOS]
    student_ids_l: np.ndarray  # (n_l,) int64
    student_unit_w: np.ndarray  # (n_w,) int64 in [-1, U_w)
    student_unit_l: np.ndarray  # (n_l,) int64 in [-1, U_l)
    teacher_ids: np.ndarray  # (n_t,) int64: tokenizer pair format, e.g. [CLS] x y_w [SEP] x y_l [SEP]
    teacher_type_ids: np.ndarray  # (n_t,) int64 segment ids (0 chosen half, 1 rejected half)
    teacher_unit: np.ndarray  # (n_t,) int64 in [-1, U_w + U_l): rejected units offset by U_w
    unit_valid_w: np.ndarray  # (U_w,) bool: >=1 student and >=1 teacher token inside both windows
    unit_valid_l: np.ndarray  # (U_l,) bool
    unit_response_w: np.ndarray  # (U_w,) bool: unit lies in the response (not the prompt)
    unit_response_l: np.ndarray  # (U_l,) bool
    unit_spans_w: np.ndarray  # (U_w, 2) int64 [start, end) character spans in prompt+chosen
    unit_spans_l: np.ndarray  # (U_l, 2) int64 in prompt+rejected
    stats: AlignmentStats = field(default_factory=AlignmentStats)

    @property
    def n_units_w(self) -> int:
        return int(self.unit_valid_w.shape[0])

    @property
    def n_units_l(self) -> int:
        return int(self.unit_valid_l.shape[0])


@dataclass
class PreferenceBatch:
    """A padded student batch. Chosen sequences are rows [0, B), rejected rows [B, 2B):
    one forward over 2B sequences (OpenRLHF's concatenated layout). Right padding."""

    input_ids: torch.Tensor  # (2B, n) int64
    attention_mask: torch.Tensor  # (2B, n) int64, 1 on real tokens
    student_unit: torch.Tensor  # (2B, n) int64 unit index within its own half, -1 none/pad
    unit_valid_w: torch.Tensor  # (B, U_w) bool, padded units False
    unit_valid_l: torch.Tensor  # (B, U_l) bool
    unit_response_w: torch.Tensor  # (B, U_w) bool
    unit_response_l: torch.Tensor  # (B, U_l) bool
    margin: torch.Tensor | None = None  # (B,) float, AM-RM margins when the data has ratings

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device: torch.device | str) -> "PreferenceBatch":
        import torch

        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return PreferenceBatch(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in moved.items()})


@dataclass
class BlockMaps:
    """Unit-level attention maps of the top-N blocks, split into the four blocks of
    METHOD.md Eq. 5 (teacher) or Eq. 6-7 (student simulation). Index k=0 of dim N is the
    top block; student block M-k pairs with teacher block N_T-k (Eq. 8, top-aligned).

    Valid query rows are row-stochastic over the valid key units of the other half
    (specials dropped, renormalised; METHOD.md §6). Rows of invalid or padded units and
    columns of invalid or padded units are zero.
    """

    ww: torch.Tensor  # (B, N, U_w, U_w) intra, chosen
    ll: torch.Tensor  # (B, N, U_l, U_l) intra, rejected
    wl: torch.Tensor  # (B, N, U_w, U_l) inter, chosen -> rejected
    lw: torch.Tensor  # (B, N, U_l, U_w) inter, rejected -> chosen
    valid_w: torch.Tensor  # (B, U_w) bool
    valid_l: torch.Tensor  # (B, U_l) bool

    @property
    def num_blocks(self) -> int:
        return self.ww.shape[1]

    def block(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "BlockMaps":
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() and dtype else t.to(device)

        return BlockMaps(*(move(getattr(self, f.name)) for f in fields(self)))


BLOCKS = ("ww", "ll", "wl", "lw")  # METHOD.md Eq. 5 order
INTRA_BLOCKS = ("ww", "ll")  # Eq. 6
INTER_BLOCKS = ("wl", "lw")  # Eq. 7


@dataclass
class CapturedQK:
    """Q and K of the student's top-N attention blocks from the ordinary forward.
    Lists are indexed by k (k=0 the top block)."""

    q: list[torch.Tensor]  # each (2B, H, n, d), post-RoPE
    k: list[torch.Tensor]  # each (2B, H_kv, n, d), post-RoPE
    q_pre: list[torch.Tensor] | None = None  # each (2B, H, n, d), pre-RoPE (inter-map variant)
    k_pre: list[torch.Tensor] | None = None  # each (2B, H_kv, n, d)
    scaling: float | None = None  # the model's own logit scale (AttentionLayout.scaling); None: 1/sqrt(d)
