"""Config trees: every YAML in the repo parses, layers and overrides merge, mistakes fail
with one line naming the key, dump/load round-trips, and the plan arithmetic by hand."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import yaml

from idrm_ray.config import (
    ConfigError,
    TrainJobConfig,
    all_keys,
    config_class_for,
    describe,
    dump_config,
    dump_yaml,
    from_dict,
    list_presets,
    load_config,
    make_plan,
    save_config,
)
from idrm_ray.configtree.base import MISSING_MARK, field_types, is_section

REPO = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", "runs", "__pycache__", ".pytest_cache", "node_modules", "build", "dist"}


def _repo_yamls() -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        out += [Path(root) / f for f in sorted(files) if f.endswith((".yaml", ".yml"))]
    return out


def _dummy_for(cls: type, key: str) -> str:
    tp = cls
    for part in key.split("."):
        tp = field_types(tp)[part]
    return {int: "1", float: "1.0", bool: "true"}.get(tp, "dummy")


def _load_config_file(path: Path):
    """Load a config YAML into its tree; required `???` values get dummy overrides, after
    checking that the error names exactly those keys."""
    data = yaml.safe_load(path.read_text()) or {}
    cls = config_class_for(data)
    missing = _missing_keys(data)
    if missing:
        with pytest.raises(ConfigError, match="missing required") as err:
            load_config(cls, path)
        assert all(f"'{k}'" in str(err.value) for k in missing)
    return load_config(cls, path, [f"{k}={_dummy_for(cls, k)}" for k in missing])


def _missing_keys(data, prefix=""):
    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out += _missing_keys(v, f"{prefix}{k}.")
        elif v == MISSING_MARK:
            out.append(prefix + k)
    return out


def _is_config_yaml(path: Path, data) -> bool:
    return path.parent.name == "configs" or (isinstance(data, dict) and "job" in data)


@pytest.mark.parametrize("path", _repo_yamls(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_in_repo_parses(path):
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    if len(docs) == 1 and _is_config_yaml(path, docs[0]):
        cfg = _load_config_file(path)
        assert load_config(type(cfg), overrides=_as_overrides(dump_config(cfg))) == cfg


def _as_overrides(tree, prefix=""):
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _as_overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix('...').strip()}")
    return out


def test_presets_ship_with_the_package():
    assert {"tiny", "llama3_8b_hh", "local_hf"} <= set(list_presets())
    found = {p.relative_to(REPO).as_posix() for p in _repo_yamls()}
    assert "idrm_ray/configs/tiny.yaml" in found


# ---- presets ------------------------------------------------------------------------------

def test_defaults_are_method_section_7_on_the_local_machine():
    cfg = TrainJobConfig()
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.warmup_ratio) == (1e-5, "cosine", 0.03)
    assert (cfg.optim.global_batch_size, cfg.optim.epochs, cfg.student.max_len, cfg.teacher.max_len) == (64, 1, 1024, 512)
    assert (cfg.method.name, cfg.method.id.lam, cfg.method.id.top_n, cfg.method.id.distance) == ("id", 1.0, 1, "frobenius")
    assert cfg.deepspeed.zero_stage == 3 and not cfg.resources.use_gpu
    assert make_plan(cfg, 640).precision == "fp32"  # auto on CPU
    assert make_plan(from_dict(TrainJobConfig, {"resources": {"use_gpu": True}}), 640).precision == "bf16"


def test_tiny_preset_is_small_local_and_cpu():
    cfg = load_config(TrainJobConfig, preset="tiny")
    assert cfg.student.name_or_path == "tiny" and cfg.student.tiny.num_layers == 4 and cfg.student.tiny.hidden_size == 64
    assert cfg.teacher.name_or_path == "" and cfg.teacher.finetune.base == "tiny" and cfg.teacher.is_tiny
    assert cfg.data.train == "bundled" and (cfg.method.id.lam, cfg.method.id.top_n) == (1.0, 1)
    assert cfg.resources.num_workers == 1 and not cfg.resources.use_gpu and not cfg.deepspeed.enabled
    assert 0 < cfg.resources.teacher_num_cpus < 1  # a whole CPU deadlocks 2 cores (STACK_NOTES.md)
    assert cfg.resources.encode_concurrency == 1 and TrainJobConfig().resources.encode_concurrency == 2
    plan = make_plan(cfg, 1000)
    assert plan.total_steps <= 750 and plan.finetune_teacher and plan.cpus_needed <= 2  # minutes on 2 cores


def test_llama3_preset_is_the_papers_setup():
    cfg = load_config(TrainJobConfig, preset="llama3_8b_hh")
    assert cfg.student.name_or_path == "meta-llama/Meta-Llama-3-8B" and cfg.data.train == "Anthropic/hh-rlhf"
    assert cfg.teacher.finetune.base == "microsoft/deberta-large" and cfg.teacher.max_len == 512
    assert (cfg.optim.lr, cfg.optim.global_batch_size, cfg.optim.epochs, cfg.student.max_len) == (1e-5, 64, 1, 1024)
    assert (cfg.deepspeed.zero_stage, cfg.deepspeed.precision, cfg.method.id.lam, cfg.method.id.top_n) == (3, "bf16", 1.0, 1)
    assert (cfg.resources.student_resource, cfg.resources.teacher_resource) == ("student_gpu", "teacher_gpu")


def test_local_hf_preset_requires_both_model_paths():
    with pytest.raises(ConfigError, match=r"'student.name_or_path', 'teacher.name_or_path'"):
        load_config(TrainJobConfig, preset="local_hf")
    cfg = load_config(TrainJobConfig, preset="local_hf", overrides=["student.name_or_path=/m/s", "teacher.name_or_path=/m/t"])
    assert (cfg.student.name_or_path, cfg.teacher.name_or_path) == ("/m/s", "/m/t")


def test_layers_merge_in_order(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("optim: {lr: 2.0e-4, micro_batch_size: 2}\nmethod: {id: {lam: 0.8}}\n")
    cfg = load_config(TrainJobConfig, user, ["optim.lr=3e-4"], preset="tiny")
    assert cfg.optim.lr == 3e-4  # override beats user YAML
    assert cfg.optim.micro_batch_size == 2 and cfg.method.id.lam == 0.8  # user YAML beats preset
    assert cfg.optim.global_batch_size == 16 and cfg.method.id.top_n == 1  # preset and defaults kept


# ---- overrides ------------------------------------------------------------------------------

def test_overrides_parse_yaml_scalars_against_the_field_types():
    cfg = load_config(TrainJobConfig, overrides=[
        "method.id.intra=false", "student.gradient_checkpointing=true",  # bools
        "optim.lr=1e-5", "method.id.lam=1",  # PyYAML reads 1e-5 as a string; int -> float
        "optim.max_steps=100", "optim.max_steps=null", "method.id.chunk_rows=64",  # Optional
        "optim.betas=[0.8, 0.9]", "resources.teacher_concurrency=[1, 3]",  # tuples from flow lists
        "deepspeed.zero_stage=2", "run.name=on", "student.template.suffix=</s>",  # Literal int; raw strings
        "teacher.name_or_path=", "data.eval='quoted'", 'student.template.separator="\\n\\nAssistant: "',
    ])
    assert cfg.method.id.intra is False and cfg.student.gradient_checkpointing is True
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.method.id.lam, float) and cfg.method.id.lam == 1.0
    assert cfg.optim.max_steps is None and cfg.method.id.chunk_rows == 64
    assert cfg.optim.betas == (0.8, 0.9) and cfg.resources.teacher_concurrency == (1, 3)
    assert cfg.deepspeed.zero_stage == 2 and cfg.run.name == "on" and cfg.student.template.suffix == "</s>"
    assert cfg.teacher.name_or_path == "" and cfg.data.eval == "quoted"
    assert cfg.student.template.separator == "\n\nAssistant: "  # quoted text is read as YAML
    hash(cfg)  # frozen, tuples only: usable as a cache key


def test_override_can_set_a_whole_section():
    cfg = load_config(TrainJobConfig, overrides=["method.id={lam: 0.4, top_n: 2}"])
    assert (cfg.method.id.lam, cfg.method.id.top_n, cfg.method.id.intra) == (0.4, 2, True)


@pytest.mark.parametrize("text", ["optim.lr", "=1", "optim lr=1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainJobConfig, overrides=[text])


# ---- unknown keys and wrong types --------------------------------------------------------------

@pytest.mark.parametrize("override, key, guess", [
    ("method.id.lamda=0.5", "method.id.lamda", "method.id.lam"),
    ("optm.lr=1e-4", "optm", "optim"),
    ("lam=0.5", "lam", "method.id.lam"),  # no sibling close: nearest leaf anywhere
    ("teacher.finetune.epoch=2", "teacher.finetune.epoch", "teacher.finetune.epochs"),
])
def test_unknown_override_key_names_key_and_nearest_spelling(override, key, guess):
    with pytest.raises(ConfigError) as err:
        load_config(TrainJobConfig, overrides=[override])
    assert f"unknown config key '{key}' (did you mean '{guess}'?)" in str(err.value)
    assert override in str(err.value)


def test_unknown_yaml_key_names_file_key_and_nearest_spelling(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method:\n  id:\n    lamda: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(TrainJobConfig, path)
    assert "unknown config key 'method.id.lamda' (did you mean 'method.id.lam'?)" in str(err.value)
    assert str(path) in str(err.value)


def test_override_through_a_scalar_is_refused():
    with pytest.raises(ConfigError, match=r"'optim.lr' is a float, not a section"):
        load_config(TrainJobConfig, overrides=["optim.lr.x=1"])


@pytest.mark.parametrize("override, pieces", [
    ("optim.lr=abc", ["'optim.lr'", "'abc'", "expected float"]),
    ("student.max_len=1.5", ["'student.max_len'", "1.5", "expected int"]),
    ("method.id.intra=maybe", ["'method.id.intra'", "'maybe'", "expected bool"]),
    ("method.id.distance=frobenious", ["'method.id.distance'", "did you mean 'frobenius'"]),
    ("optim.betas=[0.9]", ["'optim.betas'", "exactly 2"]),
    ("optim.betas=[0.9, x]", ["'optim.betas[1]'", "expected float"]),
    ("deepspeed.zero_stage=4", ["'deepspeed.zero_stage'", "not one of 0, 1, 2, 3"]),
    ("method=bt", ["'method' is a section"]),
])
def test_wrong_type_names_key_value_and_expected_type(override, pieces):
    with pytest.raises(ConfigError) as err:
        load_config(TrainJobConfig, overrides=[override])
    assert all(p in str(err.value) for p in pieces), str(err.value)


@pytest.mark.parametrize("data, pieces", [
    ({"run": {"name": 123}}, ["'run.name'", "expected str", "quote it"]),
    ({"student": 5}, ["'student' must be a mapping"]),
    ({"resources": {"use_gpu": "yes please"}}, ["'resources.use_gpu'", "expected bool"]),
])
def test_wrong_type_in_yaml_layer(data, pieces):
    with pytest.raises(ConfigError) as err:
        from_dict(TrainJobConfig, data)
    assert all(p in str(err.value) for p in pieces), str(err.value)


def test_file_and_preset_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainJobConfig, tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("optim: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainJobConfig, tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="did you mean 'tiny'"):
        load_config(TrainJobConfig, preset="tiyn")
    with pytest.raises(ConfigError, match="unknown job 'eval'"):
        config_class_for({"job": "eval"})


# ---- validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, pieces", [
    (["method.id.lam=-0.1"], ["'method.id.lam' (-0.1)", "method.name=bt"]),
    (["method.id.top_n=0"], ["'method.id.top_n' (0)", ">= 1"]),
    (["method.id.top_n=4"], ["'method.id.top_n'", "tiny teacher's 3 blocks"]),
    (["student.max_len=8"], ["'student.max_len' (8)", ">= 16"]),
    (["teacher.max_len=4"], ["'teacher.max_len' (4)"]),
    (["optim.micro_batch_size=3", "resources.num_workers=2"],
     ["'optim.global_batch_size' (64)", "= 6", "global_batch_size=60 or 66", "micro_batch_size in [1, 2, 4, 8, 16, 32]"]),
    (["deepspeed.precision=bf16"], ["'deepspeed.precision'", "fp32", "use_gpu=true"]),
    (["deepspeed.zero_stage=2", "deepspeed.offload_params=true"], ["'deepspeed.offload_params'", "ZeRO-3"]),
    (["method.id.intra=false", "method.id.inter=false"], ["both false", "method.name=bt"]),
    (["logging.wandb_mode=online"], ["'logging.wandb_project'", "wandb_mode=offline"]),
    (["resources.teacher_concurrency=[2, 1]"], ["'resources.teacher_concurrency'", "min <= max"]),
    (["resources.encode_concurrency=0"], ["'resources.encode_concurrency' (0)", ">= 1"]),
    (["optim.lr=0"], ["'optim.lr' (0.0)", "> 0"]),
    (["data.eval_fraction=1.0"], ["'data.eval_fraction'", "[0, 1)"]),
])
def test_impossible_values_fail_with_the_fix(overrides, pieces):
    with pytest.raises(ConfigError) as err:
        load_config(TrainJobConfig, overrides=overrides)
    assert all(p in str(err.value) for p in pieces), str(err.value)


def test_bt_method_ignores_tiny_depth_checks():
    # top_n only matters when distilling
    assert load_config(TrainJobConfig, overrides=["method.name=bt", "method.id.top_n=9"]).method.id.top_n == 9


def test_config_is_frozen():
    cfg = TrainJobConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.lr = 1.0  # type: ignore[misc]


# ---- dump / load / describe ------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["tiny", "llama3_8b_hh"])
def test_dump_load_round_trip(preset, tmp_path):
    cfg = load_config(TrainJobConfig, preset=preset, overrides=["optim.betas=[0.8, 0.99]", "run.name=x y", "optim.lr=3e-6"])
    path = tmp_path / "cfg.yaml"
    save_config(cfg, path)
    assert load_config(TrainJobConfig, path) == cfg
    assert from_dict(TrainJobConfig, yaml.safe_load(dump_yaml(cfg))) == cfg
    assert set(_flat(dump_config(cfg))) == set(all_keys(TrainJobConfig))


def _flat(tree, prefix=""):
    for k, v in tree.items():
        yield from (_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [prefix + k])


def test_describe_lists_every_key_with_type_default_and_help():
    text = describe(TrainJobConfig)
    for key in all_keys(TrainJobConfig):
        assert f"\n{key}: " in "\n" + text, key
    assert "method.id.lam: float = 1.0\n    λ" in text
    assert "optim.max_steps: int or null = null" in text and "optim.betas: [float, float] = [0.9, 0.95]" in text
    _assert_all_help(TrainJobConfig)


def _assert_all_help(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        if is_section(field_types(cls)[f.name]):
            _assert_all_help(field_types(cls)[f.name])


def test_id_section_feeds_the_objective_settings():
    objective = pytest.importorskip("idrm_ray.core.objective")
    cfg = load_config(TrainJobConfig, overrides=["method.id.distance=kl", "method.id.chunk_rows=32"])
    settings = objective.IDSettings(**dump_config(cfg.method.id))
    assert (settings.distance, settings.chunk_rows, settings.lam) == ("kl", 32, 1.0)


# ---- plan ------------------------------------------------------------------------------------

def _cfg(*overrides):
    return load_config(TrainJobConfig, overrides=list(overrides))


def test_plan_arithmetic_by_hand():
    cfg = _cfg("optim.global_batch_size=64", "optim.micro_batch_size=4", "resources.num_workers=2", "optim.epochs=2")
    plan = make_plan(cfg, 1000)
    assert plan.world_size == 2
    assert plan.grad_accum_steps == 8  # 64 / (4 x 2)
    assert plan.global_batch_size == 64  # 4 x 8 x 2
    assert plan.steps_per_epoch == 16  # ceil(1000 / 64) = 16: every pair is used each epoch
    assert plan.last_step_pairs == 40  # 1000 - 15 x 64
    assert plan.total_steps == 32  # 16 x 2 epochs
    assert plan.warmup_steps == 1  # ceil(0.03 x 32) = ceil(0.96)
    assert plan.eval_every == 32 and plan.checkpoint_every == 32  # 0 -> at the end


def test_plan_caps_and_resolves():
    plan = make_plan(_cfg("optim.max_steps=10", "optim.warmup_ratio=0.25", "run.eval_every=4"), 6400)
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps, plan.eval_every) == (100, 10, 3, 4)  # ceil(2.5)
    gpu = make_plan(_cfg("resources.use_gpu=true", "resources.teacher_num_gpus=0.2"), 64)
    assert (gpu.precision, gpu.student_dtype, gpu.teacher_dtype) == ("bf16", "bf16", "fp16")
    plain = make_plan(_cfg("resources.use_gpu=true", "deepspeed.enabled=false"), 64)
    assert plain.student_dtype == "fp32"  # plain torch autocasts over fp32 weights
    bt = make_plan(_cfg("method.name=bt"), 64)
    assert (bt.distill, bt.teacher_blocks, bt.finetune_teacher) == (False, 0, False)


def test_plan_never_changes_the_config_and_refuses_too_little_data():
    cfg = _cfg()
    before = dump_config(cfg)
    make_plan(cfg, 640)
    assert dump_config(cfg) == before
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        make_plan(cfg, 63)


def test_stage_placement_takes_the_resources_section():
    from idrm_ray.stream.cluster import stage_placement

    cfg = load_config(TrainJobConfig, overrides=["resources.encode_concurrency=3", "resources.teacher_concurrency=[1, 4]",
                                                 "resources.teacher_num_cpus=0.5", "teacher.batch_size=8",
                                                 "resources.custom_resources=ignore"])
    placement = stage_placement(cfg)
    assert (placement.encode_concurrency, placement.teacher_concurrency) == (3, (1, 4))
    assert (placement.teacher_cpus, placement.teacher_batch_size) == (0.5, 8)
