"""The promise at every size and in every state: no fill without a token taken before its
SQL read, invalidations of any number of targets (split into calls the script accepts,
each atomic), outbox replays of any size, and replays that keep the catalogue right."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence

import pytest
from glide import GlideClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    FragmentInput,
    InvalidationTarget,
    KeySchema,
    LocalCache,
    MyFragmentInput,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.source import INVALIDATE_CLEANUP_BUDGET
from atomic_cache.db import invalidation_outbox, outbox
from atomic_cache.replayer import REPLAY_BATCH, OutboxReplayer
from atomic_cache.resilience.guard import GuardedCache
from atomic_cache.targets import MAX_TARGETS_PER_CALL, MAX_VALUES_PER_CALL, ScriptArg, pack_calls
from atomic_cache.tools.embedded import free_port

from .repo_tools import ALL_SCOPES, add_users, count_sql, make_world
from .test_bounded_invalidation import NAMES, config, fill_domain, hold_clean_up, pairs, served
from .test_local_cache import BOUND_S, settled, start_life
from .test_outbox import rows


class CountingRegistry(ScriptRegistry):
    """The package's registry, recording the arguments of every invalidate.lua call that
    carries targets."""

    def __init__(self) -> None:
        super().__init__()
        self.invalidations: list[list[ScriptArg]] = []

    async def call(
        self,
        client: object,
        name: str,
        keys: Sequence[str],
        args: Iterable[ScriptArg] = (),
    ) -> object:
        args = list(args)
        if name == "invalidate" and len(args) > 5:  # it names targets (not the catalogue alone)
            self.invalidations.append(args)
        return await super().call(client, name, keys, args)  # type: ignore[arg-type]


def targets_of(call: list[ScriptArg], first: int = 5) -> int:
    """How many targets one invalidate.lua call carried (its ARGV[6..]; a list of
    targets alone with ``first=0``)."""
    found, i = 0, first
    while i < len(call):
        found += 1
        i += 3 + max(int(call[i + 2]), 0)
    return found


def user_targets(users: Iterable[uuid.UUID]) -> list[tuple[ScopeType, str]]:
    return [(ScopeType.USER, str(user)) for user in users]


async def counting_cache(
    valkey: GlideClient, keys: KeySchema
) -> tuple[AppConfigFragmentCacheSource, CountingRegistry]:
    registry = CountingRegistry()
    await registry.load(valkey)
    return AppConfigFragmentCacheSource(valkey, registry, keys=keys), registry


async def check_invalidation_of_users(valkey: GlideClient, keys: KeySchema, count: int) -> None:
    """``count`` users' entries invalidated by one call: every covered entry is a miss
    when it returns, another domain's entries still hit, and the work was split into
    calls within the script's bounds, each deleting at most its budget."""
    cache, registry = await counting_cache(valkey, keys)
    users = await fill_domain(cache, "big", count)
    others = await fill_domain(cache, "other", 20)
    deleted = await cache.invalidate_many(user_targets(users))
    hold_clean_up(cache)  # what the call itself left: unservable, not yet deleted
    assert await served(cache, users + others) == pairs(others)
    calls = registry.invalidations
    assert len(calls) == math.ceil(count / MAX_TARGETS_PER_CALL)
    assert sum(targets_of(call) for call in calls) == count
    assert max(targets_of(call) for call in calls) <= MAX_TARGETS_PER_CALL
    assert max(len(call) - 5 for call in calls) <= MAX_VALUES_PER_CALL
    assert 0 < deleted <= len(calls) * INVALIDATE_CLEANUP_BUDGET
    # The rest is deleted in bounded steps, and nothing covered is left.
    await cache.reclaim()
    left = await valkey.exists([keys.entry(user, name) for user in users for name in NAMES])
    assert left == 0
    assert await served(cache, users + others) == pairs(others)


@pytest.mark.parametrize("count", [2_199, 10_000])
async def test_an_invalidation_of_thousands_of_users_lands_whole(
    valkey: GlideClient, keys: KeySchema, count: int
) -> None:
    await check_invalidation_of_users(valkey, keys, count)


@pytest.mark.heavy
async def test_an_invalidation_of_100_000_users_lands_whole(
    valkey: GlideClient, keys: KeySchema
) -> None:
    await check_invalidation_of_users(valkey, keys, 100_000)


async def test_a_target_with_more_names_than_one_call_carries(
    valkey: GlideClient, keys: KeySchema
) -> None:
    cache, registry = await counting_cache(valkey, keys)
    user = uuid.uuid4()
    names = [f"name-{i}" for i in range(2 * MAX_VALUES_PER_CALL + 5)]
    assert await cache.set_many(user, [config(user, "d", name) for name in names])
    assert await cache.set_many(user, [config(user, "d", "kept")])
    await cache.invalidate_many([(ScopeType.USER, str(user), names)])
    assert len(registry.invalidations) == 3
    found = await cache.lookup_many(user, [*names, "kept"])
    assert [name for name, hit in found.items() if hit.value is not None] == ["kept"]


