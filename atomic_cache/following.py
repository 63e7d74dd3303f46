"""Following: a cache that follows its database, whoever writes it.

The triggers (``policy/triggers.sql``; the ranked model's ``ranked/triggers.sql``) record one
outbox row per registered cache (key prefix) for every committed change; the replayers
send them. A cache is used only once its prefix is registered, so that no change can slip
past it:

- **Registration.** The first use of a repository with a cache registers its prefix
  (one row in ``app_config_cache_prefixes``). If the prefix was not registered before
  (a new cache, or one whose heartbeat stopped longer than ``expire_after_s`` and was
  removed with its rows), it may have missed any number of changes: if its index has a
  life in Valkey, every entry is made unservable and the catalogue dropped before any
  read uses it.
- **Writes in flight across the registration.** A write whose trigger ran just before
  the prefix was registered recorded no row for it. Every process's registration
  therefore waits (up to ``settle_s``) until every transaction of this database that has
  written and began before it has ended. If one runs longer, the cache is used at once
  and every entry is made unservable again in the background once that transaction has
  ended.
- **Heartbeat and expiry.** Every replayer marks its prefix seen, at most every
  ``heartbeat_s``, and removes the prefixes (and their rows) not seen for
  ``expire_after_s``: a cache gone for good holds no rows forever. A heartbeat that
  finds its prefix removed registers it again, as above.

One ``Following`` per engine and cache source in a process, shared by its repositories.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import outbox
from .models import PUBLIC_SCOPE_ID, ScopeType
from .resilience.guard import GuardedCache
from .resilience.logs import LogThrottle
from .targets import InvalidationTarget

log = logging.getLogger("atomic_cache")

DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_EXPIRE_AFTER_S = 24 * 3600.0
DEFAULT_SETTLE_S = 2.0
_EVERYTHING = [InvalidationTarget.of(ScopeType.PUBLIC, PUBLIC_SCOPE_ID)]

# By engine and guard (one per cache source): two sources with one prefix on two servers
# must each make their own index unservable. An id cannot be reused while its entry
# lives: the Following holds the engine and the guard.
_FOLLOWINGS: weakref.WeakValueDictionary[tuple[int, int], Following] = weakref.WeakValueDictionary()


class Following:
    def __init__(
        self,
        engine: AsyncEngine,
        cache: GuardedCache,
        *,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        expire_after_s: float = DEFAULT_EXPIRE_AFTER_S,
        settle_s: float = DEFAULT_SETTLE_S,
    ) -> None:
        assert cache.source is not None
        self.prefix = cache.source.keys.prefix
        self._engine = engine
        self._cache = cache
        self.heartbeat_s = heartbeat_s
        self.expire_after_s = expire_after_s
        self.settle_s = settle_s
        self.registered = False
        self._registering: asyncio.Task[bool] | None = None
        self._next_beat = 0.0
        self._late: asyncio.Task[None] | None = None  # held, so it is not collected
        self._log_throttle = LogThrottle()

    @classmethod
    def of(cls, engine: AsyncEngine, cache: GuardedCache) -> Following:
        """The one of this engine and cache source in the process."""
        key = (id(engine), id(cache))
        following = _FOLLOWINGS.get(key)
        if following is None:
            following = _FOLLOWINGS[key] = cls(engine, cache)
        return following

    async def ready(self) -> bool:
        """Whether the cache may be read: its prefix is registered (registering it on the
        first call; concurrent callers share one attempt). False while PostgreSQL cannot
        register it: the caller reads the database alone."""
        if self.registered:
            return True
        if self._registering is None or self._registering.done():
            self._registering = asyncio.create_task(self._register())
        return await asyncio.shield(self._registering)

    async def _register(self) -> bool:
        try:
            async with self._engine.begin() as conn:
                new = await outbox.register(conn, self.prefix)
            await self._settle(new)
        except Exception as error:
            if self._log_throttle.due("register") is not None:
                log.warning(
                    "could not register cache prefix %r with the database; reading the"
                    " database alone until it is: %s",
                    self.prefix,
                    error,
                )
            return False
        self.registered = True
        self._next_beat = time.monotonic() + self.heartbeat_s
        return True

    async def _settle(self, new: bool) -> None:
        """Wait for the writes in flight at the registration: one whose trigger ran before
        the prefix was registered (by this process or another) recorded no row for it,
        and a read must not fill what it read before that write committed. If the prefix
        was not registered, whatever changed meanwhile recorded no row for it either:
        every entry is made unservable. If a write in flight outlasts ``settle_s``, the
        cache is used at once and every entry is made unservable again once it ended."""
        async with self._engine.connect() as conn:
            since = await outbox.clock(conn)
            settled = await self._settled(conn, since, self.settle_s)
        if new:
            await self._drop_everything()
        if not settled:
            self._late = asyncio.create_task(self._new_life_once_settled(since))

    async def _settled(self, conn: AsyncConnection, since: datetime, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while await outbox.writers_started_before(conn, since):
            await conn.rollback()  # a fresh look at the activity next time
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def _new_life_once_settled(self, since: datetime) -> None:
        try:
            async with self._engine.connect() as conn:
                while not await self._settled(conn, since, 60.0):
                    pass
            await self._drop_everything()
        except Exception as error:
            log.warning("could not finish the new life of cache prefix %r: %s", self.prefix, error)

    async def _drop_everything(self) -> None:
        self._cache.metrics.new_registrations += 1
        log.info(
            "cache prefix %r was not registered with the database: every cached entry is"
            " made unservable, since changes made meanwhile were not recorded for it",
            self.prefix,
        )
        # (On an index with no life yet, this begins one.) A failure leaves it pending in
        # this process (nothing it covers is served here) and its replay sends it; no
        # other process of this prefix was registered.
        await self._cache.invalidate(_EVERYTHING, drop_catalogue=True, counted=False)

    async def beat(self) -> None:
        """Mark the prefix seen and expire the caches gone for good, at most every
        ``heartbeat_s``; register again if this prefix was expired. Never raises."""
        if not self.registered or time.monotonic() < self._next_beat:
            return
        self._next_beat = time.monotonic() + self.heartbeat_s
        try:
            async with self._engine.begin() as conn:
                alive = await outbox.heartbeat(conn, self.prefix)
                gone = await outbox.expire(conn, self.expire_after_s)
        except Exception as error:
            if self._log_throttle.due("heartbeat") is not None:
                log.warning("cache prefix %r: heartbeat failed: %s", self.prefix, error)
            return
        if gone:
            log.warning(
                "cache prefixes %s were not seen for %.0f s: removed, with their outbox rows",
                gone,
                self.expire_after_s,
            )
        if not alive:
            log.error(
                "cache prefix %r had been removed as gone for good; registering it again",
                self.prefix,
            )
            self.registered = False
            await self.ready()
