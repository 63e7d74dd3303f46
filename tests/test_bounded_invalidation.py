"""Scope invalidation in bounded work: large scopes are unservable as soon as the call
returns, and their memory is reclaimed in steps that each delete a bounded number of
entries (no call examines the whole scope)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

import pytest
from glide import GlideClient

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    KeySchema,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.source import INVALIDATE_CLEANUP_BUDGET, STEP_CLEANUP_BUDGET

from .repo_tools import CountingRegistry
from .valkey_tools import keys_under, text

NAMES = ("n0", "n1", "n2", "n3", "n4")
BIG = 20_000  # users in the large domain: 100,000 entries
SMALL = 100


def config(user: uuid.UUID, domain: str, name: str) -> AppConfigData:
    return AppConfigData(user_id=user, domain_name=domain, name=name, config={"u": str(user)})


async def limited(jobs: Iterable[Callable[[], Awaitable[object]]], limit: int = 64) -> None:
    queue = list(jobs)

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(limit)))


async def fill_domain(
    cache: AppConfigFragmentCacheSource, domain: str, count: int
) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(count)]

    def job(user: uuid.UUID) -> Callable[[], Awaitable[object]]:
        return lambda: cache.set_many(user, [config(user, domain, name) for name in NAMES])

    await limited(job(user) for user in users)
    return users


async def served(
    cache: AppConfigFragmentCacheSource, users: list[uuid.UUID]
) -> set[tuple[uuid.UUID, str]]:
    found: set[tuple[uuid.UUID, str]] = set()

    def job(user: uuid.UUID) -> Callable[[], Awaitable[object]]:
        async def look() -> None:
            for name, hit in (await cache.lookup_many(user, list(NAMES))).items():
                if hit.value is not None:
                    found.add((user, name))

        return look

    await limited(job(user) for user in users)
    return found


def pairs(users: list[uuid.UUID], names: Iterable[str] = NAMES) -> set[tuple[uuid.UUID, str]]:
    return {(user, name) for user in users for name in names}


def hold_clean_up(cache: AppConfigFragmentCacheSource) -> None:
    """Stop the clean-up this source started in the background (as if its process had
    died): the covered entries stay in memory until ``reclaim``."""
    assert cache._reclaimer is not None
    cache._reclaimer.cancel()


async def test_large_domain_and_public_invalidations_in_bounded_steps(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    big = await fill_domain(cache, "big", BIG)
    small = await fill_domain(cache, "small", SMALL)
    everyone = big + small
    every = [keys.entry(user, name) for user in everyone for name in NAMES]
    left = len(every)

    # PUBLIC, narrowed to one name: that name is a miss for every user at once, while
    # nearly every covered entry is still in memory: the call deleted at most its budget.
    deleted = await cache.invalidate_for_scope(ScopeType.PUBLIC, "public", ["n0"])
    assert 0 <= deleted <= INVALIDATE_CLEANUP_BUDGET
    hold_clean_up(cache)  # (no await since the call: the clean-up has not run)
    left -= deleted
    assert await valkey.exists(every) == left
    assert await served(cache, everyone) == pairs(everyone, NAMES[1:])

    # DOMAIN: every entry of the 20,000 users is a miss; the other domain still hits.
    deleted = await cache.invalidate_for_scope(ScopeType.DOMAIN, "big")
    assert 0 <= deleted <= INVALIDATE_CLEANUP_BUDGET
    hold_clean_up(cache)  # (no await since the call: the clean-up has not run)
    left -= deleted
    assert await valkey.exists(every) == left
    assert await served(cache, everyone) == pairs(small, NAMES[1:])

    # The clean-up deletes them all, in steps that each delete at most their budget (a
    # scan page can hold far more while the index's hash table resizes). Work, not time,
    # is what is bounded and checked: a step's server time follows from it.
    sequence = await valkey.hget(keys.seq, "n")
    per_step: list[int] = []
    while True:
        deleted, queued = await cache.cleanup_step()
        per_step.append(deleted)
        if not queued:
            break
    assert sum(per_step) > 0 and max(per_step) <= STEP_CLEANUP_BUDGET
    assert await valkey.llen(keys.cleanup_queue) == 0
    assert await valkey.hget(keys.seq, "n") == sequence  # the index was sound: no new life
    remaining = {key for key in await keys_under(valkey, keys.prefix) if ":merged:" in key}
    assert remaining == {keys.entry(user, name) for user in small for name in NAMES[1:]}
    # The index lists live entries only.
    assert await valkey.exists([keys.domain_index("big")]) == 0
    assert await valkey.zcard(keys.users_index) == SMALL
    assert await valkey.exists([keys.user_index(user) for user in big]) == 0


async def members(valkey: GlideClient, key: str) -> set[str]:
    reply = await valkey.custom_command(["ZRANGE", key, "0", "-1"])
    assert isinstance(reply, list)
    return {text(member) for member in reply}


async def test_expired_members_leave_the_index_as_traffic_goes_on(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    long_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=600, keys=keys)
    short = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=1, keys=keys)
    kept = await fill_domain(long_lived, "d", 1)  # keeps the shared index keys alive
    gone = await fill_domain(short, "d", 40)
    await asyncio.sleep(1.2)  # every entry above has expired, by the server's clock
    assert await valkey.exists([keys.entry(user, "n0") for user in gone]) == 0
    assert await valkey.exists([keys.user_index(user) for user in gone]) == 0
    assert await valkey.zcard(keys.users_index) == 41  # until traffic prunes it
    live = await fill_domain(short, "d", 2)  # each write prunes up to 32 expired members
    expected = {str(user) for user in kept + live}
    assert await members(valkey, keys.users_index) == expected
    assert await members(valkey, keys.domain_index("d")) == expected


async def test_a_clean_up_left_by_a_dead_process_is_resumed_by_another(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    valkey_url: str,
    registry: ScriptRegistry,
    keys: KeySchema,
) -> None:
    users = await fill_domain(cache, "d", 2_000)
    await cache.invalidate_for_scope(ScopeType.DOMAIN, "d")
    hold_clean_up(cache)  # the invalidating process dies before its clean-up ran
    assert await valkey.llen(keys.cleanup_queue) == 1
    other_client = await create_valkey_client(valkey_url, request_timeout_ms=5000)
    try:
        other = AppConfigFragmentCacheSource(other_client, registry, keys=keys)
        await other.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))  # any call
        await other.reclaiming()
    finally:
        await other_client.close()
    assert await valkey.llen(keys.cleanup_queue) == 0
    assert await valkey.exists([keys.entry(user, name) for user in users for name in NAMES]) == 0


async def test_the_clean_up_spares_entries_filled_after_the_invalidation(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    users = await fill_domain(cache, "d", 1_000)
    await cache.invalidate_for_scope(ScopeType.DOMAIN, "d")
    hold_clean_up(cache)  # until the refills are in
    refilled = users[-20:]
    for user in refilled:
        token = (await cache.lookup(user, "n0")).fill_token
        assert await cache.set_merged_config(user, "n0", config(user, "d", "n0"), token)
    assert await valkey.llen(keys.cleanup_queue) == 1
    await cache.reclaim()
    assert await served(cache, users) == pairs(refilled, ["n0"])
    left = {key for key in await keys_under(valkey, keys.prefix) if ":merged:" in key}
    assert left == {keys.entry(user, "n0") for user in refilled}
    assert await members(valkey, keys.domain_index("d")) == {str(user) for user in refilled}


async def test_a_clean_up_step_that_meets_a_corrupt_index_starts_a_new_life(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    keys: KeySchema,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The invalidation found the index sound; a key of another type written since is met
    by a clean-up step (reclaim.lua). The step starts a new life of the index instead
    (reset.lua): every entry of the old one is refused, and the sweep that follows
    (sweep.lua) deletes them and the wrong-typed key."""
    users = await fill_domain(cache, "d", 1_000)
    others = await fill_domain(cache, "e", 5)
    await cache.invalidate_for_scope(ScopeType.DOMAIN, "d")
    hold_clean_up(cache)
    corrupt = keys.user_index(users[0])  # a user the domain's job walks to
    await valkey.delete([corrupt])
    await valkey.custom_command(["SADD", corrupt, "someone else's"])
    sequence = int(text(await valkey.hget(keys.seq, "n")))
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        await cache.reclaim()
    assert cache.metrics.index_resets == 1
    assert [
        record.getMessage() for record in caplog.records if "new life" in record.getMessage()
    ] == [
        f"a clean-up step (reclaim.lua) under prefix {keys.prefix!r} met a key of another"
        " type in the cache's index, or a command the server refused (an ACL without a"
        " grant the scripts need?): starting a new life of the index"
    ]
    assert int(text(await valkey.hget(keys.seq, "n"))) > sequence  # a new life...
    assert await served(cache, others) == set()  # ...refuses the old one's entries
    assert await valkey.llen(keys.cleanup_queue) == 0
    left = await keys_under(valkey, keys.prefix)
    assert not any(":merged:" in key for key in left)
    assert corrupt not in left


async def test_the_sweep_after_a_new_life_runs_after_the_jobs_queued_above_it(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    """A new life queues its sweep (reset.lua); a large invalidation then queues a job
    above it. Another process's clean-up steps run the job (reclaim.lua), then the sweep
    (sweep.lua): each step's reply names the script the job at the head needs."""
    old = await fill_domain(cache, "d", 50)
    await cache.reset_index()
    hold_clean_up(cache)
    new = await fill_domain(cache, "d", 1_000)  # filled in the new life
    await cache.invalidate_for_scope(ScopeType.DOMAIN, "d")
    hold_clean_up(cache)
    assert await valkey.llen(keys.cleanup_queue) == 2
    registry = CountingRegistry()
    other = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    for _ in range(1_000):
        deleted, queued = await other.cleanup_step()
        assert deleted <= STEP_CLEANUP_BUDGET
        if not queued:
            break
    else:
        pytest.fail(f"the clean-up never ended: {registry.calls}")
    assert registry.calls.keys() == {"reclaim", "sweep"}
    assert await valkey.exists([keys.entry(u, name) for u in old + new for name in NAMES]) == 0
