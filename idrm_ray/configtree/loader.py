"""Loading a config tree: preset YAML -> user YAML -> dotted `key=value` overrides.

Each layer is checked against the tree on its own (unknown keys, types) so an error names
the file or override it came from; the layers are then deep-merged over the dataclass
defaults and the tree is built, running each section's `__post_init__` checks. Values
are never changed after that: derived numbers live in a separate plan (STYLE.md item 6).
"""
from __future__ import annotations

import importlib.resources
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from idrm_ray.configtree.base import (
    MISSING_MARK,
    ConfigError,
    ConfigValueError,
    coerce,
    coerce_layer,
    dump_config,
    field_types,
    is_section,
    suggest,
    type_name,
    unknown_key_error,
)

T = TypeVar("T")


def presets_dir() -> Any:
    """The package's `configs/` folder (package data, also inside an installed wheel)."""
    return importlib.resources.files("idrm_ray").joinpath("configs")


def list_presets() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in presets_dir().iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> Any:
    """A preset's YAML by name (`tiny`), or by path when `name` looks like a file."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        return read_yaml(name)
    res = presets_dir().joinpath(f"{name}.yaml")
    if not res.is_file():
        names = list_presets()
        guess = suggest(name, names)
        hint = f" (did you mean '{guess}'?)" if guess else ""
        raise ConfigError(f"unknown preset '{name}'{hint}; available: {', '.join(names)}")
    # `${config_dir}` in a preset: the package's configs/ folder (study_real's bundled data)
    return expand_config_dir(_parse_yaml(res.read_text(encoding="utf-8"), f"preset '{name}'"), str(res))


def read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found")
    return _parse_yaml(p.read_text(encoding="utf-8"), str(p))


CONFIG_DIR = "${config_dir}"


def expand_config_dir(raw: Any, path: str | Path) -> Any:
    """`${config_dir}` in a config file's strings -> the absolute folder holding that file, so a
    file can name paths beside itself and work from any folder (a sweep's best_config.yaml)."""
    folder = str(Path(path).resolve().parent)
    if isinstance(raw, Mapping):
        return {k: expand_config_dir(v, path) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_config_dir(v, path) for v in raw]
    return raw.replace(CONFIG_DIR, folder) if isinstance(raw, str) else raw


def _parse_yaml(text: str, name: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{name} is not valid YAML: {e}") from None
    return {} if data is None else data


def parse_override(cls: type, text: str) -> dict:
    """`a.b.c=value` as a one-key nested layer of coerced values. The value is read as a YAML
    scalar or flow collection (`true`, `1e-5`, `null`, `[0.9, 0.95]`, `{lam: 0.5}`);
    string fields take the text verbatim unless it is quoted."""
    where = f" [from override '{text}']"
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or " " in key:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. optim.lr=1e-5)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts, cur = key.split("."), cls
    for i, part in enumerate(parts):
        hints, sofar = field_types(cur), ".".join(parts[: i + 1])
        if part not in hints:
            raise unknown_key_error(cls, sofar, list(hints), where)
        tp = hints[part]
        if i < len(parts) - 1 and not is_section(tp):
            raise ConfigError(f"'{sofar}' is a {type_name(tp)}, not a section, so '{key}' is not a config key{where}")
        cur = tp
    if is_section(cur):
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{key}' is a section: set one of its keys ({key}.<name>=...) or give a mapping{where}")
        leaf = coerce_layer(cur, value, key + ".", where=where, root=cls)
    else:
        leaf = coerce(value, cur, key, where, raw=raw)
    for part in reversed(parts):
        leaf = {part: leaf}
    return leaf


def merge(base: Mapping, layer: Mapping) -> dict:
    """Deep merge: mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for k, v in layer.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _missing(data: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k, v in data.items():
        if isinstance(v, Mapping):
            out += _missing(v, f"{prefix}{k}.")
        elif isinstance(v, str) and v == MISSING_MARK:
            out.append(prefix + k)
    return out


def build(cls: type[T], data: Mapping, prefix: str = "") -> T:
    """A full (merged) mapping -> the frozen tree; section checks get the dotted prefix."""
    kwargs = {}
    for name, tp in field_types(cls).items():
        v = data[name]
        kwargs[name] = build(tp, v, f"{prefix}{name}.") if is_section(tp) else coerce(v, tp, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigValueError as e:
        raise e.with_prefix(prefix) from None


def _finish(cls: type[T], data: Mapping) -> T:
    missing = _missing(data)
    if missing:
        keys = ", ".join(f"'{k}'" for k in missing)
        raise ConfigError(
            f"missing required config value(s) {keys}: set them with key=value overrides or in a YAML file")
    return build(cls, resolve_packaged(data))


def resolve_packaged(raw: Any, key: str = "") -> Any:
    """`packaged:<name>` strings (real models shipped in PyPI packages, `idrm_ray.packaged`)
    -> local model directories, like `${config_dir}`: the rest of the code sees plain paths."""
    if isinstance(raw, Mapping):
        return {k: resolve_packaged(v, f"{key}{k}.") for k, v in raw.items()}
    if isinstance(raw, str) and raw.startswith("packaged:"):
        from idrm_ray.packaged import PackagedModelError, resolve

        try:
            return resolve(raw)
        except PackagedModelError as exc:
            raise ConfigValueError(key.rstrip("."), raw, str(exc)) from None
    return raw


def from_dict(cls: type[T], data: Mapping, *, where: str = "") -> T:
    """A (partial) mapping over the defaults, checked like a YAML layer."""
    return _finish(cls, merge(dump_config(cls()), coerce_layer(cls, data, where=where)))


def derive(cfg: T, values: Mapping[str, Any], *, where: str = "") -> T:
    """The one way to derive a config tree from another: `cfg` with dotted keys set,
    checked like an override layer (unknown keys, types) and built afresh (section checks
    run again). A key naming a section takes a mapping merged over it:

        derive(cfg, {"method.id.top_n": 3, "run.name": "x", "teacher": {"tiny": {"family": "bert"}}})
    """
    layer: dict = {}
    for key, value in values.items():
        for part in reversed(key.split(".")):
            value = {part: value}
        layer = merge(layer, value)
    cls = type(cfg)
    return _finish(cls, merge(dump_config(cfg), coerce_layer(cls, layer, where=where or " [derived]")))


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (), preset: str | None = None
) -> T:
    """Defaults <- preset YAML (by name from the package's `configs/`) <- user YAML <- dotted
    overrides, each layer merged over the previous. Raises `ConfigError` with one clear line."""
    data = dump_config(cls())
    layers = []
    if preset:
        layers.append((read_preset(preset), f" [from preset '{preset}']"))
    if path:
        layers.append((expand_config_dir(read_yaml(path), path), f" [from {path}]"))
    for raw, where in layers:
        data = merge(data, coerce_layer(cls, raw, where=where))
    if isinstance(overrides, str):
        raise ConfigError("overrides must be a list of key=value strings, not one string")
    for text in overrides:
        data = merge(data, parse_override(cls, text))
    return _finish(cls, data)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dump_config(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(dump_yaml(cfg), encoding="utf-8")
