"""Ray Tune sweeps over λ × N with the teacher-map cache built once (issue 7)."""
from idrm_ray.tune.sweep import run_sweep

__all__ = ["run_sweep"]
