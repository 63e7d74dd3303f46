"""Scenario k: the in-process local cache (``LocalCache``), in one run on the same server
and the same users:

- hits, 1 task and many: ``get_merged_config`` with a local cache, without one (one
  get.lua call), a raw glide GET of the same key, and cashews' client-side cache (on
  redis-py) holding the same configs, its hit the baseline; every timed local read is
  checked to have been a local hit;
- a private copy per hit: the ways to hand each caller a value it may change (no I/O);
- the cross-process window: once an invalidation has returned in one process, how long
  another process's local cache still holds (and would serve) what it covered;
- what the local cache costs the server: invalidate.lua with and without its PUBLISH
  (nobody listening, one and ten local caches listening), get.lua with and without the
  PTTL it returns for local copies (µs per call, ``INFO commandstats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import marshal
import pickle
import sys
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from ...cache.client import ValkeyURL, create_valkey_client
from ...cache.local import LocalCache, ValueCopier
from ...cache.scripts import ScriptRegistry
from ...cache.source import AppConfigFragmentCacheSource
from ...keys import KeySchema, user_component
from ...models import AppConfigData, AppConfigFragment, ScopeType
from ...targets import InvalidationTarget, ScriptArg
from .data import fill_users, sample_config
from .kit import (
    BENCH_REQUEST_TIMEOUT_MS,
    BenchContext,
    BenchRow,
    Op,
    Samples,
    compare_rows,
    rotated,
    run_phase,
    with_tasks,
)
from .server import as_text, command, command_stats, is_housekeeping

NAME = "webui"
HIT_TITLE = "k. local cache hit vs Valkey vs cashews"
COPY_SCENARIO = "k. a private copy per hit (1.5 KB config, no I/O)"
WINDOW_SCENARIO = "k. cross-process window: another process's local copy after a write returned"
COST_SCENARIO = "k. server cost per call (INFO commandstats)"
LOCAL_HIT = "get_merged_config, local cache hit"
CASHEWS_HIT = "cashews client_side=True hit (redis-py; one shared object)"
# How long the window's reader process may take to start, or to report.
READER_BOUND_S = 120.0


async def scenario_local(ctx: BenchContext) -> list[BenchRow]:
    keys = ctx.keys("k")
    users = [uuid.uuid4() for _ in range(ctx.sizes.local_users)]
    values = {user: sample_config(user, "default", NAME) for user in users}
    plain = ctx.cache(keys)
    ctx.log(f"k. caching {len(users):,} users")
    await fill_users(ctx, plain.set_many, users, "default", [NAME], sample_config)
    rows: list[BenchRow] = []
    async with _local_cache(ctx, keys, max_entries=2 * len(users)) as local:
        cached = AppConfigFragmentCacheSource(
            ctx.client, ctx.registry, keys=keys, local_cache=local
        )
        for user in users:
            if await cached.get_merged_config(user, NAME) != values[user]:
                raise RuntimeError("k. a cached config does not round-trip")
        if len(local) != len(users):
            raise RuntimeError(f"k. the local cache holds {len(local)} of {len(users)} users")
        async with _cashews(ctx, keys, values) as cashews_get:
            rows += await _hits(ctx, keys, users, plain, cached, local, cashews_get)
    rows += await _copies(ctx, values[users[0]])
    rows.append(await _window(ctx, KeySchema(f"{keys.prefix}:window")))
    rows += await _server_costs(ctx, keys, users)
    return rows


@asynccontextmanager
async def _local_cache(
    ctx: BenchContext, keys: KeySchema, **options: Any
) -> AsyncIterator[LocalCache]:
    local = await LocalCache.create(ctx.url, keys=keys, **options)
    try:
        if not await local.ready(10.0):
            raise RuntimeError("k. the local cache never subscribed")
        yield local
    finally:
        await local.close()


def _redis_url(url: str) -> str:
    """The same server, as redis-py (under cashews) wants its URL."""
    parsed = ValkeyURL.parse(url)
    auth = ""
    if parsed.password is not None:
        auth = f"{parsed.username or ''}:{parsed.password}@"
    scheme = "rediss" if parsed.use_tls else "redis"
    return f"{scheme}://{auth}{parsed.host}:{parsed.port}/{parsed.database}"


@asynccontextmanager
async def _cashews(
    ctx: BenchContext, keys: KeySchema, values: dict[uuid.UUID, AppConfigData]
) -> AsyncIterator[Callable[[str], Awaitable[object]] | None]:
    """cashews with its client-side cache, holding the same configs under this
    scenario's prefix (so the scenario's clean-up removes them); None without cashews."""
    try:
        from cashews import Cache
    except ImportError:
        ctx.log("k. cashews is not installed (pip install 'atomic_cache[bench]'): left out")
        yield None
        return
    cache = Cache()
    cache.setup(
        _redis_url(ctx.url),
        client_side=True,
        client_side_prefix=f"{keys.prefix}:cashews:",
        suppress=False,
    )
    await cache.init()
    try:
        for user, value in values.items():
            await cache.set(str(user), value, expire=600)
        for user, value in values.items():
            if await cache.get(str(user)) != value:
                raise RuntimeError("k. cashews does not hold a config it was given")
        yield cache.get
    finally:
        with warnings.catch_warnings():
            # cashews closes redis-py's client by a name redis-py has since deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            await cache.close()


async def _hits(
    ctx: BenchContext,
    keys: KeySchema,
    users: Sequence[uuid.UUID],
    plain: AppConfigFragmentCacheSource,
    cached: AppConfigFragmentCacheSource,
    local: LocalCache,
    cashews_get: Callable[[str], Awaitable[object]] | None,
) -> list[BenchRow]:
    count = len(users)
    names = [str(user) for user in users]
    entry_keys = [keys.entry(user, NAME) for user in users]
    client = ctx.client
    variants: list[tuple[str, Op]] = []
    if cashews_get is not None:
        get = cashews_get
        variants.append((CASHEWS_HIT, lambda i: get(names[i % count])))
    variants += [
        (LOCAL_HIT, lambda i: cached.get_merged_config(users[i % count], NAME)),
        (
            "get_merged_config, no local cache (get.lua)",
            lambda i: plain.get_merged_config(users[i % count], NAME),
        ),
        ("raw GET of the entry key (glide)", lambda i: client.get(entry_keys[i % count])),
    ]
    rows: list[BenchRow] = []
    for tasks, ops in ((1, ctx.sizes.ops_per_round), (ctx.sizes.tasks, ctx.sizes.ops_per_task)):
        hits, misses = local.counters.hits, local.counters.misses
        scenario = with_tasks(HIT_TITLE, tasks)
        for row, _ in await compare_rows(
            ctx, scenario, variants, rounds=ctx.sizes.rounds, ops=ops, tasks=tasks
        ):
            if row.variant == LOCAL_HIT:
                # Every timed read was a local hit: the figure is that of a hit.
                row.extra["local_hits"] = local.counters.hits - hits
                row.extra["local_misses"] = local.counters.misses - misses
            if cashews_get is None and row.variant == LOCAL_HIT:
                row.extra["cashews"] = "not installed"
            rows.append(row)
    return rows


# -- a private copy per hit ----------------------------------------------------------------


def _copy_each_model(value: AppConfigData, mutable: bytes) -> AppConfigData:
    config, extras = msgspec.msgpack.decode(mutable)
    fragments = []
    for fragment, extra in zip(value.fragments, extras, strict=True):
        made = copy.copy(fragment)
        made.__dict__["extra_config"] = extra
        fragments.append(made)
    made_value = copy.copy(value)
    made_value.__dict__.update(config=config, fragments=fragments)
    return made_value


def _construct(value: AppConfigData, mutable: bytes) -> AppConfigData:
    config, extras = msgspec.msgpack.decode(mutable)
    fragments = [
        AppConfigFragment.model_construct(
            fragment.__pydantic_fields_set__, **{**fragment.__dict__, "extra_config": extra}
        )
        for fragment, extra in zip(value.fragments, extras, strict=True)
    ]
    return AppConfigData.model_construct(
        value.__pydantic_fields_set__,
        **{**value.__dict__, "config": config, "fragments": fragments},
    )


async def _copies(ctx: BenchContext, value: AppConfigData) -> list[BenchRow]:
    """Each way must give a value equal to the original that shares nothing mutable."""
    raw = value.model_dump_json()
    copier = ValueCopier.of(value)
    mutable = copier.mutable  # the config and every extra_config, packed as it keeps them
    ways: list[tuple[str, Callable[[], AppConfigData]]] = [
        ("the shared object itself (no copy: what cashews returns)", lambda: value),
        ("LocalCache: packed config and extra_configs (MessagePack), models rebuilt", copier.copy),
        (
            "decode the JSON again (model_validate_json)",
            lambda: AppConfigData.model_validate_json(raw),
        ),
        ("copy.copy of each model + the packed data", lambda: _copy_each_model(value, mutable)),
        ("model_construct of each model + the packed data", lambda: _construct(value, mutable)),
        ("model_copy(deep=True)", lambda: value.model_copy(deep=True)),
        ("copy.deepcopy", lambda: copy.deepcopy(value)),
    ]
    for label, way in ways[1:]:
        made = way()
        if made != value or made.config is value.config or made.fragments is value.fragments:
            raise RuntimeError(f"k. {label} is not a private copy")
        if made.fragments[0].extra_config is value.fragments[0].extra_config:
            raise RuntimeError(f"k. {label} shares a fragment's extra_config")

    # The data alone (config and extra_configs), each way of keeping it: what the choice
    # of MessagePack for ValueCopier rests on.
    data = (value.config, [f.extra_config for f in value.fragments])
    marshalled, pickled, dumped = marshal.dumps(data), pickle.dumps(data, 5), json.dumps(data)
    decoders: list[tuple[str, Callable[[], Sequence[Any]]]] = [
        ("the data alone: MessagePack (msgspec), as kept", lambda: msgspec.msgpack.decode(mutable)),
        ("the data alone: marshal.loads", lambda: marshal.loads(marshalled)),
        ("the data alone: pickle.loads", lambda: pickle.loads(pickled)),
        ("the data alone: json.loads", lambda: json.loads(dumped)),
    ]
    for label, decoder in decoders:
        if list(decoder()) != list(data):  # a tuple from marshal and pickle, else a list
            raise RuntimeError(f"k. {label} does not give the data back")

    def timed(way: Callable[[], object]) -> Op:
        async def op(i: int) -> object:
            return way()

        return op

    compared = await compare_rows(
        ctx,
        COPY_SCENARIO,
        [(label, timed(way)) for label, way in [*ways, *decoders]],
        rounds=ctx.sizes.rounds,
        ops=ctx.sizes.ops_per_round,
        tasks=1,
    )
    return [row for row, _ in compared]


# -- the cross-process window --------------------------------------------------------------


class _TimedLocalCache(LocalCache):
    """A local cache that notes when each user's entry was dropped (``time.monotonic_ns``,
    one clock for every process of the machine): the other process of the window."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped_at: dict[str, int] = {}

    def drop(self, targets: Sequence[str | bytes | int | float], *, catalogue: bool = True) -> int:
        at = time.monotonic_ns()
        dropped = super().drop(targets, catalogue=catalogue)
        words = [str(word) for word in targets]
        if dropped and words[:1] == ["user"]:
            self.dropped_at.setdefault(words[1], at)
        return dropped


