"""The doctor's checks of a Valkey Cluster: pure functions of its topology and of each
node's facts (``ClusterFacts``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ...keys import CLUSTER_DEFAULT_PREFIX, KeySchema, has_hash_tag
from ..embedded_cluster import SLOTS, key_slot
from .checks import (
    CLUSTER_REQUIRED_COMMANDS,
    Check,
    ServerFacts,
    Status,
    check_commands,
    check_eviction,
    check_persistence,
    check_server,
)

# -- a Valkey Cluster: the facts ----------------------------------------------------------

# Flags of a node the cluster does not count on: failed (or suspected so by the node that
# answered), without an address, or still joining. The cache's replica wait skips them too.
FAILED_FLAGS = frozenset({"fail", "fail?", "noaddr", "handshake"})
# A replica acknowledges its primary's stream every second (REPLCONF ACK); one silent for
# a few seconds is stuck or cut off, and the WAIT after each invalidation (500 ms) fails.
REPLICA_ACK_LAG_WARN_S = 3
# A primary pings its replicas every 10 s (repl-ping-replica-period) when it has nothing
# else to send, so an idle replica last heard from it up to 10 s ago; more is a stalled link.
REPLICA_IO_WARN_S = 15

Role: TypeAlias = Literal["primary", "replica"]


@dataclass(frozen=True, slots=True)
class ListedNode:
    """One line of ``CLUSTER NODES``: ``id addr flags primary-id ping pong epoch link slots``."""

    node_id: str
    address: str  # host:port, the port clients use
    flags: frozenset[str]
    primary_id: str | None = None
    link_state: str = "connected"
    slots: tuple[tuple[int, int], ...] = ()

    @property
    def role(self) -> Role:
        return "primary" if "master" in self.flags else "replica"

    @property
    def failed(self) -> bool:
        return bool(self.flags & FAILED_FLAGS)

    @property
    def label(self) -> str:
        """``host:port (role)``, as :meth:`ScriptRegistry.loaded_per_node` names nodes."""
        return f"{self.address} ({self.role})"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host, int(port or 0)


def parse_cluster_nodes(text: str | bytes) -> list[ListedNode]:
    """``CLUSTER NODES`` as a list of :class:`ListedNode`, failed ones included; slots being
    migrated or imported (``[slot->-id]``) are left out."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        slots = []
        for item in fields[8:]:
            if item.startswith("["):
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            ListedNode(
                node_id=fields[0],
                # ip:port@cport[,hostname]
                address=fields[1].split(",", 1)[0].split("@", 1)[0],
                flags=frozenset(fields[2].split(",")),
                primary_id=None if fields[3] == "-" else fields[3],
                link_state=fields[7],
                slots=tuple(slots),
            )
        )
    return nodes


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """What one node answered. ``server`` is None when it was not read: ``problem`` says
    why (it did not answer, or the cluster marks it failed and it was not asked).
    ``server.config`` and ``server.commands`` are read on primaries only.
    ``scripts_error``: the error SCRIPT EXISTS got from a node that answered."""

    node: ListedNode
    server: ServerFacts | None = None
    cluster_info: Mapping[str, str] | None = None
    scripts_error: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """A cluster as one node lists it (``nodes``, each with what it answered), and the
    cache's key prefix."""

    prefix: str
    nodes: tuple[NodeFacts, ...]

    def live_primaries(self) -> list[NodeFacts]:
        """Primaries not marked failed, by their first slot."""
        found = [n for n in self.nodes if n.node.role == "primary" and not n.node.failed]
        return sorted(found, key=lambda n: (n.node.slots or ((SLOTS, SLOTS),))[0])

    def replicas_of(self, primary: ListedNode) -> list[NodeFacts]:
        found = [n for n in self.nodes if n.node.primary_id == primary.node_id]
        return sorted(found, key=lambda n: n.node.address)

    def primary_of_slot(self, slot: int) -> NodeFacts | None:
        for primary in self.live_primaries():
            if any(low <= slot <= high for low, high in primary.node.slots):
                return primary
        return None


