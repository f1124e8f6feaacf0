"""Checks that need more than config values: the models' own configs and the Ray cluster.

`run_train`/`run_teacher` call `check_before_workers` after data validation and
`ray.init`, before any worker, actor or dataset starts. Each failure is one
`ConfigValueError` (printed by the CLI as one line, exit 2) that says how to fix it.
Pure-value checks live in the config tree (`config/train.py` and its sections); the
built-in `tiny` models are checked there too (their sizes are config values).

Models are read offline (`local_files_only`): a local directory or a cached hub id is
checked; a hub id that is not cached is skipped rather than failed (no network here).
"""
from __future__ import annotations

import math
from pathlib import Path

from idrm_ray.configtree.base import ConfigValueError
from idrm_ray.config.train import TrainJobConfig
from idrm_ray.core.capture import decoder_layers

# Absolute position tables with a padding offset: usable positions = table size - 2.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")
MIN_CONTENT = 2  # at least one prompt and one response token per sequence


def check_before_workers(cfg: TrainJobConfig, *, job: str = "train", nodes: list[dict] | None = None) -> None:
    """All checks for `job` ("train", or "teacher": the NLI fine-tune alone, no student and
    no teacher actors); `nodes` (alive nodes' resource dicts) defaults to the live cluster."""
    teacher = job == "teacher" or distills(cfg)
    check_models(cfg, needs_teacher=teacher, needs_student=job == "train")
    if cfg.resources.check_cluster:
        check_resources(cfg, live_nodes() if nodes is None else nodes, needs_teacher=teacher and job == "train")


# ----------------------------------------------------------------------------- models


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def model_config(name: str, key: str):
    """The transformers config of a local directory or cached hub id; None where it cannot
    be known offline (`tiny`, a hub id not in the cache, a type transformers lacks)."""
    from transformers import AutoConfig

    if name == "tiny":
        return None
    path = Path(name).expanduser()
    if _looks_local(name) and not path.exists():
        raise ConfigValueError(key, name, "no such directory: give an existing model directory or a hub id")
    if path.exists() and not (path / "config.json").is_file():
        raise ConfigValueError(key, name, "not a model directory (no config.json in it)")
    try:
        return AutoConfig.from_pretrained(str(path) if path.exists() else name, local_files_only=True)
    except OSError:
        if path.exists():
            raise ConfigValueError(key, name, "not a model directory (config.json cannot be read)") from None
        return None  # a hub id that is not cached: the workers download it; nothing to check here
    except (ValueError, KeyError):
        return None  # a model_type this transformers does not know (remote code): cannot tell