def reader_process() -> None:
    """The reader of the window, in a process of its own: reads its settings (a JSON
    line) from stdin, holds every user's entry in its local cache, says how many, then
    waits for stdin to close and reports when each entry was dropped."""
    asyncio.run(_reader(json.loads(sys.stdin.readline())))


async def _reader(settings: dict[str, Any]) -> None:
    url, keys = settings["url"], KeySchema(settings["prefix"])
    users = [uuid.UUID(user) for user in settings["users"]]
    client = await create_valkey_client(url, request_timeout_ms=BENCH_REQUEST_TIMEOUT_MS)
    local = await _TimedLocalCache.create(url, keys=keys, max_entries=len(users) + 1)
    try:
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        if not await local.ready(10.0):
            raise RuntimeError("the reader's local cache never subscribed")
        source = AppConfigFragmentCacheSource(client, registry, keys=keys, local_cache=local)
        for user in users:
            await source.get_merged_config(user, NAME)
        print(json.dumps({"held": len(local)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
        # Every write has returned; the last announcements may still be on their way.
        deadline = time.monotonic() + READER_BOUND_S
        while len(local) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        report = {"dropped_at": local.dropped_at, "flushes": sum(local.counters.flushes.values())}
        print(json.dumps(report), flush=True)
    finally:
        await local.close()
        await client.close()


async def _window(ctx: BenchContext, keys: KeySchema) -> BenchRow:
    """One process writes (a USER invalidation per user); another, a process of its own,
    holds every user's entry in its local cache and would serve it until it handled the
    announcement. The window of a write: from the moment it returned to the writer until
    the reader dropped its copy; 0 when the copy was gone before the write returned."""
    writes = ctx.sizes.local_window_writes
    users = [uuid.uuid4() for _ in range(writes)]
    writer = ctx.cache(keys)  # no local cache: it announces all the same
    await fill_users(ctx, writer.set_many, users, "default", [NAME], sample_config)
    settings = {"url": ctx.url, "prefix": keys.prefix, "users": [str(u) for u in users]}
    reader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from atomic_cache.tools.bench.local import reader_process; reader_process()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert reader.stdin is not None and reader.stdout is not None
    try:
        reader.stdin.write(json.dumps(settings).encode() + b"\n")
        await reader.stdin.drain()
        held = json.loads(await asyncio.wait_for(reader.stdout.readline(), READER_BOUND_S))
        if held["held"] != writes:
            raise RuntimeError(f"k. the reader holds {held['held']} of {writes} entries")
        returned: dict[str, int] = {}
        latency = Samples()
        for user in users:
            sent = time.monotonic_ns()
            await writer.invalidate_for_scope(ScopeType.USER, str(user), [NAME])
            returned[str(user)] = time.monotonic_ns()
            latency.latencies_ns.append(returned[str(user)] - sent)
        reader.stdin.close()
        # One line with every user's time: past a stream's line limit; read to the end.
        report = json.loads(await asyncio.wait_for(reader.stdout.read(), READER_BOUND_S))
        await asyncio.wait_for(reader.wait(), READER_BOUND_S)
    finally:
        if reader.returncode is None:  # it failed: nothing to wait for
            with contextlib.suppress(ProcessLookupError):
                reader.kill()
            await reader.wait()
    dropped_at: dict[str, int] = report["dropped_at"]
    window = Samples()
    window.latencies_ns = [
        max(0, dropped_at[user] - at) for user, at in returned.items() if user in dropped_at
    ]
    row = window.row(WINDOW_SCENARIO, f"USER invalidation, {writes:,} writes, reader process")
    row.extra["max_us"] = round(max(window.latencies_ns, default=0) / 1000, 1)
    row.extra["gone_before_return"] = sum(1 for v in window.latencies_ns if v == 0)
    row.extra["never_dropped"] = writes - len(window.latencies_ns)
    row.extra["reader_flushes"] = report["flushes"]
    row.extra["write_p50_us"] = round((latency.row("", "").p50_us or 0.0), 1)
    return row


# -- server cost ---------------------------------------------------------------------------


async def _server_costs(
    ctx: BenchContext, keys: KeySchema, users: Sequence[uuid.UUID]
) -> list[BenchRow]:
    """Server µs per call, the variants interleaved in rounds (the order rotating) so
    that drift hits them alike: invalidate.lua of a user with nothing cached (the
    announcement is most of what differs) on prefixes nobody, one and ten local caches
    listen to; get.lua hits with and without the PTTL field."""
    client, registry = ctx.client, ctx.registry
    quiet, one, ten = (KeySchema(f"{keys.prefix}:{part}") for part in ("quiet", "one", "ten"))

    def invalidate(schema: KeySchema, announce: str) -> Op:
        schema_keys = [schema.seq, schema.catalogue, schema.cleanup_queue]

        async def op(i: int) -> object:
            args: list[ScriptArg] = [schema.prefix, 660_000, 60_000, 100, f"0{announce}"]
            args += InvalidationTarget.of(ScopeType.USER, str(uuid.uuid4()), [NAME]).script_args()
            return await registry.call(client, "invalidate", schema_keys, args)

        return op

    get_source = registry["get"].source
    without_pttl = get_source.replace(", redis.call('PTTL', key) }", " }")
    if without_pttl == get_source:
        raise RuntimeError("k. get.lua no longer ends with the PTTL field: update the bench")
    sha_without = as_text(await command(client, "SCRIPT", "LOAD", without_pttl))
    await ctx.cache(keys).set_many(users[0], [sample_config(users[0], "default", NAME)])
    get_args = [keys.seq, keys.prefix, user_component(users[0]), "", NAME]

    async def get_shipped(i: int) -> object:
        return await registry.call(client, "get", [keys.seq], get_args[1:])

    async def get_trimmed(i: int) -> object:
        return await command(client, "EVALSHA_RO", sha_without, "1", *get_args)

    cases: list[tuple[str, str, Op]] = [
        ("invalidate.lua, USER scope, no announcement", "evalsha", invalidate(quiet, "")),
        ("invalidate.lua + PUBLISH, nobody listening", "evalsha", invalidate(quiet, " PUBLISH")),
        ("invalidate.lua + PUBLISH, 1 local cache listening", "evalsha",
         invalidate(one, " PUBLISH")),
        ("invalidate.lua + PUBLISH, 10 local caches listening", "evalsha",
         invalidate(ten, " PUBLISH")),
        ("get.lua hit as shipped (with the PTTL field)", "evalsha_ro", get_shipped),
        ("get.lua hit without the PTTL field", "evalsha_ro", get_trimmed),
    ]  # fmt: skip
    rounds = ctx.sizes.rounds
    calls = max(1, ctx.sizes.server_cost_calls // rounds)
    samples = {variant: Samples() for variant, _, _ in cases}
    server = {variant: [0, 0] for variant, _, _ in cases}  # usec, calls
    inner: dict[str, dict[str, int]] = {variant: {} for variant, _, _ in cases}
    async with _many_local_caches(ctx, one, 1), _many_local_caches(ctx, ten, 10):
        for round_index in range(rounds):
            for variant, stat, op in rotated(cases, round_index):
                await command(client, "CONFIG", "RESETSTAT")
                samples[variant].add(await run_phase(op, ops=calls, tasks=1))
                for name, found in (await command_stats(client)).items():
                    if is_housekeeping(name):
                        continue
                    if name == stat:
                        server[variant][0] += found.usec
                        server[variant][1] += found.calls
                    else:
                        inner[variant][name] = inner[variant].get(name, 0) + found.calls
    rows = []
    for variant, _, _ in cases:
        row = samples[variant].row(COST_SCENARIO, variant)
        usec, count = server[variant]
        row.extra["server_us_per_call"] = round(usec / count, 2) if count else 0
        total = calls * rounds
        row.extra["commands_per_call"] = ", ".join(
            f"{name.upper()} x{n / total:.3g}"
            for name, n in sorted(inner[variant].items(), key=lambda item: (-item[1], item[0]))
        )
        rows.append(row)
    return rows


@asynccontextmanager
async def _many_local_caches(ctx: BenchContext, keys: KeySchema, count: int) -> AsyncIterator[None]:
    """``count`` local caches subscribed to ``keys``' announcements, for the block."""
    opened = [await LocalCache.create(ctx.url, keys=keys) for _ in range(count)]
    try:
        for local in opened:
            if not await local.ready(10.0):
                raise RuntimeError("k. a local cache never subscribed")
        yield
    finally:
        for local in opened:
            await local.close()
