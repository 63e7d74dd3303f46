"""Failover on a real Valkey Cluster: the primary that holds the prefix's slot is killed
and its replica promoted. Requests keep being answered; an invalidation that returned is
never lost (its replicas had it); one that the replicas had not acknowledged was reported
failed, is replayed, and its replay finds the sequence went back and starts a new life of
the index: nothing stale is served afterwards, in any process."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator

import pytest
from glide import GlideClusterClient
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    CACHE_ERRORS,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    CircuitBreaker,
    KeySchema,
    MyFragmentInput,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.replicas import ReplicaBarrier
from atomic_cache.tools.embedded_cluster import EmbeddedCluster, key_slot

from .repo_tools import make_world

# On an embedded cluster of their own: the Redis-compatibility run need not repeat them.
pytestmark = pytest.mark.cluster

SHARD = 1
LAG_MS = 1500


def prefix_on(cluster: EmbeddedCluster, shard: int) -> str:
    while True:
        prefix = f"{{t{uuid.uuid4().hex[:12]}}}"
        if cluster.shard_of_slot(key_slot(prefix)) == shard:
            return prefix


class Process:
    """What one process of the service holds: its own cluster client, cache source and
    repository (reads on replicas)."""

    def __init__(
        self, client: GlideClusterClient, cache: AppConfigFragmentCacheSource, repo: object
    ) -> None:
        self.client = client
        self.cache = cache
        assert isinstance(repo, AppConfigFragmentRepository)
        self.repo = repo

    @classmethod
    async def start(
        cls, cluster: EmbeddedCluster, engine: AsyncEngine, prefix: str, **options: object
    ) -> Process:
        client = await create_valkey_client(
            cluster.seed_url, cluster=True, read_from_replica=True, request_timeout_ms=1000
        )
        registry = ScriptRegistry()
        await registry.load(client)
        cache = AppConfigFragmentCacheSource(
            client,
            registry,
            keys=KeySchema(prefix),
            breaker=CircuitBreaker(cooldown_s=0.3),
            **options,  # type: ignore[arg-type]
        )
        return cls(client, cache, AppConfigFragmentRepository(engine, cache=cache))

    async def version(self, user: uuid.UUID, name: str = "webui") -> int:
        config = (await self.repo.app_config(user, name)).config
        assert config is not None
        return int(config["v"])

    async def close(self) -> None:
        await self.repo.close()
        await self.client.close()


@pytest.fixture
def cluster() -> AsyncIterator[EmbeddedCluster]:  # type: ignore[misc]
    with EmbeddedCluster(delay_replication_ms={SHARD: 0}) as started:
        yield started


async def write(process: Process, user: uuid.UUID, version: int) -> None:
    result = await process.repo.bulk_update_my(
        user, [MyFragmentInput(name="webui", extra_config={"v": version})]
    )
    assert not result.failures


async def until(check: object, what: str, timeout_s: float = 20.0) -> None:
    """Poll an async predicate (the replays land on the processes' own schedule)."""
    assert callable(check)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_requests_are_answered_through_a_failover_and_nothing_is_stale_after(
    cluster: EmbeddedCluster, clean_db: AsyncEngine
) -> None:
    prefix = prefix_on(cluster, SHARD)
    here = await Process.start(cluster, clean_db, prefix)
    there = await Process.start(cluster, clean_db, prefix)
    world = await make_world(clean_db, here.cache)
    users = world.users[:3]
    for user in users:
        await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 0})])
    floor = dict.fromkeys(users, 0)
    reads = stale = 0
    failed_over, under_way = asyncio.Event(), asyncio.Event()

    async def writer(user: uuid.UUID) -> None:
        for v in range(1, 31):
            await write(here, user, v)
            floor[user] = v
            if min(floor.values()) >= 8:
                under_way.set()
            await asyncio.sleep(random.uniform(0, 0.02))

    async def reader() -> None:
        nonlocal reads, stale
        while not failed_over.is_set() or any(floor[u] < 30 for u in users):
            user = random.choice(users)
            at_least = floor[user]
            stale += await here.version(user) < at_least  # the writing process
            reads += 1
            await asyncio.sleep(0)
            if reads > 5000:
                return

    async def fail_over() -> None:
        await under_way.wait()
        primary = cluster.primary_for_slot(key_slot(prefix))
        await asyncio.to_thread(cluster.failover, primary)
        failed_over.set()

    await asyncio.gather(*(writer(u) for u in users), reader(), reader(), fail_over())
    assert failed_over.is_set() and reads > 100
    assert stale == 0  # in the writing process, not even during the failover

    # Afterwards, once the missed invalidations are replayed, every process agrees with
    # the database.
    async def settled() -> bool:
        for user in users:
            if [await here.version(user), await there.version(user)] != [floor[user]] * 2:
                return False
        return not here.repo.stats().pending_invalidations

    await until(settled, "the replays to land")
    for _ in range(3):
        for user in users:
            assert await there.version(user) == floor[user]
    assert here.repo.stats().hits + there.repo.stats().hits > 0  # the cache is in use again
    await here.close()
    await there.close()


