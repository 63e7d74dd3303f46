"""The in-process local cache (LocalCache), on real servers: kept correct by the
invalidations Valkey announces, emptied whenever it may have missed one, bounded, and
handing every caller a value of its own.

Several cache sources on one server stand for several processes. No timing is asserted:
what another process must eventually see is polled for, with a bound.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, TypedDict

import pytest
from glide import GlideClient, PubSubMsg
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    CACHE_ERRORS,
    AppConfigData,
    AppConfigFragment,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    KeySchema,
    LocalCache,
    MyFragmentInput,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
    register_prometheus,
)
from atomic_cache.cache.local import subscribed_connection
from atomic_cache.cache.scripts import ValkeyClient
from atomic_cache.tools.embedded import EmbeddedValkey, free_port
from atomic_cache.tools.embedded_cluster import EmbeddedCluster

from .repo_tools import ALL_SCOPES, CountingRegistry, World, count_sql, make_world
from .test_concurrency import run_mixed_load
from .valkey_tools import text


class Watch(TypedDict):
    """How often a LocalCache checks the server's sequence and polls its subscription."""

    check_interval_s: float
    poll_s: float


BOUND_S = 15.0  # how long a poll waits for what must happen (never a timing assertion)
FAST = Watch(check_interval_s=0.2, poll_s=0.02)  # a watcher that reacts within tenths
Client = ValkeyClient


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds, at most BOUND_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def until_async(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def value(
    user: uuid.UUID, version: int, *, name: str = "webui", domain: str = "alpha"
) -> AppConfigData:
    fragment = AppConfigFragment(
        scope_type=ScopeType.USER, scope_id=str(user), name=name, extra_config={"v": version}
    )
    return AppConfigData(
        user_id=user,
        domain_name=domain,
        name=name,
        fragments=[fragment],
        config={"v": version, "nested": {"list": [version]}},
    )


def version_of(data: AppConfigData | None) -> int | None:
    return None if data is None or data.config is None else int(data.config["v"])


async def fill(cache: AppConfigFragmentCacheSource, data: AppConfigData) -> None:
    """What a read-around does on a miss: lookup, then a fill with its token."""
    found = await cache.lookup(data.user_id, data.name)
    assert found.fill_token is not None, "expected a miss"
    assert await cache.set_merged_config(data.user_id, data.name, data, found.fill_token)


async def settled(local: LocalCache, client: Client, keys: KeySchema) -> None:
    """Until the local cache serves and has heard of every invalidation so far."""

    async def caught_up() -> bool:
        server = await client.hget(keys.seq, "n")
        return local.serving and local.sequence == int(server or 0)

    await until_async(caught_up, "the local cache caught up with the server's sequence")


async def start_life(cache: AppConfigFragmentCacheSource, *locals_: LocalCache) -> None:
    """Give the prefix a sequence (its first invalidation starts a life of the index,
    which every local cache answers by emptying itself) and wait for the caches."""
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.UUID(int=0)))
    for local in locals_:
        await settled(local, cache._client, cache.keys)


@pytest.fixture
async def open_local(
    valkey_url: str, keys: KeySchema
) -> AsyncIterator[Callable[..., Awaitable[LocalCache]]]:
    """Local caches on the test's prefix; closed at the end."""
    opened: list[LocalCache] = []

    async def make(
        url: str | None = None, *, kind: type[LocalCache] = LocalCache, **options: object
    ) -> LocalCache:
        options.setdefault("keys", keys)
        local = await kind.create(url or valkey_url, **options)  # type: ignore[arg-type]
        opened.append(local)
        assert await local.ready(BOUND_S)
        return local

    yield make
    for local in opened:
        await local.close()


LifeFrom = Literal["cache", "writer"] | None


@dataclass
class Process:
    """One process on a server: a client with the scripts loaded, a local cache on the
    test's prefix, the source that keeps it (``cache``) and a source without one
    (``writer``, as another process would write)."""

    client: Client
    registry: ScriptRegistry
    keys: KeySchema
    local: LocalCache
    cache: AppConfigFragmentCacheSource
    writer: AppConfigFragmentCacheSource

    @classmethod
    async def start(
        cls,
        client: Client,
        registry: ScriptRegistry,
        keys: KeySchema,
        local: LocalCache,
        *,
        life_from: LifeFrom,
        **more: Any,
    ) -> Self:
        """The sources on ``local``; the prefix's life started from ``life_from``
        (``None``: not started)."""
        process = cls(
            client=client,
            registry=registry,
            keys=keys,
            local=local,
            cache=AppConfigFragmentCacheSource(client, registry, keys=keys, local_cache=local),
            writer=AppConfigFragmentCacheSource(client, registry, keys=keys),
            **more,
        )
        if life_from is not None:
            await start_life(process.cache if life_from == "cache" else process.writer, local)
        return process

    def source(self, local_cache: LocalCache) -> AppConfigFragmentCacheSource:
        """Another source on the same client and prefix, keeping ``local_cache``."""
        return AppConfigFragmentCacheSource(
            self.client, self.registry, keys=self.keys, local_cache=local_cache
        )


@dataclass
class OwnServerProcess(Process):
    """A process on a server of its own, which the test may kill, pause or restart."""

    server: EmbeddedValkey


class OnShared(Protocol):
    def __call__(self, *, life_from: LifeFrom = "cache", **options: float) -> Awaitable[Process]:
        """A process on the shared server; ``options`` go to its LocalCache."""


class OnOwnServer(Protocol):
    def __call__(
        self,
        *,
        request_timeout_ms: int,
        life_from: LifeFrom = "cache",
        kind: type[LocalCache] = LocalCache,
        **options: float,
    ) -> AbstractAsyncContextManager[OwnServerProcess]:
        """A process on a server of its own, its local cache a ``kind``; on leaving, its
        client is closed and the server stopped (the local cache is closed with the other
        ones, at the end)."""


@pytest.fixture
def on_shared(
    valkey: GlideClient,
    registry: ScriptRegistry,
    keys: KeySchema,
    open_local: Callable[..., Awaitable[LocalCache]],
) -> OnShared:
    async def start(*, life_from: LifeFrom = "cache", **options: float) -> Process:
        local = await open_local(**options)
        return await Process.start(valkey, registry, keys, local, life_from=life_from)

    return start


