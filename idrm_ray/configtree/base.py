"""Generic config machinery: frozen dataclass trees, typed coercion, dump and describe.

A config tree is a frozen dataclass whose fields are scalars, Optional/Literal/list/tuple/
dict of scalars, or nested frozen dataclasses ("sections"). Every field carries a help
string (`param(...)`, `section(...)`). Layers (preset YAML, user YAML, dotted overrides)
are coerced against the field types one by one, so an error names the layer it came from;
`loader.py` merges them and builds the tree (STYLE.md item 6, after torchtune `_parse.py`
and TRL's `TrlParser`). Pure python + yaml: no ray, no deepspeed, no torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import yaml

# Field types and limits that several sections of the train tree share.
Dtype = Literal["auto", "bf16", "fp16", "fp32"]
MIN_LEN = 16  # room for the specials plus a few tokens of each half

# A value that must be given by a later layer (written `???` in YAML, like OmegaConf).
MISSING_MARK = "???"
_NULL_TEXTS = {"null", "~", "none", "None", "NULL"}


class ConfigError(ValueError):
    """Any problem with a config: unknown key, wrong type, impossible value."""


class ConfigValueError(ConfigError):
    """An impossible value found by a section's `__post_init__`; `key` is relative to the
    section until the loader prefixes it with the section's dotted path."""

    def __init__(self, key: str, value: Any, message: str):
        self.key, self.value, self.message = key, value, message
        super().__init__(f"invalid value for '{key}' ({value!r}): {message}")

    def with_prefix(self, prefix: str) -> "ConfigValueError":
        return ConfigValueError(prefix + self.key, self.value, self.message)


def param(default: Any, help: str) -> Any:
    """A scalar field with its help text (shown by `describe`)."""
    return dataclasses.field(default=default, metadata={"help": help})


def section(cls: type, help: str | None = None) -> Any:
    """A nested section; its help defaults to the section class's docstring."""
    return dataclasses.field(default_factory=cls, metadata={"help": help or _doc(cls)})


def require(obj: Any, ok: bool, key: str, message: str) -> None:
    """Raise `ConfigValueError` for field `key` of `obj` (dotted for cross-section checks)
    unless `ok`; the message should say how to fix it."""
    if not ok:
        value = obj
        for part in key.split("."):
            value = getattr(value, part)
        raise ConfigValueError(key, value, message)


def is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _doc(cls: type) -> str:
    doc = (cls.__doc__ or "").strip()
    return " ".join(doc.split()) if not doc.startswith(f"{cls.__name__}(") else ""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type, in declaration order (do not mutate: cached)."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a tree, in declaration order."""
    out = []
    for name, tp in field_types(cls).items():
        out += all_keys(tp, f"{prefix}{name}.") if is_section(tp) else [prefix + name]
    return out


def _union_args(tp: Any) -> tuple | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return None


def type_name(tp: Any) -> str:
    """Human-readable type for messages and `describe`."""
    if (args := _union_args(tp)) is not None:
        rest = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(rest + (["null"] if type(None) in args else []))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_name(args[0])}"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    if is_section(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def suggest(word: str, options: list[str]) -> str | None:
    """The nearest spelling among `options`, or None."""
    hit = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return hit[0] if hit else None


def unknown_key_error(root: type, key: str, siblings: list[str], where: str) -> ConfigError:
    """`unknown config key 'a.b' (did you mean 'a.c'?)`: a sibling first, then any key."""
    prefix, _, leaf = key.rpartition(".")
    guess = suggest(leaf, siblings)
    guess = f"{prefix}.{guess}" if guess and prefix else guess
    if guess is None:
        every = all_keys(root)
        guess = suggest(key, every)
        if guess is None:
            by_leaf = {k.rsplit(".", 1)[-1]: k for k in every}
            hit = suggest(leaf, list(by_leaf))
            guess = by_leaf[hit] if hit else None
    hint = f" (did you mean '{guess}'?)" if guess else ""
    return ConfigError(f"unknown config key '{key}'{hint}{where}")


def _wrong(key: str, value: Any, tp: Any, where: str, extra: str = "") -> ConfigError:
    got = f"{value!r} ({type(value).__name__})"
    return ConfigError(f"invalid value for '{key}': expected {type_name(tp)}, got {got}{extra}{where}")