def model_kind(config) -> str:
    """"encoder", "decoder", "encoder-decoder" or "unknown", from the config alone. A type
    with a masked-LM head is an encoder (BERT, RoBERTa, DeBERTa, ELECTRA...); one with only a
    causal-LM head is a decoder (Llama, Qwen2, Mistral, GPT-2...)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES as MASKED,
    )

    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_decoder", False) or (model_type in CAUSAL and model_type not in MASKED):
        return "decoder"
    return "encoder" if model_type in MASKED else "unknown"


def _depth(config) -> int | None:
    depth = getattr(config, "num_hidden_layers", None)
    return depth if isinstance(depth, int) and depth > 0 else None


def teacher_source(cfg: TrainJobConfig) -> tuple[str, str]:
    """(name, config key) of the model whose architecture the teacher has."""
    if cfg.teacher.name_or_path:
        return cfg.teacher.name_or_path, "teacher.name_or_path"
    return cfg.teacher.finetune.base, "teacher.finetune.base"


def check_models(cfg: TrainJobConfig, *, needs_teacher: bool, needs_student: bool = True) -> None:
    if needs_student:
        student = model_config(cfg.student.name_or_path, "student.name_or_path")
        if student is not None:
            _check_student(cfg, student)
            _check_files(cfg.student.name_or_path, "student.name_or_path")
            _check_student_tokenizer(cfg.student.name_or_path, student)
        _check_student_length(cfg)
    if needs_teacher:
        name, key = teacher_source(cfg)
        teacher = model_config(name, key)
        if teacher is not None:
            _check_teacher(cfg, teacher, name, key)
            _check_files(name, key)
            _check_teacher_length(cfg, name)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _check_files(name: str, key: str) -> None:
    """A local model directory needs its weights and a tokenizer that loads (a hub id is
    checked by the worker's own download)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ConfigValueError(key, name, f"has a config.json but no weights (none of {', '.join(WEIGHT_FILES)})")
    if _tokenizer(name) is None:
        raise ConfigValueError(key, name, "has no tokenizer that loads (tokenizer.json or the tokenizer's "
                                          "vocabulary files): save the tokenizer into the model directory")


def _check_student_tokenizer(name: str, config) -> None:
    """The reward is read at the EOS that ends each sequence (METHOD.md Eq. 1): a student
    tokenizer without one cannot work. No pad token is fine: it pads with EOS."""
    tok = _tokenizer(name)
    if tok is not None and tok.eos_token_id is None:
        raise ConfigValueError("student.name_or_path", name,
                               "its tokenizer has no EOS token, where the reward is read: set tokenizer.eos_token "
                               f"(the model's config says eos_token_id={getattr(config, 'eos_token_id', None)}) "
                               "and save the tokenizer again")


def _check_student(cfg: TrainJobConfig, config) -> None:
    name, kind = cfg.student.name_or_path, model_kind(config)
    if kind in ("encoder", "encoder-decoder"):
        raise ConfigValueError("student.name_or_path", name,
                               f"is a {config.model_type} model ({kind}); the student must be a decoder-only LM "
                               "(Llama, Qwen2, Mistral, ...): use a causal-LM or reward-model directory")
    depth = _depth(config)
    if distills(cfg) and depth is not None and cfg.method.id.top_n > depth:
        raise ConfigValueError("method.id.top_n", cfg.method.id.top_n,
                               f"N exceeds the student's {depth} blocks ({name}): set method.id.top_n <= {depth}")
    k = cfg.student.train_top_blocks
    if depth is not None and k > depth:
        raise ConfigValueError("student.train_top_blocks", k,
                               f"exceeds the student's {depth} blocks ({name}): set it <= {depth} (0 trains all)")
    if cfg.student.lora.r:
        _check_lora_targets(cfg, config)


def _check_lora_targets(cfg: TrainJobConfig, config) -> None:
    """Every student.lora.target_modules name must be a Linear in the student's blocks (peft
    would fail inside the workers); the model is built on the meta device, so this is free."""
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError, ImportError):
        return  # an architecture transformers cannot build here: the worker's own load reports it
    linear = {n.rpartition(".")[2] for block in decoder_layers(model) for n, m in block.named_modules()
              if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.student.lora.target_modules if t not in linear]
    if missing:
        raise ConfigValueError("student.lora.target_modules", list(cfg.student.lora.target_modules),
                               f"{', '.join(missing)} not among the student's block Linears "
                               f"({', '.join(sorted(linear))}) ({cfg.student.name_or_path})")


def _check_teacher(cfg: TrainJobConfig, config, name: str, key: str) -> None:
    kind = model_kind(config)
    if kind in ("decoder", "encoder-decoder"):
        raise ConfigValueError(key, name,
                               f"is a {config.model_type} model ({kind}); the teacher must be a bidirectional encoder "
                               "cross-encoder (BERT, RoBERTa, DeBERTa, ELECTRA, ...)")
    depth = _depth(config)
    if depth is not None and cfg.method.id.top_n > depth:
        raise ConfigValueError("method.id.top_n", cfg.method.id.top_n,
                               f"N exceeds the teacher's {depth} blocks ({name}): set method.id.top_n <= {depth}")
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and not config.model_type.startswith("deberta"):  # DeBERTa: relative positions
        usable = positions - (2 if config.model_type in _OFFSET_POSITIONS else 0)
        if cfg.teacher.max_len > usable:
            raise ConfigValueError("teacher.max_len", cfg.teacher.max_len,
                                   f"the teacher ({name}) has {usable} positions: set teacher.max_len <= {usable}")


def distills(cfg: TrainJobConfig) -> bool:
    """Whether the run trains with L_ID (`id`, `id+am`, ...), so needs the teacher."""
    return cfg.method.distills


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    path = Path(name).expanduser()
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else name, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None  # no tokenizer offline: the workers' own load reports it


def _check_student_length(cfg: TrainJobConfig) -> None:
    """Specials + template tokens + MIN_CONTENT must fit student.max_len."""
    t = cfg.student.template
    template = t.prefix + t.separator + t.suffix
    if cfg.student.name_or_path == "tiny":  # tokenizer not built yet: bytes + BOS/EOS bound it
        if cfg.student.chat_template:
            raise ConfigValueError("student.chat_template", True,
                                   "the built-in tiny student's tokenizer has no chat template: set it to false")
        overhead = len(template.encode("utf-8")) + 2
    else:
        tok = _tokenizer(cfg.student.name_or_path)
        if tok is None:
            return
        if cfg.student.chat_template:
            template = _chat_overhead_text(tok, cfg.student.name_or_path)
        overhead = len(tok(template, add_special_tokens=True)["input_ids"])
    if cfg.student.max_len < overhead + MIN_CONTENT:
        raise ConfigValueError("student.max_len", cfg.student.max_len,
                               f"special and template tokens take {overhead}, leaving no room for text: "
                               f"set student.max_len >= {overhead + MIN_CONTENT} or shorten student.template")


