"""Scenario e: memory per cached entry, the index included, in each design."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

from glide import GlideClient

from .data import CONFIG_NAMES, Store, fill_across, sample_config
from .kit import BenchContext, BenchRow
from .server import footprint, memory_usage, used_memory


async def _memory_of_fill(
    ctx: BenchContext, store: Store, users: Sequence[uuid.UUID], domains: Sequence[str]
) -> int:
    """INFO used_memory grown by caching every CONFIG_NAMES of ``users`` (realistic size),
    spread over ``domains``."""
    before = await used_memory(ctx.client)
    await fill_across(ctx, store, users, domains, sample_config)
    return await used_memory(ctx.client) - before


async def _mean_entry_bytes(
    client: GlideClient, entry: Callable[[uuid.UUID, str], str], users: Sequence[uuid.UUID]
) -> float:
    sizes = [
        await memory_usage(client, entry(user, name)) for user in users for name in CONFIG_NAMES
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
