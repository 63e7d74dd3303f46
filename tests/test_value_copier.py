"""ValueCopier, the local cache's private copy per hit (pure: no server).

A copy must be exactly the value it copies (the same types down to every leaf: ``True``
is not ``1``, ``1.0`` is not ``1``), pass for a model pydantic built itself, and share
no container a caller could change with the original or with any other copy.
"""

from __future__ import annotations

import copy
import pickle
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atomic_cache import AppConfigData, AppConfigFragment, ScopeType
from atomic_cache.cache.local import ValueCopier

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
OBJECTS = st.dictionaries(st.text(max_size=8), JSON, max_size=5)


def data_of(config: dict[str, Any] | None, extras: list[dict[str, Any]]) -> AppConfigData:
    """A value as a read decodes one: from JSON, with ids and times on the fragments."""
    user = uuid.uuid4()
    stamp = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    fragments = [
        AppConfigFragment(
            id=uuid.uuid4(),
            scope_type=list(ScopeType)[i % len(ScopeType)],
            scope_id=str(user) if i % len(ScopeType) == 3 else "public",
            name="webui",
            extra_config=extra,
            created_at=stamp,
            updated_at=stamp,
        )
        for i, extra in enumerate(extras)
    ]
    built = AppConfigData(
        user_id=user, domain_name="alpha", name="webui", fragments=fragments, config=config
    )
    return AppConfigData.model_validate_json(built.model_dump_json())


def typed(value: object) -> object:
    """The value with each leaf's type beside it: equal only if every type is too."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    return (type(value), value)


def containers(value: object) -> list[object]:
    """Every dict and list a caller could change: the models' data, inside out."""
    found: list[object] = []
    if isinstance(value, AppConfigData):
        found += [value.__dict__, value.fragments, *containers(value.config)]
        for fragment in value.fragments:
            found += [fragment.__dict__, *containers(fragment.extra_config)]
    elif isinstance(value, dict):
        found.append(value)
        for item in value.values():
            found += containers(item)
    elif isinstance(value, list):
        found.append(value)
        for item in value:
            found += containers(item)
    return found


@settings(max_examples=200, deadline=None)
@given(config=st.none() | OBJECTS, extras=st.lists(OBJECTS, max_size=4))
def test_a_copy_is_the_value_to_every_leaf_and_its_type(
    config: dict[str, Any] | None, extras: list[dict[str, Any]]
) -> None:
    original = data_of(config, extras)
    made = ValueCopier.of(original).copy()
    assert made == original
    assert typed(made.config) == typed(original.config)
    assert [typed(f.extra_config) for f in made.fragments] == [
        typed(f.extra_config) for f in original.fragments
    ]
    assert made.model_fields_set == original.model_fields_set
    assert made.model_dump_json() == original.model_dump_json()
    assert repr(made) == repr(original)
    # What pydantic itself sets on a model it builds: pickle and copy rely on it.
    for built, model in [(made, original), *zip(made.fragments, original.fragments, strict=True)]:
        assert (built.__pydantic_extra__, built.__pydantic_private__) == (
            model.__pydantic_extra__,
            model.__pydantic_private__,
        )
    assert pickle.loads(pickle.dumps(made)) == original
    assert copy.deepcopy(made) == original


@settings(max_examples=100, deadline=None)
@given(config=OBJECTS, extras=st.lists(OBJECTS, min_size=1, max_size=4))
def test_copies_share_nothing_a_caller_could_change(
    config: dict[str, Any], extras: list[dict[str, Any]]
) -> None:
    original = data_of(config, extras)
    copier = ValueCopier.of(original)
    first, second = copier.copy(), copier.copy()
    seen = [id(c) for c in containers(original) + containers(first) + containers(second)]
    assert len(seen) == len(set(seen))


def test_changing_a_copy_changes_no_other() -> None:
    original = data_of({"theme": {"mode": "dark"}, "recent": [1]}, [{"v": 1}, {"w": [2]}])
    copier = ValueCopier.of(original)
    first = copier.copy()
    assert first.config is not None
    first.config["theme"]["mode"] = "light"
    first.config["recent"].append(2)
    first.fragments[1].extra_config["w"].append(3)
    first.fragments.pop()
    assert copier.copy() == original
    assert original.config == {"theme": {"mode": "dark"}, "recent": [1]}
    assert original.fragments[1].extra_config == {"w": [2]}


def test_the_models_stay_frozen() -> None:
    made = ValueCopier.of(data_of({"a": 1}, [{"b": 2}])).copy()
    with pytest.raises(ValueError, match="frozen"):
        made.name = "other"
    with pytest.raises(ValueError, match="frozen"):
        made.fragments[0].scope_id = "other"


@pytest.mark.parametrize("big", [2**64, -(2**63) - 1, 10**30])
def test_an_integer_beyond_64_bits_is_refused(big: int) -> None:
    # JSON holds it and pydantic decodes it, but it does not pack: the value is not
    # held locally (the cache source serves it from Valkey; see test_local_cache).
    with pytest.raises(ValueError, match="not plain JSON data"):
        ValueCopier.of(data_of({"n": big}, []))
    with pytest.raises(ValueError, match="not plain JSON data"):
        ValueCopier.of(data_of(None, [{"n": [big]}]))
