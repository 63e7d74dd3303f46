"""AfterCommit: the invalidation a write owes once it commits, and its outbox row.

Both models' repositories write this way: the outbox row is recorded in the write's own
transaction, and the invalidation is sent once the transaction ended (committed, or
ended in a way that may have committed); the row is deleted once the invalidation has
landed. If the process dies in between, or Valkey is down, the row stays and any
process's replayer sends it (``replayer.py``): no commit is forgotten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import outbox
from .resilience.guard import GuardedCache
from .targets import InvalidationTarget

log = logging.getLogger("atomic_cache")


@dataclass
class AfterCommit:
    """The invalidation a write owes once it commits (``targets``, and the catalogue of
    names when ``drop_catalogue``), and its outbox row (``durable``)."""

    engine: AsyncEngine
    cache: GuardedCache
    targets: list[InvalidationTarget]
    drop_catalogue: bool = False
    durable: bool = True
    row: int | None = None

    async def begin(self, conn: AsyncConnection) -> None:
        """At the start of the write's transaction: the triggers record rows for every
        other cache; this write invalidates its own cache itself."""
        source = self.cache.source
        if source is not None:
            await outbox.writing_for(conn, source.keys.prefix)

    async def record(self, conn: AsyncConnection) -> None:
        """In the write's transaction, after its change (``targets`` complete by then)."""
        source = self.cache.source
        if self.durable and source is not None and (self.targets or self.drop_catalogue):
            self.row = await outbox.record(
                conn, source.keys.prefix, self.targets, self.drop_catalogue
            )

    async def invalidate(self) -> None:
        """After the commit (or whatever ended the transaction). Never raises."""
        landed = await self.cache.invalidate(self.targets, drop_catalogue=self.drop_catalogue)
        if landed is None or self.row is None:
            return  # not landed: the row waits for a replay
        try:
            async with self.engine.begin() as conn:
                await outbox.forget(conn, [self.row])
        except Exception as error:  # the row is replayed later: one needless invalidation
            log.warning("could not delete outbox row %d: %s", self.row, error)


__all__ = ["AfterCommit"]