@pytest.fixture
def on_own_server(keys: KeySchema, open_local: Callable[..., Awaitable[LocalCache]]) -> OnOwnServer:
    @asynccontextmanager
    async def start(
        *,
        request_timeout_ms: int,
        life_from: LifeFrom = "cache",
        kind: type[LocalCache] = LocalCache,
        **options: float,
    ) -> AsyncIterator[OwnServerProcess]:
        with EmbeddedValkey() as server:
            client = await create_valkey_client(server.url, request_timeout_ms=request_timeout_ms)
            try:
                registry = ScriptRegistry()
                await registry.load(client)
                local = await open_local(server.url, kind=kind, **options)
                yield await OwnServerProcess.start(
                    client, registry, keys, local, life_from=life_from, server=server
                )
            finally:
                await client.close()

    return start


# -- the same process --------------------------------------------------------------------


async def test_same_process_load_never_reads_stale(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    reads, stale = await run_mixed_load(
        clean_db, [s.cache], use_tokens=True, served=lambda: s.local.counters.hits > 0
    )
    assert reads > 100
    assert stale == 0
    stats = AppConfigFragmentRepository(clean_db, cache=s.cache).stats()
    assert stats.local_hits > 0 and stats.local_stores > 0 and stats.local_drops > 0
    assert stats.local_hits == s.local.counters.hits


class DeafLocalCache(LocalCache):
    """Hears no announcement: what it drops, its own process's invalidations drop."""

    def _on_message(self, message: PubSubMsg, context: object) -> None:
        del message, context


@pytest.fixture
async def deaf_local(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema, valkey_url: str
) -> AsyncIterator[DeafLocalCache]:
    """A serving local cache on the test's prefix (its life started) that hears no
    announcement, and whose watcher stays asleep: only the invalidation path of its own
    process can drop what it holds."""
    await start_life(AppConfigFragmentCacheSource(valkey, registry, keys=keys))
    local = await DeafLocalCache.create(valkey_url, keys=keys, check_interval_s=60, poll_s=60)
    try:
        assert await local.ready(BOUND_S)
        yield local
    finally:
        await local.close()


async def test_own_invalidation_drops_locally_before_it_returns(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema, deaf_local: DeafLocalCache
) -> None:
    local = deaf_local
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
    writer = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    user = uuid.uuid4()
    await fill(cache, value(user, 0))
    assert version_of(await cache.get_merged_config(user, "webui")) == 0
    assert local.counters.hits == 1

    # Another process's write, then our invalidation: what it covers is gone when it
    # returns, and the next read goes to Valkey.
    await writer.set_merged_config(user, "webui", value(user, 1))
    await cache.invalidate_for_scope(ScopeType.USER, str(user), ["webui"])
    assert len(local) == 0 and local.counters.drops == 1
    assert await cache.get_merged_config(user, "webui") is None


class GatedRegistry(ScriptRegistry):
    """Holds each invalidate.lua call until ``gate`` opens: the race is made to happen."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()

    async def call(self, client: Client, name: str, keys: Sequence[str], args: Any = ()) -> object:
        if name == "invalidate" and not self.gate.is_set():
            self.holding.set()
            await self.gate.wait()
        return await super().call(client, name, keys, args)


async def test_a_read_racing_an_own_invalidation_is_dropped_when_it_returns(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema, deaf_local: DeafLocalCache
) -> None:
    local = deaf_local
    gated = GatedRegistry()
    await gated.load(valkey)
    cache = AppConfigFragmentCacheSource(valkey, gated, keys=keys, local_cache=local)
    user = uuid.uuid4()
    await fill(AppConfigFragmentCacheSource(valkey, registry, keys=keys), value(user, 0))
    invalidation = asyncio.create_task(cache.invalidate_for_scope(ScopeType.USER, str(user)))
    await gated.holding.wait()  # the invalidation is on its way
    # A read now: Valkey still serves v0, and the copy lands locally...
    assert version_of(await cache.get_merged_config(user, "webui")) == 0
    assert len(local) == 1 and local.counters.stores == 1
    gated.gate.set()
    await invalidation
    # ...but the invalidation took it out again before returning.
    assert len(local) == 0
    assert await cache.get_merged_config(user, "webui") is None


async def test_an_invalidation_that_fails_still_drops_locally(on_own_server: OnOwnServer) -> None:
    async with on_own_server(request_timeout_ms=300, check_interval_s=60, poll_s=60) as s:
        cache, local = s.cache, s.local
        user = uuid.uuid4()
        await fill(cache, value(user, 0))
        assert len(local) == 1
        s.server.kill()
        with pytest.raises(CACHE_ERRORS):
            await cache.invalidate_for_scope(ScopeType.USER, str(user))
        assert len(local) == 0 and local.counters.drops == 1


# -- other processes -----------------------------------------------------------------------


async def test_another_process_serves_the_new_value_once_announced(
    on_shared: OnShared, open_local: Callable[..., Awaitable[LocalCache]]
) -> None:
    s = await on_shared(life_from=None, **FAST)
    local_a, local_b = s.local, await open_local(**FAST)
    a, b = s.cache, s.source(local_b)
    await start_life(a, local_a, local_b)
    flushes_before = sum(local_b.counters.flushes.values())
    users = [uuid.uuid4() for _ in range(3)]
    for user in users:
        await fill(b, value(user, 0))
    assert version_of(await b.get_merged_config(users[0], "webui")) == 0
    assert local_b.counters.hits == 1  # held in b's process memory

    # a writes v1 for users[0]: invalidate, then fill after a miss.
    await a.invalidate_for_scope(ScopeType.USER, str(users[0]), ["webui"])
    await fill(a, value(users[0], 1))

    async def b_serves_v1() -> bool:
        return version_of(await b.get_merged_config(users[0], "webui")) == 1

    await until_async(b_serves_v1, "b serves the value a wrote")
    for _ in range(50):
        assert version_of(await b.get_merged_config(users[0], "webui")) == 1
    # Dropped by the announcement (exactly the entry it covers), not by a flush.
    assert local_b.counters.drops == 1
    assert sum(local_b.counters.flushes.values()) == flushes_before
    hits = local_b.counters.hits
    for user in users[1:]:
        assert version_of(await b.get_merged_config(user, "webui")) == 0
    assert local_b.counters.hits == hits + 2  # the others stayed local


async def test_an_invalidation_that_starts_a_new_life_is_heard_by_another_process(
    on_shared: OnShared,
) -> None:
    """A key of another type where the sequence belongs blocks an invalidation, which then
    starts a new life of the index (reset.lua) before it returns. Its announcement is the
    only message: another process's local cache must empty itself on it, long before its
    own check of the sequence (check_interval_s) would notice."""
    s = await on_shared(life_from="writer", check_interval_s=10 * BOUND_S, poll_s=0.02)
    local, reader, writer = s.local, s.cache, s.writer
    user = uuid.uuid4()
    await fill(reader, value(user, 0))
    assert version_of(await reader.get_merged_config(user, "webui")) == 0
    assert len(local) == 1
    await s.client.delete([s.keys.seq])
    await s.client.custom_command(["SADD", s.keys.seq, "someone else's"])
    await writer.invalidate_for_scope(ScopeType.USER, str(user), ["webui"])
    await until(lambda: len(local) == 0, "the other process's local cache emptied itself")
    assert dict(local.counters.flushes) == {"new_life": 2}  # the first life's, and this one
    assert await reader.get_merged_config(user, "webui") is None


async def test_domain_and_public_announcements_drop_what_they_cover(on_shared: OnShared) -> None:
    s = await on_shared(life_from="writer", **FAST)
    local, reader, writer = s.local, s.cache, s.writer
    # The prefix's first invalidation started a life of the index: announced as such.
    assert local.counters.flushes == {"new_life": 1}
    alpha, beta = uuid.uuid4(), uuid.uuid4()
    for user, domain in ((alpha, "alpha"), (beta, "beta")):
        for name in ("webui", "theme"):
            await fill(reader, value(user, 0, name=name, domain=domain))
    held = {(user, name) for user in (alpha, beta) for name in ("webui", "theme")}
    assert len(local) == 4

    async def drops_reach(count: int) -> None:
        await until(lambda: local.counters.drops == count, f"{count} entries dropped")

    await writer.invalidate_for_scope(ScopeType.DOMAIN, "alpha", ["theme"])
    await drops_reach(1)
    held.discard((alpha, "theme"))
    await writer.invalidate_for_scope(ScopeType.PUBLIC, "public", ["webui"])
    await drops_reach(3)
    held -= {(alpha, "webui"), (beta, "webui")}
    assert len(local) == len(held) == 1
    assert version_of(local.get(beta, "theme")) == 0
    await writer.invalidate_for_policy("theme")
    await drops_reach(4)
    assert len(local) == 0


async def test_a_fill_that_raced_an_announcement_is_not_stored(on_shared: OnShared) -> None:
    s = await on_shared(life_from="writer", **FAST)
    local = s.local
    user = uuid.uuid4()
    ticket, began = local.ticket(), local.now()  # a read goes out...
    assert ticket is not None
    sequence = local.sequence
    await s.writer.invalidate_for_scope(ScopeType.USER, str(user))  # ...an invalidation runs
    await until(lambda: local.sequence == sequence + 1, "the announcement arrived")
    # ...and the read's old value comes back: it must not land.
    assert not local.store(ticket, began, value(user, 0), value(user, 0).model_dump_json(), 60_000)
    assert len(local) == 0 and local.counters.refused_stores == 1
    fresh = local.ticket()
    assert local.store(fresh, local.now(), value(user, 1), value(user, 1).model_dump_json(), 60_000)
    assert version_of(local.get(user, "webui")) == 1


# -- losing track: the cache empties itself ------------------------------------------------


async def listeners(client: Client, channel: str) -> int:
    """How many connections the server counts as subscribed to ``channel``."""
    reply = await client.custom_command(["PUBSUB", "NUMSUB", channel])
    assert isinstance(reply, list | dict)
    counts = list(reply.values()) if isinstance(reply, dict) else reply[1::2]
    return int(counts[0])


@asynccontextmanager
async def subscription_kept_away(client: Client, local: LocalCache) -> AsyncIterator[None]:
    """Kill the local cache's subscriber connection and keep it from coming back inside
    the block: the server takes no new connection (``maxclients 1``; those open stay).
    Whatever is announced inside the block reaches no one. On leaving, the server takes
    connections again and glide reconnects and subscribes again on its own schedule."""
    reply = await client.custom_command(["CONFIG", "GET", "maxclients"])
    assert isinstance(reply, list | dict)
    maxclients = text(next(iter(reply.values())) if isinstance(reply, dict) else reply[1])
    await client.custom_command(["CONFIG", "SET", "maxclients", "1"])
    try:
        await client.custom_command(["CLIENT", "KILL", "TYPE", "pubsub"])

        async def nobody_listens() -> bool:
            return await listeners(client, local.channel) == 0

        await until_async(nobody_listens, "the subscriber connection is gone")
        yield
    finally:
        await client.custom_command(["CONFIG", "SET", "maxclients", maxclients])


async def test_the_watcher_finds_the_subscribed_connection(
    valkey: GlideClient, on_shared: OnShared
) -> None:
    """What the watcher reads from ``CLIENT INFO``: the subscriber's connection (its id
    and both ends' addresses), which the server lists as subscribed; nothing for a
    connection without a subscription."""
    s = await on_shared()
    subscriber = s.local._client
    assert subscriber is not None
    found = subscribed_connection(await subscriber.custom_command(["CLIENT", "INFO"]))
    assert found is not None
    assert [part.split("=")[0] for part in found.split()] == ["id", "addr", "laddr"]
    listed = text(await valkey.custom_command(["CLIENT", "LIST", "TYPE", "pubsub"]))
    assert any(set(found.split()) <= set(line.split()) for line in listed.splitlines())
    assert subscribed_connection(await valkey.custom_command(["CLIENT", "INFO"])) is None
    with pytest.raises(ValueError, match="not a CLIENT INFO reply"):
        subscribed_connection(b"OK")


async def test_killed_subscription_flushes_and_misses_nothing(on_own_server: OnOwnServer) -> None:
    async with on_own_server(
        request_timeout_ms=2000, life_from="writer", check_interval_s=1.0, poll_s=0.1
    ) as s:
        client, local, reader, writer = s.client, s.local, s.cache, s.writer
        user = uuid.uuid4()
        await fill(reader, value(user, 0))
        assert version_of(await reader.get_merged_config(user, "webui")) == 0
        assert local.counters.hits == 1

        # Write while nobody listens: that announcement is lost for good (glide
        # subscribes again later; nothing is replayed).
        async with subscription_kept_away(client, local):
            await writer.invalidate_for_scope(ScopeType.USER, str(user), ["webui"])
            await writer.set_merged_config(user, "webui", value(user, 1))

        async def serves_v1() -> bool:
            return version_of(await reader.get_merged_config(user, "webui")) == 1

        await until_async(serves_v1, "the reader serves the value written meanwhile")
        assert local.counters.flushes["subscription_lost"] >= 1
        for _ in range(50):
            assert version_of(await reader.get_merged_config(user, "webui")) == 1
        # Subscribed again, it serves locally again.
        await settled(local, client, s.keys)
        hits = local.counters.hits
        for _ in range(3):
            assert version_of(await reader.get_merged_config(user, "webui")) == 1
        assert local.counters.hits > hits


class HeldLocalCache(LocalCache):
    """A local cache whose watcher can be held between two checks: ``held`` cleared, it
    stops before its next check (``parked`` set) until ``held`` is set again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held = asyncio.Event()
        self.held.set()
        self.parked = asyncio.Event()

    async def _watch_once(self) -> None:
        if not self.held.is_set():
            self.parked.set()
            await self.held.wait()
            self.parked.clear()
        await super()._watch_once()


async def test_a_reconnect_between_two_checks_flushes_though_glide_subscribed_again(
    on_own_server: OnOwnServer,
) -> None:
    """glide may reconnect and subscribe again before the watcher next looks (valkey-glide
    2.3 does so at once): every check then finds the subscription live, yet what was
    announced while the connection was gone is lost. The watcher is held while that
    happens; its next check finds the subscription on another connection, and empties
    the cache. The sequence check is not due for a minute, so only that can."""
    async with on_own_server(
        request_timeout_ms=2000,
        life_from="writer",
        kind=HeldLocalCache,
        check_interval_s=60.0,
        poll_s=0.02,
    ) as s:
        client, local, reader, writer = s.client, s.local, s.cache, s.writer
        assert isinstance(local, HeldLocalCache)
        user = uuid.uuid4()
        await fill(reader, value(user, 0))
        assert version_of(await reader.get_merged_config(user, "webui")) == 0
        assert local.counters.hits == 1

        local.held.clear()
        await until(local.parked.is_set, "the watcher is held")
        async with subscription_kept_away(client, local):
            await writer.invalidate_for_scope(ScopeType.USER, str(user), ["webui"])
            await writer.set_merged_config(user, "webui", value(user, 1))

        subscriber = local._client
        assert subscriber is not None

        async def subscribed_again() -> bool:
            state = await subscriber.get_subscriptions()
            glide_has_it = any(local.channel in c for c in state.actual_subscriptions.values())
            return glide_has_it and await listeners(client, local.channel) == 1

        await until_async(subscribed_again, "glide subscribed again, on a new connection")
        # Nothing has told the held watcher yet: the copy is still served...
        assert version_of(await reader.get_merged_config(user, "webui")) == 0
        flushes = local.counters.flushes.copy()
        # ...until its next check.
        local.held.set()

        async def serves_v1() -> bool:
            return version_of(await reader.get_merged_config(user, "webui")) == 1

        await until_async(serves_v1, "the reader serves the value written meanwhile")
        assert local.counters.flushes["subscription_lost"] == flushes["subscription_lost"] + 1
        assert local.counters.flushes["missed"] == flushes["missed"] == 0
        await settled(local, client, s.keys)
        hits = local.counters.hits
        assert version_of(await reader.get_merged_config(user, "webui")) == 1
        assert local.counters.hits == hits + 1


async def test_valkey_restart_flushes(on_own_server: OnOwnServer) -> None:
    async with on_own_server(request_timeout_ms=2000, **FAST) as s:
        cache, local = s.cache, s.local
        user = uuid.uuid4()
        await fill(cache, value(user, 0))
        assert version_of(await cache.get_merged_config(user, "webui")) == 0
        assert local.counters.hits == 1

        s.server.restart()  # no persistence: the entry, the stamps and the sequence go

        async def gone() -> bool:
            try:
                return await cache.get_merged_config(user, "webui") is None
            except Exception:  # the client reconnects on its own schedule
                return False

        await until_async(gone, "the copy of the lost entry is no longer served")
        assert len(local) == 0
        flushes = local.counters.flushes
        assert flushes["subscription_lost"] + flushes["went_back"] >= 1
        for _ in range(20):
            assert await cache.get_merged_config(user, "webui") is None


async def test_a_gap_in_the_sequence_flushes(on_shared: OnShared) -> None:
    s = await on_shared(**FAST)
    cache, local = s.cache, s.local
    user = uuid.uuid4()
    await fill(cache, value(user, 0))
    assert len(local) == 1
    # An announcement two numbers ahead: the one between was lost.
    await s.client.publish(f"{local.sequence + 2} 0 0 user {uuid.uuid4()} -1", local.channel)
    await until(lambda: local.counters.flushes["gap"] == 1, "a gap flush")
    assert len(local) == 0 and local.counters.drops == 0

    # Something that is no announcement at all: flushed too.
    await fill(cache, value(uuid.uuid4(), 0))
    assert len(local) == 1
    await s.client.publish("hello", local.channel)
    await until(lambda: local.counters.flushes["unreadable"] == 1, "an unreadable flush")
    assert len(local) == 0


async def test_a_life_begun_by_a_write_is_announced(on_shared: OnShared) -> None:
    # The prefix's first write begins the index's life (set.lua). Local caches hear of
    # it at once, not from a sequence check (one a minute here) that finds the server
    # ahead and reports a message as missed.
    s = await on_shared(life_from=None, check_interval_s=60.0, poll_s=0.02)
    local = s.local
    assert local.serving and local.sequence == 0
    user = uuid.uuid4()
    await s.writer.set_merged_config(user, "webui", value(user, 0))
    server = int(text(await s.client.hget(s.keys.seq, "n")))
    await until(lambda: local.sequence == server, "the new life announced")
    assert dict(local.counters.flushes) == {"new_life": 1}
    for _ in range(2):  # Valkey, then the local copy
        assert version_of(await s.cache.get_merged_config(user, "webui")) == 0
    assert (local.counters.stores, local.counters.hits) == (1, 1)
    # Later writes of the same life announce nothing.
    await s.writer.set_merged_config(user, "webui", value(user, 1))
    await settled(local, s.client, s.keys)
    assert local.sequence == server and dict(local.counters.flushes) == {"new_life": 1}


async def test_a_server_ahead_of_the_announcements_flushes(on_shared: OnShared) -> None:
    """An invalidation whose announcement never came (here: the sequence moved without
    one): the periodic check finds the server ahead and empties the cache."""
    s = await on_shared(**FAST)
    local = s.local
    await fill(s.cache, value(uuid.uuid4(), 0))
    assert len(local) == 1
    await s.client.hincrby(s.keys.seq, "n", 1)
    await until(lambda: local.counters.flushes["missed"] == 1, "a missed-announcement flush")
    assert len(local) == 0
    await settled(local, s.client, s.keys)  # in step again, and serving


async def test_a_server_behind_the_announcements_flushes(on_shared: OnShared) -> None:
    """The sequence went back (a failover that lost writes, data replaced)."""
    s = await on_shared(**FAST)
    local = s.local
    await fill(s.cache, value(uuid.uuid4(), 0))
    assert len(local) == 1
    await s.client.hincrby(s.keys.seq, "n", -5)
    await until(lambda: local.counters.flushes["went_back"] == 1, "a went-back flush")
    assert len(local) == 0


async def test_nothing_is_served_while_the_server_cannot_be_checked(
    on_own_server: OnOwnServer,
) -> None:
    """No check, no announcement either: the lease runs out and the cache stops serving,
    then serves again once a check succeeds and nothing was missed."""
    async with on_own_server(request_timeout_ms=2000, check_interval_s=0.2, poll_s=0.02) as s:
        local = s.local
        user = uuid.uuid4()
        await fill(s.cache, value(user, 0))
        s.server.pause()
        try:
            await until(lambda: not local.serving, "the lease ran out")
            assert local.get(user, "webui") is None
            assert len(local) == 1  # kept: nothing says it is stale, yet
        finally:
            s.server.resume()
        await until(lambda: local.serving, "serving again")
        assert version_of(local.get(user, "webui")) == 0


# -- bounds, expiry, copies ----------------------------------------------------------------


async def test_lru_bound_and_evictions(on_shared: OnShared) -> None:
    s = await on_shared(max_entries=3, **FAST)
    cache, local = s.cache, s.local
    users = [uuid.uuid4() for _ in range(5)]
    for user in users[:3]:
        await fill(cache, value(user, 0))
    assert local.get(users[0], "webui") is not None  # the oldest, now the most recent
    for user in users[3:]:
        await fill(cache, value(user, 0))
    assert len(local) == 3 and local.counters.evictions == 2
    held = [user for user in users if local.get(user, "webui") is not None]
    assert held == [users[0], users[3], users[4]]
    snapshot = cache.metrics.snapshot(
        script_reloads=0, breaker_state="closed", pending_invalidations=0
    )
    assert snapshot.local_evictions == 2 and snapshot.local_entries == 3


async def test_byte_bound(on_shared: OnShared) -> None:
    size = len(value(uuid.uuid4(), 0).model_dump_json())
    s = await on_shared(max_bytes=2 * size + size // 2, **FAST)
    local = s.local
    for _ in range(4):
        await fill(s.cache, value(uuid.uuid4(), 0))
    assert len(local) == 2 and local.size_bytes <= local.max_bytes
    assert local.counters.evictions == 2


async def test_a_local_copy_never_outlives_the_valkey_entry(on_shared: OnShared) -> None:
    s = await on_shared(life_from="writer", **FAST)
    valkey, keys, local, reader = s.client, s.keys, s.local, s.cache
    user = uuid.uuid4()
    await s.writer.set_merged_config(user, "webui", value(user, 0))
    await valkey.pexpire(keys.entry(user, "webui"), 300)  # far shorter than the source's TTL
    assert version_of(await reader.get_merged_config(user, "webui")) == 0  # copied locally
    assert len(local) == 1

    async def expired_in_valkey() -> bool:
        return await valkey.exists([keys.entry(user, "webui")]) == 0

    await until_async(expired_in_valkey, "the Valkey entry expired")
    assert local.get(user, "webui") is None
    assert await reader.get_merged_config(user, "webui") is None


async def test_each_caller_gets_a_value_of_its_own(on_shared: OnShared) -> None:
    s = await on_shared(**FAST)
    cache = s.cache
    user = uuid.uuid4()
    written = value(user, 0)
    await fill(cache, written)
    written.config["v"] = 99  # type: ignore[index]  # the writer's object is not the copy
    first = await cache.get_merged_config(user, "webui")
    assert first is not None and first.config is not None
    first.config["v"] = 7
    first.config["nested"]["list"].append(8)
    first.fragments[0].extra_config["v"] = 7
    first.fragments.clear()
    second = await cache.get_merged_config(user, "webui")
    assert s.local.counters.hits == 2
    assert second == value(user, 0)
    assert second is not first


async def test_a_value_that_does_not_pack_is_served_from_valkey(on_shared: OnShared) -> None:
    # An integer beyond 64 bits is valid JSON but not held locally: every read of it
    # goes to Valkey, and returns it whole.
    s = await on_shared(**FAST)
    user = uuid.uuid4()
    big = value(user, 0).model_copy(update={"config": {"v": 0, "n": 2**70}})
    await fill(s.cache, big)
    for _ in range(2):
        assert await s.cache.get_merged_config(user, "webui") == big
    counters = s.local.counters
    # The fill's lookup and both reads missed locally; nothing was ever stored.
    assert (counters.hits, counters.misses, counters.stores, len(s.local)) == (0, 3, 0, 0)


async def test_local_counters_reach_stats_and_prometheus(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(**FAST)
    cache, local = s.cache, s.local
    user = uuid.uuid4()
    await fill(cache, value(user, 0))
    await cache.get_merged_config(user, "webui")  # a local hit
    await s.client.publish(f"{local.sequence + 2} 0 0", local.channel)  # a gap: one flush
    await until(lambda: local.counters.flushes["gap"] == 1, "a gap flush")
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    stats = repo.stats()
    assert (stats.local_hits, stats.local_stores, stats.local_entries) == (1, 1, 0)
    assert stats.local_flushes == {"new_life": 1, "gap": 1}
    collectors = CollectorRegistry()
    register_prometheus(repo, registry=collectors)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(collectors).decode())
        for sample in family.samples
    }
    assert samples[("atomic_cache_local_hits_total", ())] == 1
    assert samples[("atomic_cache_local_flushes_total", (("reason", "gap"),))] == 1
    assert samples[("atomic_cache_local_flushes_total", (("reason", "missed"),))] == 0
    assert samples[("atomic_cache_local_entries", ())] == 0


# -- reads of several names: lookup_many, lookup_all (my_app_configs) ---------------------


@dataclass
class Reader:
    """A process that reads through a repository, its source keeping ``local`` and
    counting its round trips; ``world`` was made, and Valkey warmed, by another
    process (``s.writer``)."""

    s: Process
    counting: CountingRegistry
    cache: AppConfigFragmentCacheSource
    repo: AppConfigFragmentRepository
    world: World
    other: AppConfigFragmentRepository  # another process's repository (no local cache)

    async def names(self, user: uuid.UUID) -> list[str]:
        return [item.name for item in await self.repo.my_app_configs(user)]


async def reader_of(engine: AsyncEngine, s: Process, local: LocalCache | None = None) -> Reader:
    local = local or s.local
    world = await make_world(engine, s.writer)  # policies: announced, catalogue flag set
    await settled(local, s.client, s.keys)
    other = AppConfigFragmentRepository(engine, cache=s.writer)
    for user in world.users:
        await other.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 0})])
        await other.my_app_configs(user)  # fills Valkey, catalogue included
    counting = CountingRegistry()
    await counting.load(s.client)
    cache = AppConfigFragmentCacheSource(s.client, counting, keys=s.keys, local_cache=local)
    await settled(local, s.client, s.keys)
    return Reader(
        s, counting, cache, AppConfigFragmentRepository(engine, cache=cache), world, other
    )


