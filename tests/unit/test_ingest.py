"""`ingest.StartedEarly`: a fresh Ray Train worker asks its stream for the first batch before it
builds the student (`worker.train_loop_per_worker`), so the stream's start-up (encode tasks,
teacher actors loading their model) runs beside the model load. What the loop then iterates
must be the stream unchanged: every item once, in order, errors where iteration begins."""
from __future__ import annotations

import threading

import pytest

from idrm_ray.train.ingest import StartedEarly, synced_batches


def _stream(items, asked: threading.Event, *, error: Exception | None = None):
    asked.set()
    yield from items
    if error is not None:
        raise error


def test_the_first_batch_is_asked_for_before_iteration_and_every_item_comes_once_in_order():
    asked = threading.Event()
    early = StartedEarly(_stream([{"i": 0}, {"i": 1}, {"i": 2}], asked))
    assert asked.wait(5), "the stream was not asked for its first batch until the loop iterated"
    assert [b["i"] for b in early] == [0, 1, 2]


def test_an_empty_stream_stays_empty_and_errors_surface_in_the_loop():
    assert list(StartedEarly(iter([]))) == []
    failing = StartedEarly(_stream([], threading.Event(), error=ValueError("bad row 3")))
    with pytest.raises(ValueError, match="bad row 3"):
        list(failing)
    later = StartedEarly(_stream([{"i": 0}], threading.Event(), error=ValueError("bad row 9")))
    seen = []
    with pytest.raises(ValueError, match="bad row 9"):
        for b in later:
            seen.append(b["i"])
    assert seen == [0]  # the first batch came before the error, as without the thread


def test_synced_batches_reads_it_as_any_stream():
    items = list(synced_batches(StartedEarly(iter([{"i": 0}, {"i": 1}])), lambda x: x))
    assert [(it.batch["i"], it.real) for it in items] == [(0, True), (1, True)]