def in_display_order(nodes: Iterable[NodeFacts]) -> tuple[NodeFacts, ...]:
    """Each live primary (by first slot) followed by its replicas, then every other node."""
    facts = ClusterFacts(prefix="", nodes=tuple(nodes))
    ordered: list[NodeFacts] = []
    for primary in facts.live_primaries():
        ordered += [primary, *facts.replicas_of(primary.node)]
    seen = {id(n) for n in ordered}
    ordered += sorted((n for n in facts.nodes if id(n) not in seen), key=lambda n: n.node.address)
    return tuple(ordered)


def slot_ranges_text(slots: Iterable[tuple[int, int]]) -> str:
    """``((0, 5460), (7, 7))`` -> ``"0-5460, 7"``."""
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in slots) or "none"


def replica_acks(info: Mapping[str, str]) -> dict[str, int]:
    """A primary's ``INFO replication`` view of its replicas: seconds since each one's
    last acknowledgement, by ``host:port`` (``slave0:ip=...,port=...,lag=1``)."""
    acks: dict[str, int] = {}
    for key, value in info.items():
        if not (key.startswith("slave") and key[5:].isdigit()):
            continue
        fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        lag = fields.get("lag", "")
        if "ip" in fields and "port" in fields and lag.lstrip("-").isdigit():
            acks[f"{fields['ip']}:{fields['port']}"] = int(lag)
    return acks


# -- a Valkey Cluster: the checks ---------------------------------------------------------

_RANK = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def check_cluster_state(facts: ClusterFacts) -> Check:
    answered = [n for n in facts.nodes if n.cluster_info is not None]
    if not answered:
        return Check("cluster", Status.WARN, "no node answered CLUSTER INFO")
    bad = [
        f"{n.node.label}: {n.cluster_info.get('cluster_state', '?')}"
        for n in answered
        if n.cluster_info is not None and n.cluster_info.get("cluster_state") != "ok"
    ]
    if bad:
        return Check(
            "cluster",
            Status.FAIL,
            f"cluster_state is not ok on {'; '.join(bad)}: such a node refuses commands"
            " (CLUSTERDOWN) until the cluster is whole again",
        )
    primaries = sum(1 for n in facts.nodes if n.node.role == "primary" and not n.node.failed)
    replicas = sum(1 for n in facts.nodes if n.node.role == "replica" and not n.node.failed)
    silent = len(facts.nodes) - len(answered)
    note = f"; {silent} listed node(s) not read" if silent else ""
    return Check(
        "cluster",
        Status.OK,
        f"cluster_state ok on all {_count(len(answered), 'node')} read"
        f" ({_count(primaries, 'primary', 'primaries')}, {_count(replicas, 'replica')}){note}",
    )


def check_slots(facts: ClusterFacts) -> Check:
    owner: list[str | None] = [None] * SLOTS  # None: no live primary serves the slot
    unserved: list[str] = ["unassigned"] * SLOTS
    for n in facts.nodes:
        if n.node.role != "primary":
            continue
        for low, high in n.node.slots:
            for slot in range(max(low, 0), min(high, SLOTS - 1) + 1):
                if n.node.failed:
                    unserved[slot] = f"on {n.node.address}, marked failed"
                else:
                    owner[slot] = n.node.address
    gaps: list[tuple[int, int, str]] = []  # first, last, why
    for slot in range(SLOTS):
        if owner[slot] is not None:
            continue
        if gaps and gaps[-1][1] == slot - 1 and gaps[-1][2] == unserved[slot]:
            gaps[-1] = (gaps[-1][0], slot, unserved[slot])
        else:
            gaps.append((slot, slot, unserved[slot]))
    if not gaps:
        serving = len(set(owner))
        served = f"all {SLOTS} slots served by {_count(serving, 'primary', 'primaries')}"
        return Check("slots", Status.OK, served)
    missing = sum(last - first + 1 for first, last, _ in gaps)
    shown = "; ".join(f"{slot_ranges_text([(a, b)])} ({why})" for a, b, why in gaps[:5])
    more = f"; and {len(gaps) - 5} more range(s)" if len(gaps) > 5 else ""
    return Check(
        "slots",
        Status.FAIL,
        f"{missing} of {SLOTS} slots have no live primary: {shown}{more}. Keys there can be"
        " neither read nor written: fail over to a replica or assign the slots"
        " (CLUSTER ADDSLOTSRANGE)",
    )


def suggested_prefix(prefix: str) -> str:
    """``prefix`` with a hash tag: its first word in braces."""
    words = prefix.replace("{", "").replace("}", "").split(":")
    return ":".join([f"{{{words[0] or 'app_config'}}}", *words[1:]])


