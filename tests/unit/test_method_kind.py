"""The one parsed description of a method name (issue 15 §1): every consumer reads these."""
from __future__ import annotations

import typing

import pytest

from idrm_ray.compare.variants import needs_members, parse_variants
from idrm_ray.config.method import MethodConfig
from idrm_ray.core.method_kind import METHODS, method_kind

# name: (distills, base, member kind, needs members with ratings, ... without ratings)
# (the head and the margin are the families' worker asks: test_method_families)
TABLE = {
    "bt": (False, "bt", "bt", False, False),
    "id": (True, "bt", "bt", False, False),
    "am": (False, "am", "bt", False, True),
    "lf": (False, "lf", "bt", True, True),
    "warm": (False, "warm", "bt", True, True),
    "inform": (False, "inform", "bt", False, False),
    "id+am": (True, "am", "bt", False, True),
    "id+lf": (True, "lf", "bt", True, True),
    "id+warm": (True, "warm", "id", True, True),
}


def test_every_method_parses_as_the_table_says():
    assert set(TABLE) == set(METHODS)
    for name, (distills, base, member, rated, unrated) in TABLE.items():
        k = method_kind(name)
        assert (k.distills, k.base, k.member_kind) == (distills, base, member), name
        assert k.needs_members(am_from_ratings=True) == rated and k.needs_members(am_from_ratings=False) == unrated


def test_config_choices_are_the_methods_and_read_the_parse():
    assert typing.get_args(typing.get_type_hints(MethodConfig)["name"]) == METHODS
    m = MethodConfig(name="id+lf")
    assert m.distills and m.baseline == "lf" and m.kind == method_kind("id+lf")


def test_unknown_method_names_the_choices():
    with pytest.raises(ValueError, match="unknown method 'idd'.*id\\+warm"):
        method_kind("idd")


def test_compare_shares_the_member_kinds_the_parse_names():
    variants = parse_variants("all")
    assert needs_members(variants, am_from_ratings=True) == {"bt", "id"}
    assert needs_members(parse_variants("bt,id,inform,am"), am_from_ratings=True) == set()
    assert needs_members(parse_variants("am"), am_from_ratings=False) == {"bt"}
