"""doctor on a Valkey Cluster: the cluster checks on canned facts (no server), then the
command on a real 3+3 cluster: healthy, a prefix without a hash tag, scripts missing on a
node, a replica paused or killed; and the --cluster flag of the CLI."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from click.testing import Result

from atomic_cache import ScriptRegistry, create_valkey_client
from atomic_cache.tools.doctor import (
    CLUSTER_REQUIRED_COMMANDS,
    FAILED_FLAGS,
    Check,
    ClusterFacts,
    ListedNode,
    NodeFacts,
    ServerFacts,
    Status,
    exit_code,
    gather_node_facts,
    in_display_order,
    parse_cluster_nodes,
    parse_info,
    prefix_slot,
    run_cluster_checks,
)
from atomic_cache.tools.embedded_cluster import (
    ClusterNode,
    EmbeddedCluster,
    info_fields,
    key_slot,
    slot_ranges,
)

from .test_cli import invoke, processes_mentioning, status_of

# On an embedded cluster of their own: the Redis-compatibility run need not repeat them.
pytestmark = pytest.mark.cluster

# -- canned facts -------------------------------------------------------------------------

NODES = """\
a0 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a1 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
a2 127.0.0.1:7002@17002 master - 0 0 3 connected 10923-16383
b0 127.0.0.1:7003@17003 slave a0 0 0 1 connected
b1 127.0.0.1:7004@17004 slave a1 0 0 2 connected
b2 127.0.0.1:7005@17005 slave a2 0 0 3 connected
"""
REPLICA_OF = {"7000": "7003", "7001": "7004", "7002": "7005"}
NODE_INFO = (
    "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n"
    "server_mode:cluster\r\n# Memory\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n"
    "# Persistence\r\naof_enabled:0\r\n# Cluster\r\ncluster_enabled:1\r\n"
)

NO_PERSISTENCE = {
    "save": "",
    "appendonly": "no",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}
ALL_COMMANDS = frozenset(command.lower() for command in CLUSTER_REQUIRED_COMMANDS)
LOADED = dict.fromkeys(ScriptRegistry().scripts, True)
EVERY_SCRIPT = ", ".join(sorted(LOADED))


def node_info(node: ListedNode, *, ack_lag: int = 0, **fields: str) -> dict[str, str]:
    info = parse_info(NODE_INFO)
    if node.role == "primary":
        port = REPLICA_OF.get(node.address.rpartition(":")[2])
        info.update(role="master", connected_slaves="1")
        info["slave0"] = f"ip=127.0.0.1,port={port},state=online,offset=99,lag={ack_lag}"
    else:
        info.update(
            role="slave",
            master_link_status="up",
            master_last_io_seconds_ago="1",
            master_sync_in_progress="0",
        )
    info.update(fields)
    return info


def cluster_facts(
    listing: str = NODES,
    *,
    prefix: str = "{app_config}",
    info: Mapping[str, Mapping[str, str]] | None = None,
    ack_lag: Mapping[str, int] | None = None,
    config: Mapping[str, Mapping[str, str]] | None = None,
    commands: Mapping[str, frozenset[str]] | None = None,
    state: Mapping[str, str] | None = None,
    scripts: Mapping[str, Mapping[str, bool] | None] | None = None,
    scripts_error: Mapping[str, str] | None = None,
    unread: Mapping[str, str] | None = None,
) -> ClusterFacts:
    """The canned cluster, each mapping keyed by a node's port ("7000")."""
    gathered = []
    for node in parse_cluster_nodes(listing):
        port = node.address.rpartition(":")[2]
        if node.failed:
            gathered.append(NodeFacts(node, problem="marked failed by the cluster; not asked"))
            continue
        if unread and port in unread:
            gathered.append(NodeFacts(node, problem=unread[port]))
            continue
        primary = node.role == "primary"
        server = ServerFacts(
            info=node_info(
                node, ack_lag=(ack_lag or {}).get(port, 0), **(info or {}).get(port, {})
            ),
            config={**NO_PERSISTENCE, **(config or {}).get(port, {})} if primary else {},
            commands=(commands or {}).get(port, ALL_COMMANDS) if primary else None,
            scripts_loaded=(scripts or {}).get(port, LOADED),
        )
        gathered.append(
            NodeFacts(
                node,
                server,
                {"cluster_state": (state or {}).get(port, "ok")},
                (scripts_error or {}).get(port),
            )
        )
    return ClusterFacts(prefix=prefix, nodes=in_display_order(gathered))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def without(listing: str, port: str) -> str:
    return "".join(line + "\n" for line in listing.splitlines() if f":{port}@" not in line)


