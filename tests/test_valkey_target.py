"""valkey_client_options: a Backend.AI ``ValkeyTarget`` mapped to create_valkey_client's
URL and keyword arguments, exactly; then clients made through it on the suite's real
Valkey (plain, an ACL user whose password needs percent-encoding on another database,
TLS without verification through the suite's TLS proxy).

Sentinel is tested on the mapping's output only: this tree's create_valkey_client has no
``sentinel_service`` yet, so a Sentinel target cannot be connected end to end here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import pytest
import trustme
from glide import GlideClient

from atomic_cache import ValkeyClientOptions, valkey_client_options
from atomic_cache.cache.client import DEFAULT_REQUEST_TIMEOUT_MS, ValkeyURL

from .test_tls import tls_proxy


@dataclass
class ValkeyTarget:
    """Backend.AI's ``ai.backend.common.types.ValkeyTarget``, field for field."""

    addr: str | None = None
    sentinel: list[str] | None = None
    service_name: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    request_timeout: int | None = None
    use_tls: bool = False
    tls_skip_verify: bool = False


@dataclass
class WithUser(ValkeyTarget):
    """A target with an ACL user name, which Backend.AI's has not."""

    username: str | None = None


class HostPortPair(NamedTuple):
    """The shape of Backend.AI's HostPortPair (``.host``, ``.port``)."""

    host: str
    port: int


def test_a_plain_address() -> None:
    options = valkey_client_options(ValkeyTarget(addr="10.0.0.5:6379"))
    assert options == ValkeyClientOptions(url="valkey://10.0.0.5:6379/0", request_timeout_ms=250)
    assert options.kwargs == {"request_timeout_ms": 250}
    assert DEFAULT_REQUEST_TIMEOUT_MS == 250


def test_an_address_with_a_password_and_a_database() -> None:
    target = ValkeyTarget(addr="valkey.internal:6380", password="secret", request_timeout=1500)
    options = valkey_client_options(target, db=3)
    assert options.url == "valkey://:secret@valkey.internal:6380/3"
    assert options.kwargs == {"request_timeout_ms": 1500}


@pytest.mark.parametrize(
    ("timeout", "override", "expected"),
    [
        (None, None, DEFAULT_REQUEST_TIMEOUT_MS),
        (0, None, DEFAULT_REQUEST_TIMEOUT_MS),  # Backend.AI's `or` default: 0 is unset
        (1000, None, 1000),  # milliseconds stay milliseconds
        (5000, None, 5000),
        (1, None, 1),
        (5000, 300, 300),  # the caller's bound for the cache wins
        (None, 400, 400),
    ],
)
def test_request_timeout_is_in_milliseconds(
    timeout: int | None, override: int | None, expected: int
) -> None:
    target = ValkeyTarget(addr="h:6379", request_timeout=timeout)
    options = valkey_client_options(target, request_timeout_ms=override)
    assert options.request_timeout_ms == expected
    assert options.kwargs == {"request_timeout_ms": expected}


def test_tls_with_and_without_verification() -> None:
    verified = valkey_client_options(ValkeyTarget(addr="10.0.0.5:6379", use_tls=True))
    assert verified.url == "valkeys://10.0.0.5:6379/0"
    assert verified.kwargs == {"request_timeout_ms": 250}
    insecure = valkey_client_options(
        ValkeyTarget(addr="10.0.0.5:6379", password="pw", use_tls=True, tls_skip_verify=True)
    )
    assert insecure.url == "valkeys://:pw@10.0.0.5:6379/0"
    assert insecure.kwargs == {"request_timeout_ms": 250, "tls_insecure": True}
    # Without TLS there is nothing to verify: Backend.AI's example config sets it so.
    plain = valkey_client_options(ValkeyTarget(addr="10.0.0.5:6379", tls_skip_verify=True))
    assert plain.url == "valkey://10.0.0.5:6379/0"
    assert plain.kwargs == {"request_timeout_ms": 250}


