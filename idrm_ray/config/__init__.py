"""Config trees of the jobs: frozen dataclasses loaded from preset YAML, user YAML and
dotted `key=value` overrides (STYLE.md item 6). Pure python + yaml.

    cfg = load_config(TrainJobConfig, "my.yaml", ["method.id.lam=0.8"], preset="tiny")
    plan = make_plan(cfg, num_train_pairs=1000)
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from idrm_ray.config.base import ConfigError, ConfigValueError, all_keys, describe, dump_config, param, require, section
from idrm_ray.config.loader import (
    derive,
    dump_yaml,
    from_dict,
    list_presets,
    load_config,
    parse_override,
    read_preset,
    read_yaml,
    save_config,
)
from idrm_ray.config.plan import TrainPlan, make_plan
from idrm_ray.config.train import TrainJobConfig

# Job name (the `job:` key of a config file) -> its config tree. Other jobs register here.
JOB_CONFIGS: dict[str, type] = {"train": TrainJobConfig}
# Trees that live in their feature packages, imported on first use: they import this package,
# so importing them here would be circular.
_JOB_MODULES = {"serve": "idrm_ray.serve.config:ServeJobConfig", "ppo": "idrm_ray.ppo.config:PPOJobConfig"}


def config_class_for(data: Mapping[str, Any]) -> type:
    """The tree a parsed config file belongs to, from its `job:` key (default `train`)."""
    job = data.get("job", "train") if isinstance(data, Mapping) else "train"
    if job not in JOB_CONFIGS and job in _JOB_MODULES:
        module, name = _JOB_MODULES[job].split(":")
        JOB_CONFIGS[job] = getattr(importlib.import_module(module), name)
    if job not in JOB_CONFIGS:
        known = ", ".join(sorted(set(JOB_CONFIGS) | set(_JOB_MODULES)))
        raise ConfigError(f"unknown job {job!r} in config file; known: {known}")
    return JOB_CONFIGS[job]


__all__ = [
    "ConfigError", "ConfigValueError", "JOB_CONFIGS", "TrainJobConfig", "TrainPlan", "all_keys",
    "config_class_for", "derive", "describe", "dump_config", "dump_yaml", "from_dict", "list_presets", "load_config",
    "make_plan", "param", "parse_override", "read_preset", "read_yaml", "require", "save_config", "section",
]