@pytest.mark.parametrize("wait_for_replicas", [True, False], ids=["wait", "no-wait"])
async def test_a_lagging_replica_promoted_serves_nothing_stale_once_replayed(
    cluster: EmbeddedCluster, clean_db: AsyncEngine, wait_for_replicas: bool
) -> None:
    """The write's invalidation reached the primary, not its lagging replica; then the
    primary dies and that replica is promoted. Without waiting for replicas the write
    returned as if all was well, and the lost invalidation stays lost: both processes
    serve the old value. With the wait it was reported failed and replayed; the replay
    sees the sequence went back and starts a new life of the index."""
    prefix = prefix_on(cluster, SHARD)
    options = {"wait_for_replicas": wait_for_replicas, "replica_ack_timeout_ms": 200}
    here = await Process.start(cluster, clean_db, prefix, **options)
    there = await Process.start(cluster, clean_db, prefix, **options)
    world = await make_world(clean_db, here.cache)
    user = world.users[0]
    await here.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    replicated = ReplicaBarrier.of_shard(here.client, f"{prefix}:seq", timeout_ms=5000)
    await replicated.wait()  # without it, a token read on the replica could be refused
    assert await here.version(user) == 1  # filled
    await replicated.wait()
    assert await there.version(user) == 1 and there.repo.stats().hits == 1

    cluster.set_replication_delay(SHARD, LAG_MS)
    await write(here, user, 2)  # its invalidation reaches the primary only
    assert here.repo.stats().failed_invalidations == (1 if wait_for_replicas else 0)
    primary = cluster.primary_for_slot(key_slot(prefix))
    await asyncio.to_thread(cluster.failover, primary)  # the lagging replica takes over

    async def both_read_2() -> bool:
        return [await here.version(user), await there.version(user)] == [2, 2]

    if wait_for_replicas:
        await until(both_read_2, "the replayed invalidation")
        assert here.cache.metrics.index_resets == 1  # the replay saw the sequence go back
        for _ in range(3):
            assert [await here.version(user), await there.version(user)] == [2, 2]
    else:

        async def cache_answers() -> bool:
            # Until the clients know the new topology, reads fall through to the database.
            try:
                for process in (here, there):
                    await process.cache.get_merged_config(user, "webui")
            except CACHE_ERRORS:
                return False
            return True

        await until(cache_answers, "the cache to answer after the failover")
        await asyncio.sleep(0.5)  # past the breaker's cool-down, should it have opened
        # The lost invalidation is lost for good (until the TTL): stale in both.
        assert [await here.version(user), await there.version(user)] == [1, 1]
        assert here.cache.metrics.index_resets == 0
    await here.close()
    await there.close()