def flagged(listing: str, port: str, flags: str) -> str:
    lines = []
    for line in listing.splitlines():
        fields = line.split()
        if f":{port}@" in fields[1]:
            fields[2] = flags
        lines.append(" ".join(fields))
    return "\n".join(lines) + "\n"


def test_parse_cluster_nodes() -> None:
    listing = (
        "a0 127.0.0.1:7000@17000,cache-0 myself,master - 0 0 1 connected 0-5460 7000"
        " [5461->-a1]\n"
        "b0 127.0.0.1:7003@17003 slave,fail a0 0 0 1 disconnected\n"
        "c0 :0@0 master,noaddr - 0 0 0 disconnected\n"
        "short line\n"
    )
    first, replica, lost = parse_cluster_nodes(listing)
    assert first == ListedNode(
        node_id="a0",
        address="127.0.0.1:7000",
        flags=frozenset({"myself", "master"}),
        primary_id=None,
        link_state="connected",
        slots=((0, 5460), (7000, 7000)),
    )
    assert (first.role, first.failed, first.label) == ("primary", False, "127.0.0.1:7000 (primary)")
    assert first.host_port == ("127.0.0.1", 7000)
    assert (replica.role, replica.primary_id, replica.failed) == ("replica", "a0", True)
    assert replica.link_state == "disconnected"
    assert lost.failed and lost.slots == ()


def test_display_order_puts_each_primary_before_its_replicas() -> None:
    facts = cluster_facts("".join(reversed(NODES.splitlines(keepends=True))))
    assert [n.node.address.rpartition(":")[2] for n in facts.nodes] == [
        "7000", "7003", "7001", "7004", "7002", "7005",
    ]  # fmt: skip


def test_healthy_cluster_passes_every_check() -> None:
    checks = run_cluster_checks(cluster_facts())
    assert [check.name for check in checks] == [
        "server",
        "commands",
        "cluster",
        "slots",
        "key prefix",
        "prefix slot",
        "replicas",
        "scripts",
        "maxmemory-policy",
        "persistence",
    ]
    assert {check.status for check in checks} == {Status.OK}, checks
    found = by_name(checks)
    assert found["server"].detail == "every primary (3): valkey 9.1.2 (cluster)"
    assert found["cluster"].detail == (
        "cluster_state ok on all 6 nodes read (3 primaries, 3 replicas)"
    )
    assert found["slots"].detail == "all 16384 slots served by 3 primaries"
    slot = key_slot("{app_config}:seq")
    assert prefix_slot("{app_config}") == slot == 3478
    assert found["prefix slot"].detail == (
        f"slot {slot} on primary 127.0.0.1:7000 (slots 0-5460); replicas: 127.0.0.1:7003"
    )
    assert found["replicas"].detail == (
        "every replica linked and current; replicas per primary: 127.0.0.1:7000 (slots"
        " 0-5460): 127.0.0.1:7003; 127.0.0.1:7001 (slots 5461-10922): 127.0.0.1:7004;"
        " 127.0.0.1:7002 (slots 10923-16383): 127.0.0.1:7005"
    )
    assert found["scripts"].detail == f"all {len(LOADED)} scripts on all 6 nodes"
    assert exit_code(checks, strict=True) == 0


def test_cluster_state_fail_is_a_fail() -> None:
    checks = run_cluster_checks(cluster_facts(state={"7001": "fail"}))
    check = by_name(checks)["cluster"]
    assert check.status is Status.FAIL
    assert check.detail.startswith("cluster_state is not ok on 127.0.0.1:7001 (primary): fail:")
    assert exit_code(checks) == 1


def test_unassigned_slots_fail_naming_the_ranges() -> None:
    listing = NODES.replace("10923-16383", "10923-16000")
    checks = run_cluster_checks(cluster_facts(listing))
    check = by_name(checks)["slots"]
    assert check.status is Status.FAIL
    assert check.detail.startswith(
        "383 of 16384 slots have no live primary: 16001-16383 (unassigned). Keys there"
    )
    assert exit_code(checks) == 1


