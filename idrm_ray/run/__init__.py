"""One training run: `idrm-ray train` and `idrm-ray teacher` (driver.py), what a run reads
before anything starts (inputs.py), the checks before any worker starts (preflight.py), the
student's files (assets.py) and the run folder's outputs (outputs.py).

The names below are the run as `compare` and `tune` see it (they run it many times): they
import from `idrm_ray.run` alone, never its modules or the rooms beneath it (`stream`,
`teacher`, `multirun`, `train`); tests/unit/test_imports.py checks that. They load on first
use, so that `idrm_ray.run.inputs` stays light (no torch, transformers or Ray): the command
line validates a run's data with it before the driver's imports.
"""
from __future__ import annotations

__all__ = [
    # data and models
    "load_data", "prepare_student", "prepare_teacher", "tiny_teacher_dir",
    # one run, one method (its family's procedure), ensemble members
    "train_one", "run_method", "member_overrides", "run_tasks", "score_gaps", "tiny_student_note",
    # Ray and the teacher-map stream (tune builds the shared map cache once)
    "init_ray", "runs_that_fit", "stage_placement", "encode_kwargs_for", "examples_dataset", "encoded_stream",
    "teacher_maps_stream", "map_cache_key", "cached_rows",
]


def __getattr__(name: str):
    """Each public name from its module, imported when first asked for (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'idrm_ray.run' has no attribute {name!r}")
    if name in ("member_overrides", "run_tasks", "score_gaps"):
        from idrm_ray.multirun import tools as module
    elif name == "prepare_student":
        from idrm_ray.run import assets as module
    elif name == "load_data":
        from idrm_ray.run import inputs as module
    elif name == "tiny_student_note":
        from idrm_ray.run import outputs as module
    elif name in ("init_ray", "runs_that_fit", "stage_placement"):
        from idrm_ray.stream import cluster as module
    elif name == "cached_rows":
        from idrm_ray.stream import map_cache as module
    elif name in ("examples_dataset", "encoded_stream"):
        from idrm_ray.stream import dataset as module
    elif name == "tiny_teacher_dir":
        from idrm_ray.teacher import assets as module
    elif name == "prepare_teacher":
        from idrm_ray.teacher import job as module
    else:
        from idrm_ray.run import driver as module
    return getattr(module, name)