def check_prefix(prefix: str) -> Check:
    if has_hash_tag(prefix):
        start = prefix.find("{")
        tag = prefix[start : prefix.find("}", start + 1) + 1]
        return Check(
            "key prefix",
            Status.OK,
            f"{prefix!r} carries the hash tag {tag}: every key a script touches is in one slot",
        )
    return Check(
        "key prefix",
        Status.FAIL,
        f"{prefix!r} has no hash tag: a script's keys would hash to different slots"
        f" (CROSSSLOT). Use KeySchema({suggested_prefix(prefix)!r}) (on a cluster the default"
        f" is {CLUSTER_DEFAULT_PREFIX!r}) and pass the same --prefix here",
    )


def prefix_slot(prefix: str) -> int:
    """The slot of the cache's keys under ``prefix`` (that of its sequence key, which the
    replica wait routes by; with a hash tag every key of the prefix has it)."""
    return key_slot(KeySchema(prefix).seq)


def check_prefix_slot(facts: ClusterFacts) -> Check | None:
    """Where the prefix's keys live; None without a hash tag (they live everywhere)."""
    if not has_hash_tag(facts.prefix):
        return None
    slot = prefix_slot(facts.prefix)
    primary = facts.primary_of_slot(slot)
    if primary is None:
        return Check(
            "prefix slot",
            Status.FAIL,
            f"slot {slot} of {facts.prefix!r} has no live primary: the cache falls through"
            " to PostgreSQL on every call",
        )
    replicas = [
        n.node.address + (" (marked failed)" if n.node.failed else "")
        for n in facts.replicas_of(primary.node)
    ]
    return Check(
        "prefix slot",
        Status.OK,
        f"slot {slot} on primary {primary.node.address} (slots"
        f" {slot_ranges_text(primary.node.slots)}); replicas: {', '.join(replicas) or 'none'}",
    )


