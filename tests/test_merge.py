"""Deep merge, pure: examples and properties."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from atomic_cache.merge import deep_merge, merge_fragments

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)
objects = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


def test_examples() -> None:
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3, "d": 4}}) == {
        "a": {"b": 1, "c": 3, "d": 4}
    }
    assert deep_merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}
    assert deep_merge({"a": 1}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert merge_fragments([]) is None
    assert merge_fragments([{}]) == {}
    assert merge_fragments([{"x": 1}, {"y": 2}, {"x": 3}]) == {"x": 3, "y": 2}


@given(objects, objects)
def test_later_wins_on_every_non_object(base: dict[str, Any], override: dict[str, Any]) -> None:
    merged = deep_merge(base, override)
    assert set(merged) == set(base) | set(override)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            assert merged[key] == deep_merge(base[key], value)
        else:
            assert merged[key] == value
    for key in set(base) - set(override):
        assert merged[key] == base[key]


@given(objects, objects)
def test_inputs_are_not_modified(base: dict[str, Any], override: dict[str, Any]) -> None:
    before = copy.deepcopy((base, override))
    deep_merge(base, override)
    assert (base, override) == before


@given(objects)
def test_identity_and_idempotence(a: dict[str, Any]) -> None:
    assert deep_merge({}, a) == a
    assert deep_merge(a, {}) == a
    assert deep_merge(a, a) == a


@given(st.lists(objects, max_size=5))
def test_merge_fragments_folds_left(configs: list[dict[str, Any]]) -> None:
    expected: dict[str, Any] | None = None
    for config in configs:
        expected = deep_merge(expected or {}, config)
    assert merge_fragments(configs) == expected
