"""Start-up never depends on Valkey, and a cache never changes what a caller sees: every
error the cache can throw falls through to the database, counted under its cause."""

from __future__ import annotations

import asyncio
import logging

import pytest
from glide import GlideClient, RequestError
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    FragmentInput,
    KeySchema,
    MyFragmentInput,
    ScopeType,
    ScriptLoadError,
    ScriptRegistry,
    UnknownPolicyError,
    create_valkey_client,
)
from atomic_cache.resilience.guard import GuardedCache
from atomic_cache.tools.embedded import EmbeddedValkey, free_port

from .repo_tools import count_sql, make_world
from .test_cli import invoke


async def test_registry_load_against_a_dead_server_returns_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = await create_valkey_client(
        f"valkey://127.0.0.1:{free_port()}/0", request_timeout_ms=200, connect_timeout_ms=200
    )
    try:
        with caplog.at_level(logging.WARNING, logger="atomic_cache"):
            assert await ScriptRegistry().load(client) is False
        lines = [r for r in caplog.records if "could not load the cache's scripts" in r.message]
        assert len(lines) == 1
        with pytest.raises(RequestError) as raised:
            await ScriptRegistry().load(client, required=True)
        assert not isinstance(raised.value, ScriptLoadError)  # nothing was rejected
    finally:
        await client.close()


async def test_scripts_load_says_it_cannot_reach_a_dead_server() -> None:
    url = f"valkey://127.0.0.1:{free_port()}/0"
    result = await invoke("scripts", "load", "--valkey-url", url)
    assert result.exit_code == 1
    assert f"Error: cannot reach Valkey at {url}" in result.output
    assert "rejected" not in result.output and "Traceback" not in result.output


async def test_start_up_with_valkey_down_then_valkey_starts(clean_db: AsyncEngine) -> None:
    """The service starts, reads come from PostgreSQL (counted as connection failures,
    then skipped by the breaker), and once Valkey starts, reads become cache hits."""
    world = await make_world(clean_db, None)
    user = world.users[0]
    await AppConfigFragmentRepository(clean_db).bulk_create_my(
        user, [MyFragmentInput(name="webui", extra_config={"v": 1})]
    )
    server = EmbeddedValkey()  # not started yet
    client = await create_valkey_client(server.url, request_timeout_ms=300, connect_timeout_ms=300)
    try:
        registry = ScriptRegistry()
        assert await registry.load(client) is False
        cache = AppConfigFragmentCacheSource(client, registry)
        repo = AppConfigFragmentRepository(clean_db, cache=cache)
        for _ in range(5):
            assert (await repo.app_config(user, "webui")).config == {"v": 1}
        down = repo.stats()
        assert down.fall_throughs.get("connection", 0) >= 1
        assert down.fall_throughs.get("error", 0) == 0
        assert down.hits == 0
        with server:
            for _ in range(100):  # the breaker's cool-down, then glide reconnects
                assert (await repo.app_config(user, "webui")).config == {"v": 1}
                with count_sql(clean_db) as sql:
                    assert (await repo.app_config(user, "webui")).config == {"v": 1}
                if len(sql) == 0:
                    break
                await asyncio.sleep(0.1)
            assert len(sql) == 0, "Valkey never served the entry"
            assert repo.stats().hits >= 1
    finally:
        await client.close()


@pytest.mark.parametrize("name", ["x" * 300, "", "webui\x00", "nope"])
async def test_odd_names_answer_as_without_a_cache(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource, name: str
) -> None:
    world = await make_world(clean_db, cache)
    user = world.users[0]
    outcomes: list[tuple[str, object]] = []
    for repo in (
        AppConfigFragmentRepository(clean_db),
        AppConfigFragmentRepository(clean_db, cache=cache),
    ):
        try:
            outcomes.append(("value", await repo.app_config(user, name)))
        except Exception as error:
            outcomes.append((type(error).__name__, str(error)))
    assert outcomes[0] == outcomes[1]
    if len(name) > 256:  # too long for a key: counted, and it never trips the breaker
        cached = AppConfigFragmentRepository(clean_db, cache=cache)
        for _ in range(5):
            with pytest.raises(UnknownPolicyError):
                await cached.app_config(user, name)
        assert cache.metrics.fall_throughs["invalid"] == 6
        assert GuardedCache.of(cache).breaker.state.value == "closed"
        await cached.app_config(user, "webui")  # still goes to Valkey: a miss, then a hit
        await cached.app_config(user, "webui")
        assert cache.metrics.hits == 1


async def test_undecodable_values_in_the_index_answer_as_without_a_cache(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    world = await make_world(clean_db, cache)
    user = world.users[0]
    plain = AppConfigFragmentRepository(clean_db)
    cached = AppConfigFragmentRepository(clean_db, cache=cache)
    expected = await plain.my_app_configs(user)
    assert await cached.my_app_configs(user) == expected  # fills the catalogue and entries
    await valkey.custom_command(["SADD", keys.catalogue, "\udcff".encode("utf-8", "surrogatepass")])
    await valkey.custom_command(["HSET", keys.user_stamps(user), "webui", "\xff"])
    await valkey.set(keys.entry(user, "theme"), b"\xff\xfe not utf-8")
    odd = b"\xff\xfe"
    domain = world.domain_of(user)
    for index in (keys.users_index, keys.domain_index(domain), keys.user_index(user)):
        await valkey.custom_command(["ZADD", index, "9999999999999", odd])
    for _ in range(3):
        assert await cached.my_app_configs(user) == expected
        assert await cached.app_config(user, "webui") == await plain.app_config(user, "webui")
        assert await cached.app_config(user, "theme") == await plain.app_config(user, "theme")
    # A write's invalidation walks those indexes (domain and PUBLIC clean-up included).
    item = FragmentInput(
        scope_type=ScopeType.DOMAIN, scope_id=domain, name="webui", extra_config={"d": 1}
    )
    assert not (await cached.admin_bulk_create([item])).failures
    await cache.invalidate_for_scope(ScopeType.PUBLIC, "public", ["limits"])
    await cache.reclaim()
    for _ in range(2):
        assert await cached.my_app_configs(user) == await plain.my_app_configs(user)


async def test_each_waiter_of_a_shared_flight_gets_its_own_copy(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    world = await make_world(clean_db, cache)
    user = world.users[0]
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"a": {"b": 1}})])
    results = await asyncio.gather(*(repo.app_config(user, "webui") for _ in range(5)))
    assert all(result == results[0] for result in results)
    configs = [result.config for result in results]
    assert len({id(config) for config in configs}) == 5  # no two callers share a dict
    assert configs[0] is not None and configs[1] is not None
    configs[0]["a"]["b"] = 2
    assert configs[1]["a"]["b"] == 1