async def test_every_call_of_a_large_invalidation_is_announced(
    valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    """Another process's local cache hears every part and drops what each covers,
    without a gap (a lost announcement would flush it)."""
    local = await LocalCache.create(valkey_url, keys=keys, check_interval_s=0.2, poll_s=0.02)
    try:
        assert await local.ready(BOUND_S)
        registry = ScriptRegistry()
        await registry.load(valkey)
        elsewhere = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
        writer, calls = await counting_cache(valkey, keys)
        await start_life(writer, local)
        users = await fill_domain(writer, "d", 1_200)
        kept = await fill_domain(writer, "e", 3)
        for user in users[:50] + kept:  # copied into the other process's memory
            await elsewhere.lookup_many(user, list(NAMES))
        assert len(local) == 53 * len(NAMES)
        await writer.invalidate_many(user_targets(users))
        # start_life's call, then the parts of this one
        assert len(calls.invalidations) == 1 + math.ceil(1_200 / MAX_TARGETS_PER_CALL)
        await settled(local, valkey, keys)
        assert len(local) == 3 * len(NAMES)
        assert local.counters.drops == 50 * len(NAMES)
        assert local.counters.flushes == {"new_life": 1}
    finally:
        await local.close()


async def test_the_script_takes_more_values_than_lua_can_unpack(
    valkey: GlideClient, valkey_url: str, registry: ScriptRegistry, keys: KeySchema
) -> None:
    """invalidate.lua itself, called with no split: 2,500 user targets and one target of
    9,000 names (over 20,000 values; Lua's unpack stops near 8,000). It lands, stamps
    every target and announces every one (a local cache hears it without a gap)."""
    local = await LocalCache.create(valkey_url, keys=keys, check_interval_s=0.2, poll_s=0.02)
    try:
        assert await local.ready(BOUND_S)
        cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
        await start_life(cache, local)
        users = [uuid.uuid4() for _ in range(2_500)]
        names = [f"n{i}" for i in range(9_000)]
        for user in users[:3]:
            assert await cache.set_many(user, [config(user, "d", "n1")])
            await cache.lookup(user, "n1")  # a copy in the local cache
        assert len(local) == 3
        args: list[ScriptArg] = []
        for user in users:
            args += ["user", str(user), -1]
        args += ["public", "public", len(names), *names]
        _, _, sequence = await cache._call_invalidate(INVALIDATE_CLEANUP_BUDGET, False, args)
        await settled(local, valkey, keys)
        assert local.sequence == sequence and len(local) == 0
        assert local.counters.flushes == {"new_life": 1}
        assert await valkey.hget(keys.public_stamps, "n8999") == str(sequence).encode()
        assert await valkey.hget(keys.user_stamps(users[-1]), "*") == str(sequence).encode()
    finally:
        await local.close()


# -- the repositories ----------------------------------------------------------------------


async def test_a_bulk_write_of_2199_users_invalidates_once_and_spares_the_rest(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    world = await make_world(clean_db, cache)
    many = (await add_users(clean_db, {"many": 2_199}))["many"]
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    bystander = world.users[0]
    await repo.app_config(bystander, "webui")
    for user in many[:10]:
        await repo.app_config(user, "webui")  # cached with no fragment: config None
    result = await repo.admin_bulk_create(
        [
            FragmentInput(
                scope_type=ScopeType.USER, scope_id=str(user), name="webui", extra_config={"v": 1}
            )
            for user in many
        ]
    )
    assert len(result.successes) == 2_199 and not result.failures
    stats = repo.stats()
    assert stats.failed_invalidations == 0 and stats.pending_invalidations == 0
    assert await rows(clean_db, cache.keys.prefix) == 0
    for user in many[:10]:
        assert (await repo.app_config(user, "webui")).config == {"v": 1}
    with count_sql(clean_db) as sql:  # the bystander's entry was never dropped
        for _ in range(12):
            await repo.app_config(bystander, "webui")
    assert len(sql) == 0
    await repo.close()


async def dead_cache(keys: KeySchema) -> AppConfigFragmentCacheSource:
    """A cache source whose Valkey never answers: every invalidation leaves its row."""
    client = await create_valkey_client(
        f"valkey://127.0.0.1:{free_port()}/0", request_timeout_ms=100, connect_timeout_ms=100
    )
    return AppConfigFragmentCacheSource(client, ScriptRegistry(), keys=keys)


async def test_an_outage_backlog_of_large_rows_is_replayed_in_one_round(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource, valkey: GlideClient
) -> None:
    """100 writes of 21 users each, left in the outbox by an outage: one replay round
    sends their 2,100 targets and deletes every row."""
    await make_world(clean_db, None)  # (a repository with the cache would replay the rows)
    users = (await add_users(clean_db, {"crowd": 21 * REPLAY_BATCH}))["crowd"]
    reader = AppConfigFragmentRepository(clean_db, cache=cache)
    for user in users[::50]:
        await reader.app_config(user, "theme")
    await reader.close()  # its replayer must not take the rows: the one below replays them
    # (A replay_after_s of an hour: its own replayer leaves the rows alone.)
    dead = await dead_cache(cache.keys)
    writer = AppConfigFragmentRepository(clean_db, cache=dead, replay_after_s=3600)
    for i in range(REPLAY_BATCH):
        batch = users[21 * i : 21 * (i + 1)]
        written = await writer.admin_bulk_create(
            [
                FragmentInput(
                    scope_type=ScopeType.USER, scope_id=str(u), name="theme", extra_config={"v": i}
                )
                for u in batch
            ]
        )
        assert len(written.successes) == 21, written.failures
    await writer.close()
    assert await rows(clean_db, cache.keys.prefix) == REPLAY_BATCH
    counted, calls = await counting_cache(valkey, cache.keys)
    replayer = OutboxReplayer(clean_db, GuardedCache.of(counted), after_s=0)
    assert await replayer.replay_once() == REPLAY_BATCH
    assert len(calls.invalidations) == math.ceil(21 * REPLAY_BATCH / MAX_TARGETS_PER_CALL)
    assert max(targets_of(call) for call in calls.invalidations) <= MAX_TARGETS_PER_CALL
    assert await rows(clean_db, cache.keys.prefix) == 0
    for user in users[::50]:
        assert (await reader.app_config(user, "theme")).config == {"v": users.index(user) // 21}


async def test_a_replay_batch_with_a_policy_create_drops_the_catalogue(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    """One replay round holding a policy create and a fragment write: every process's
    catalogue of names must go, or my_app_configs misses the new policy."""
    world = await make_world(clean_db, cache)
    user = world.users[0]
    reader = AppConfigFragmentRepository(clean_db, cache=cache)
    assert [c.name for c in await reader.my_app_configs(user)] == list(world.names)
    await reader.close()  # no replayer but the one below takes the rows
    dead = await dead_cache(cache.keys)
    policies = AppConfigPolicyRepository(clean_db, cache=dead, replay_after_s=3600)
    await policies.create("zeta", ALL_SCOPES)
    await policies.close()
    writer = AppConfigFragmentRepository(clean_db, cache=dead, replay_after_s=3600)
    await writer.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    await writer.close()
    assert await rows(clean_db, cache.keys.prefix) == 2
    replayer = OutboxReplayer(clean_db, GuardedCache.of(cache), after_s=0)
    assert await replayer.replay_once() == 2
    mine = {c.name: c.config for c in await reader.my_app_configs(user)}
    assert mine == {"limits": None, "theme": None, "webui": {"v": 1}, "zeta": None}


async def test_an_unreadable_outbox_row_starts_a_new_life_once(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    """A row no replay can read (written by hand, or by another version) is not retried
    forever: a new life of the index covers whatever it changed, once, loudly."""
    world = await make_world(clean_db, cache)
    reader = AppConfigFragmentRepository(clean_db, cache=cache)
    await reader.app_config(world.users[0], "webui")
    async with clean_db.begin() as conn:
        await conn.execute(
            insert(invalidation_outbox).values(
                cache_prefix=cache.keys.prefix, targets=[["galaxy", "x", None]]
            )
        )
        other = InvalidationTarget.of(ScopeType.USER, str(world.users[1]))
        await outbox.record(conn, cache.keys.prefix, [other], False)
    guard = GuardedCache.of(cache)
    replayer = OutboxReplayer(clean_db, guard, after_s=0)
    assert await replayer.replay_once() == 2
    assert await rows(clean_db, cache.keys.prefix) == 0
    stats = guard.stats()
    assert stats.outbox_unreadable == 1 and stats.index_resets == 1
    with count_sql(clean_db) as sql:  # the new life refused the old entry
        await reader.app_config(world.users[0], "webui")
    assert len(sql) > 0
    assert await replayer.replay_once() == 0
    assert guard.stats().index_resets == 1
    await reader.close()


# -- no fill without a token taken before its SQL read --------------------------------------


async def test_no_fill_without_a_token_while_an_invalidation_is_pending(
    clean_db: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    """Process A holds a missed invalidation of webui (its replay in cool-down); Valkey
    serves A every name, so its lookup hands out no token; A reads webui from the
    database, and process B writes a newer value and invalidates before A would fill.
    A must not fill: B, and everyone, then reads B's value."""
    a, b, user = await two_processes(clean_db, valkey, registry, keys)
    await b.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert len(await a.my_app_configs(user)) == 3  # warm: every name cached
    pending_in(a, [InvalidationTarget.of(ScopeType.USER, str(user), ["webui"])], False)
    raced = await race_after_sql(
        a,
        user,
        lambda: b.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 2})]),
    )
    assert {c.name: c.config for c in raced}["webui"] == {"v": 1}  # began before B's write
    assert (await b.app_config(user, "webui")).config == {"v": 2}
    assert {c.name: c.config for c in await b.my_app_configs(user)}["webui"] == {"v": 2}
    assert {c.name: c.config for c in await a.my_app_configs(user)}["webui"] == {"v": 2}
    await a.close()
    await b.close()


async def test_no_catalogue_fill_without_a_token_while_its_invalidation_is_pending(
    clean_db: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    a, b, user = await two_processes(clean_db, valkey, registry, keys)
    assert len(await a.my_app_configs(user)) == 3
    pending_in(a, [], True)  # a policy created or deleted by A: its replay is pending
    policies = AppConfigPolicyRepository(clean_db, cache=source_of(b))
    await race_after_sql(a, user, lambda: policies.create("zeta", ALL_SCOPES))
    assert [c.name for c in await b.my_app_configs(user)] == ["limits", "theme", "webui", "zeta"]
    await a.close()
    await b.close()


async def two_processes(
    engine: AsyncEngine, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> tuple[AppConfigFragmentRepository, AppConfigFragmentRepository, uuid.UUID]:
    """Repositories of two processes (a cache source each, one prefix) over a small
    world, and its first user."""
    here = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    there = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    world = await make_world(engine, there)
    a = AppConfigFragmentRepository(engine, cache=here)
    b = AppConfigFragmentRepository(engine, cache=there)
    return a, b, world.users[0]


def source_of(repo: AppConfigFragmentRepository) -> AppConfigFragmentCacheSource:
    source = repo._cache.source
    assert source is not None
    return source


def pending_in(
    repo: AppConfigFragmentRepository, targets: list[InvalidationTarget], catalogue: bool
) -> None:
    """The state of a process whose invalidation failed and whose replay failed a moment
    ago (its cool-down runs): the targets wait in its queue."""
    guard = repo._cache
    guard.pending.add(targets, catalogue)
    guard._replay_not_before = math.inf


async def race_after_sql(
    repo: AppConfigFragmentRepository, user: uuid.UUID, write: Callable[[], Awaitable[object]]
) -> list[AppConfigData]:
    """``repo.my_app_configs(user)``, with ``write`` (another process's write) run just
    after its SQL read and before its fill."""
    db = repo._db
    read = db.merged_configs

    async def then_write(
        user_id: uuid.UUID, names: Sequence[str] | None = None
    ) -> list[AppConfigData]:
        loaded = await read(user_id, names)
        await write()
        return loaded

    db.merged_configs = then_write  # type: ignore[method-assign]
    try:
        return await repo.my_app_configs(user)
    finally:
        db.merged_configs = read  # type: ignore[method-assign]


# -- the split, as pure code ----------------------------------------------------------------


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["user", "domain", "public"]),
            st.integers(0, 30),
            st.none() | st.lists(st.integers(0, 40), max_size=40, unique=True),
        ),
        max_size=60,
    ),
    st.integers(1, 7),
    st.integers(4, 25),
)
def test_pack_calls_keeps_every_slice_within_the_bounds(
    targets: list[tuple[str, int, list[int] | None]], max_targets: int, max_values: int
) -> None:
    given_args: list[list[ScriptArg]] = [
        [scope, f"id{i}", -1] if names is None else [scope, f"id{i}", len(names), *map(str, names)]
        for scope, i, names in targets
    ]
    calls = pack_calls(given_args, max_targets, max_values)

    def slices(args: list[ScriptArg]) -> list[tuple[object, object, object]]:
        found: list[tuple[object, object, object]] = []
        i = 0
        while i < len(args):
            count = int(args[i + 2])
            names = ["*"] if count < 0 else args[i + 3 : i + 3 + count]
            found += [(args[i], args[i + 1], name) for name in names]
            i += 3 + max(count, 0)
        return found

    sent = [piece for call in calls for piece in slices(call)]
    assert sorted(map(str, sent)) == sorted(str(s) for args in given_args for s in slices(args))
    assert all(targets_of(call, 0) <= max_targets and len(call) <= max_values for call in calls)
    assert all(call for call in calls)
