"""Scenario i: the index follows the live entries, not every user ever cached. Its
memory at the peak of a short-TTL fill and after other users' traffic outlived it."""

from __future__ import annotations

import asyncio
import time
import uuid

from ...models import ScopeType
from .data import CONFIG_NAMES, fill_across
from .kit import BenchContext, BenchRow
from .server import footprint

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
    await fill_across(ctx, cache.set_many, peak_users, domains)
    filled = time.monotonic()
    live = await ctx.client.zcard(keys.users_index)
    peak = await footprint(ctx.client, f"{keys.prefix}:idx:*")
    ctx.log(f"i. traffic of {len(traffic):,} other users until the peak expired, and more")
    rounds = 0
    while time.monotonic() < filled + sizes.churn_ttl_s + sizes.churn_extra_s:
        await fill_across(ctx, cache.set_many, traffic, domains)
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