def test_slots_of_a_failed_primary_fail_and_so_does_a_prefix_there() -> None:
    facts = cluster_facts(flagged(NODES, "7000", "master,fail"))
    checks = by_name(run_cluster_checks(facts))
    assert checks["slots"].status is Status.FAIL
    assert checks["slots"].detail.startswith(
        "5461 of 16384 slots have no live primary: 0-5460 (on 127.0.0.1:7000, marked failed)."
    )
    # {app_config} hashes to slot 3478, on that primary.
    assert checks["prefix slot"].status is Status.FAIL
    assert checks["prefix slot"].detail.startswith(
        "slot 3478 of '{app_config}' has no live primary"
    )
    # The one-server checks ran on the primaries left.
    assert checks["server"].detail == "every primary (2): valkey 9.1.2 (cluster)"


def test_a_primary_without_a_replica_warns() -> None:
    checks = run_cluster_checks(cluster_facts(without(NODES, "7005")))
    check = by_name(checks)["replicas"]
    assert check.status is Status.WARN
    assert check.detail.startswith(
        "127.0.0.1:7002 has no replica: a failover would lose its slots, and reads cannot be"
        " spread. "
    )
    assert "127.0.0.1:7002 (slots 10923-16383): no replica" in check.detail
    assert exit_code(checks) == 0
    assert exit_code(checks, strict=True) == 1


LINK_DOWN = {"master_link_status": "down", "master_link_down_since_seconds": "12"}


@pytest.mark.parametrize(
    ("facts", "trouble"),
    [
        (
            lambda: cluster_facts(info={"7004": LINK_DOWN}),
            "has its link to the primary down for 12 s",
        ),
        (
            lambda: cluster_facts(info={"7004": {"master_sync_in_progress": "1"}}),
            "is still syncing from its primary",
        ),
        (
            lambda: cluster_facts(info={"7004": {"master_last_io_seconds_ago": "16"}}),
            "last heard from its primary 16 s ago (master_last_io_seconds_ago)",
        ),
        (
            lambda: cluster_facts(ack_lag={"7001": 4}),
            "last acknowledged its primary's stream 4 s ago",
        ),
        (
            lambda: cluster_facts(unread={"7004": "did not answer: timed out"}),
            "did not answer: timed out",
        ),
    ],
    ids=["link down", "syncing", "silent link", "acks late", "no answer"],
)
def test_a_replica_that_lags_or_is_down_warns(
    facts: Callable[[], ClusterFacts], trouble: str
) -> None:
    checks = run_cluster_checks(facts())
    check = by_name(checks)["replicas"]
    assert check.status is Status.WARN
    assert check.detail.startswith(f"127.0.0.1:7004 (of 127.0.0.1:7001) {trouble}. ")
    assert "fails invalidations (they are replayed)" in check.detail
    assert exit_code(checks) == 0 and exit_code(checks, strict=True) == 1


def test_lag_within_bounds_is_ok() -> None:
    facts = cluster_facts(info={"7004": {"master_last_io_seconds_ago": "15"}}, ack_lag={"7001": 3})
    assert by_name(run_cluster_checks(facts))["replicas"].status is Status.OK


@pytest.mark.parametrize("flags", sorted(FAILED_FLAGS - {"noaddr"}))
def test_a_replica_marked_failed_warns(flags: str) -> None:
    facts = cluster_facts(flagged(NODES, "7004", f"slave,{flags}"))
    checks = by_name(run_cluster_checks(facts))
    assert checks["replicas"].status is Status.WARN
    assert checks["replicas"].detail.startswith(
        f"127.0.0.1:7004 (of 127.0.0.1:7001) is marked failed ({flags}). "
    )
    # Not asked, so neither its cluster_state nor its scripts are counted.
    assert checks["cluster"].detail.endswith("(3 primaries, 2 replicas); 1 listed node(s) not read")
    assert checks["scripts"].detail == f"all {len(LOADED)} scripts on all 5 nodes"


