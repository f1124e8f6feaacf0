"""`derive`: the one way to make a config tree from another with dotted keys (issue 15 §4);
used by the multi-run procedures, compare and tune."""
from __future__ import annotations

import pytest

from idrm_ray.config import ConfigError, TrainJobConfig, derive, dump_config, load_config


@pytest.fixture(scope="module")
def base() -> TrainJobConfig:
    return load_config(TrainJobConfig, preset="tiny")


def test_derive_equals_the_same_overrides_on_load(base):
    got = derive(base, {"method.id.lam": 0.25, "run.name": "x", "method.name": "id"})
    want = load_config(TrainJobConfig, None, ["method.id.lam=0.25", "run.name=x", "method.name=id"], preset="tiny")
    assert got == want
    assert got.method.id.top_n == base.method.id.top_n and base.method.id.lam != 0.25  # the rest kept, base untouched


def test_derive_merges_section_mappings_with_dotted_keys(base):
    got = derive(base, {"teacher": {"tiny": {"family": "bert"}}, "teacher.name_or_path": "", "optim.seed": 7})
    assert got.teacher.tiny.family == "bert" and got.optim.seed == 7
    assert dump_config(got.teacher.finetune) == dump_config(base.teacher.finetune)


def test_derive_checks_keys_and_types_like_an_override(base):
    with pytest.raises(ConfigError, match="method.id.lamb"):
        derive(base, {"method.id.lamb": 1.0})
    with pytest.raises(ConfigError, match="method.id.top_n"):
        derive(base, {"method.id.top_n": "many"})
