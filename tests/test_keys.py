"""The key schema, pure: no server."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atomic_cache.keys import (
    KeySchema,
    decode_component,
    encode_component,
    token_sequence,
    user_component,
)

USER = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_default_keys_match_the_spec() -> None:
    keys = KeySchema()
    assert keys.entry(USER, "webui") == f"app_config:merged:{USER}:webui"
    assert keys.seq == "app_config:seq"
    assert keys.public_stamps == "app_config:stamp:public"
    assert keys.domain_stamps("default") == "app_config:stamp:domain:default"
    assert keys.user_stamps(USER) == f"app_config:stamp:user:{USER}"
    assert keys.user_index(USER) == f"app_config:idx:user:{USER}"
    assert keys.domain_index("default") == "app_config:idx:domain:default"
    assert keys.users_index == "app_config:idx:users"
    assert keys.catalogue == "app_config:names"
    assert keys.cleanup_queue == "app_config:gc"


def test_cluster_prefix_keeps_one_hash_tag() -> None:
    keys = KeySchema("{app_config}")
    for key in (
        keys.entry(USER, "{x}"),
        keys.domain_index("a{b}"),
        keys.domain_stamps("}{"),
        keys.user_index(USER),
        keys.seq,
        keys.cleanup_queue,
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
        assert keys.domain_index(name) != keys.domain_index(other)
        assert keys.domain_stamps(name) != keys.domain_stamps(other)


@pytest.mark.parametrize("bad", ["", "x" * 257])
def test_empty_or_long_components_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="name"):
        KeySchema().entry(USER, bad)
    with pytest.raises(ValueError, match="domain"):
        KeySchema().domain_index(bad)


def test_user_ids_are_canonical_uuids() -> None:
    assert user_component(USER) == str(USER)
    assert user_component(str(USER)) == str(USER)
    assert user_component(str(USER).upper()) == str(USER)
    bad_ids: list[object] = ["", "bob", "12345678-1234", f"{USER}:x", "*", "{" + str(USER) + "}"]
    for bad in [*bad_ids, USER.hex, USER.urn, USER.int, None]:
        with pytest.raises(ValueError, match=r"must be a uuid\.UUID or its string form"):
            user_component(bad)  # type: ignore[arg-type]


def test_token_sequence_is_the_part_before_the_clock() -> None:
    assert token_sequence("1795975639356616:1795975639357") == "1795975639356616"
    assert token_sequence("0:1") == "0"
