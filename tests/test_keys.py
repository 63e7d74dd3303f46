"""The key schema, pure: no server."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_cache.keys import KeySchema, decode_component, encode_component, user_component

USER = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_default_keys_match_the_spec() -> None:
    keys = KeySchema()
    assert keys.entry(USER, "webui") == f"app_config:merged:{USER}:webui"
    assert keys.user_names(USER) == f"app_config:user:{USER}:names"
    assert keys.domain_users("default") == "app_config:domain:default:users"
    assert keys.name_users("webui") == "app_config:name:webui:users"
    assert keys.all_users == "app_config:users"
    assert keys.epoch == "app_config:epoch"


def test_cluster_prefix_keeps_one_hash_tag() -> None:
    keys = KeySchema("{app_config}")
    for key in (
        keys.entry(USER, "{x}"),
        keys.domain_users("a{b}"),
        keys.name_users("}{"),
        keys.epoch,
    ):
        assert key.startswith("{app_config}:")
        assert key.count("{") == 1 and key.count("}") == 1


@pytest.mark.parametrize("prefix", ["", "a b", "a:", ":a", "a*", "a\n", "a::b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        KeySchema(prefix)


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("webui", "webui"),
        ("a:b", "a%3Ab"),
        ("*", "%2A"),
        ("{x}", "%7Bx%7D"),
        ("a b", "a%20b"),
        ("100%", "100%25"),
        ("x\ny", "x%0Ay"),
        ("ß", "%C3%9F"),
        ("my-app_v1.2~", "my-app_v1.2~"),
    ],
)
def test_components_are_percent_encoded(raw: str, encoded: str) -> None:
    assert encode_component(raw) == encoded
    assert decode_component(encoded) == raw


@given(st.text(min_size=1, max_size=64), st.text(min_size=1, max_size=64))
def test_encoding_is_injective_and_safe(a: str, b: str) -> None:
    ea, eb = encode_component(a), encode_component(b)
    assert re.fullmatch(r"[A-Za-z0-9._~%-]+", ea)
    assert (ea == eb) == (a == b)
    assert decode_component(ea) == a


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_no_name_reaches_another_users_or_sets_key(name: str, other: str) -> None:
    keys = KeySchema()
    entry = keys.entry(USER, name)
    assert entry.count(":") == 3  # prefix, kind, user, name: no extra separators
    if name != other:
        assert entry != keys.entry(USER, other)
        assert keys.name_users(name) != keys.name_users(other)
        assert keys.domain_users(name) != keys.domain_users(other)


@pytest.mark.parametrize("bad", ["", "x" * 257])
def test_empty_or_long_components_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="name"):
        KeySchema().entry(USER, bad)
    with pytest.raises(ValueError, match="domain"):
        KeySchema().domain_users(bad)


def test_user_ids_are_canonical_uuids() -> None:
    assert user_component(USER) == str(USER)
    assert user_component(str(USER).upper()) == str(USER)
    assert user_component("{" + str(USER) + "}") == str(USER)
    for bad in ["", "bob", "12345678-1234", f"{USER}:x", "*"]:
        with pytest.raises(ValueError, match="not a UUID"):
            user_component(bad)
