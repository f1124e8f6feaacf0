"""What a method name means, parsed once (issue 15 §1). Pure python: the config tree, the
method families (`idrm_ray/methods/`, which own what a run asks of the worker: loss
settings, margin, head), compare and preflight all read a method through this.

A name is a base objective, optionally prefixed `id+` for training with L_ID as well
(METHOD.md Eq. 3; Table 3's combinations). The base objectives (METHOD.md §10):

    bt      Bradley-Terry (Eq. 2), one scalar head
    am      adaptive margin: per-pair margins from ratings, or from a bt ensemble's strength
    lf      label flipping / smoothing: a bt ensemble's strength picks the pairs
    warm    weight averaging of M members (bt, or id for id+warm)
    inform  InfoRM: an information-bottleneck head in place of the scalar head

`id` alone is `id+bt`.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BASES", "METHODS", "MethodKind", "method_kind"]

BASES = ("bt", "am", "lf", "warm", "inform")
# Every method, in the order of the paper's tables (compare's `all`): baselines, ID, ID combined.
METHODS = ("bt", "am", "lf", "warm", "inform", "id", "id+am", "id+lf", "id+warm")

# Bases whose final model is built from an ensemble's members (a second stage after them).
_FROM_MEMBERS = ("lf", "warm")


@dataclass(frozen=True)
class MethodKind:
    name: str  # as written in method.name
    distills: bool  # trains with L_ID, so needs the teacher
    base: str  # the base objective (BASES)

    @property
    def member_kind(self) -> str:
        """What an ensemble member of this method trains: id for id+warm (members are averaged
        into the final model, so they distil too), else bt (strength is a bt ensemble's)."""
        return "id" if self.distills and self.base == "warm" else "bt"

    def needs_members(self, *, am_from_ratings: bool) -> bool:
        """Whether the final run needs an ensemble trained first (a second stage): LF and WARM
        always, AM when its margins come from the ensemble rather than from ratings."""
        return self.base in _FROM_MEMBERS or (self.base == "am" and not am_from_ratings)


def am_from_ratings(am_source: str, train) -> bool:
    """Whether AM takes its margins from the data's ratings (`method.am.source` not `ensemble`
    and every training pair rated), so it needs no ensemble first (`needs_members`)."""
    return am_source != "ensemble" and all(e.margin is not None for e in train)


def method_kind(name: str) -> MethodKind:
    """'id+lf' -> MethodKind('id+lf', distills=True, base='lf'); 'id' -> base 'bt'."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if name == "id":
        return MethodKind(name, True, "bt")
    if name.startswith("id+"):
        return MethodKind(name, True, name[3:])
    return MethodKind(name, False, name)