def _chat_overhead_text(tok, name: str) -> str:
    """The student's chat template around an empty user and assistant turn (its fixed cost)."""
    if not getattr(tok, "chat_template", None):
        raise ConfigValueError("student.chat_template", True,
                               f"the student tokenizer ({name}) has no chat template: set student.chat_template="
                               "false, or use student.template for fixed text around prompt and response")
    turns = [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]
    return tok.apply_chat_template(turns, tokenize=False)


def _check_teacher_length(cfg: TrainJobConfig, name: str) -> None:
    """[CLS] x y_w [SEP] x y_l [SEP]: specials + MIN_CONTENT per half must fit teacher.max_len."""
    tok = _tokenizer(name)
    if tok is None:
        return
    specials = tok.num_special_tokens_to_add(pair=True)
    need = specials + 2 * MIN_CONTENT
    if cfg.teacher.max_len < need:
        raise ConfigValueError("teacher.max_len", cfg.teacher.max_len,
                               f"the teacher's {specials} special tokens leave no room for both halves: "
                               f"set teacher.max_len >= {need}")


# ----------------------------------------------------------------------------- cluster


def live_nodes() -> list[dict]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _declared(nodes: list[dict], resource: str) -> bool:
    return bool(resource) and any(n.get(resource, 0) > 0 for n in nodes)


def _wants(cfg: TrainJobConfig, nodes: list[dict], resource: str) -> bool:
    """As `cluster._wants`, from the given nodes."""
    mode = cfg.resources.custom_resources
    return bool(resource) and (mode == "require" or (mode == "auto" and _declared(nodes, resource)))


def _fits(node: dict, bundle: dict[str, float]) -> int:
    """How many copies of `bundle` one node holds."""
    counts = [math.floor(node.get(k, 0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 1_000_000


def worker_bundle(cfg: TrainJobConfig, nodes: list[dict]) -> dict[str, float]:
    res = cfg.resources
    bundle = {"CPU": res.cpus_per_worker}
    if res.use_gpu:
        bundle["GPU"] = res.gpus_per_worker
    if _wants(cfg, nodes, res.student_resource):
        bundle[res.student_resource] = res.student_resource_amount
    return bundle


def teacher_bundle(cfg: TrainJobConfig, nodes: list[dict]) -> dict[str, float]:
    res = cfg.resources
    bundle = {"CPU": res.teacher_num_cpus, "GPU": res.teacher_num_gpus}
    if _wants(cfg, nodes, res.teacher_resource):
        bundle[res.teacher_resource] = res.teacher_resource_amount
    return bundle


def check_resources(cfg: TrainJobConfig, nodes: list[dict], *, needs_teacher: bool) -> None:
    res = cfg.resources
    autoscale = " (an autoscaling cluster whose nodes start on demand: set resources.check_cluster=false)"
    if res.use_gpu and not _declared(nodes, "GPU"):
        raise ConfigValueError("resources.use_gpu", True,
                               "the Ray cluster has no GPU: set resources.use_gpu=false, or join a cluster with GPU "
                               f"nodes (resources.ray_address){autoscale}")
    needed = [res.student_resource] + ([res.teacher_resource] if needs_teacher else [])
    for name in needed:
        if res.custom_resources == "require" and name and not _declared(nodes, name):
            raise ConfigValueError("resources.custom_resources", "require",
                                   f"no node declares '{name}': declare it on a node type (resources: {{{name}: 1}}) "
                                   f"or set resources.custom_resources=auto{autoscale}")
    bundle = worker_bundle(cfg, nodes)
    fit = sum(_fits(n, bundle) for n in nodes)
    if fit < res.num_workers:
        raise ConfigValueError("resources.num_workers", res.num_workers,
                               f"the cluster fits {fit} train worker(s) of {bundle} (nodes offer "
                               f"{_offer(nodes, bundle)}): lower resources.num_workers or the per-worker "
                               f"resources{autoscale}")
    if needs_teacher:
        t_bundle = teacher_bundle(cfg, nodes)
        if not any(_fits(n, t_bundle) for n in nodes):
            raise ConfigValueError("resources.teacher_num_gpus", res.teacher_num_gpus,
                                   f"no node can host a teacher actor needing {t_bundle} (nodes offer "
                                   f"{_offer(nodes, t_bundle)}): lower resources.teacher_num_cpus / "
                                   f"teacher_num_gpus / teacher_resource_amount{autoscale}")


def _offer(nodes: list[dict], bundle: dict) -> str:
    return "; ".join(str({k: n.get(k, 0) for k in bundle}) for n in nodes[:4]) or "nothing"
