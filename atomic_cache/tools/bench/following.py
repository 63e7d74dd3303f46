"""Scenario l: the cache follows the database. From a plain-SQL COMMIT (a writer that
never calls this package) to the first read that serves the new value through a cached
repository, idle and with 50 reader tasks; a plain-SQL write's cost with the triggers and
without; cache-hit throughput with the sampled consistency check at several rates."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ...models import AppConfigData
from ...policy.repository import AppConfigFragmentRepository
from .data import seeded_database
from .kit import BenchContext, BenchRow, Samples, compare_rows, percentile

FOLLOW_PREFIX = "l. "
CHECK_RATES = (0.0, 0.001, 0.01, 1.0)
READER_TASKS = 50
TRIGGERS = ("inserted", "updated", "deleted", "truncated")


async def scenario_following(ctx: BenchContext) -> list[BenchRow]:
    async with seeded_database(ctx) as database:
        engine, users = database.engine, database.users
        cache = ctx.cache(ctx.keys("l"))
        reader = AppConfigFragmentRepository(engine, cache=cache, verify_sample=0)
        await reader.start()
        writer, others = users[0], users[1:]
        await _sql(
            engine,
            "INSERT INTO app_config_fragments (id, scope_type, scope_id, name, extra_config)"
            " VALUES (gen_random_uuid(), 'user', :user, 'webui', '{\"l\": 0}')"
            " ON CONFLICT (scope_type, scope_id, name) DO NOTHING",
            user=str(writer),
        )
        rows: list[BenchRow] = []
        try:
            for load in (0, READER_TASKS):
                rows.append(await _commit_to_served(ctx, engine, reader, writer, others, load))
            rows += await _trigger_cost(ctx, engine, writer)
            rows += await _checker_cost(ctx, engine, cache, others)
        finally:
            await reader.close()
        return rows


async def _sql(engine: AsyncEngine, statement: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(statement), params)


async def _commit_to_served(
    ctx: BenchContext,
    engine: AsyncEngine,
    reader: AppConfigFragmentRepository,
    user: uuid.UUID,
    others: list[uuid.UUID],
    load: int,
) -> BenchRow:
    """Writes by plain SQL, one at a time; after each COMMIT returns, the repository is
    read until it serves the new value (reads of 10 µs-scale cost, back to back)."""
    writes = ctx.sizes.follow_writes
    scenario = f"{FOLLOW_PREFIX}plain-SQL COMMIT to served by the cache, {load} reader tasks"
    ctx.log(scenario)
    stop = asyncio.Event()

    async def background(task: int) -> None:
        i = task
        while not stop.is_set():
            await reader.app_config(others[i % len(others)], "webui")
            i += load

    loaders = [asyncio.create_task(background(task)) for task in range(load)]
    latencies: list[int] = []
    base = int(time.time())
    try:
        for i in range(writes):
            version = base * 10_000 + i
            await reader.app_config(user, "webui")  # cached before the write
            await reader.app_config(user, "webui")
            await _sql(
                engine,
                "UPDATE app_config_fragments SET extra_config = CAST(:config AS jsonb)"
                " WHERE scope_type = 'user' AND scope_id = :user AND name = 'webui'",
                config=f'{{"l": {version}}}',
                user=str(user),
            )
            committed = time.perf_counter_ns()
            while _version(await reader.app_config(user, "webui")) != version:
                pass
            latencies.append(time.perf_counter_ns() - committed)
    finally:
        stop.set()
        await asyncio.gather(*loaders)
    ordered = sorted(latencies)
    row = Samples(latencies_ns=latencies).row(scenario, "trigger + NOTIFY + replay")
    row.extra = {"writes": writes, "reader_tasks": load, "max_ms": round(ordered[-1] / 1e6, 1)}
    row.extra["p90_ms"] = round(percentile(ordered, 0.90) / 1e6, 2)
    return row


def _version(served: AppConfigData) -> object:
    return (served.config or {}).get("l")


async def _set_triggers(engine: AsyncEngine, enabled: bool) -> None:
    async with engine.begin() as conn:
        for event in TRIGGERS:
            state = "ENABLE ALWAYS" if enabled else "DISABLE"
            await conn.execute(
                text(
                    f"ALTER TABLE app_config_fragments {state} TRIGGER app_config_fragments_{event}"
                )
            )


async def _trigger_cost(ctx: BenchContext, engine: AsyncEngine, user: uuid.UUID) -> list[BenchRow]:
    """One plain-SQL UPDATE of one fragment, with the triggers and without, interleaved."""

    def update(enabled: bool) -> Callable[[int], Awaitable[object]]:
        async def op(i: int) -> None:
            if _set_triggers_state["enabled"] != enabled:
                await _set_triggers(engine, enabled)
                _set_triggers_state["enabled"] = enabled
            await _sql(
                engine,
                "UPDATE app_config_fragments SET extra_config = CAST(:config AS jsonb)"
                " WHERE scope_type = 'user' AND scope_id = :user AND name = 'webui'",
                config=f'{{"l": {i}}}',
                user=str(user),
            )

        return op

    _set_triggers_state = {"enabled": True}
    try:
        compared = await compare_rows(
            ctx,
            f"{FOLLOW_PREFIX}plain-SQL UPDATE of one fragment (its own transaction), 1 task",
            [("triggers disabled", update(False)), ("triggers on", update(True))],
            rounds=max(2, ctx.sizes.rounds // 2),
            ops=max(20, ctx.sizes.ops_per_round // 4),
            tasks=1,
        )
    finally:
        await _set_triggers(engine, True)
    return [row for row, _ in compared]


async def _checker_cost(
    ctx: BenchContext, engine: AsyncEngine, cache: object, users: list[uuid.UUID]
) -> list[BenchRow]:
    """Cache hits (app_config, 50 tasks) with the consistency check at each rate."""
    repos = {
        rate: AppConfigFragmentRepository(engine, cache=cache, verify_sample=rate)  # type: ignore[arg-type]
        for rate in CHECK_RATES
    }
    sample = users[:200]
    for user in sample:  # cached once: every measured read is a hit
        await repos[0.0].app_config(user, "webui")
        await repos[0.0].app_config(user, "webui")

    def read(repo: AppConfigFragmentRepository) -> Callable[[int], Awaitable[object]]:
        return lambda i: repo.app_config(sample[i % len(sample)], "webui")

    try:
        compared = await compare_rows(
            ctx,
            f"{FOLLOW_PREFIX}cached app_config hits with the consistency check, 50 tasks",
            [(f"verify_sample={rate:g}", read(repos[rate])) for rate in CHECK_RATES],
            rounds=max(2, ctx.sizes.rounds // 2),
            ops=max(4, ctx.sizes.ops_per_task),
            tasks=READER_TASKS,
        )
    finally:
        for repo in repos.values():
            await repo.close()
    rows = []
    for (row, _), rate in zip(compared, CHECK_RATES, strict=True):
        row.extra = {"verify_sample": rate, "checks": repos[rate].checker.checks}
        rows.append(row)
    return rows
