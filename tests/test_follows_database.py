"""The cache follows the database, whoever writes it: changes made with plain SQL on
connections of their own reach a repository with a cache (another process), with and
without a local cache, through the triggers, the outbox and a NOTIFY."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from glide import GlideClient
from sqlalchemy import event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    FragmentInput,
    KeySchema,
    LocalCache,
    MyFragmentInput,
    ScopeType,
    ScriptRegistry,
    UnknownUserError,
)
from atomic_cache.db import invalidation_outbox, outbox
from atomic_cache.db.listener import ChangeListener
from atomic_cache.policy.consistency import CHECK_LABEL

from .repo_tools import World, make_world

BOUND_S = 15.0  # how long a poll waits for what must happen (never a timing assertion)
NO_POLL_S = 600.0  # a replayer that polls this rarely hears of a change by NOTIFY only


@dataclass
class Process:
    """Another process: a cache source of its own on the test's prefix (and a local
    cache, if asked), and a repository whose replayer is woken by NOTIFY alone."""

    repo: AppConfigFragmentRepository
    cache: AppConfigFragmentCacheSource
    local: LocalCache | None


@pytest.fixture
async def start(
    clean_db: AsyncEngine, valkey: GlideClient, valkey_url: str, registry: ScriptRegistry
) -> AsyncIterator[Callable[..., Awaitable[Process]]]:
    started: list[Process] = []

    async def make(keys: KeySchema, *, local: bool = False) -> Process:
        local_cache = None
        if local:
            local_cache = await LocalCache.create(
                valkey_url, keys=keys, check_interval_s=0.2, poll_s=0.02
            )
            assert await local_cache.ready(BOUND_S)
        cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local_cache)
        repo = AppConfigFragmentRepository(clean_db, cache=cache, replay_every_s=NO_POLL_S)
        process = Process(repo, cache, local_cache)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.repo.close()
        if process.local is not None:
            await process.local.close()


async def sql(engine: AsyncEngine, statement: str, **params: object) -> None:
    """A write by someone else: plain SQL, its own connection and transaction."""
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def fragment(
    engine: AsyncEngine, scope_type: str, scope_id: str, name: str, config: str
) -> None:
    await sql(
        engine,
        "INSERT INTO app_config_fragments (id, scope_type, scope_id, name, extra_config)"
        " VALUES (gen_random_uuid(), :scope_type, :scope_id, :name, CAST(:config AS jsonb))",
        scope_type=scope_type,
        scope_id=scope_id,
        name=name,
        config=config,
    )


async def warm(process: Process, user: uuid.UUID, name: str = "webui") -> object:
    """Read twice: a fill, then a hit (what the change must not leave served)."""
    await process.repo.app_config(user, name)
    return (await process.repo.app_config(user, name)).config


async def serves(process: Process, user: uuid.UUID, name: str, expected: object) -> None:
    async def check() -> bool:
        return (await process.repo.app_config(user, name)).config == expected

    await eventually(check, f"{name} of {user} served as {expected!r}")


@pytest.fixture
async def world(clean_db: AsyncEngine) -> World:
    world = await make_world(clean_db, None)
    await fragment(clean_db, "domain", "alpha", "webui", '{"v": 0}')
    await fragment(clean_db, "domain", "beta", "webui", '{"v": 100}')
    return world


@pytest.fixture(params=[False, True], ids=["valkey", "local-cache"])
async def reader(
    request: pytest.FixtureRequest, start: Callable[..., Awaitable[Process]], keys: KeySchema
) -> Process:
    """Another process reading through a cache, with or without a local cache."""
    return await start(keys, local=request.param)


async def test_a_domain_fragment_updated_with_sql(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    user = world.domains["alpha"][0]
    assert await warm(reader, user) == {"v": 0}
    await sql(clean_db, "UPDATE app_config_fragments SET extra_config = '{\"v\": 1}'"
              " WHERE scope_type = 'domain' AND scope_id = 'alpha'")  # fmt: skip
    await serves(reader, user, "webui", {"v": 1})


async def test_a_user_fragment_inserted_with_sql(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    user = world.domains["alpha"][0]
    assert await warm(reader, user) == {"v": 0}
    await fragment(clean_db, "user", str(user), "webui", '{"mine": true}')
    await serves(reader, user, "webui", {"v": 0, "mine": True})
    other = world.domains["alpha"][1]  # another user's entry was not covered
    assert await warm(reader, other) == {"v": 0}


async def test_a_fragment_moved_to_another_user_with_sql(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    """One UPDATE changes a fragment's slice: both the slice it left and the one it
    joined are invalidated."""
    giver, taker = world.domains["alpha"]
    await fragment(clean_db, "user", str(giver), "webui", '{"gift": 1}')
    assert await warm(reader, giver) == {"v": 0, "gift": 1}
    assert await warm(reader, taker) == {"v": 0}
    await sql(clean_db, "UPDATE app_config_fragments SET scope_id = :taker"
              " WHERE scope_type = 'user' AND scope_id = :giver",
              giver=str(giver), taker=str(taker))  # fmt: skip
    await serves(reader, taker, "webui", {"v": 0, "gift": 1})
    await serves(reader, giver, "webui", {"v": 0})


async def test_a_user_moved_to_another_domain_with_sql(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    user = world.domains["alpha"][0]
    assert await warm(reader, user) == {"v": 0}
    await sql(clean_db, "UPDATE users SET domain_name = 'beta' WHERE uuid = :user", user=user)
    await serves(reader, user, "webui", {"v": 100})


async def test_a_policy_inserted_and_deleted_with_sql(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    user = world.domains["alpha"][0]

    async def names() -> list[str]:
        return [config.name for config in await reader.repo.my_app_configs(user)]

    assert await names() == ["limits", "theme", "webui"]
    assert await names() == ["limits", "theme", "webui"]  # the catalogue is cached
    await sql(clean_db, "INSERT INTO app_config_policies (id, config_name, scope_sources)"
              " VALUES (gen_random_uuid(), 'zeta', ARRAY['user'])")  # fmt: skip

    async def has_zeta() -> bool:
        return await names() == ["limits", "theme", "webui", "zeta"]

    await eventually(has_zeta, "the new policy in my_app_configs")
    await sql(clean_db, "DELETE FROM app_config_policies WHERE config_name = 'zeta'")

    async def no_zeta() -> bool:
        return await names() == ["limits", "theme", "webui"]

    await eventually(no_zeta, "the deleted policy gone from my_app_configs")


async def test_one_update_over_every_fragment_of_a_name(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    for user in world.users:
        await warm(reader, user)
    await sql(
        clean_db,
        "UPDATE app_config_fragments SET extra_config = extra_config || CAST(:add AS jsonb)"
        " WHERE name = 'webui'",
        add='{"all": 1}',
    )
    for user in world.users:
        base = 0 if user in world.domains["alpha"] else 100
        await serves(reader, user, "webui", {"v": base, "all": 1})


async def test_a_user_deleted_with_sql_answers_as_without_a_cache(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    user = world.domains["alpha"][1]
    assert await warm(reader, user) == {"v": 0}
    await sql(clean_db, "DELETE FROM users WHERE uuid = :user", user=user)
    with pytest.raises(UnknownUserError):
        await AppConfigFragmentRepository(clean_db).app_config(user, "webui")

    async def unknown() -> bool:
        try:
            await reader.repo.app_config(user, "webui")
        except UnknownUserError:
            return True
        return False

    await eventually(unknown, "the deleted user unknown to the cached repository")


async def test_a_truncate_drops_everything(
    reader: Process, clean_db: AsyncEngine, world: World
) -> None:
    user = world.domains["beta"][0]
    assert await warm(reader, user) == {"v": 100}
    await sql(clean_db, "TRUNCATE app_config_fragments")
    await serves(reader, user, "webui", None)


async def test_two_prefixes_over_one_database(
    start: Callable[..., Awaitable[Process]], clean_db: AsyncEngine, world: World
) -> None:
    one = await start(KeySchema(f"t{uuid.uuid4().hex[:12]}"))
    two = await start(KeySchema(f"t{uuid.uuid4().hex[:12]}"))
    user = world.domains["alpha"][0]
    assert await warm(one, user) == await warm(two, user) == {"v": 0}
    await sql(clean_db, "UPDATE app_config_fragments SET extra_config = '{\"v\": 2}'"
              " WHERE scope_id = 'alpha'")  # fmt: skip
    await serves(one, user, "webui", {"v": 2})
    await serves(two, user, "webui", {"v": 2})


async def test_a_write_of_this_package_records_no_row_for_its_own_cache(
    start: Callable[..., Awaitable[Process]], clean_db: AsyncEngine, world: World
) -> None:
    """Its own cache is invalidated by the write itself, once; the other caches get one
    row each from the triggers."""
    writer = await start(KeySchema(f"t{uuid.uuid4().hex[:12]}"))
    observer = f"t{uuid.uuid4().hex[:12]}"  # a cache registered, with no replayer running
    async with clean_db.begin() as conn:
        await outbox.register(conn, observer)
    user = world.domains["alpha"][0]
    await warm(writer, user)  # (registering the prefix: a new life, one invalidation)
    before = writer.repo.stats().invalidations
    await writer.repo.bulk_create_my(user, [MyFragmentInput(name="theme", extra_config={})])
    assert writer.repo.stats().invalidations == before + 1
    async with clean_db.connect() as conn:
        left = (
            await conn.execute(
                select(invalidation_outbox.c.cache_prefix, invalidation_outbox.c.targets)
            )
        ).all()
    assert [tuple(row) for row in left] == [(observer, [["user", str(user), ["theme"]]])]


async def test_a_10000_row_update_is_one_row_per_cache(
    start: Callable[..., Awaitable[Process]], keys: KeySchema, clean_db: AsyncEngine, world: World
) -> None:
    reader = await start(keys)
    users = [uuid.uuid4() for _ in range(10_000)]
    await sql(clean_db, "INSERT INTO users (uuid, domain_name) SELECT u, 'alpha'"
              " FROM unnest(CAST(:users AS uuid[])) AS u", users=users)  # fmt: skip
    await sql(clean_db, "INSERT INTO app_config_fragments (id, scope_type, scope_id, name,"
              " extra_config) SELECT gen_random_uuid(), 'user', u::text, 'theme', '{}'"
              " FROM unnest(CAST(:users AS uuid[])) AS u", users=users)  # fmt: skip
    sample = users[::1000]
    for user in sample:
        assert await warm(reader, user, "theme") == {}
    observer = f"t{uuid.uuid4().hex[:12]}"
    async with clean_db.begin() as conn:
        await outbox.register(conn, observer)
    await sql(clean_db, "UPDATE app_config_fragments SET extra_config = '{\"n\": 1}'"
              " WHERE name = 'theme'")  # fmt: skip
    async with clean_db.connect() as conn:
        recorded = (
            (
                await conn.execute(
                    select(invalidation_outbox.c.targets).where(
                        invalidation_outbox.c.cache_prefix == observer
                    )
                )
            )
            .scalars()
            .all()
        )
    assert len(recorded) == 1 and len(recorded[0]) == 10_000
    for user in sample:
        await serves(reader, user, "theme", {"n": 1})


async def test_a_killed_listen_connection_reconnects_and_delivers(
    start: Callable[..., Awaitable[Process]], keys: KeySchema, clean_db: AsyncEngine, world: World
) -> None:
    reader = await start(keys)
    user = world.domains["alpha"][0]
    assert await warm(reader, user) == {"v": 0}
    listener = ChangeListener.of(clean_db)
    await eventually(_async(lambda: listener.backend_pid is not None), "a LISTEN connection")
    pid, connects = listener.backend_pid, listener.connects
    await sql(clean_db, "SELECT pg_terminate_backend(:pid)", pid=pid)
    await eventually(
        _async(lambda: listener.connects > connects and listener.backend_pid not in (None, pid)),
        "the listener connected again",
    )
    await sql(clean_db, "UPDATE app_config_fragments SET extra_config = '{\"v\": 3}'"
              " WHERE scope_id = 'alpha'")  # fmt: skip
    await serves(reader, user, "webui", {"v": 3})


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


async def test_a_new_cache_starts_a_new_life_of_its_index(
    clean_db: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema,
    world: World,
) -> None:  # fmt: skip
    """An entry left in Valkey by a cache of this prefix that was not registered (gone
    for good and expired, say) may be stale: the first registration refuses it."""
    user = world.domains["alpha"][0]
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    stale = (await AppConfigFragmentRepository(clean_db).app_config(user, "webui")).model_copy(
        update={"config": {"v": "stale"}}
    )
    assert await cache.set_merged_config(user, "webui", stale)
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    assert (await repo.app_config(user, "webui")).config == {"v": 0}
    assert repo.stats().new_registrations == 1
    await repo.close()


async def test_a_cache_gone_for_good_is_expired_with_its_rows(
    clean_db: AsyncEngine, world: World
) -> None:
    async with clean_db.begin() as conn:
        await outbox.register(conn, "gone")
        await outbox.register(conn, "alive")
    await sql(clean_db, "UPDATE app_config_fragments SET extra_config = '{}'")
    await sql(clean_db, "UPDATE app_config_cache_prefixes SET seen_at = now() - interval '2 days'"
              " WHERE prefix = 'gone'")  # fmt: skip
    async with clean_db.begin() as conn:
        assert await outbox.expire(conn, 24 * 3600) == ["gone"]
        assert await outbox.heartbeat(conn, "alive")
        assert not await outbox.heartbeat(conn, "gone")
    async with clean_db.connect() as conn:
        assert await outbox.backlog(conn, "gone") == 0
        assert await outbox.backlog(conn, "alive") == 1
        assert await outbox.register(conn, "gone")  # it comes back: it was not registered


# -- the sampled consistency check ----------------------------------------------------------


async def checked_reader(
    engine: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> AppConfigFragmentRepository:
    """A repository that checks every hit, with a short second look."""
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    repo = AppConfigFragmentRepository(engine, cache=cache, verify_sample=1.0, replay_after_s=60)
    repo.checker.recheck_after_s = 0.05
    return repo


async def test_the_checker_finds_and_heals_a_write_that_bypassed_the_triggers(
    clean_db: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema,
    world: World,
) -> None:  # fmt: skip
    reader = await checked_reader(clean_db, valkey, registry, keys)
    user = world.domains["alpha"][0]
    assert (await reader.app_config(user, "webui")).config == {"v": 0}
    async with clean_db.begin() as conn:  # a restore, say: the triggers do not fire
        await conn.execute(text("ALTER TABLE app_config_fragments DISABLE TRIGGER USER"))
        await conn.execute(text("UPDATE app_config_fragments SET extra_config = '{\"v\": 9}'"))
        for event in ("inserted", "updated", "deleted", "truncated"):
            await conn.execute(
                text(
                    "ALTER TABLE app_config_fragments"
                    f" ENABLE ALWAYS TRIGGER app_config_fragments_{event}"
                )
            )
    assert (await reader.app_config(user, "webui")).config == {"v": 0}  # served stale
    await reader.checker.idle()
    stats = reader.stats()
    assert (stats.consistency_checks, stats.consistency_mismatches) == (1, 1)
    assert (await reader.app_config(user, "webui")).config == {"v": 9}  # healed
    await reader.close()


async def test_the_checker_reports_no_mismatch_for_a_write_in_flight(
    clean_db: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema,
    world: World,
) -> None:  # fmt: skip
    """A write has committed and holds its invalidation (as if Valkey were slow): the
    reader's hit differs from PostgreSQL, but the second look waits for the write and
    finds the entry gone."""
    reader = await checked_reader(clean_db, valkey, registry, keys)
    user = world.domains["alpha"][0]
    writer = AppConfigFragmentRepository(
        clean_db, cache=AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    )
    held, release = writer._cache.invalidate, asyncio.Event()

    async def slow_invalidate(*args: Any, **kwargs: Any) -> int | None:
        await release.wait()
        return await held(*args, **kwargs)

    writer._cache.invalidate = slow_invalidate  # type: ignore[method-assign]
    reader.checker.sample = 0.0
    assert (await reader.app_config(user, "webui")).config == {"v": 0}
    assert (await writer.app_config(user, "theme")).config is None  # (registered)
    write = asyncio.create_task(
        writer.admin_bulk_update(
            [
                FragmentInput(
                    scope_type=ScopeType.DOMAIN,
                    scope_id="alpha",
                    name="webui",
                    extra_config={"v": 5},
                )
            ]
        )
    )

    async def committed() -> bool:
        return (await AppConfigFragmentRepository(clean_db).app_config(user, "webui")).config == {
            "v": 5
        }

    await eventually(committed, "the write committed")
    reader.checker.sample = 1.0
    assert (await reader.app_config(user, "webui")).config == {"v": 0}  # before it returned
    await eventually(_async(lambda: reader.stats().consistency_checks == 1), "a first look")
    release.set()
    await write
    await reader.checker.idle()
    assert (reader.stats().consistency_checks, reader.stats().consistency_mismatches) == (1, 0)
    assert (await reader.app_config(user, "webui")).config == {"v": 5}
    await reader.close()
    await writer.close()


async def test_the_checkers_sql_says_what_it_is(
    clean_db: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema,
    world: World,
) -> None:  # fmt: skip
    """Its reads carry a comment: pg_stat_statements tells them apart, and counters of
    the read path leave them out."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    reader = await checked_reader(clean_db, valkey, registry, keys)
    user = world.domains["alpha"][0]
    await reader.app_config(user, "webui")
    event.listen(clean_db.sync_engine, "before_cursor_execute", record)
    try:
        await reader.app_config(user, "webui")  # a hit, checked
        await reader.checker.idle()
    finally:
        event.remove(clean_db.sync_engine, "before_cursor_execute", record)
    checks = [statement for statement in seen if CHECK_LABEL in statement]
    assert len(checks) == 1 and checks[0].startswith(f"SELECT /* {CHECK_LABEL} */")
    assert reader.stats().consistency_checks == 1
    await reader.close()


async def test_a_write_in_flight_across_the_registration_is_waited_for(
    start: Callable[..., Awaitable[Process]], keys: KeySchema, clean_db: AsyncEngine,
    world: World,
) -> None:  # fmt: skip
    """A write whose trigger ran before the cache registered recorded no row for it. The
    first read waits for it to end: had it read (and filled) the old value meanwhile, that
    would be served for good."""
    reader = await start(keys)
    user = world.domains["alpha"][0]
    async with clean_db.connect() as writer:
        await writer.execute(
            text("UPDATE app_config_fragments SET extra_config = CAST(:v AS jsonb)"
                 " WHERE scope_id = 'alpha'"), {"v": '{"v": 7}'}
        )  # fmt: skip
        # The trigger has run: no cache was registered, no row recorded.
        first = asyncio.create_task(reader.repo.app_config(user, "webui"))
        await asyncio.sleep(0.3)
        assert not first.done()  # the registration waits for the open write
        await writer.commit()
    assert (await first).config == {"v": 7}
    assert (await reader.repo.app_config(user, "webui")).config == {"v": 7}