def test_scripts_missing_on_a_node_warn_naming_it() -> None:
    partial = {**LOADED, "set": False}
    none = dict.fromkeys(LOADED, False)
    checks = run_cluster_checks(cluster_facts(scripts={"7004": partial, "7002": none}))
    check = by_name(checks)["scripts"]
    assert check.status is Status.WARN
    assert check.detail.startswith(
        "4/6 nodes hold every script; 127.0.0.1:7004 (replica) lacks set;"
        f" 127.0.0.1:7002 (primary) lacks {EVERY_SCRIPT}. A node loads them on"
        " the first call"
    )
    assert exit_code(checks) == 0
    ports = [*REPLICA_OF, *REPLICA_OF.values()]
    everywhere = by_name(run_cluster_checks(cluster_facts(scripts=dict.fromkeys(ports, none))))
    assert everywhere["scripts"].detail.startswith(
        f"0/6 nodes hold every script; every node lacks {EVERY_SCRIPT}."
    )
    unknown = by_name(run_cluster_checks(cluster_facts(scripts={"7003": None})))["scripts"]
    assert unknown.status is Status.WARN
    assert unknown.detail.startswith("5/6 nodes hold every script; unknown on 127.0.0.1:7003")


def test_a_node_that_rejects_the_scripts_fails() -> None:
    error = "ERR unknown command 'SCRIPT'"
    checks = run_cluster_checks(
        cluster_facts(scripts={"7001": None}, scripts_error={"7001": error})
    )
    check = by_name(checks)["scripts"]
    assert check.status is Status.FAIL
    assert check.detail.startswith(f"SCRIPT EXISTS rejected on 127.0.0.1:7001 (primary): {error}:")
    assert exit_code(checks) == 1


@pytest.mark.parametrize(
    ("prefix", "fix"),
    [("app_config", "{app_config}"), ("myapp:cfg", "{myapp}:cfg"), ("{}app", "{app}")],
)
def test_a_prefix_without_a_hash_tag_fails_with_the_fix(prefix: str, fix: str) -> None:
    checks = run_cluster_checks(cluster_facts(prefix=prefix))
    found = by_name(checks)
    assert found["key prefix"].status is Status.FAIL
    assert found["key prefix"].detail.startswith(
        f"{prefix!r} has no hash tag: a script's keys would hash to different slots (CROSSSLOT)."
        f" Use KeySchema({fix!r})"
    )
    assert "prefix slot" not in found  # its keys live in many slots
    assert exit_code(checks) == 1


def test_the_worst_primary_is_named() -> None:
    checks = by_name(
        run_cluster_checks(
            cluster_facts(
                config={"7001": {"maxmemory-policy": "allkeys-lru"}},
                commands={"7002": ALL_COMMANDS - {"wait"}},
            )
        )
    )
    policy = checks["maxmemory-policy"]
    assert policy.status is Status.WARN
    assert policy.detail.startswith("127.0.0.1:7001: allkeys-lru: an invalidation stamp")
    assert policy.detail.endswith("(others: 127.0.0.1:7000, 127.0.0.1:7002: OK)")
    assert checks["commands"].status is Status.FAIL
    assert checks["commands"].detail.startswith("127.0.0.1:7002: missing: WAIT")
    silent = by_name(run_cluster_checks(cluster_facts(unread={"7002": "did not answer: x"})))
    assert silent["server"].status is Status.WARN
    assert silent["server"].detail == (
        "127.0.0.1:7002: did not answer: x (others: 127.0.0.1:7000, 127.0.0.1:7001: OK)"
    )


# -- a real cluster -----------------------------------------------------------------------

