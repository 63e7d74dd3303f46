"""Shared fixtures: real Valkey (VALKEY_URL, else Docker, else the embedded binary)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from glide import GlideClient

from atomic_cache import AppConfigFragmentCacheSource, KeySchema, ScriptRegistry
from atomic_cache.client import create_valkey_client
from atomic_cache.embedded import valkey_url as resolve_valkey_url


@pytest.fixture(scope="session")
def valkey_url() -> Iterator[str]:
    with resolve_valkey_url() as url:
        yield url


@pytest.fixture(scope="session")
async def valkey(valkey_url: str) -> AsyncIterator[GlideClient]:
    # A generous timeout: the suite shares two cores with the servers it starts.
    client = await create_valkey_client(valkey_url, request_timeout_ms=5000)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def registry(valkey: GlideClient) -> ScriptRegistry:
    scripts = ScriptRegistry()
    await scripts.load(valkey)
    return scripts


@pytest.fixture
def keys() -> KeySchema:
    """A prefix of its own per test, so tests never see each other's keys (even on a
    shared server) and never need FLUSHDB."""
    return KeySchema(prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture
def cache(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> AppConfigFragmentCacheSource:
    return AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=600, keys=keys)
