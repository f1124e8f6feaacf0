"""What `idrm-ray compare` can train: the methods of METHOD.md §10 and the paper's ablations
(Table 3), each as a method name plus config values over the job's base config.

    methods     bt am lf warm inform id id+am id+lf id+warm        (`method.name`)
    ablations   id-no-intra      ID without the intra-sequence terms (method.id.intra=false)
                id-no-inter      ID without the inter-sequence terms (method.id.inter=false)
                id-no-nli        the teacher's encoder without NLI fine-tuning
                id-alt-teacher   the other encoder family (BERT <-> DeBERTa) fine-tuned on NLI

ID settings: `id@lam=0.4`, `id@top_n=2@teacher_head_renorm=true` (any `method.id` key, values
read as YAML) is ID with those settings, and may follow an ablation (`id-no-inter@lam=0.4`).
A variant names the teacher it needs ("nli", "no_nli" or "alt"); the job prepares each
teacher once and shares its map cache across seeds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import yaml

from idrm_ray.methods.id import IDConfig
from idrm_ray.core.method_kind import METHODS, method_kind

TABLE2_METHODS = ("bt", "am", "lf", "warm", "inform", "id")
DEFAULT_METHODS = METHODS  # `all`: every method
ABLATIONS = ("id-no-intra", "id-no-inter", "id-no-nli", "id-alt-teacher")


@dataclass(frozen=True)
class Variant:
    name: str  # row label in the tables
    method: str  # method.name of the run
    values: dict = field(default_factory=dict)  # nested config values over the base
    teacher: str = "nli"  # nli | no_nli | alt (which prepared teacher the run distils)

    @property
    def distills(self) -> bool:
        return method_kind(self.method).distills


def variant(name: str) -> Variant:
    """The Variant called `name` (a method or an ablation, with `@key=value` ID settings);
    unknown names list the choices."""
    if "@" in name:
        return _with_id_settings(name)
    if name in METHODS:
        return Variant(name, name)
    if name == "id-no-intra":
        return Variant(name, "id", {"method": {"id": {"intra": False}}})
    if name == "id-no-inter":
        return Variant(name, "id", {"method": {"id": {"inter": False}}})
    if name == "id-no-nli":
        return Variant(name, "id", teacher="no_nli")
    if name == "id-alt-teacher":
        return Variant(name, "id", teacher="alt")
    raise ValueError(f"unknown method or ablation {name!r}; choose from {', '.join(METHODS + ABLATIONS)}")


def _with_id_settings(name: str) -> Variant:
    """`<variant>@key=value[@key=value...]`: the variant with those `method.id` values."""
    base, *settings = name.split("@")
    v = variant(base)
    known = {f.name for f in fields(IDConfig)}
    values = dict(v.values.get("method", {}).get("id", {}))
    for item in settings:
        key, eq, raw = item.partition("=")
        if not eq or key not in known or not v.distills:
            raise ValueError(f"bad ID setting {item!r} in {name!r}: use <id variant>@key=value with a method.id key "
                             f"({', '.join(sorted(known))})")
        values[key] = yaml.safe_load(raw)
    return replace(v, name=name, values={**v.values, "method": {**v.values.get("method", {}), "id": values}})


def parse_variants(text: str) -> list[Variant]:
    """'bt,id,ablations' -> Variants; `all` is every method, `ablations` the four ablations."""
    names: list[str] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        expanded = {"all": DEFAULT_METHODS, "table2": TABLE2_METHODS, "ablations": ABLATIONS}.get(item, (item,))
        names += [n for n in expanded if n not in names]
    if not names:
        raise ValueError("no methods given; e.g. --methods bt,id or --methods all,ablations")
    return [variant(n) for n in names]


def needs_members(variants: list[Variant], *, am_from_ratings: bool) -> set[str]:
    """Ensemble kinds the variants share per seed: bt members (LF flips, AM proxy margins,
    WARM) and id members (ID+WARM)."""
    kinds = (method_kind(v.method) for v in variants)
    return {k.member_kind for k in kinds if k.needs_members(am_from_ratings=am_from_ratings)}
