"""Which methods of one `idrm-ray train` go side by side (`driver.methods_at_once`): single-run
methods as many as fit, never a local run, never an ensemble procedure (its members fill the
cluster), and `run.methods_at_once` overriding the automatic count."""
from __future__ import annotations

import pytest

from idrm_ray.config import load_config
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core.types import PreferenceExample
from idrm_ray.run import driver
from idrm_ray.stream import cluster

RATED = [PreferenceExample(prompt="p", chosen="a", rejected="b", margin=1.0)]
UNRATED = [PreferenceExample(prompt="p", chosen="a", rejected="b")]


def _cfg(*overrides):
    return load_config(TrainJobConfig, None, list(overrides), preset="tiny")


@pytest.fixture
def four_fit(monkeypatch):
    monkeypatch.setattr(cluster, "runs_that_fit", lambda cfg: 4)


@pytest.mark.parametrize("methods, train, want", [
    (["bt", "id"], UNRATED, 2),
    (["bt", "inform"], UNRATED, 2),
    (["bt", "id+am"], RATED, 2),  # AM's margins from the ratings: one run
    (["bt", "id+am"], UNRATED, 1),  # from a bt ensemble's strength: a procedure
    (["bt", "lf"], RATED, 1),
    (["bt", "id+warm"], RATED, 1),
    (["id"], UNRATED, 1),
])
def test_single_run_methods_go_side_by_side(four_fit, methods, train, want):
    assert driver.methods_at_once(_cfg(), methods, train) == want


def test_local_runs_and_the_setting(four_fit, monkeypatch):
    assert driver.methods_at_once(_cfg("run.local=true"), ["bt", "id"], UNRATED) == 1
    assert driver.methods_at_once(_cfg("run.methods_at_once=1"), ["bt", "id"], UNRATED) == 1
    monkeypatch.setattr(cluster, "runs_that_fit", lambda cfg: 1)  # 2 cores, 1 CPU per worker + the teacher
    assert driver.methods_at_once(_cfg(), ["bt", "id"], UNRATED) == 1
    assert driver.methods_at_once(_cfg("run.methods_at_once=2"), ["bt", "id"], UNRATED) == 2


def test_the_setting_is_checked():
    with pytest.raises(ValueError, match="methods_at_once"):
        _cfg("run.methods_at_once=-1")
