"""The embedded Valkey Cluster: a real 3-shard cluster with replicas, failover, and a
replication-delay proxy that makes a replica lag behind its primary."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from glide import (
    GlideClient,
    GlideClientConfiguration,
    GlideClusterClient,
    GlideClusterClientConfiguration,
    NodeAddress,
    SlotKeyRoute,
    SlotType,
)

from atomic_cache.tools.embedded_cluster import (
    HOST,
    ClusterNode,
    EmbeddedCluster,
    NodeConnection,
    ReplicationDelayProxy,
    _Sniffer,
    encode_command,
    info_fields,
    key_slot,
    slot_ranges,
)

from .valkey_tools import text

# On an embedded cluster of their own: the Redis-compatibility run need not repeat them.
pytestmark = pytest.mark.cluster

TIMEOUT_MS = 5000
DELAY_MS = 500  # long enough that a read right after a write always comes before it


@pytest.fixture(scope="module")
def lagging() -> Iterator[EmbeddedCluster]:
    """Shard 0 replicates through a proxy that holds its stream DELAY_MS; shards 1 and 2
    replicate directly."""
    with EmbeddedCluster(delay_replication_ms={0: DELAY_MS}) as cluster:
        yield cluster


@pytest.fixture
def failing() -> Iterator[EmbeddedCluster]:
    """A cluster each test breaks: a new one per test, so that a failover that goes wrong
    fails that test alone."""
    with EmbeddedCluster() as cluster:
        yield cluster


@asynccontextmanager
async def node_client(port: int) -> AsyncIterator[GlideClient]:
    """A glide client of one primary, on ``port`` (its own, or its proxy's)."""
    config = GlideClientConfiguration([NodeAddress(HOST, port)], request_timeout=TIMEOUT_MS)
    client = await GlideClient.create(config)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def cluster_client(cluster: EmbeddedCluster) -> AsyncIterator[GlideClusterClient]:
    seed = cluster.primaries_now()[0]
    config = GlideClusterClientConfiguration(
        [NodeAddress(HOST, seed.port)], request_timeout=TIMEOUT_MS
    )
    client = await GlideClusterClient.create(config)
    try:
        yield client
    finally:
        await client.close()


def key_on_shard(cluster: EmbeddedCluster, shard: int, name: str) -> str:
    """A key (``name`` under some hash tag) whose slot belongs to ``shard``."""
    tag = 0
    while cluster.shard_of_slot(key_slot(f"{{{tag}}}")) != shard:
        tag += 1
    return f"{{{tag}}}:{name}"


async def wait_replicas(client: GlideClient, timeout_ms: int) -> int:
    """WAIT on the connection that wrote: how many replicas acknowledged its writes."""
    reply = await client.custom_command(["WAIT", "1", str(timeout_ms)])
    assert isinstance(reply, int)
    return reply


def only_replica(cluster: EmbeddedCluster, primary: ClusterNode) -> ClusterNode:
    replicas = cluster.replicas_of(primary)
    assert len(replicas) == 1
    return replicas[0]


# -- slots and shape ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "a", "foo", "{user1000}.following", "{user1000}.followers", "{}x", "x{}{y}",
     "{a", "a}{b}", "a{b{c}d}", "é{ü}", "app_config:{42}:merged"],
)  # fmt: skip
def test_key_slot_is_the_servers(lagging: EmbeddedCluster, key: str) -> None:
    assert key_slot(key) == lagging.nodes[0].command("CLUSTER", "KEYSLOT", key)


def test_slot_ranges_split_like_the_cli() -> None:
    assert slot_ranges(3) == [(0, 5460), (5461, 10922), (10923, 16383)]
    assert slot_ranges(1) == [(0, 16383)]


