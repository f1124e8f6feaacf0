"""The train tree's `method` section: which objective trains (METHOD.md §5-§10), and one
section per method family, declared in the family's own module (`idrm_ray/methods/`) and
listed in `methods.registry.SECTIONS`: `id`, `am`, `lf`, `warm`, `inform`, `ensemble`.
Adding a family's settings touches its module and the registry, not this file."""
from __future__ import annotations

import dataclasses
from typing import Literal

from idrm_ray.configtree.base import param, section
from idrm_ray.core.method_kind import METHODS, MethodKind, method_kind
from idrm_ray.methods.registry import SECTIONS


class _MethodProperties:
    """Which reward-model objective to train: ID-RM, the paper's baselines and their combinations."""

    @property
    def kind(self) -> MethodKind:
        """The parsed name (`core/method_kind.py`)."""
        return method_kind(self.name)

    @property
    def distills(self) -> bool:
        """Whether the final RM trains with L_ID (needs the teacher)."""
        return self.kind.distills

    @property
    def baseline(self) -> str:
        """The baseline part of the name: bt, am, lf, warm or inform (`id` alone: bt)."""
        return self.kind.base


_NAME_HELP = ("`bt`: Bradley-Terry (Eq. 2); `id`: BT + λ·L_ID (Eq. 3); baselines `am`, `lf`, `warm`, `inform` "
              "(METHOD.md §10); `id+am`, `id+lf`, `id+warm`: ID combined with them (Table 3).")

# A frozen dataclass like every other section, its fields: name, compare_bt, then SECTIONS in order.
MethodConfig = dataclasses.make_dataclass(
    "MethodConfig",
    [
        ("name", Literal[METHODS], param("id", _NAME_HELP)),
        ("compare_bt", bool, param(False, "With any method but bt, also train a BT student on the same data and "
                                          "report both.")),
        *[(key, cls, section(cls)) for key, cls in SECTIONS.items()],
    ],
    bases=(_MethodProperties,),
    frozen=True,
    namespace={"__doc__": _MethodProperties.__doc__, "__module__": __name__},
)
