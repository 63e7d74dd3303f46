"""create_valkey_client URLs and lazy connect; suppress_with_log."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytest
from glide import GlideError

from atomic_cache import create_valkey_client, suppress_with_log
from atomic_cache.cache.client import ValkeyURL
from atomic_cache.tools.embedded import EmbeddedValkey, free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("valkey://127.0.0.1:6379/0", ValkeyURL("127.0.0.1", 6379, False, None, None, 0)),
        ("redis://cache.local", ValkeyURL("cache.local", 6379, False, None, None, 0)),
        ("valkeys://u:p%40ss@h:7000/3", ValkeyURL("h", 7000, True, "u", "p@ss", 3)),
        ("rediss://:secret@h/", ValkeyURL("h", 6379, True, None, "secret", 0)),
    ],
)
def test_urls_parse(url: str, expected: ValkeyURL) -> None:
    assert ValkeyURL.parse(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "unsupported URL scheme"),
        ("valkey://h/x", "database number"),
        ("valkey://h:99999", "port"),
    ],
)
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ValkeyURL.parse(url)


async def test_dead_server_does_not_block_creation_and_fails_per_call() -> None:
    client = await create_valkey_client(f"valkey://127.0.0.1:{free_port()}", request_timeout_ms=200)
    try:
        with pytest.raises(GlideError, match=r"(?i)connect|timed out|refused"):
            await client.get("k")
    finally:
        await client.close()


async def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        await create_valkey_client("valkey://h", request_timeout_ms=0)


async def test_credentials_and_database_reach_the_server() -> None:
    with EmbeddedValkey(extra_args=["--requirepass", "s3cr:et@"]) as server:
        wrong = await create_valkey_client(f"valkey://default:nope@127.0.0.1:{server.port}/2")
        try:
            with pytest.raises(GlideError, match=r"(?i)auth|password|WRONGPASS"):
                await wrong.get("k")
        finally:
            await wrong.close()
        right = await create_valkey_client(
            f"valkey://default:s3cr%3Aet%40@127.0.0.1:{server.port}/2"
        )
        try:
            info = await right.custom_command(["CLIENT", "INFO"])
            assert " db=2 " in (info.decode() if isinstance(info, bytes) else str(info))
        finally:
            await right.close()


def test_suppress_with_log_swallows_only_listed(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.INFO, logger="atomic_cache"),
        suppress_with_log(KeyError, "cache read failed", logging.INFO),
    ):
        raise KeyError("k")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "cache read failed: 'k'")
    ]
    with pytest.raises(ValueError, match="boom"), suppress_with_log((KeyError, TypeError)):
        raise ValueError("boom")


def test_suppress_with_log_defaults(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="atomic_cache"), suppress_with_log(OSError):
        raise OSError("down")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "OSError: down")
    ]


@pytest.mark.parametrize(
    "kinds",
    [[KeyError, TypeError], {KeyError}, (KeyError,), frozenset([KeyError, OSError])],
    ids=["list", "set", "tuple", "frozenset"],
)
def test_suppress_with_log_takes_any_iterable_of_types(
    kinds: Iterable[type[BaseException]], caplog: pytest.LogCaptureFixture
) -> None:
    """Backend.AI's callers pass a list: ``suppress_with_log([Exception], message=...)``."""
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        with suppress_with_log(kinds, message="ignored"):
            raise KeyError("k")
        with pytest.raises(ValueError, match="boom"), suppress_with_log(kinds):
            raise ValueError("boom")
    assert [r.getMessage() for r in caplog.records] == ["ignored: 'k'"]


@pytest.mark.parametrize("wrong", [[], ["KeyError"], [KeyError, 3], "KeyError"])
def test_suppress_with_log_refuses_what_is_not_exception_types(wrong: object) -> None:
    with pytest.raises(TypeError, match="exception types"), suppress_with_log(wrong):  # type: ignore[arg-type]
        pass