def coerce(value: Any, tp: Any, key: str, where: str = "", raw: str | None = None) -> Any:
    """Check and convert one value to type `tp`. `raw` is the override's text before YAML
    parsing: string-typed fields take it verbatim (so `name=on` stays 'on', not True).
    Sections come back as (partial) dicts of coerced values."""
    if value == MISSING_MARK and raw is None or raw == MISSING_MARK:
        return MISSING_MARK
    if tp is Any:
        return value
    if (args := _union_args(tp)) is not None:
        return _coerce_union(value, args, key, where, raw, tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return _coerce_literal(value, args, key, where, raw)
    if origin in (list, tuple):
        return _coerce_seq(value, tp, key, where)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong(key, value, tp, where)
        return {str(k): coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    if is_section(tp):
        return coerce_layer(tp, value, key + ".", where=where)
    return _coerce_scalar(value, tp, key, where, raw)


def _coerce_union(value, args, key, where, raw, tp):
    inner = [a for a in args if a is not type(None)]
    if type(None) in args:
        text_like = any(a is str for a in inner)
        if value is None and not (text_like and raw is not None and raw.strip() not in _NULL_TEXTS):
            return None
        if isinstance(value, str) and value in _NULL_TEXTS and not text_like:
            return None
    for a in inner:
        try:
            return coerce(value, a, key, where, raw)
        except ConfigError:
            continue
    raise _wrong(key, value, tp, where)


def _coerce_literal(value, choices, key, where, raw):
    for c in choices:
        if type(value) is type(c) and value == c:
            return c
    if raw is not None and raw in choices:
        return raw
    guess = suggest(str(value), [str(c) for c in choices])
    hint = f" (did you mean {guess!r}?)" if guess else ""
    opts = ", ".join(repr(c) for c in choices)
    raise ConfigError(f"invalid value for '{key}': {value!r} is not one of {opts}{hint}{where}")


def _coerce_seq(value, tp, key, where):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, value, tp, where)
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        out = [coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if len(value) != len(args):
        raise _wrong(key, value, tp, where, f": needs exactly {len(args)} items")
    return tuple(coerce(v, a, f"{key}[{i}]", where) for i, (v, a) in enumerate(zip(value, args)))


def _coerce_scalar(value, tp, key, where, raw):
    if tp is str:
        if raw is not None:  # verbatim, unless the text is a quoted YAML string
            quoted = raw.strip()[:1] in ("'", '"') and isinstance(value, str)
            return value if quoted else raw
        if isinstance(value, str):
            return value
        raise _wrong(key, value, tp, where, "; quote it in YAML to make it a string")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong(key, value, tp, where, "; write true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _wrong(key, value, tp, where)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _wrong(key, value, tp, where)
    if isinstance(value, tp):
        return value
    raise _wrong(key, value, tp, where)


def coerce_layer(cls: type, data: Any, prefix: str = "", *, where: str = "", root: type | None = None) -> dict:
    """One layer (a mapping, possibly partial) checked against section `cls`: unknown keys
    and wrong types raise `ConfigError` naming the full dotted key; returns coerced values."""
    root = root or cls
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        data = dump_config(data)
    if not isinstance(data, Mapping):
        name = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"'{name}' must be a mapping of keys, got {data!r}{where}")
    hints = field_types(cls)
    out = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in hints:
            raise unknown_key_error(root, key, list(hints), where)
        tp = hints[k]
        out[k] = coerce_layer(tp, v, key + ".", where=where, root=root) if is_section(tp) else coerce(v, tp, key, where)
    return out


def dump_config(cfg: Any) -> Any:
    """A config tree as plain YAML-safe data (tuples become lists)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: dump_config(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [dump_config(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: dump_config(v) for k, v in cfg.items()}
    return cfg


def describe(cls: type) -> str:
    """Every key with its type, default and help, for `--help-config`."""
    return _describe(cls, cls(), "")


def _describe(cls: type, defaults: Any, prefix: str) -> str:
    lines = []
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        tp, key, help_ = hints[f.name], prefix + f.name, f.metadata.get("help", "")
        value = getattr(defaults, f.name)
        if is_section(tp):
            lines.append(f"{key}:  [section] {help_}".rstrip())
            lines.append(_describe(tp, value, key + "."))
            continue
        lines.append(f"{key}: {type_name(tp)} = {_yaml_text(dump_config(value))}")
        if help_:
            lines.append(f"    {help_}")
    return "\n".join(lines)


def _yaml_text(value: Any) -> str:
    """A value as one line of YAML (`null`, `true`, `''`, `[0.9, 0.95]`)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text.removesuffix("...").strip()
