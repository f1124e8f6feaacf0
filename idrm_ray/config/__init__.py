"""Config trees of the jobs: frozen dataclasses loaded from preset YAML, user YAML and
dotted `key=value` overrides (STYLE.md item 6). Pure python + yaml. The machinery they
are built with is `idrm_ray/configtree/`; the names below are the public way in.

    cfg = load_config(TrainJobConfig, "my.yaml", ["method.id.lam=0.8"], preset="tiny")
    plan = make_plan(cfg, num_train_pairs=1000)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from idrm_ray.configtree.base import ConfigError, ConfigValueError, all_keys, describe, dump_config, param, require, section
from idrm_ray.configtree.loader import (
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
from idrm_ray.config.ppo import PPOJobConfig
from idrm_ray.config.serve import ServeJobConfig
from idrm_ray.config.train import TrainJobConfig

# Job name (the `job:` key of a config file) -> its config tree.
JOB_CONFIGS: dict[str, type] = {"train": TrainJobConfig, "serve": ServeJobConfig, "ppo": PPOJobConfig}


def config_class_for(data: Mapping[str, Any]) -> type:
    """The tree a parsed config file belongs to, from its `job:` key (default `train`)."""
    job = data.get("job", "train") if isinstance(data, Mapping) else "train"
    if job not in JOB_CONFIGS:
        raise ConfigError(f"unknown job {job!r} in config file; known: {', '.join(sorted(JOB_CONFIGS))}")
    return JOB_CONFIGS[job]


__all__ = [
    "ConfigError", "ConfigValueError", "JOB_CONFIGS", "PPOJobConfig", "ServeJobConfig", "TrainJobConfig", "TrainPlan",
    "all_keys", "config_class_for", "derive", "describe", "dump_config", "dump_yaml", "from_dict", "list_presets", "load_config",
    "make_plan", "param", "parse_override", "read_preset", "read_yaml", "require", "save_config", "section",
]
