"""A resumed epoch is exactly-once only if the re-streamed epoch gives every rank the same rows
in the same order: the worker loop skips the micro-batches its checkpoint says were trained
(worker.py, `micro < progress.micro_in_epoch`). `ExactlyOnceDataConfig` therefore preserves the
stream's order.

Without it, blocks leave an actor pool in completion order and Ray Data's splitter gives each to
the rank with the fewest rows, so one slow batch before a failure (and not after) reshuffles the
shards: this test without the fix failed with 16 of 64 rows trained twice and 16 never in the
resumed epoch (8 and 8 in another run). Here the stream goes through `ExactlyOnceDataConfig.configure`
twice, once with the first batch delayed and once without, and the shards must be identical.
"""
from __future__ import annotations

import sys
import threading
import time

from ray import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])

ROWS, RANKS, SKIP_MICRO, MICRO = 64, 2, 4, 4


class _SlowFirst:
    """A two-actor stage; with `delay`, the batch holding row 0 finishes last."""

    def __init__(self, delay: bool):
        self.delay = delay

    def __call__(self, batch):
        if self.delay and 0 in set(batch["id"].tolist()):
            time.sleep(3)
        return batch


def _shards(delay: bool) -> list[list[int]]:
    import ray

    from idrm_ray.stream.dataset import ExactlyOnceDataConfig

    ds = ray.data.range(ROWS, override_num_blocks=8).map_batches(
        _SlowFirst, fn_constructor_kwargs={"delay": delay}, concurrency=2, batch_size=8, num_cpus=0.25)
    config = ExactlyOnceDataConfig()
    config.set_train_total_resources(0, 0)
    splits = config.configure({"train": ds}, world_size=RANKS, worker_handles=None, worker_node_ids=None)
    out: list[list[int]] = [[] for _ in range(RANKS)]

    def read(rank: int) -> None:
        for batch in splits[rank]["train"].iter_batches(batch_size=MICRO, batch_format="numpy"):
            out[rank] += batch["id"].tolist()

    readers = [threading.Thread(target=read, args=(r,), daemon=True) for r in range(RANKS)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(120)
    assert not any(t.is_alive() for t in readers), "a shard did not finish within 120 s"
    return out


def test_restreamed_epoch_gives_every_rank_the_same_rows(ray_session, guard):
    before = guard(lambda: _shards(delay=True), timeout_s=240, what="stream with a slow first batch")
    after = guard(lambda: _shards(delay=False), timeout_s=240, what="the same stream, re-run")
    assert sorted(i for shard in before for i in shard) == list(range(ROWS))
    # A restart after SKIP_MICRO micro-batches: the first attempt's rows up to there, the second's after.
    trained = [i for r in range(RANKS) for i in before[r][: SKIP_MICRO * MICRO] + after[r][SKIP_MICRO * MICRO :]]
    lost, dup = ROWS - len(set(trained)), len(trained) - len(set(trained))
    assert before == after, f"shards differ after a re-stream: resumed epoch would lose {lost} rows, repeat {dup}"
