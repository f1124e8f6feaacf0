"""Scoring large eval sets with Ray Data: the plain `RewardScorer` as a `map_batches` actor
pool (one model per actor; GPUs by `num_gpus`, else CPU). The only module of the eval
package that imports Ray.

Ray is started by the caller (`idrm-ray eval --ray` starts it in `cli.py`, with the
fractional-CPU rule of the training pipeline, STACK_NOTES.md); eval itself never starts or
joins a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from idrm_ray.core.scoring import RewardScorer


def score_with_ray(
    checkpoint: str,
    seqs: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    concurrency: int = 1,
    num_gpus: float = 0.0,
    num_cpus: float = 0.5,
    dtype: str = "auto",
) -> np.ndarray:
    """(len(seqs),) rewards in input order, computed by `concurrency` scoring actors of the
    Ray this process has started or joined."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("Ray scoring needs a started Ray: `idrm-ray eval --ray` starts one (or joins "
                           "--ray-address); from Python, call ray.init() first")
    rows = [{"row": i, "ids": np.asarray(s, dtype=np.int64)} for i, s in enumerate(seqs)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // max(batch_size, 1), 64)))
    ds = ds.map_batches(
        RewardScorer,
        fn_constructor_args=(checkpoint,),
        fn_constructor_kwargs=dict(device="cuda" if num_gpus > 0 else "cpu", dtype=dtype, batch_size=batch_size),
        batch_size=batch_size * 4,
        concurrency=concurrency,
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
        batch_format="numpy",
    )
    out = np.full(len(seqs), np.nan)
    for batch in ds.iter_batches(batch_format="numpy", batch_size=None):
        out[np.asarray(batch["row"], dtype=np.int64)] = batch["reward"]
    if np.isnan(out).any():
        raise RuntimeError(f"Ray scoring returned no reward for {int(np.isnan(out).sum())} sequences")
    return out
