"""OutboxReplayer: replays the invalidations that committed writes left in the outbox.

Two kinds of rows: a write of this package records its own cache's targets in the same
transaction as its change and deletes the row once its invalidation has landed (a row
stays behind when it could not: Valkey down or paused, the process killed between its
commit and its invalidation); and the triggers record a row per registered cache for any
change, whoever made it (``policy/triggers.sql``, ``ranked/triggers.sql``). Every repository
with a cache runs a replayer, started on its first call. Woken by a NOTIFY at each such
commit (one LISTEN connection per engine, ``db/listener.py``) or every ``every_s``, it
locks its cache's due rows (the triggers' at once, the writes' own once older than
``after_s``; FOR UPDATE SKIP LOCKED: a row goes to one process), sends their targets in
one invalidation, and deletes them, or postpones them with back-off when it fails. It
also keeps its cache's registration alive (``following.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

from sqlalchemy.ext.asyncio import AsyncEngine

from .db import outbox
from .db.listener import ChangeListener
from .following import Following
from .resilience.guard import GuardedCache
from .resilience.logs import LogThrottle
from .resilience.pending import merge_targets

log = logging.getLogger("atomic_cache")

DEFAULT_REPLAY_AFTER_S = 5.0  # leave a row this long to the write that made it
DEFAULT_REPLAY_EVERY_S = 1.0
REPLAY_BATCH = 100


# Every replay loop of this process that runs, for close_all.
_RUNNING: weakref.WeakSet[OutboxReplayer] = weakref.WeakSet()


async def close_all() -> None:
    """Stop every replayer of this process (shutdown; a test suite between tests)."""
    for replayer in list(_RUNNING):
        await replayer.close()


class OutboxReplayer:
    def __init__(
        self,
        engine: AsyncEngine,
        cache: GuardedCache,
        *,
        after_s: float = DEFAULT_REPLAY_AFTER_S,
        every_s: float = DEFAULT_REPLAY_EVERY_S,
        listen: bool = True,
    ) -> None:
        self._engine = engine
        self._cache = cache
        self.after_s = after_s
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._log_throttle = LogThrottle()
        self._wake = asyncio.Event()
        # Woken by the engine's LISTEN connection (``db/listener.py``); False: polls only.
        self.listen = listen

    def ensure_running(self) -> None:
        """Start the replay loop unless it runs already (or there is no cache)."""
        if self._closed or not self._cache.enabled:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
            _RUNNING.add(self)
            source = self._cache.source
            if source is not None and self.replay_everything not in source.failover_hooks:
                source.failover_hooks.append(self.replay_everything)
            if self.listen:
                ChangeListener.of(self._engine).subscribe(self._wake.set)

    async def close(self) -> None:
        """Stop the loop; rows left are replayed by another process, or after a restart."""
        self._closed = True
        _RUNNING.discard(self)
        ChangeListener.of(self._engine).unsubscribe(self._wake.set)
        source = self._cache.source
        if source is not None and self.replay_everything in source.failover_hooks:
            source.failover_hooks.remove(self.replay_everything)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _run(self) -> None:
        following = Following.of(self._engine, self._cache)
        while True:
            self._wake.clear()
            try:
                await following.beat()
                # Drain: a burst of writes leaves more rows than one batch.
                while await self.replay_once() == REPLAY_BATCH:
                    pass
            except Exception as error:  # PostgreSQL down, say: the rows wait, safely
                if self._log_throttle.due(type(error).__name__) is not None:
                    log.warning("could not replay the invalidation outbox: %s", error)
            # A NOTIFY (a write the triggers recorded has committed) wakes it at once;
            # otherwise it polls: the fallback when a notification is lost.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_s)

    async def replay_everything(self) -> None:
        """Replay every row of this cache now, whatever its age or back-off: run when
        the Sentinels named a new primary, before calls go there (the writes whose
        invalidation failed while there was none are covered before anyone reads it).
        Never raises: with PostgreSQL unreachable, the rows wait for the loop."""
        try:
            while await self.replay_once(everything=True) == REPLAY_BATCH:
                pass
        except Exception as error:
            log.warning("could not replay the invalidation outbox at a failover: %s", error)

    async def replay_once(self, *, everything: bool = False) -> int:
        """One round: rows replayed (0 when none was due, or the invalidation failed)."""
        if self._cache.source is None:
            return 0
        prefix = self._cache.source.keys.prefix
        async with self._engine.begin() as conn:
            rows = await outbox.claim_due(
                conn, prefix, self.after_s, REPLAY_BATCH, everything=everything
            )
            if not rows:
                return 0
            metrics = self._cache.metrics
            unreadable = [row for row in rows if row.unreadable is not None]
            if unreadable:
                landed = await self._cover_unreadable(prefix, unreadable)
            else:
                # One call for the batch, whatever its size: the cache source splits a
                # large invalidation into calls the script accepts.
                targets = merge_targets([target for row in rows for target in row.targets])
                drop_catalogue = any(row.drop_catalogue for row in rows)
                landed = await self._cache.invalidate(targets, drop_catalogue=drop_catalogue)
            if landed is None:
                await outbox.postpone(conn, rows)
                metrics.outbox_retries += len(rows)
                return 0
            metrics.outbox_unreadable += len(unreadable)
            await outbox.forget(conn, [row.id for row in rows])
            metrics.outbox_replayed += len(rows)
            left = sum(row.deferred for row in rows)
            if left:  # a write's own invalidation had failed: worth a line
                log.warning("replayed %d invalidation(s) that other writes left behind", left)
            log.debug("replayed %d outbox row(s)", len(rows))
            return len(rows)

    async def _cover_unreadable(self, prefix: str, rows: list[outbox.OutboxRow]) -> int | None:
        """Rows whose targets cannot be read say that something changed, not what.
        Retrying cannot fix them, and skipping them could leave anything stale: a new life
        of the index covers every entry, once, and the rows (with the readable ones of
        the batch, which it covers too) are then deleted."""
        log.error(
            "invalidation outbox row(s) %s under prefix %r cannot be read (%s): starting a"
            " new life of the cache's index, which covers whatever they changed",
            [row.id for row in rows],
            prefix,
            "; ".join(sorted({row.unreadable or "" for row in rows})),
        )
        return await self._cache.reset()