# Wide enough that no row of the doctor's tables wraps.
WIDER: dict[str, str | None] = {"COLUMNS": "600"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster() as started:
        yield started


def seen_flags(cluster: EmbeddedCluster, node: ClusterNode) -> set[str]:
    """``node``'s flags as the first primary (the doctor's seed) lists them."""
    listing = str(cluster.primaries_now()[0].command("CLUSTER", "NODES"))
    for line in listing.splitlines():
        fields = line.split()
        if fields and fields[0] == node.node_id:
            return set(fields[2].split(","))
    return set()


def replicas_current(cluster: EmbeddedCluster) -> bool:
    """Every replica acknowledged its primary within the last second."""
    for primary in cluster.primaries_now():
        info = info_fields(str(primary.command("INFO", "replication")))
        lags = [
            int(value.rpartition("lag=")[2].split(",")[0])
            for key, value in info.items()
            if key.startswith("slave") and key[5:].isdigit()
        ]
        if len(lags) != len(cluster.replicas_of(primary)) or any(lag > 1 for lag in lags):
            return False
    return True


def wait_healthy(cluster: EmbeddedCluster) -> None:
    cluster.wait_ok()
    cluster.until(lambda: replicas_current(cluster), "every replica to acknowledge")


async def doctor(cluster: EmbeddedCluster, *args: str) -> Result:
    return await invoke("doctor", "--cluster", "--valkey-url", cluster.seed_url, *args, env=WIDER)


async def load_scripts(cluster: EmbeddedCluster) -> Result:
    result = await invoke("scripts", "load", "--cluster", "--valkey-url", cluster.seed_url)
    assert result.exit_code == 0, result.output
    return result


def shard_of(cluster: EmbeddedCluster, shard: int) -> tuple[ClusterNode, ClusterNode]:
    primary = cluster.primaries_now()[shard]
    (replica,) = cluster.replicas_of(primary)
    return primary, replica


async def test_scripts_load_list_and_doctor_per_node(cluster: EmbeddedCluster) -> None:
    loaded = await load_scripts(cluster)
    for node in cluster.nodes:
        assert f"on 127.0.0.1:{node.port} ({node.role}): {len(LOADED)}/{len(LOADED)} scripts" in (
            loaded.output
        )
    # One replica loses its scripts (a restart, a SCRIPT FLUSH).
    _, replica = shard_of(cluster, 1)
    replica.command("SCRIPT", "FLUSH")
    listed = await invoke(
        "scripts", "list", "--valkey-url", cluster.seed_url, env={"VALKEY_CLUSTER": "1", **WIDER}
    )
    assert listed.exit_code == 0, listed.output
    for name in ScriptRegistry().scripts:
        assert re.search(rf"│ {name}\s+│ [0-9a-f]{{40}}\s+│ [^│]+│ 5/6 nodes\s+│", listed.output)
    for node in cluster.nodes:
        held = "no" if node is replica else "yes"
        row = rf"│ 127\.0\.0\.1:{node.port} \({node.role}\)\s+│" + rf" {held}\s+│" * len(LOADED)
        assert re.search(row, listed.output), listed.output
    result = await doctor(cluster)
    assert result.exit_code == 0, result.output
    assert status_of(result.output, "scripts") == "WARN"
    assert f"127.0.0.1:{replica.port} (replica) lacks {EVERY_SCRIPT}" in result.output
    assert (await doctor(cluster, "--strict")).exit_code == 1
    await load_scripts(cluster)
    assert (await doctor(cluster, "--strict")).exit_code == 0


async def test_doctor_on_a_healthy_cluster(cluster: EmbeddedCluster) -> None:
    await load_scripts(cluster)
    result = await doctor(cluster, "--strict")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"atomic-cache doctor: {cluster.seed_url} (cluster)" in out
    for check in ("server", "commands", "cluster", "slots", "key prefix", "prefix slot",
                  "replicas", "scripts", "maxmemory-policy", "persistence"):  # fmt: skip
        assert status_of(out, check) == "OK", check
    assert "cluster_state ok on all 6 nodes read (3 primaries, 3 replicas)" in out
    slot = key_slot("{app_config}:seq")
    primary = cluster.primary_for_slot(slot)
    (replica,) = cluster.replicas_of(primary)
    low, high = slot_ranges(3)[primary.shard]
    assert (
        f"slot {slot} on primary 127.0.0.1:{primary.port} (slots {low}-{high});"
        f" replicas: 127.0.0.1:{replica.port}"
    ) in out
    # Replicas per primary, in the check and in the nodes table, with scripts per node.
    for shard, (low, high) in enumerate(slot_ranges(3)):
        primary, replica = shard_of(cluster, shard)
        assert f"127.0.0.1:{primary.port} (slots {low}-{high}): 127.0.0.1:{replica.port}" in out
        assert re.search(
            rf"│ 127\.0\.0\.1:{primary.port}\s+│ primary\s+│ {low}-{high}\s+│ serving\s+│"
            rf" {len(LOADED)}/{len(LOADED)}\s+│",
            out,
        ), out
        assert re.search(
            rf"│ 127\.0\.0\.1:{replica.port}\s+│ replica\s+│ of 127\.0\.0\.1:{primary.port}\s+│"
            rf" link up, last I/O \d+ s ago\s+│ {len(LOADED)}/{len(LOADED)}\s+│",
            out,
        ), out


async def test_a_prefix_without_a_hash_tag_fails(cluster: EmbeddedCluster) -> None:
    result = await doctor(cluster, "--prefix", "app_config")
    assert result.exit_code == 1, result.output
    assert status_of(result.output, "key prefix") == "FAIL"
    assert "'app_config' has no hash tag" in result.output
    assert "Use KeySchema('{app_config}')" in result.output
    assert "│ prefix slot" not in result.output
    # Another tagged prefix: its own slot and primary.
    tagged = await doctor(cluster, "--prefix", "{tenant7}:cfg")
    slot = key_slot("{tenant7}")
    primary = cluster.primary_for_slot(slot)
    assert f"slot {slot} on primary 127.0.0.1:{primary.port}" in tagged.output


async def test_a_paused_replica_warns(cluster: EmbeddedCluster) -> None:
    primary, replica = shard_of(cluster, 2)
    replica.server.pause()
    try:
        # Once marked failed the doctor does not wait for it (asking costs a timeout).
        cluster.until(lambda: bool(seen_flags(cluster, replica) & FAILED_FLAGS), "the flag")
        result = await doctor(cluster)
        strict = await doctor(cluster, "--strict")
    finally:
        replica.server.resume()
    assert result.exit_code == 0, result.output
    assert status_of(result.output, "replicas") == "WARN"
    assert re.search(
        rf"127\.0\.0\.1:{replica.port} \(of 127\.0\.0\.1:{primary.port}\) is marked failed"
        r" \(fail\??\)",
        result.output,
    ), result.output
    assert status_of(result.output, "cluster") == "OK"
    assert strict.exit_code == 1
    wait_healthy(cluster)
    assert (await doctor(cluster, "--strict")).exit_code == 0


async def test_a_killed_replica_warns(cluster: EmbeddedCluster) -> None:
    await load_scripts(cluster)
    primary, replica = shard_of(cluster, 1)
    replica.server.kill()
    try:
        cluster.until(lambda: bool(seen_flags(cluster, replica) & FAILED_FLAGS), "the flag")
        result = await doctor(cluster)
        strict = await doctor(cluster, "--strict")
    finally:
        replica.server.start()  # rejoins from its nodes.conf
    assert result.exit_code == 0, result.output
    assert status_of(result.output, "replicas") == "WARN"
    assert f"127.0.0.1:{replica.port} (of 127.0.0.1:{primary.port}) is marked failed" in (
        result.output
    )
    assert re.search(
        rf"│ 127\.0\.0\.1:{replica.port}\s+│ replica\s+│ [^│]+│ marked failed by the cluster",
        result.output,
    ), result.output
    assert strict.exit_code == 1
    wait_healthy(cluster)


async def test_a_listed_node_that_does_not_answer_is_a_fact(cluster: EmbeddedCluster) -> None:
    primary, replica = shard_of(cluster, 0)
    listing = parse_cluster_nodes(str(primary.command("CLUSTER", "NODES")))
    (listed,) = [node for node in listing if node.address == f"127.0.0.1:{replica.port}"]
    assert not listed.failed  # as listed before it stopped answering
    client = await create_valkey_client(cluster.seed_url, cluster=True, request_timeout_ms=300)
    try:
        answered = await gather_node_facts(client, listed, ScriptRegistry())
        replica.server.pause()
        try:
            silent = await gather_node_facts(client, listed, ScriptRegistry())
        finally:
            replica.server.resume()
    finally:
        await client.close()
    assert answered.server is not None and answered.problem is None
    assert answered.server.info["role"] == "slave"
    assert answered.cluster_info is not None and answered.cluster_info["cluster_state"] == "ok"
    assert silent.server is None and silent.cluster_info is None
    assert silent.problem is not None and silent.problem.startswith("did not answer: ")
    wait_healthy(cluster)


@pytest.fixture(scope="module")
def no_scripting() -> Iterator[EmbeddedCluster]:
    """One primary, no replica, and SCRIPT renamed away (as an ACL or a module could)."""
    with EmbeddedCluster(
        primaries=1, replicas_per_primary=0, extra_args=["--rename-command", "SCRIPT", ""]
    ) as started:
        yield started


async def test_a_node_that_rejects_the_scripts_fails_and_a_lone_primary_warns(
    no_scripting: EmbeddedCluster,
) -> None:
    result = await doctor(no_scripting)
    assert result.exit_code == 1, result.output
    out = result.output
    port = no_scripting.nodes[0].port
    assert status_of(out, "scripts") == "FAIL"
    assert f"SCRIPT EXISTS rejected on 127.0.0.1:{port} (primary): " in out
    assert "unknown command" in out
    assert status_of(out, "commands") == "FAIL"
    assert "missing: SCRIPT" in out
    assert status_of(out, "replicas") == "WARN"
    assert f"127.0.0.1:{port} has no replica: a failover would lose its slots" in out
    assert status_of(out, "slots") == "OK"
    assert "all 16384 slots served by 1 primary" in out
    assert "cluster_state ok on all 1 node read (1 primary, 0 replicas)" in out


async def test_the_single_server_doctor_on_a_cluster_node_points_to_cluster(
    cluster: EmbeddedCluster,
) -> None:
    result = await invoke("doctor", "--valkey-url", cluster.seed_url, env=WIDER)
    assert result.exit_code == 0, result.output
    assert status_of(result.output, "cluster") == "WARN"
    assert "(prefix 'app_config' has none)" in result.output
    assert "`atomic-cache doctor --cluster` checks every node" in result.output


async def test_cluster_flag_on_a_single_server_is_one_line(valkey_url: str) -> None:
    result = await invoke("doctor", "--cluster", "--valkey-url", valkey_url)
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith("Error: Valkey at ")
    assert line.endswith(
        "(with --cluster the URL must name a node of a Valkey Cluster; drop --cluster and"
        " unset VALKEY_CLUSTER for a single server)"
    )


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["--cluster", "demo"], {}, "demo does not work on a Valkey Cluster yet"),
        (["bench", "--tiny"], {"VALKEY_CLUSTER": "1"}, "bench does not work on a Valkey Cluster"),
        (["scripts", "list"], {"VALKEY_CLUSTER": "maybe"}, "VALKEY_CLUSTER='maybe': use 1 or 0"),
        (
            ["doctor", "--cluster", "--valkey-url", "valkey://127.0.0.1:7000/2"],
            {},
            "valkey://127.0.0.1:7000/2: a Valkey Cluster has only database 0",
        ),
        (["doctor", "--prefix", "a b"], {}, "--prefix: key prefix 'a b' must be"),
    ],
    ids=["demo", "bench by env", "bad env", "database", "bad prefix"],
)
async def test_cluster_flag_misuse_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str | None], error: str
) -> None:
    result = await invoke(*args, env=env)
    assert result.exit_code == 2, result.output
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: {error}")


async def test_no_cluster_overrides_the_environment(valkey_url: str) -> None:
    result = await invoke(
        "scripts", "list", "--no-cluster", "--valkey-url", valkey_url, env={"VALKEY_CLUSTER": "1"}
    )
    assert result.exit_code == 0, result.output
    assert "per node" not in result.output


async def test_doctor_cluster_without_a_url_runs_an_embedded_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = await invoke("doctor", "--cluster", env={"VALKEY_URL": None, **WIDER})
    assert result.exit_code == 0, result.output
    assert "embedded Valkey Cluster (3 primaries, 3 replicas) on 127.0.0.1 ports" in result.output
    assert status_of(result.output, "cluster") == "OK"
    assert status_of(result.output, "replicas") == "OK"
    assert status_of(result.output, "scripts") == "WARN"  # a fresh cluster holds none
    assert f"every node lacks {EVERY_SCRIPT}" in result.output
    assert_no_cluster_leftovers(tmp_path)


def assert_no_cluster_leftovers(directory: Path) -> None:
    assert not list(directory.glob("atomic-cache-cluster-*")), "cluster temp dir left behind"
    assert processes_mentioning(str(directory)) == [], "cluster node left running"
