"""Scenario f: µs per call inside the server (INFO commandstats) and the commands each
call runs, for every script of both designs and the former client-side batch."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ...models import AppConfigData, ScopeType
from .data import CONFIG_NAMES, Store, current_fill_token, fill_users, sample_config
from .kit import BenchContext, BenchRow, Op, run_phase
from .legacy import legacy_batch
from .server import command, command_stats, is_housekeeping


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
        if not is_housekeeping(name)
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
