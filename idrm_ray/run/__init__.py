"""One training run: `idrm-ray train` and `idrm-ray teacher` (driver.py), the checks before
any worker starts (preflight.py), the student's files (assets.py) and the run folder's
outputs (outputs.py).

The names below are the run as `compare` and `tune` see it (they run it many times): they
import from `idrm_ray.run` alone, never its modules or the rooms beneath it (`stream`,
`teacher`, `multirun`, `train`); tests/unit/test_imports.py checks that.
"""
from idrm_ray.multirun.tools import member_overrides, run_tasks, score_gaps
from idrm_ray.run.assets import prepare_student
from idrm_ray.run.driver import (
    encode_kwargs_for, load_data, map_cache_key, run_method, teacher_maps_stream, train_one)
from idrm_ray.run.outputs import tiny_student_note
from idrm_ray.stream.cluster import init_ray, runs_that_fit, stage_placement
from idrm_ray.stream.dataset import encoded_stream, examples_dataset
from idrm_ray.teacher.assets import tiny_teacher_dir
from idrm_ray.teacher.job import prepare_teacher

__all__ = [
    # data and models
    "load_data", "prepare_student", "prepare_teacher", "tiny_teacher_dir",
    # one run, one method (its family's procedure), ensemble members
    "train_one", "run_method", "member_overrides", "run_tasks", "score_gaps", "tiny_student_note",
    # Ray and the teacher-map stream (tune builds the shared map cache once)
    "init_ray", "runs_that_fit", "stage_placement", "encode_kwargs_for", "examples_dataset", "encoded_stream",
    "teacher_maps_stream", "map_cache_key",
]
