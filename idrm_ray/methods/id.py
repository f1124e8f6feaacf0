"""Interaction distillation (METHOD.md Eq. 3): L_BT + λ·L_ID against the teacher's maps.
`id` alone is id+bt; for id+X the registry adds these asks to X's (composition)."""
from __future__ import annotations

from idrm_ray.config import dump_config
from idrm_ray.core.objective import IDSettings


def worker_asks(m) -> dict:
    """The IDSettings of `method.id` (its fields match IDSettings by name)."""
    return {"id_settings": IDSettings(**dump_config(m.id))}
