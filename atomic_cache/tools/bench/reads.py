"""Scenario a: a cached read (get.lua, with and without decoding) beside a raw GET of the
same key and the one-script design's read, 1 task and many."""

from __future__ import annotations

import uuid

from ...keys import user_component
from ...models import AppConfigData
from ...targets import ScriptArg
from .data import sample_config
from .kit import BenchContext, BenchRow, Op, compare_rows, with_tasks


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
    get_args: list[ScriptArg] = [keys.prefix, user_component(user), "", "webui"]

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
        scenario = with_tasks("a. cached read", tasks)
        compared = await compare_rows(
            ctx, scenario, variants, rounds=ctx.sizes.rounds, ops=ops, tasks=tasks
        )
        for row, _ in compared:
            row.extra["value_bytes"] = payload_bytes
            rows.append(row)
    return rows
