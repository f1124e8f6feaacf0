"""Bradley-Terry (METHOD.md Eq. 2): one run with the scalar head and the plain BT loss."""
from __future__ import annotations

from idrm_ray.methods.base import MethodRun


def worker_asks(m) -> dict:
    """Nothing beyond the defaults (scalar head, no margin, no smoothing)."""
    return {}


def run(r: MethodRun) -> list[dict]:
    return [r.train_once()]
