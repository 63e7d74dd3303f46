"""ConsistencyChecker: how consistent is the cache, measured in production by sampling.

A fraction ``sample`` of cache hits is re-read from PostgreSQL in the background (never
on the caller's path; at most ``concurrency`` checks at a time, a hit offered while they
are busy is not checked). A difference is only a suspicion: a write may have committed
and not yet invalidated (its own invalidation, or a trigger's row on its way). So the
checker takes a second look once the writes in flight have settled (the outbox rows of
this cache recorded before the first look are gone, or ``settle_timeout_s`` passed, and
at least ``recheck_after_s``): if the cache still serves the same value and PostgreSQL
still says otherwise, the mismatch is confirmed, counted, logged (once per interval per
kind, with the user, the name and what differed) and healed (that entry is invalidated).

What it finds: any write that reached the tables without invalidating (a trigger
disabled, TRUNCATE on a table without ours, ``session_replication_role`` on a database
whose triggers are not ENABLE ALWAYS, a restore of old data), and any bug on a write
path. Cost: one merged-view query per check, so ``sample`` x hit rate queries per second.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ..db.schema import invalidation_outbox
from ..models import AppConfigData, ScopeType
from ..resilience.guard import GuardedCache
from ..resilience.logs import LogThrottle
from ..targets import InvalidationTarget
from .db_source import AppConfigDBSource

log = logging.getLogger("atomic_cache")

DEFAULT_VERIFY_SAMPLE = 0.001
DEFAULT_CONCURRENCY = 2
DEFAULT_RECHECK_AFTER_S = 1.0
DEFAULT_SETTLE_TIMEOUT_S = 10.0
# The comment its SQL carries (``SELECT /* atomic_cache consistency check */ ...``).
CHECK_LABEL = "atomic_cache consistency check"


class ConsistencyChecker:
    def __init__(
        self,
        engine: AsyncEngine,
        cache: GuardedCache,
        *,
        sample: float = DEFAULT_VERIFY_SAMPLE,
        concurrency: int = DEFAULT_CONCURRENCY,
        recheck_after_s: float = DEFAULT_RECHECK_AFTER_S,
        settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S,
        chance: Callable[[], float] = random.random,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise ValueError("verify_sample must be between 0 and 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.sample = sample
        self.concurrency = concurrency
        self.recheck_after_s = recheck_after_s
        self.settle_timeout_s = settle_timeout_s
        self._engine = engine
        self._db = AppConfigDBSource(engine, label=CHECK_LABEL)
        self._cache = cache
        self._chance = chance
        self._running: set[asyncio.Task[None]] = set()  # held, so they are not collected
        self.checks = 0  # by this checker (the cache's counters add up every repository's)
        self._log_throttle = LogThrottle()

    def offer(self, served: AppConfigData) -> None:
        """A cache hit was served: check it, by chance, in the background."""
        if self._chance() >= self.sample or len(self._running) >= self.concurrency:
            return
        task = asyncio.create_task(self._check(served))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def idle(self) -> None:
        """Until the checks under way have ended (tests, shutdown)."""
        while self._running:
            await asyncio.wait(set(self._running))

    async def _check(self, served: AppConfigData) -> None:
        try:
            await self._compare(served)
        except Exception as error:  # a check never fails anything: it is not counted
            if self._log_throttle.due("error") is not None:
                log.warning(
                    "consistency check of %s/%s failed: %s", served.user_id, served.name, error
                )

    async def _compare(self, served: AppConfigData) -> None:
        metrics = self._cache.metrics
        metrics.consistency_checks += 1
        self.checks += 1
        if await self._stored(served.user_id, served.name) == served:
            return
        await self._settle()
        # The second look: the same value still served, and PostgreSQL still differs.
        again = await self._cache.read(lambda source: source.lookup(served.user_id, served.name))
        if again is None or again.value != served:
            return  # invalidated (or refilled) meanwhile: it was a write in flight
        truth = await self._stored(served.user_id, served.name)
        if truth == served:
            return
        metrics.consistency_mismatches += 1
        skipped = self._log_throttle.due("mismatch")
        if skipped is not None:
            log.error(
                "the cache served a value PostgreSQL does not hold: user %s, name %r: cached"
                " %s, stored %s; invalidating that entry%s",
                served.user_id,
                served.name,
                _brief(served),
                _brief(truth),
                f" ({skipped} more mismatches since the last report)" if skipped else "",
            )
        target = InvalidationTarget.of(ScopeType.USER, str(served.user_id), [served.name])
        await self._cache.invalidate([target])

    async def _stored(self, user_id: uuid.UUID, name: str) -> AppConfigData | None:
        loaded = await self._db.merged_configs(user_id, [name])
        return loaded[0] if loaded else None

    async def _settle(self) -> None:
        """Wait until the outbox rows of this cache recorded so far are gone (the writes
        in flight have invalidated), at most ``settle_timeout_s``, at least
        ``recheck_after_s`` (a write without an outbox row invalidates within it)."""
        source = self._cache.source
        assert source is not None
        began = time.monotonic()
        rows = invalidation_outbox.c
        async with self._engine.connect() as conn:
            newest = await conn.scalar(
                select(func.max(rows.id)).where(rows.cache_prefix == source.keys.prefix)
            )
            while newest is not None and time.monotonic() - began < self.settle_timeout_s:
                left = await conn.scalar(
                    select(func.count()).where(
                        rows.cache_prefix == source.keys.prefix, rows.id <= newest
                    )
                )
                await conn.rollback()  # a fresh snapshot for the next look
                if not left:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(max(0.0, self.recheck_after_s - (time.monotonic() - began)))


def _brief(value: AppConfigData | None) -> str:
    if value is None:
        return "nothing (the user or the name is gone)"
    return f"domain {value.domain_name!r}, config {value.config!r}"[:500]