def webui_version(configs: Sequence[AppConfigData]) -> int | None:
    return next(version_of(item) for item in configs if item.name == "webui")


async def test_my_app_configs_is_served_locally_once_read(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user, local = r.world.users[0], s.local
    first = await r.repo.my_app_configs(user)  # Valkey, once: every value and the catalogue
    assert r.counting.calls == {"get_all": 1}
    assert [item.name for item in first] == ["limits", "theme", "webui"]
    assert len(local) == 3 and local.catalogue() is not None
    hits = local.counters.hits
    with count_sql(clean_db) as sql:
        second = await r.repo.my_app_configs(user)
    assert r.counting.total == 1 and len(sql) == 0  # no round trip at all
    assert local.counters.hits == hits + 3
    assert second == first
    # Each caller has copies and a list of its own.
    assert second is not first and all(a is not b for a, b in zip(first, second, strict=True))
    second[2].config["v"] = 99  # type: ignore[index]
    second.pop()
    third = await r.repo.my_app_configs(user)
    assert third == first and r.counting.total == 1
    # lookup_many: all held, so local; one name not held, so Valkey for all (and kept).
    many = await r.cache.lookup_many(user, ["webui", "theme"])
    assert r.counting.total == 1
    assert {name: found.value for name, found in many.items()} == {
        "webui": first[2],
        "theme": first[1],
    }
    other_user = r.world.users[1]
    await r.cache.lookup_many(other_user, ["webui"])
    assert r.counting.calls == {"get_all": 2}
    await r.cache.lookup_many(other_user, ["webui", "limits"])  # "limits" is not held
    assert r.counting.calls == {"get_all": 3}
    found = await r.cache.lookup_many(other_user, ["limits", "webui"])  # both kept: local
    assert r.counting.total == 3
    assert [(name, version_of(item.value)) for name, item in found.items()] == [
        ("limits", None),
        ("webui", 0),
    ]


async def test_a_cold_my_app_configs_leaves_the_next_one_local(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user, local = r.world.users[0], s.local
    # Another process drops this user's entries and the catalogue: Valkey is cold.
    await s.writer.invalidate_many([(ScopeType.USER, str(user))], drop_catalogue=True)
    await settled(local, s.client, s.keys)
    assert local.catalogue() is None and len(local) == 0
    with count_sql(clean_db) as sql:
        first = await r.repo.my_app_configs(user)  # a miss, the database, one fill
    assert r.counting.calls == {"get_all": 1, "set": 1} and len(sql) > 0
    assert local.catalogue() == ["limits", "theme", "webui"] and len(local) == 3
    with count_sql(clean_db) as sql:
        second = await r.repo.my_app_configs(user)
    assert r.counting.total == 2 and len(sql) == 0  # served locally, catalogue and all
    assert second == first and [item.name for item in second] == ["limits", "theme", "webui"]


async def test_a_fill_without_a_token_keeps_no_catalogue_locally(on_shared: OnShared) -> None:
    s = await on_shared(**FAST)
    user = uuid.uuid4()
    await s.cache.set_many(user, [value(user, 0)], catalogue=["webui"])  # no token
    assert local_state(s.local) == (None, 0)
    assert (await s.cache.lookup_all(user)).names == ["webui"]  # from Valkey
    await s.cache.invalidate_many([(ScopeType.USER, str(user))], drop_catalogue=True)
    # Its announcement heard too: arriving during the fill below, it would (rightly) keep
    # that fill from being stored.
    await settled(s.local, s.client, s.keys)
    found = await s.cache.lookup_all(user)
    assert found.names is None and found.fill_token
    catalogue = ["webui", "limits"]  # held as lookup_all answers it: sorted
    assert await s.cache.set_many(user, [value(user, 1)], found.fill_token, catalogue=catalogue)
    assert local_state(s.local) == (["limits", "webui"], 1)
    assert (await s.writer.lookup_all(user)).names == ["limits", "webui"]  # Valkey's answer
    # A fill whose token an invalidation of the catalogue overtook keeps nothing.
    stale = (await s.cache.lookup_all(uuid.uuid4())).fill_token
    await s.cache.invalidate_for_policy("webui")
    await settled(s.local, s.client, s.keys)  # its announcement, too, has been heard
    other = uuid.uuid4()
    assert not await s.cache.set_many(other, [value(other, 0)], stale, catalogue=["webui"])
    assert s.local.catalogue() is None


def local_state(local: LocalCache) -> tuple[list[str] | None, int]:
    return local.catalogue(), len(local)


async def test_lookup_all_needs_every_name_of_the_catalogue_locally(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user = r.world.users[0]
    await r.cache.lookup_many(user, ["webui", "theme"])  # two of the three names held
    assert r.counting.total == 1 and s.local.catalogue() is None
    found = await r.cache.lookup_all(user)  # no catalogue here: Valkey
    assert r.counting.total == 2 and found.names == ["limits", "theme", "webui"]
    await r.s.writer.invalidate_for_scope(ScopeType.USER, str(user), ["limits"])
    await until(lambda: s.local.get(user, "limits") is None, "limits dropped here")
    assert s.local.catalogue() is not None  # a user target does not drop the catalogue
    again = await r.cache.lookup_all(user)  # one name missing here: Valkey for all
    assert r.counting.total == 3
    assert again.names == ["limits", "theme", "webui"] and again.missing == ["limits"]
    assert again.fill_token != ""
    # An invalidation of this process keeps the copy unless it dropped the catalogue
    # (a policy created or deleted): then the copy goes before it returns.
    assert s.local.catalogue() is not None
    await s.cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    assert s.local.catalogue() is not None
    await s.cache.invalidate_many([], drop_catalogue=True)
    assert s.local.catalogue() is None


async def test_same_process_writes_never_leave_my_app_configs_stale(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user = r.world.users[0]
    assert webui_version(await r.repo.my_app_configs(user)) == 0
    for v in range(1, 6):
        await r.repo.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": v})])
        assert webui_version(await r.repo.my_app_configs(user)) == v  # at once, every time
        assert webui_version(await r.repo.my_app_configs(user)) == v
    assert s.local.counters.hits > 0


async def test_two_processes_load_with_my_app_configs_never_reads_stale(
    clean_db: AsyncEngine, on_shared: OnShared, open_local: Callable[..., Awaitable[LocalCache]]
) -> None:
    s = await on_shared(life_from=None, **FAST)
    local_b = await open_local(**FAST)
    b = s.source(local_b)

    def served() -> bool:
        return s.local.counters.hits > 0 and local_b.counters.hits > 0

    reads, stale = await run_mixed_load(clean_db, [s.cache, b], use_tokens=True, served=served)
    assert reads > 100
    assert stale == 0
    assert served()


async def test_another_process_write_reaches_my_app_configs_once_announced(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user = r.world.users[0]
    for _ in range(2):
        assert webui_version(await r.repo.my_app_configs(user)) == 0
    assert r.counting.total == 1  # the second was local
    await r.other.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])

    async def serves_v1() -> bool:
        return webui_version(await r.repo.my_app_configs(user)) == 1

    await until_async(serves_v1, "the reader serves the other process's write")
    for _ in range(20):
        assert webui_version(await r.repo.my_app_configs(user)) == 1
    calls = r.counting.total
    assert webui_version(await r.repo.my_app_configs(user)) == 1
    assert r.counting.total == calls  # local again


async def test_a_policy_created_or_deleted_elsewhere_drops_the_local_catalogue(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user, local = r.world.users[0], s.local
    assert await r.names(user) == ["limits", "theme", "webui"]
    await r.names(user)
    assert r.counting.total == 1 and local.catalogue() is not None
    flushes = sum(local.counters.flushes.values())
    policies = AppConfigPolicyRepository(clean_db, cache=s.writer)  # another process

    await policies.create("extra", ALL_SCOPES)
    await until(lambda: local.catalogue() is None, "the catalogue dropped")
    assert len(local) == 3  # the entries stay: only the catalogue went
    assert await r.names(user) == ["extra", "limits", "theme", "webui"]
    assert await r.names(user) == ["extra", "limits", "theme", "webui"]

    await policies.delete("extra")
    await until(lambda: local.catalogue() is None, "the catalogue dropped again")
    for _ in range(3):
        assert await r.names(user) == ["limits", "theme", "webui"]
    assert sum(local.counters.flushes.values()) == flushes  # announced drops, no flush
    await policies.close()


async def test_an_own_invalidation_drops_the_catalogue_before_it_returns(
    clean_db: AsyncEngine,
    valkey: GlideClient,
    registry: ScriptRegistry,
    keys: KeySchema,
    deaf_local: DeafLocalCache,
) -> None:
    local = deaf_local
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
    world = await make_world(clean_db, cache)
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    user = world.users[0]
    await repo.my_app_configs(user)  # fills Valkey
    await repo.my_app_configs(user)  # copies it here
    assert local.catalogue() is not None
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    assert local.catalogue() is not None  # it did not drop the catalogue: kept
    await cache.invalidate_for_policy("webui")  # a policy change drops it
    assert local.catalogue() is None  # deaf: only the invalidation itself dropped it


async def announced(local: LocalCache, writer: AppConfigFragmentCacheSource) -> None:
    """Another process invalidates (someone else's entry); until ``local`` heard of it."""
    sequence = local.sequence
    await writer.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    await until(lambda: local.sequence == sequence + 1, "the announcement arrived")


class GatedReads(CountingRegistry):
    """Holds each get_all.lua reply until ``gate`` opens: the read is overtaken."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()

    async def call(self, client: Client, name: str, keys: Sequence[str], args: Any = ()) -> object:
        reply = await super().call(client, name, keys, args)
        if name == "get_all" and not self.gate.is_set():
            self.holding.set()
            await self.gate.wait()
        return reply


async def test_a_multi_read_overtaken_by_an_announcement_keeps_nothing(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user, local = r.world.users[0], s.local
    gated = GatedReads()
    await gated.load(s.client)
    cache = AppConfigFragmentCacheSource(s.client, gated, keys=s.keys, local_cache=local)
    for read in (
        lambda: cache.lookup_all(user),
        lambda: cache.lookup_many(user, ["webui", "theme"]),
    ):
        gated.gate.clear()
        gated.holding.clear()
        task = asyncio.create_task(read())
        await gated.holding.wait()  # Valkey answered; the reply is not handled yet
        await announced(local, s.writer)
        refused = local.counters.refused_stores
        gated.gate.set()
        await task
        assert local.counters.refused_stores > refused
        assert len(local) == 0 and local.catalogue() is None


async def test_a_flush_drops_the_catalogue(clean_db: AsyncEngine, on_shared: OnShared) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user, local = r.world.users[0], s.local
    await r.repo.my_app_configs(user)
    assert local.catalogue() is not None
    await s.client.publish(f"{local.sequence + 2} 0 0", local.channel)  # a gap
    await until(lambda: local.counters.flushes["gap"] == 1, "a gap flush")
    assert local.catalogue() is None and len(local) == 0


async def test_the_local_catalogue_follows_the_store_rules(
    clean_db: AsyncEngine, on_shared: OnShared
) -> None:
    s = await on_shared(life_from=None, **FAST)
    r = await reader_of(clean_db, s)
    user, local, valkey = r.world.users[0], s.local, s.client
    # Refused when an announcement arrived since the ticket, or already expired.
    ticket, began = local.ticket(), local.now()
    sequence = local.sequence
    await s.writer.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    await until(lambda: local.sequence == sequence + 1, "the announcement arrived")
    assert not local.store_catalogue(ticket, began, ["webui"], 60_000)
    assert not local.store_catalogue(local.ticket(), local.now() - 2, ["webui"], 1_000)
    assert local.catalogue() is None
    assert local.store_catalogue(local.ticket(), local.now(), ["webui"], 60_000)
    assert local.catalogue() == ["webui"]
    # Never beyond the catalogue key's PTTL (far shorter here than the entries' TTL).
    local.drop([])  # what a policy change does: the catalogue goes
    assert local.catalogue() is None
    await valkey.pexpire(s.keys.catalogue, 5000)
    found = await r.cache.lookup_all(user)
    assert found.names is not None and local.catalogue() == found.names
    flushes = sum(local.counters.flushes.values())
    await until(lambda: local.catalogue() is None, "the copy expired with the key")
    assert sum(local.counters.flushes.values()) == flushes and len(local) == 3


# -- configuration and life cycle ---------------------------------------------------------


async def test_a_local_cache_of_another_prefix_or_kind_is_refused(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    with pytest.raises(ValueError, match="prefix 'other'"):
        AppConfigFragmentCacheSource(
            valkey, registry, keys=keys, local_cache=LocalCache(KeySchema("other"))
        )
    with pytest.raises(ValueError, match="on a cluster"):
        AppConfigFragmentCacheSource(
            valkey,
            registry,
            keys=KeySchema("{tag}"),
            local_cache=LocalCache(KeySchema("{tag}"), cluster=True),
        )
    with pytest.raises(ValueError, match="hash tag"):
        LocalCache(KeySchema("plain"), cluster=True)
    # Defaults agree with the source's: no keys given on either side.
    AppConfigFragmentCacheSource(valkey, registry, local_cache=LocalCache())


async def test_starts_with_valkey_down_and_serves_once_it_is_up(keys: KeySchema) -> None:
    port = free_port()
    local = await LocalCache.create(
        f"valkey://127.0.0.1:{port}", keys=keys, check_interval_s=0.2, poll_s=0.02
    )
    try:
        assert not await local.ready(0.3)
        assert local.ticket() is None
        with EmbeddedValkey(port=port):
            assert await local.ready(BOUND_S)
            assert local.ticket() is not None
    finally:
        await local.close()


def tasks_of_local_caches() -> set[asyncio.Task[object]]:
    """The running tasks of any local cache (other components, the database's pool
    among them, may have tasks of their own going at the same time)."""
    return {
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").startswith("LocalCache.")
    }


async def test_close_stops_everything(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema, valkey_url: str
) -> None:
    local = await LocalCache.create(valkey_url, keys=keys, **FAST)
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
    await start_life(cache, local)
    await fill(cache, value(uuid.uuid4(), 0))
    assert len(tasks_of_local_caches()) == 1  # its watcher
    await local.close()
    assert tasks_of_local_caches() == set()
    assert not local.serving and len(local) == 0 and local.ticket() is None
    user = uuid.uuid4()
    await fill(cache, value(user, 0))  # the source goes on, through Valkey only
    assert version_of(await cache.get_merged_config(user, "webui")) == 0
    assert len(local) == 0
    await local.close()  # twice is fine


# -- a Valkey Cluster ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster() as started:
        yield started


async def test_cluster_announcements_reach_another_process(cluster: EmbeddedCluster) -> None:
    keys = KeySchema(f"{{t{uuid.uuid4().hex[:12]}}}")
    client = await create_valkey_client(cluster.seed_url, cluster=True, request_timeout_ms=5000)
    local_a = await LocalCache.create(cluster.seed_url, keys=keys, cluster=True, **FAST)
    local_b = await LocalCache.create(cluster.seed_url, keys=keys, cluster=True, **FAST)
    try:
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        a = AppConfigFragmentCacheSource(client, registry, keys=keys, local_cache=local_a)
        b = AppConfigFragmentCacheSource(client, registry, keys=keys, local_cache=local_b)
        await start_life(a, local_a, local_b)
        user = uuid.uuid4()
        await fill(b, value(user, 0))
        assert version_of(await b.get_merged_config(user, "webui")) == 0
        assert local_b.counters.hits == 1
        # Sharded: the channel lives on the prefix's shard, like its keys.
        channels = await client.custom_command(["PUBSUB", "SHARDCHANNELS"])
        assert keys.prefix + ":invalidations" in {text(c) for c in _flatten(channels)}

        await a.invalidate_for_scope(ScopeType.USER, str(user), ["webui"])
        await until(lambda: local_b.counters.drops == 1, "b dropped its copy")
        assert len(local_b) == 0
        assert await b.get_merged_config(user, "webui") is None
    finally:
        await local_a.close()
        await local_b.close()
        await client.close()


def _flatten(reply: object) -> list[object]:
    """PUBSUB replies of every node of a cluster client, flattened."""
    if isinstance(reply, dict):
        return [item for part in reply.values() for item in _flatten(part)]
    if isinstance(reply, list):
        return list(reply)
    return [reply]


async def test_an_entry_of_another_domain_is_not_served_locally(on_shared: OnShared) -> None:
    s = await on_shared(**FAST)
    local, reader = s.local, s.cache
    user = uuid.uuid4()
    await fill(reader, value(user, 1, name="webui", domain="alpha"))
    await fill(reader, value(user, 1, name="theme", domain="alpha"))
    assert len(local) == 2
    assert version_of(local.get(user, "webui", domain="alpha")) == 1
    assert version_of(local.get(user, "webui")) == 1
    assert local.get(user, "webui", domain="beta") is None
    assert local.get_many(user, ["webui", "theme"], domain="alpha") is not None
    assert local.get_many(user, ["webui", "theme"], domain="beta") is None
    # Through the source: the local copy is not served to beta, nor is Valkey's entry;
    # the miss hands out a token, and the fill under beta replaces both.
    with_token = await reader.lookup_many(user, ["webui"], domain="beta")
    assert with_token["webui"].value is None and with_token["webui"].fill_token
    token = with_token["webui"].fill_token
    assert await reader.set_many(user, [value(user, 2, domain="beta")], fill_token=token)
    assert version_of(local.get(user, "webui", domain="beta")) == 2
    assert local.get(user, "webui", domain="alpha") is None