def test_three_shards_each_with_a_replica(lagging: EmbeddedCluster) -> None:
    primaries = lagging.primaries_now()
    assert [node.shard for node in primaries] == [0, 1, 2]
    for node in lagging.nodes:
        state = info_fields(str(node.command("CLUSTER", "INFO")))
        assert (state["cluster_state"], state["cluster_size"], state["cluster_known_nodes"]) == (
            "ok",
            "3",
            "6",
        )
    for primary in primaries:
        replica = only_replica(lagging, primary)
        replication = info_fields(str(replica.command("INFO", "replication")))
        assert replication["role"] == "slave"
        assert replication["master_link_status"] == "up"
        # The replica follows the announced port: the proxy's on the delayed shard.
        assert int(replication["master_port"]) == primary.replication_port
    delayed = primaries[0]
    assert delayed.proxy is not None and delayed.replication_port != delayed.port
    # Clients are told each primary's own port: only replication goes through the proxy.
    slots = delayed.command("CLUSTER", "SLOTS")
    assert isinstance(slots, list)
    client_ports = {}
    for entry in slots:
        assert isinstance(entry, list)
        low, high, owner = entry[:3]
        assert isinstance(low, int) and isinstance(high, int) and isinstance(owner, list)
        client_ports[low, high] = owner[1]
        # primary_for_slot agrees with the server at both ends of every range.
        assert lagging.primary_for_slot(low).port == lagging.primary_for_slot(high).port == owner[1]
    assert client_ports == {
        (0, 5460): primaries[0].port,
        (5461, 10922): primaries[1].port,
        (10923, 16383): primaries[2].port,
    }
    with pytest.raises(ValueError, match="no such slot"):
        lagging.primary_for_slot(16384)
    assert lagging.seed_url == f"valkey://{HOST}:{primaries[0].port}"


def config_epochs(node: ClusterNode) -> dict[str, int]:
    """Each node's config epoch as ``node`` records it (``CLUSTER NODES``), dead ones too."""
    lines = str(node.command("CLUSTER", "NODES")).splitlines()
    return {fields[0]: int(fields[6]) for fields in (line.split() for line in lines) if fields}


def test_every_node_starts_with_a_config_epoch_of_its_own(lagging: EmbeddedCluster) -> None:
    # Epochs 1..N set on every node, replicas included, before they meet, as the CLI's
    # cluster create does: no two nodes ever share one, so no collision is settled by a
    # bump, which could race a failover or leave a replica with its primary's epoch. The
    # highest epoch any node has heard of is then the node count.
    primaries = lagging.primaries_now()
    for node in lagging.nodes:
        epochs = config_epochs(node)
        assert [epochs[primary.node_id] for primary in primaries] == [1, 2, 3]
        state = info_fields(str(node.command("CLUSTER", "INFO")))
        assert state["cluster_current_epoch"] == str(len(lagging.nodes))


async def test_cluster_client_reaches_every_shard(lagging: EmbeddedCluster) -> None:
    keys = [key_on_shard(lagging, shard, "shape") for shard in range(3)]
    async with cluster_client(lagging) as client:
        for key in keys:
            assert text(await client.set(key, key)) == "OK"
    for key in keys:
        # primary_for_key names the node that holds it: read there without a redirect.
        assert lagging.primary_for_key(key).command("GET", key) == key


# -- the replication delay ---------------------------------------------------------------


async def test_delayed_replica_serves_the_old_value_until_wait(lagging: EmbeddedCluster) -> None:
    key = key_on_shard(lagging, 0, "lag")
    primary = lagging.primary_for_key(key)
    replica = only_replica(lagging, primary)
    async with node_client(primary.port) as writer:
        with replica.connect(readonly=True) as reader:
            await writer.set(key, "old")
            assert await wait_replicas(writer, 10 * DELAY_MS) == 1
            assert reader.execute("GET", key) == "old"
            await writer.set(key, "new")
            assert reader.execute("GET", key) == "old"  # the write is held in the proxy
            # GETACK reaches the replica after the delay; its ACK comes straight back.
            assert await wait_replicas(writer, 10 * DELAY_MS) == 1
            assert reader.execute("GET", key) == "new"


async def test_without_delay_wait_is_acknowledged(lagging: EmbeddedCluster) -> None:
    key = key_on_shard(lagging, 0, "no-lag")
    primary = lagging.primary_for_key(key)
    replica = only_replica(lagging, primary)
    lagging.set_replication_delay(0, 0)
    try:
        async with node_client(primary.port) as writer:
            await writer.set(key, "v")
            assert await wait_replicas(writer, 2000) == 1
        with replica.connect(readonly=True) as reader:
            assert reader.execute("GET", key) == "v"
    finally:
        lagging.set_replication_delay(0, DELAY_MS)