def _number(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


def replica_trouble(replica: NodeFacts, acks: Mapping[str, int]) -> str | None:
    """What keeps ``replica`` from following its primary, in words; None if nothing.
    ``acks``: its primary's view (:func:`replica_acks`)."""
    node = replica.node
    if node.failed:
        return f"is marked failed ({','.join(sorted(node.flags & FAILED_FLAGS))})"
    if replica.server is None:
        return replica.problem or "was not read"
    info = replica.server.info
    link = info.get("master_link_status")
    if link != "up":
        down = _number(info.get("master_link_down_since_seconds"))
        since = f" for {down} s" if down is not None and down >= 0 else ""
        return f"has its link to the primary {link or 'unknown'}{since}"
    if info.get("master_sync_in_progress") == "1":
        return "is still syncing from its primary"
    last_io = _number(info.get("master_last_io_seconds_ago"))
    if last_io is not None and last_io > REPLICA_IO_WARN_S:
        return f"last heard from its primary {last_io} s ago (master_last_io_seconds_ago)"
    ack = acks.get(node.address)
    if ack is not None and ack > REPLICA_ACK_LAG_WARN_S:
        return f"last acknowledged its primary's stream {ack} s ago"
    return None


def check_replicas(facts: ClusterFacts) -> Check:
    problems: list[str] = []
    shards: list[str] = []
    for primary in facts.live_primaries():
        acks = replica_acks(primary.server.info) if primary.server is not None else {}
        replicas = facts.replicas_of(primary.node)
        where = f"{primary.node.address} (slots {slot_ranges_text(primary.node.slots)})"
        if not replicas:
            problems.append(
                f"{primary.node.address} has no replica: a failover would lose its slots,"
                " and reads cannot be spread"
            )
        for replica in replicas:
            trouble = replica_trouble(replica, acks)
            if trouble is not None:
                problems.append(f"{replica.node.address} (of {primary.node.address}) {trouble}")
        shards.append(f"{where}: {', '.join(r.node.address for r in replicas) or 'no replica'}")
    per_primary = "replicas per primary: " + "; ".join(shards)
    if not problems:
        return Check("replicas", Status.OK, f"every replica linked and current; {per_primary}")
    return Check(
        "replicas",
        Status.WARN,
        f"{'; '.join(problems)}. Each invalidation waits for every live replica of its"
        " shard: one that lags, or is down and not yet marked failed, fails invalidations"
        f" (they are replayed). {per_primary}",
    )


def check_cluster_scripts(facts: ClusterFacts) -> Check:
    rejected = [f"{n.node.label}: {n.scripts_error}" for n in facts.nodes if n.scripts_error]
    if rejected:
        return Check(
            "scripts",
            Status.FAIL,
            f"SCRIPT EXISTS rejected on {'; '.join(rejected)}: the cache's scripts cannot run"
            " there (scripting disabled or not permitted)",
        )
    lacking: dict[tuple[str, ...], list[str]] = {}  # the scripts a node lacks -> nodes
    unknown: list[str] = []
    read = 0
    total = 0
    for n in facts.nodes:
        if n.node.failed:
            continue  # the slots or replicas check names it
        loaded = n.server.scripts_loaded if n.server is not None else None
        if loaded is None:
            unknown.append(n.node.label)
            continue
        read += 1
        total = max(total, len(loaded))
        absent = tuple(sorted(name for name, present in loaded.items() if not present))
        if absent:
            lacking.setdefault(absent, []).append(n.node.label)
    if not lacking and not unknown:
        return Check("scripts", Status.OK, f"all {total} scripts on all {read} nodes")
    short = sum(len(nodes) for nodes in lacking.values())
    parts = [
        f"every node lacks {', '.join(absent)}"
        if len(nodes) == read > 1
        else f"{', '.join(nodes)} {'lacks' if len(nodes) == 1 else 'lack'} {', '.join(absent)}"
        for absent, nodes in lacking.items()
    ]
    if unknown:
        parts.append(f"unknown on {', '.join(unknown)} (not read)")
    return Check(
        "scripts",
        Status.WARN,
        f"{read - short}/{read + len(unknown)} nodes hold every script; {'; '.join(parts)}."
        " A node loads them on the first call that reaches it (the registry sends the"
        " script's source); `atomic-cache scripts load --cluster` preloads them",
    )


def on_every_primary(name: str, per_primary: Mapping[str, Check]) -> Check:
    """One row for a check run on each primary: the worst result, naming the primaries
    that gave it, and the others' statuses."""
    if not per_primary:
        return Check(name, Status.WARN, "no primary answered")
    worst = max(per_primary.values(), key=lambda check: _RANK[check.status])
    alike = [where for where, check in per_primary.items() if check == worst]
    if len(alike) == len(per_primary):
        where = f"every primary ({len(alike)})" if len(alike) > 1 else alike[0]
        return Check(name, worst.status, f"{where}: {worst.detail}")
    others: dict[Status, list[str]] = {}
    for address, check in per_primary.items():
        if check != worst:
            others.setdefault(check.status, []).append(address)
    rest = "; ".join(f"{', '.join(nodes)}: {status.value}" for status, nodes in others.items())
    return Check(name, worst.status, f"{', '.join(alike)}: {worst.detail} (others: {rest})")


def _per_primary(facts: ClusterFacts, name: str, check: Callable[[ServerFacts], Check]) -> Check:
    results: dict[str, Check] = {}
    for primary in facts.live_primaries():
        if primary.server is None:
            results[primary.node.address] = Check(
                name, Status.WARN, primary.problem or "was not read"
            )
        else:
            results[primary.node.address] = check(primary.server)
    return on_every_primary(name, results)


def run_cluster_checks(facts: ClusterFacts) -> list[Check]:
    """Every check of a cluster, in display order; the one-server checks (version,
    commands, eviction, persistence) run on every live primary."""
    checks = [
        _per_primary(facts, "server", lambda server: check_server(server.info)),
        _per_primary(
            facts,
            "commands",
            lambda server: check_commands(server.commands, CLUSTER_REQUIRED_COMMANDS),
        ),
        check_cluster_state(facts),
        check_slots(facts),
        check_prefix(facts.prefix),
    ]
    where = check_prefix_slot(facts)
    if where is not None:
        checks.append(where)
    checks += [
        check_replicas(facts),
        check_cluster_scripts(facts),
        _per_primary(
            facts, "maxmemory-policy", lambda server: check_eviction(server.info, server.config)
        ),
        _per_primary(
            facts, "persistence", lambda server: check_persistence(server.info, server.config)
        ),
    ]
    return checks
