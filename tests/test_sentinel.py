"""Sentinel, as Backend.AI deploys Valkey: a primary, a replica and three Sentinels, all
real processes. The cache follows a failover with no call from the application: no
caller sees an exception, nothing older than a returned write is read, the scripts are on
the promoted node before the first call, hits resume; a promoted replica that lacked
acknowledged invalidations starts a new life of the index; a local cache empties itself
and serves again from the new primary."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from glide import ConnectionError as GlideConnectionError
from glide import RequestError
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    CircuitBreaker,
    LocalCache,
    MyFragmentInput,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.client import split_hosts
from atomic_cache.cache.sentinel import SentinelClient, Sentinels
from atomic_cache.cache.valkey_target import valkey_client_options
from atomic_cache.keys import DEFAULT_PREFIX
from atomic_cache.tools.acl import acl_setuser
from atomic_cache.tools.embedded import free_port
from atomic_cache.tools.embedded_sentinel import SERVICE, EmbeddedSentinelGroup, command

from .repo_tools import make_world

# On embedded servers of their own: the Redis-compatibility run need not repeat them.
pytestmark = pytest.mark.sentinel
# The tests that wait for the Sentinels to fail a primary over (seconds each): too heavy
# for make test, run by make test-heavy and make test-lowest (and so by .ci/run).
FAILOVER = pytest.mark.heavy


@pytest.fixture
def group() -> AsyncIterator[EmbeddedSentinelGroup]:  # type: ignore[misc]
    with EmbeddedSentinelGroup() as started:
        yield started


class Process:
    """One process of the service: its own Sentinel client, cache source and repository."""

    def __init__(
        self,
        client: SentinelClient,
        registry: ScriptRegistry,
        cache: AppConfigFragmentCacheSource,
        repo: AppConfigFragmentRepository,
    ) -> None:
        self.client, self.registry, self.cache, self.repo = client, registry, cache, repo

    @classmethod
    async def start(
        cls,
        group: EmbeddedSentinelGroup,
        engine: AsyncEngine,
        *,
        local: LocalCache | None = None,
        request_timeout_ms: int = 1000,
        **options: Any,
    ) -> Process:
        client = await create_valkey_client(
            group.url(), sentinel_service=SERVICE, request_timeout_ms=request_timeout_ms
        )
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        cache = AppConfigFragmentCacheSource(
            client, registry, breaker=CircuitBreaker(cooldown_s=0.3), local_cache=local, **options
        )
        return cls(client, registry, cache, AppConfigFragmentRepository(engine, cache=cache))

    async def version(self, user: uuid.UUID) -> int:
        config = (await self.repo.app_config(user, "webui")).config
        assert config is not None
        return int(config["v"])

    async def write(self, user: uuid.UUID, version: int) -> None:
        result = await self.repo.bulk_update_my(
            user, [MyFragmentInput(name="webui", extra_config={"v": version})]
        )
        assert not result.failures

    async def close(self) -> None:
        await self.repo.close()
        await self.client.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def in_sync(group: EmbeddedSentinelGroup) -> None:
    """Until every replica's link is up: before that, a replica the Sentinels could
    promote lacks what it has not synced, and invalidations fail their replica wait."""
    await asyncio.to_thread(group.wait_until, group.replicas_in_sync, "replicas in sync")


def followed(*clients: SentinelClient, failovers: int = 1) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(client.failovers >= failovers for client in clients)

    return check


# -- the URL -------------------------------------------------------------------------------


def test_a_sentinel_url_lists_its_hosts_with_the_default_port() -> None:
    hosts, first = split_hosts("valkeys://user:p%40ss@10.0.0.1,10.0.0.2:26380,[::1]:7/2")
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 7)]
    assert first == "valkeys://user:p%40ss@10.0.0.1/2"


async def test_sentinel_options_are_refused_where_they_cannot_apply() -> None:
    with pytest.raises(ValueError, match="several hosts"):
        await create_valkey_client("valkey://a:1,b:2/0")
    with pytest.raises(ValueError, match="sentinel_password needs sentinel_service"):
        await create_valkey_client("valkey://a:1/0", sentinel_password="x")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="not a cluster"):
        await create_valkey_client("valkey://a:1/0", sentinel_service=SERVICE, cluster=True)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="empty host"):
        await create_valkey_client("valkey://a:1,,b:2/0", sentinel_service=SERVICE)
    with pytest.raises(ValueError, match="sentinel_service must name"):
        await create_valkey_client("valkey://a:1/0", sentinel_service="")


async def test_with_no_sentinel_answering_the_client_starts_and_reads_fall_through(
    clean_db: AsyncEngine,
) -> None:
    dead = f"valkey://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/0"
    client = await create_valkey_client(dead, sentinel_service=SERVICE, connect_timeout_ms=100)
    try:
        assert client.primary is None
        with pytest.raises(GlideConnectionError, match="no primary of 'mymaster' known yet"):
            await client.custom_command(["PING"])
        cache = AppConfigFragmentCacheSource(client, ScriptRegistry())
        repo = AppConfigFragmentRepository(clean_db, cache=cache)
        world = await make_world(clean_db, cache)
        user = world.users[0]
        await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
        assert (await repo.app_config(user, "webui")).config == {"v": 1}
        stats = repo.stats()
        assert stats.hits == 0 and stats.fall_throughs["connection"] >= 1
        await repo.close()
    finally:
        await client.close()


# -- failover ------------------------------------------------------------------------------


@FAILOVER
async def test_a_killed_primary_is_followed_under_load_with_no_error_and_nothing_stale(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    here = await Process.start(group, clean_db)
    there = await Process.start(group, clean_db)
    world = await make_world(clean_db, here.cache)
    users = world.users
    for user in users:
        await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 0})])
    floor = dict.fromkeys(users, 0)  # the last version whose write returned
    reads = stale = 0
    killed, under_way = asyncio.Event(), asyncio.Event()
    hits_before_switch: dict[str, int] = {}

    async def writer(user: uuid.UUID) -> None:
        version, after_switch = 0, 0
        while after_switch < 20:
            after_switch += here.client.failovers > 0
            version += 1
            await here.write(user, version)
            floor[user] = version
            if version >= 10:
                under_way.set()
            await asyncio.sleep(random.uniform(0, 0.02))

    def strict(process: Process) -> bool:
        """The writing process never reads around its writes. Another process may, in
        the milliseconds after it followed the failover and before the writer did, read
        around a write whose invalidation failed meanwhile (the writer had no primary):
        its reads count once both have followed."""
        return process is here or here.client.failovers == there.client.failovers

    async def reader(process: Process) -> None:
        nonlocal reads, stale
        while not killed.is_set() or process.client.failovers == 0:
            user = random.choice(users)
            at_least, counts = floor[user], strict(process)
            stale += counts and await process.version(user) < at_least
            reads += 1
            await asyncio.sleep(0.001)
        hits_before_switch[str(id(process))] = process.repo.stats().hits
        for _ in range(200):  # after the switch: the cache serves again
            user = random.choice(users)
            at_least, counts = floor[user], strict(process)
            stale += counts and await process.version(user) < at_least
            reads += 1
            await asyncio.sleep(0.001)

    async def kill() -> None:
        await under_way.wait()
        await asyncio.to_thread(group.kill_primary)
        killed.set()

    await asyncio.gather(*(writer(u) for u in users), reader(here), reader(there), kill())
    assert stale == 0 and reads > 400
    for process in (here, there):
        assert process.client.failovers == 1
        assert process.client.primary == ("127.0.0.1", group.primary().port)
        assert process.repo.stats().hits > hits_before_switch[str(id(process))]
        # The hook loaded the scripts on the promoted node before the first call there.
        assert process.registry.reloads == 0
        assert all((await process.registry.loaded(process.client)).values())
    await here.close()
    await there.close()


@FAILOVER
async def test_a_primary_handed_over_by_the_sentinels_is_followed(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    """SENTINEL FAILOVER: the old primary lives on as a replica (it answers READONLY)."""
    here = await Process.start(group, clean_db)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await here.version(user) == 1 and await here.version(user) == 1
    old = group.primary()
    assert command(group.watchers[0].port, "SENTINEL", "FAILOVER", SERVICE) == b"+OK\r\n"
    await until(followed(here.client), "the client to follow the handover")
    await in_sync(group)  # the old primary, now a replica, has synced
    assert here.client.primary != ("127.0.0.1", old.port)
    await here.write(user, 2)
    assert await here.version(user) == 2
    hits = here.repo.stats().hits
    assert await here.version(user) == 2
    assert here.repo.stats().hits == hits + 1
    await here.close()


@FAILOVER
async def test_writes_left_uninvalidated_without_a_primary_are_covered_before_the_new_one_serves(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    """A write while no node is primary commits, but its invalidation cannot land; its
    writer then goes away. Before another process reads the promoted node (which holds
    the old entry), it replays every row of the outbox there (its own loop would wait
    10 minutes)."""
    here = await Process.start(group, clean_db, request_timeout_ms=100)
    there = await Process.start(group, clean_db, request_timeout_ms=100)
    there.repo = AppConfigFragmentRepository(clean_db, cache=there.cache, replay_after_s=600)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await there.version(user) == 1 and await there.version(user) == 1  # cached
    assert there.repo.stats().hits == 1
    group.set_down_after(600_000)  # no failover until the Sentinels are told again
    old = await asyncio.to_thread(group.kill_primary)
    await here.write(user, 2)  # committed; its invalidation failed (no primary)
    await here.close()
    for _ in range(5):  # meanwhile, from the database; the breaker opens
        assert await there.version(user) == 2
    assert there.cache.breaker.state != "closed" and there.client.failovers == 0
    group.set_down_after(1000)
    await asyncio.to_thread(group.wait_for_new_primary, old)
    await until(followed(there.client), "the other process to follow the failover")
    assert there.repo.stats().outbox_replayed >= 1
    assert await there.version(user) == 2
    await there.close()


def cut_replica_off(group: EmbeddedSentinelGroup) -> None:
    """The replica stops receiving the primary's writes (it cannot authenticate any
    more), but stays a replica the Sentinels may promote."""
    replica = next(node for node in group.nodes if node is not group.primary())
    command(replica.port, "CONFIG", "SET", "masteruser", "nobody")
    command(replica.port, "CONFIG", "SET", "masterauth", "wrong")
    command(replica.port, "CLIENT", "KILL", "TYPE", "master")
    group.wait_until(
        lambda: command(group.primary().port, "ROLE").endswith(b"*0\r\n"), "the replica cut off"
    )


@FAILOVER
async def test_a_promoted_replica_that_lost_acknowledged_invalidations_starts_a_new_life(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    here = await Process.start(group, clean_db, wait_for_replicas=False)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await here.version(user) == 1  # filled
    await here.client.custom_command(["WAIT", "1", "5000"])  # the replica has the entry
    cut_replica_off(group)

    await here.write(user, 2)  # its invalidation is acknowledged by the primary alone
    old = await asyncio.to_thread(group.kill_primary)
    await asyncio.to_thread(group.wait_for_new_primary, old)
    await until(followed(here.client), "the client to follow the failover")

    # The promoted node still holds the entry for v=1, but the hook saw its sequence
    # behind the one this process was answered, and started a new life there first.
    assert here.cache.metrics.index_resets == 1
    assert await here.version(user) == 2
    assert await here.version(user) == 2
    await here.close()


@FAILOVER
async def test_without_the_new_life_the_lost_invalidation_is_read_around(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    """What the test above guards against, shown by a process that was not answered the
    lost sequence: it has nothing to compare with and serves the entry of v=1."""
    here = await Process.start(group, clean_db, wait_for_replicas=False)
    there = await Process.start(group, clean_db, wait_for_replicas=False)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await here.version(user) == 1
    await here.client.custom_command(["WAIT", "1", "5000"])
    cut_replica_off(group)
    await here.write(user, 2)
    await here.close()  # the only process that knew goes away
    old = await asyncio.to_thread(group.kill_primary)
    await asyncio.to_thread(group.wait_for_new_primary, old)
    await until(followed(there.client), "the client to follow the failover")
    assert there.cache.metrics.index_resets == 0
    assert await there.version(user) == 1  # stale: why invalidations wait for replicas
    await there.close()


@FAILOVER
async def test_with_replicas_waited_for_a_write_the_replica_missed_is_never_read_around(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    """The default: an invalidation the replica did not acknowledge is a failed one
    (queued and replayed), so the writer never serves around it, before or after the
    failover."""
    here = await Process.start(group, clean_db, replica_ack_timeout_ms=200)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await here.version(user) == 1
    await here.client.custom_command(["WAIT", "1", "5000"])
    cut_replica_off(group)
    await here.write(user, 2)
    assert here.repo.stats().fall_throughs["replicas_behind"] >= 1  # and its replays
    assert await here.version(user) == 2  # pending: read from PostgreSQL
    old = await asyncio.to_thread(group.kill_primary)
    await asyncio.to_thread(group.wait_for_new_primary, old)
    await until(followed(here.client), "the client to follow the failover")
    assert await here.version(user) == 2
    assert await here.version(user) == 2
    assert here.cache.metrics.index_resets == 1
    await here.close()


# -- the local cache -----------------------------------------------------------------------


@FAILOVER
async def test_a_local_cache_on_sentinel_follows_the_failover(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    local = await LocalCache.create(group.url(), sentinel_service=SERVICE, check_interval_s=0.2)
    here = await Process.start(group, clean_db, local=local)
    there = await Process.start(group, clean_db)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await local.ready()
    assert await here.version(user) == 1  # filled, and copied in
    assert await here.version(user) == 1
    assert local.counters.hits == 1

    old = await asyncio.to_thread(group.kill_primary)
    await asyncio.to_thread(group.wait_for_new_primary, old)
    await until(followed(here.client, there.client), "both processes to follow")
    assert isinstance(local._client, SentinelClient)
    await until(followed(local._client), "the local cache to follow")
    # Emptied when the subscription broke with the primary, or at the switch at last.
    assert local.counters.flushes["subscription_lost"] + local.counters.flushes["failover"] >= 1
    assert await local.ready()

    # Another process writes on the new primary: the local cache hears of it there.
    await there.write(user, 2)

    async def heard() -> bool:
        reply = await there.client.custom_command(["HGET", there.cache.keys.seq, "n"])
        return local.sequence >= int(reply)

    await until(heard, "the local cache to hear of the write")
    assert await here.version(user) == 2
    assert await here.version(user) == 2
    hits = local.counters.hits
    assert await here.version(user) == 2
    assert local.counters.hits == hits + 1
    await here.close()
    await there.close()
    await local.close()


@FAILOVER
async def test_a_local_cache_subscribed_to_a_primary_handed_over_resyncs_on_the_new_one(
    group: EmbeddedSentinelGroup, clean_db: AsyncEngine
) -> None:
    """SENTINEL FAILOVER: the old primary lives on, and the subscription to it with it;
    the switch itself empties the local cache, which serves again once in step with the
    new primary."""
    local = await LocalCache.create(group.url(), sentinel_service=SERVICE, check_interval_s=0.2)
    here = await Process.start(group, clean_db, local=local)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await local.ready()
    assert await here.version(user) == 1 and await here.version(user) == 1
    assert len(local) == 1
    assert command(group.watchers[0].port, "SENTINEL", "FAILOVER", SERVICE) == b"+OK\r\n"
    assert isinstance(local._client, SentinelClient)
    await until(followed(local._client, here.client), "the clients to follow the handover")
    await in_sync(group)  # the old primary, now a replica, has synced
    assert local.counters.flushes["failover"] == 1
    assert await local.ready()
    assert local._client.primary == here.client.primary
    await here.write(user, 2)
    assert await here.version(user) == 2
    hits = local.counters.hits
    assert await here.version(user) == 2
    assert local.counters.hits == hits + 1
    await here.close()
    await local.close()


@FAILOVER
async def test_a_call_waiting_on_the_old_primary_is_answered_by_the_new_one(
    group: EmbeddedSentinelGroup,
) -> None:
    client = await create_valkey_client(
        group.url(), sentinel_service=SERVICE, request_timeout_ms=20_000
    )
    try:
        await client.custom_command(["SET", "k", "v"])
        await client.custom_command(["WAIT", "1", "5000"])
        old = group.primary()
        old.pause()  # SIGSTOP: the call below waits on it; the Sentinels promote the replica
        waiting = asyncio.ensure_future(client.custom_command(["GET", "k"]))
        await asyncio.to_thread(group.wait_for_new_primary, old)
        await until(followed(client), "the client to follow the failover")
        assert await waiting == b"v"  # not the old client's closing error
    finally:
        await client.close()


@FAILOVER
async def test_the_sentinels_announcement_alone_is_followed(
    group: EmbeddedSentinelGroup,
) -> None:
    """No call meets the demoted node and no poll is due: +switch-master alone moves it."""
    addresses, _ = split_hosts(group.url())

    async def connect(host: str, port: int) -> Any:
        return await create_valkey_client(f"valkey://{host}:{port}/0")

    client = await SentinelClient.create(Sentinels(addresses, SERVICE), connect, poll_s=3600)
    try:
        old = client.primary
        assert old == ("127.0.0.1", group.primary().port)
        await asyncio.sleep(0.2)  # the subscription is made (it is asked at once after)
        assert command(group.watchers[0].port, "SENTINEL", "FAILOVER", SERVICE) == b"+OK\r\n"
        await until(followed(client), "the announcement to be followed")
        assert client.primary != old
        assert await client.custom_command(["SET", "k", "v"]) == "OK"
    finally:
        await client.close()


async def test_passwords_on_the_data_nodes_and_on_the_sentinels(clean_db: AsyncEngine) -> None:
    """As Backend.AI runs it: a password on the data nodes (in the URL) and another on
    the Sentinels (sentinel_password); a handover is followed with both."""
    with EmbeddedSentinelGroup(password="p@ss:w/rd%", sentinel_password="s3nt") as group:
        client = await create_valkey_client(
            group.url(), sentinel_service=SERVICE, sentinel_password="s3nt"
        )
        cache = AppConfigFragmentCacheSource(client, ScriptRegistry())
        repo = AppConfigFragmentRepository(clean_db, cache=cache)
        world = await make_world(clean_db, cache)
        user = world.users[0]
        await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
        for _ in range(2):
            assert (await repo.app_config(user, "webui")).config == {"v": 1}
        assert repo.stats().hits == 1
        group.watchers[0].command("SENTINEL", "FAILOVER", SERVICE)
        await until(followed(client), "the client to follow the handover")
        await in_sync(group)  # the old primary, now a replica, has synced
        for _ in range(2):
            assert (await repo.app_config(user, "webui")).config == {"v": 1}
        assert repo.stats().hits == 3  # the promoted replica had the entry
        await repo.close()
        await client.close()

        refused = await create_valkey_client(
            group.url(), sentinel_service=SERVICE, sentinel_password="wrong"
        )
        try:
            assert refused.primary is None
            with pytest.raises(GlideConnectionError, match="no primary of 'mymaster' known"):
                await refused.custom_command(["PING"])
        finally:
            await refused.close()


@FAILOVER
async def test_a_backend_ai_valkey_target_with_sentinels_connects_and_follows() -> None:
    """valkey_client_options on a ValkeyTarget as Backend.AI writes it: Sentinels as
    "host:port" strings, a service name, a data-node password and an empty Sentinel
    password (none)."""
    with EmbeddedSentinelGroup(password="pw") as group:
        target = {
            "sentinel": [f"127.0.0.1:{watcher.port}" for watcher in group.watchers],
            "service_name": SERVICE,
            "password": "pw",
            "sentinel_password": "",
            "request_timeout": 1000,
        }
        client = await valkey_client_options(target).connect()
        try:
            assert isinstance(client, SentinelClient)
            assert client.primary == ("127.0.0.1", group.primary().port)
            assert await client.custom_command(["SET", "k", "v"]) == "OK"
            group.watchers[1].command("SENTINEL", "FAILOVER", SERVICE)
            await until(followed(client), "the client to follow the handover")
            await in_sync(group)  # the old primary, now a replica, has synced
            assert await client.custom_command(["GET", "k"]) == b"v"
        finally:
            await client.close()


@FAILOVER
async def test_a_least_privilege_user_from_the_sentinel_acl_line_runs_the_cache(
    clean_db: AsyncEngine,
) -> None:
    """``atomic-cache acl --sentinel``'s line, set on every data node: reads, fills,
    invalidations with their replica wait, and a handover, with no fall-through."""
    with EmbeddedSentinelGroup() as group:
        line = acl_setuser("cache", DEFAULT_PREFIX, sentinel=True, password="pw")
        for node in group.nodes:
            assert group.node_command(node.port, *line.split()) == b"+OK\r\n"
        url = group.url().replace("valkey://", "valkey://cache:pw@")
        client = await create_valkey_client(url, sentinel_service=SERVICE, sentinel_password="")
        registry = ScriptRegistry()
        assert await registry.load(client, required=True)
        cache = AppConfigFragmentCacheSource(client, registry)
        repo = AppConfigFragmentRepository(clean_db, cache=cache)
        world = await make_world(clean_db, cache)
        user = world.users[0]
        await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
        assert (await repo.app_config(user, "webui")).config == {"v": 1}
        group.watchers[0].command("SENTINEL", "FAILOVER", SERVICE)
        await until(followed(client), "the client to follow the handover")
        await in_sync(group)  # the old primary, now a replica, has synced
        await repo.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 2})])
        for _ in range(2):
            assert (await repo.app_config(user, "webui")).config == {"v": 2}
        stats = repo.stats()
        assert stats.fall_throughs == {} and stats.hits == 1 and stats.invalidations >= 2
        with pytest.raises(RequestError, match="No permissions to access a key"):
            await client.custom_command(["GET", "elsewhere"])
        await repo.close()
        await client.close()