async def test_paused_replica_does_not_acknowledge(lagging: EmbeddedCluster) -> None:
    key = key_on_shard(lagging, 1, "paused")
    primary = lagging.primary_for_key(key)
    replica = only_replica(lagging, primary)
    async with node_client(primary.port) as writer:
        replica.server.pause()
        try:
            await writer.set(key, "v")
            assert await wait_replicas(writer, 300) == 0
        finally:
            replica.server.resume()
        assert await wait_replicas(writer, 10_000) == 1


async def test_proxy_forwards_clients_at_once_and_holds_replication(
    lagging: EmbeddedCluster,
) -> None:
    key = key_on_shard(lagging, 0, "through-proxy")
    primary = lagging.primary_for_key(key)
    replica = only_replica(lagging, primary)
    assert primary.proxy is not None
    assert primary.proxy.replication_connections == 1
    lagging.set_replication_delay(0, 600_000)
    try:
        # A client on the proxy port: its replies would take ten minutes if it were held.
        async with node_client(primary.replication_port) as via_proxy:
            await via_proxy.set(key, "v")
            assert await via_proxy.get(key) == b"v"
            with replica.connect(readonly=True) as reader:
                assert reader.execute("GET", key) is None
                # A shorter delay applies to the bytes already held.
                lagging.set_replication_delay(0, DELAY_MS)
                assert await wait_replicas(via_proxy, 10 * DELAY_MS) == 1
                assert reader.execute("GET", key) == "v"
    finally:
        lagging.set_replication_delay(0, DELAY_MS)
    assert primary.proxy.replication_connections == 1  # the client was never taken for one


@pytest.mark.parametrize(
    ("chunks", "kind"),
    [
        # A replica: PING, then REPLCONF, its bytes split anywhere.
        ([encode_command(["PING"]), encode_command(["REPLCONF", "listening-port", "7"])],
         "replication"),
        ([b"*1\r\n$4\r\nPI", b"NG\r\n*2\r\n$8\r\nrepl", b"conf\r\n$4\r\ncapa\r", b"\n"],
         "replication"),
        ([b"PING\r\n", b"psync ? -1\r\n"], "replication"),
        # A client: commands it sends, never REPLCONF or PSYNC.
        ([encode_command(["HELLO", "3"]), encode_command(["CLIENT", "SETINFO", "x", "y"])],
         None),
        ([encode_command(["SET", "REPLCONF", "PSYNC"]) * 8], "client"),
        ([b"*1\r\n:5\r\n"], "client"),
    ],
)  # fmt: skip
def test_sniffer_tells_replicas_from_clients(chunks: list[bytes], kind: str | None) -> None:
    sniffer = _Sniffer()
    decisions = [sniffer.feed(chunk) for chunk in chunks]
    assert decisions[-1] == kind
    assert all(decision is None for decision in decisions[:-1])