def test_sentinels_and_their_password() -> None:
    target = ValkeyTarget(
        sentinel=["10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26379"],
        service_name="mymaster",
        password="data-pw",
        sentinel_password="sentinel-pw",
        request_timeout=1000,
    )
    options = valkey_client_options(target)
    assert options.url == "valkey://:data-pw@10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/0"
    assert options.kwargs == {
        "request_timeout_ms": 1000,
        "sentinel_service": "mymaster",
        "sentinel_password": "sentinel-pw",
    }
    # No sentinel_password: the Sentinels take the data node's (create_valkey_client's
    # default, and Backend.AI's fallback), so none is passed.
    target.sentinel_password = None
    assert valkey_client_options(target).kwargs == {
        "request_timeout_ms": 1000,
        "sentinel_service": "mymaster",
    }
    # Backend.AI's RedisConfig holds HostPortPair objects, and "host:port,host:port" too.
    for sentinels in ([HostPortPair("s1", 26379), HostPortPair("s2", 26380)], "s1:26379,s2:26380"):
        config = ValkeyTarget(sentinel=sentinels, service_name="m")  # type: ignore[arg-type]
        assert valkey_client_options(config).url == "valkey://s1:26379,s2:26380/0"
    # Sentinel wins over addr, as in Backend.AI; TLS and the database apply to it too.
    both = ValkeyTarget(
        addr="10.0.0.9:6379",
        sentinel=["s1:26379"],
        service_name="m",
        use_tls=True,
        tls_skip_verify=True,
    )
    assert valkey_client_options(both, db=2) == ValkeyClientOptions(
        url="valkeys://s1:26379/2",
        request_timeout_ms=250,
        tls_insecure=True,
        sentinel_service="m",
    )


def test_a_mapping_in_backend_ai_config_spelling() -> None:
    """The TOML spelling (hyphens) and a comma-separated sentinel string, as Backend.AI's
    config accepts them."""
    raw: dict[str, Any] = {
        "sentinel": "s1:26379, s2:26379",
        "service-name": "mymaster",
        "sentinel-password": "",
        "request-timeout": 800,
        "use-tls": True,
    }
    options = valkey_client_options(raw)
    assert options.url == "valkeys://s1:26379,s2:26379/0"
    # An empty sentinel password is passed as given: Sentinels without a password.
    assert options.kwargs == {
        "request_timeout_ms": 800,
        "sentinel_service": "mymaster",
        "sentinel_password": "",
    }
    assert valkey_client_options({"addr": "h:1", "request_timeout": 5}).kwargs == {
        "request_timeout_ms": 5
    }


def test_special_characters_are_percent_encoded() -> None:
    password = "p@ss:w/o%rd?#"
    options = valkey_client_options(ValkeyTarget(addr="h:6379", password=password))
    assert options.url == "valkey://:p%40ss%3Aw%2Fo%25rd%3F%23@h:6379/0"
    parsed = ValkeyURL.parse(options.url)
    assert (parsed.host, parsed.port, parsed.password, parsed.username) == (
        "h",
        6379,
        password,
        None,
    )
    named = valkey_client_options(WithUser(addr="h:6379", username="a@b:c", password="x/y"))
    assert named.url == "valkey://a%40b%3Ac:x%2Fy@h:6379/0"
    assert ValkeyURL.parse(named.url).username == "a@b:c"
    # No password in the repr.
    shown = repr(
        valkey_client_options(
            ValkeyTarget(
                sentinel=["s:1"], service_name="m", password=password, sentinel_password="s3cr3t"
            )
        )
    )
    assert password not in shown and "p%40ss" not in shown and "s3cr3t" not in shown
    assert shown == (
        "ValkeyClientOptions('valkey://:***@s:1/0', request_timeout_ms=250,"
        " sentinel_service='m', sentinel_password='***')"
    )


