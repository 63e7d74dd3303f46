"""Shared fixtures: real Valkey and PostgreSQL (URL from the environment, else Docker,
else the embedded servers from PyPI wheels)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from glide import GlideClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from atomic_cache import AppConfigFragmentCacheSource, KeySchema, ScriptRegistry
from atomic_cache.cache.client import create_valkey_client
from atomic_cache.policy import create_schema
from atomic_cache.replayer import close_all
from atomic_cache.tools.embedded import postgres_url as resolve_postgres_url
from atomic_cache.tools.embedded import valkey_url as resolve_valkey_url


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--heavy", action="store_true", help="also run the tests marked heavy (minutes each)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked heavy run only with --heavy (make test-heavy; .ci/run runs them)."""
    if config.getoption("--heavy"):
        return
    heavy = [item for item in items if item.get_closest_marker("heavy") is not None]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if item.get_closest_marker("heavy") is None]


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


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with resolve_postgres_url() as url:
        yield url


@pytest.fixture(scope="session")
async def database_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh database for this test run on the server, dropped at the end."""
    name = f"atomic_cache_test_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server_url).set(database=name)
    yield url.render_as_string(hide_password=False)
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    db = create_async_engine(database_url, pool_size=20, max_overflow=20)
    await create_schema(db)
    yield db
    await db.dispose()


@pytest.fixture(autouse=True)
async def stop_replayers() -> AsyncIterator[None]:
    """Each test's repositories stop replaying when it ends, as a process's would at
    shutdown: a later test's writes must not reach an earlier test's caches."""
    yield
    await close_all()


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncEngine:
    """The test database, emptied: tests that use it see only their own rows."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                # The caches of earlier tests too: the triggers (TRUNCATE's included)
                # would record rows for them that no test replays.
                "TRUNCATE app_config_cache_prefixes, app_config_fragments,"
                " app_config_policies, users, domains, app_config_invalidation_outbox CASCADE"
            )
        )
    return engine
