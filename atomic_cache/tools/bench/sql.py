"""Scenario b: the repository, cached vs the SQL merged view, on the seeded data set."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable

from ...policy.models import MyFragmentInput
from ...policy.repository import AppConfigFragmentRepository
from .data import current_fill_token, seeded_database
from .kit import BenchContext, BenchRow, Op, compare_rows, gather_limited, with_tasks


async def scenario_sql(ctx: BenchContext) -> list[BenchRow]:
    """``app_config`` and ``my_app_configs`` served from Valkey vs computed by SQL, side by
    side, on the seeded data set. Resets the BEP-1052 tables of the database it is given."""
    async with seeded_database(ctx) as database:
        engine, users = database.engine, database.users
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
                (ctx.sizes.tasks, max(2, ctx.sizes.ops_per_task // 4)),
            ):
                scenario = with_tasks(title, tasks)
                compared = await compare_rows(
                    ctx, scenario, variants, rounds=rounds, ops=ops, tasks=tasks
                )
                for row, _ in compared:
                    row.extra["users"] = len(users)
                    rows.append(row)
        for repo in (cached, sql, best_effort):  # before the run removes its keys
            await repo.close()
        return rows
