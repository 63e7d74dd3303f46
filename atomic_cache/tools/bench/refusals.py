"""Scenario h: fills refused for nothing. Readers fill misses of one domain while writers
invalidate other users and domains: the former global epoch refuses a fill after any
invalidation, stamps only after one that covers it."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from ...cache.source import AppConfigFragmentCacheSource
from ...models import AppConfigData, ScopeType
from .data import CONFIG_NAMES, fill_users, small_config
from .kit import BenchContext, BenchRow, Samples, rotated
from .legacy import LegacyCache

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
        for design in rotated(designs, round_index):
            users = [uuid.uuid4() for _ in range(per_round)]
            phase = await _refusal_phase(
                design, users, targets, readers=readers, writers=writers, rng=rng
            )
            total = results[design.name]
            total.samples.add(phase.samples)
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
