"""`save_pretrained` without the DeepSpeed import it does not need.

transformers' `save_pretrained` unwraps the model through accelerate's
`extract_model_from_parallel`, which imports deepspeed (1.3 s of CPU measured here) only to ask
whether the model is a `DeepSpeedEngine`. An object can be an instance of that class only once
deepspeed has been imported, so where it has not, the question is skipped for the save's
duration. Every process that saves a checkpoint without DeepSpeed (plain-torch train workers,
the teacher fine-tune's workers, local runs, the driver) is spared the import; under DeepSpeed
nothing changes.
"""
from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def _no_deepspeed_probe():
    if "deepspeed" in sys.modules:
        yield
        return
    try:
        import accelerate.utils.other as other
    except ImportError:  # transformers without accelerate unwraps by hand
        yield
        return
    probe = other.is_deepspeed_available
    other.is_deepspeed_available = lambda: "deepspeed" in sys.modules and probe()
    try:
        yield
    finally:
        other.is_deepspeed_available = probe


def save_pretrained(model, out: str | os.PathLike, **kwargs) -> None:
    """`model.save_pretrained(out, **kwargs)`, without importing deepspeed for it."""
    with _no_deepspeed_probe():
        model.save_pretrained(out, **kwargs)