def test_an_empty_password_is_none_as_in_backend_ai() -> None:
    options = valkey_client_options(ValkeyTarget(addr="h:6379", password=""))
    assert options.url == "valkey://h:6379/0"


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("[::1]:6379", "[::1]:6379"),
        ("::1:6379", "[::1]:6379"),  # HostPortPair.address's spelling of an IPv6 address
        (" cache:6379 ", "cache:6379"),
        (HostPortPair("10.0.0.7", 7000), "10.0.0.7:7000"),
    ],
)
def test_address_spellings(addr: object, expected: str) -> None:
    target = ValkeyTarget()
    target.addr = addr  # type: ignore[assignment]
    assert valkey_client_options(target).url == f"valkey://{expected}/0"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            ValkeyTarget(),
            "a ValkeyTarget needs addr ('host:port') or sentinel (['host:port', ...])",
        ),
        (
            ValkeyTarget(sentinel=[]),
            "a ValkeyTarget needs addr ('host:port') or sentinel (['host:port', ...])",
        ),
        (
            ValkeyTarget(sentinel=["s:26379"]),
            "a ValkeyTarget with sentinel needs service_name (the monitored name)",
        ),
        (ValkeyTarget(addr="localhost"), "addr 'localhost' is not 'host:port'"),
        (ValkeyTarget(addr="valkey://h:6379"), "addr 'valkey://h:6379' is not 'host:port'"),
        (ValkeyTarget(addr=":6379"), "addr ':6379' is not 'host:port'"),
        (ValkeyTarget(addr="h:0"), "addr 'h:0' has no port from 1 to 65535"),
        (ValkeyTarget(addr="h:65536"), "addr 'h:65536' has no port from 1 to 65535"),
        (ValkeyTarget(addr="h:port"), "addr 'h:port' has no port from 1 to 65535"),
        (
            ValkeyTarget(sentinel=["s:26379", "t"], service_name="m"),
            "sentinel 't' is not 'host:port'",
        ),
        (
            ValkeyTarget(addr="h:1", request_timeout=1.5),  # type: ignore[arg-type]
            "request_timeout is a whole number of milliseconds (Backend.AI's unit), not 1.5",
        ),
        (
            ValkeyTarget(addr="h:1", request_timeout=-1),
            "request_timeout is a whole number of milliseconds (Backend.AI's unit), not -1",
        ),
        (
            ValkeyTarget(addr="h:1", use_tls="yes"),  # type: ignore[arg-type]
            "use_tls must be true or false, not 'yes'",
        ),
        (
            WithUser(addr="h:1", username="u"),
            "a username needs a password (Valkey authenticates the pair)",
        ),
        ("valkey://h:6379", "expected a ValkeyTarget (or a mapping of its fields), not str"),
        (
            object(),
            "object has none of a ValkeyTarget's fields (addr, sentinel, service_name,"
            " password, ...)",
        ),
    ],
)
def test_bad_targets_are_refused_in_one_line(target: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        valkey_client_options(target)


def test_a_bad_database_and_a_password_kept_out_of_errors() -> None:
    with pytest.raises(ValueError, match=r"^db must be a non-negative integer, not -1$"):
        valkey_client_options(ValkeyTarget(addr="h:1"), db=-1)
    with pytest.raises(ValueError, match=r"^addr 'h:bad' has no port from 1 to 65535$"):
        valkey_client_options(ValkeyTarget(addr="h:bad", password="hunter2"))


# -- through the mapping to the suite's real Valkey ----------------------------------------


def addr_of(valkey_url: str) -> str:
    parsed = ValkeyURL.parse(valkey_url)
    return f"{parsed.host}:{parsed.port}"


async def round_trip(options: ValkeyClientOptions, key: str) -> object:
    client = await options.connect()
    try:
        assert await client.custom_command(["SET", key, "through ValkeyTarget"]) == "OK"
        return await client.custom_command(["GET", key])
    finally:
        await client.close()


async def test_a_client_through_the_mapping_runs_commands(
    valkey: GlideClient, valkey_url: str
) -> None:
    key = f"vt-{uuid.uuid4().hex}"
    options = valkey_client_options(ValkeyTarget(addr=addr_of(valkey_url), request_timeout=5000))
    assert await round_trip(options, key) == b"through ValkeyTarget"
    assert await valkey.get(key) == b"through ValkeyTarget"
    await valkey.delete([key])


@pytest.fixture
async def acl_user(valkey: GlideClient) -> AsyncIterator[tuple[str, str, str]]:
    """(user, password, key prefix): a user whose name and password need encoding."""
    user, password = f"vt@{uuid.uuid4().hex[:6]}:x", f"p@ss:w/o%rd#{uuid.uuid4().hex[:6]}"
    prefix = f"vt{uuid.uuid4().hex[:8]}"
    line = ["ACL", "SETUSER", user, "on", f">{password}", f"~{prefix}:*", "+@all"]
    assert await valkey.custom_command(line) == "OK"
    yield user, password, prefix
    await valkey.custom_command(["ACL", "DELUSER", user])


async def test_an_encoded_password_authenticates_on_the_chosen_database(
    valkey: GlideClient, valkey_url: str, acl_user: tuple[str, str, str]
) -> None:
    user, password, prefix = acl_user
    target = WithUser(
        addr=addr_of(valkey_url), username=user, password=password, request_timeout=5000
    )
    options = valkey_client_options(target, db=2)
    key = f"{prefix}:k"
    assert await round_trip(options, key) == b"through ValkeyTarget"
    assert await valkey.get(key) is None  # the suite's client is on database 0
    client = await options.connect()
    try:
        assert await client.custom_command(["ACL", "WHOAMI"]) == user.encode()
        assert await client.custom_command(["UNLINK", key]) == 1
    finally:
        await client.close()


async def test_tls_skip_verify_accepts_a_certificate_no_one_trusts(valkey_url: str) -> None:
    stranger = trustme.CA().issue_cert("127.0.0.1")
    async with tls_proxy(valkey_url, stranger) as port:
        target = ValkeyTarget(
            addr=f"127.0.0.1:{port}", use_tls=True, tls_skip_verify=True, request_timeout=5000
        )
        options = valkey_client_options(target)
        assert options.kwargs == {"request_timeout_ms": 5000, "tls_insecure": True}
        key = f"vt-{uuid.uuid4().hex}"
        assert await round_trip(options, key) == b"through ValkeyTarget"
        client = await options.connect()
        try:
            await client.custom_command(["UNLINK", key])
        finally:
            await client.close()