def test_proxy_stop_closes_its_connections_quietly(
    lagging: EmbeddedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    target = lagging.primaries_now()[1]
    with caplog.at_level(logging.WARNING):
        proxy = ReplicationDelayProxy(target_port=target.port).start()
        connection = NodeConnection(proxy.port)
        try:
            assert connection.execute("PING") == "PONG"
            proxy.stop()
            assert proxy.stopped
            with pytest.raises(ConnectionError):
                connection.execute("PING")  # closed by the proxy
            with pytest.raises(ConnectionRefusedError):
                NodeConnection(proxy.port)  # nothing listens any more
        finally:
            connection.close()
            proxy.stop()
    assert [record.getMessage() for record in caplog.records] == []


# -- failover ----------------------------------------------------------------------------


async def test_failover_after_a_crash(failing: EmbeddedCluster) -> None:
    key = key_on_shard(failing, 2, "crash")
    old = failing.primary_for_key(key)
    replica = only_replica(failing, old)
    async with cluster_client(failing) as client:
        await client.set(key, "kept")
        acked = await client.custom_command(
            ["WAIT", "1", "10000"], route=SlotKeyRoute(SlotType.PRIMARY, key)
        )
        assert acked == 1
        new = await asyncio.to_thread(failing.failover, old)
        assert new is replica and not old.alive
        # Every live node records the promoted node's config epoch as the highest, above
        # the dead primary's: that is what gives it the slots everywhere.
        for node in failing.live_nodes:
            epochs = config_epochs(node)
            assert epochs[new.node_id] == max(epochs.values()) > epochs[old.node_id]
            assert list(epochs.values()).count(epochs[new.node_id]) == 1
        assert failing.primary_for_key(key) is new
        assert failing.replicas_of(new) == []
        assert new.command("GET", key) == "kept"
        assert await client.get(key) == b"kept"
        assert text(await client.set(key, "after")) == "OK"
    for node in failing.live_nodes:
        assert info_fields(str(node.command("CLUSTER", "INFO")))["cluster_state"] == "ok"
    assert new.command("GET", key) == "after"


def test_outbid_raises_a_promoted_node_above_every_epoch(failing: EmbeddedCluster) -> None:
    old = failing.primaries_now()[0]
    new = failing.failover(old)
    before = config_epochs(new)[new.node_id]
    # Promoted, its epoch is the highest it knows: BUMPEPOCH alone answers STILL.
    assert str(new.command("CLUSTER", "BUMPEPOCH")).startswith("STILL")
    failing.outbid(new)
    after = config_epochs(new)[new.node_id]
    assert after > before
    failing.until(
        lambda: all(config_epochs(node)[new.node_id] == after for node in failing.live_nodes),
        "every node to hear the new epoch",
    )
    for node in failing.live_nodes:
        epochs = config_epochs(node)
        assert max(epochs.values()) == after
        assert list(epochs.values()).count(after) == 1
    assert failing.problem() is None


async def test_coordinated_failover_keeps_the_old_primary_as_replica(
    failing: EmbeddedCluster,
) -> None:
    key = key_on_shard(failing, 1, "coordinated")
    old = failing.primary_for_key(key)
    async with cluster_client(failing) as client:
        await client.set(key, "kept")
        new = await asyncio.to_thread(failing.failover, old, kill=False)
        assert old.alive and (old.role, new.role) == ("replica", "primary")
        assert failing.replicas_of(new) == [old]
        assert failing.primary_for_key(key) is new
        assert await client.get(key) == b"kept"
    replication = info_fields(str(old.command("INFO", "replication")))
    assert (replication["role"], int(replication["master_port"])) == ("slave", new.port)


async def test_other_shards_serve_while_one_has_no_primary(failing: EmbeddedCluster) -> None:
    lost_key = key_on_shard(failing, 0, "lost")
    kept_key = key_on_shard(failing, 2, "kept")
    failing.primary_for_key(kept_key).command("SET", kept_key, "v")
    lost = failing.primary_for_key(lost_key)
    witness = failing.primary_for_key(kept_key)
    for node in [lost, *failing.replicas_of(lost)]:
        node.server.kill()

    def shard_failed() -> bool:
        state = info_fields(str(witness.command("CLUSTER", "INFO")))
        return state["cluster_slots_fail"] == str(slot_ranges(3)[0][1] + 1)

    await asyncio.to_thread(failing.until, shard_failed, "shard 0 to be declared failed")
    assert info_fields(str(witness.command("CLUSTER", "INFO")))["cluster_state"] == "ok"
    assert witness.command("GET", kept_key) == "v"
    async with cluster_client(failing) as client:
        assert await client.get(kept_key) == b"v"


# -- life cycle ----------------------------------------------------------------------------


def test_cleanup_ends_every_process_and_proxy(caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING),
        EmbeddedCluster(primaries=1, delay_replication_ms=5) as cluster,
    ):
        pids = [node.server.process.pid for node in cluster.nodes if node.server.process]
        proxy = cluster.nodes[0].proxy
        directory = cluster.directory
        assert len(pids) == 2 and proxy is not None and proxy.delay_ms == 5
        assert directory is not None and directory.exists()
    assert all(not pid_alive(pid) for pid in pids)
    assert not directory.exists()
    assert proxy.stopped
    assert [record.getMessage() for record in caplog.records] == []  # a quiet stop


def test_a_failed_start_leaves_nothing_behind() -> None:
    cluster = EmbeddedCluster(primaries=1, extra_args=["--no-such-option", "yes"])
    with pytest.raises(RuntimeError, match="did not start"):
        cluster.start()
    assert cluster.directory is None
    assert all(node.server.process is None for node in cluster.nodes)


def test_bad_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="no such shard"):
        EmbeddedCluster(delay_replication_ms={3: 10})
    with pytest.raises(ValueError, match="negative"):
        EmbeddedCluster(delay_replication_ms=-1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
