"""The invalidation outbox's SQL: record a write's targets in its transaction, forget them
once invalidated, claim what others left behind (or the triggers recorded); register the
caches that follow the database, keep them alive, expire the ones gone. The repository
and the replayer own the transactions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..targets import InvalidationTarget
from .schema import cache_prefixes, invalidation_outbox

# Retries of a row whose replay failed wait 2^attempts seconds, at most this long.
MAX_BACKOFF_S = 60


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    targets: list[InvalidationTarget]
    drop_catalogue: bool
    attempts: int
    # Why the row's targets could not be read (written by hand, or by another version of
    # this package), else None. Retrying cannot fix it: the replayer covers it otherwise.
    unreadable: str | None = None
    # Recorded by a write of this package for its own cache (left behind: that write's
    # invalidation failed), rather than by the triggers for every cache.
    deferred: bool = False


def _parse_targets(stored: object) -> list[InvalidationTarget]:
    """A row's targets; ValueError when they are not what ``record`` writes."""
    if not isinstance(stored, list):
        raise ValueError(f"targets must be a list, not {type(stored).__name__}")
    targets = []
    for target in stored:
        if not isinstance(target, list) or len(target) != 3:
            raise ValueError(f"a target must be [scope, id, names]: {target!r:.100}")
        scope, scope_id, names = target
        if names is not None and not isinstance(names, list):
            raise ValueError(f"names must be a list or null: {names!r:.100}")
        targets.append(InvalidationTarget.of(scope, scope_id, names))
    return targets


def _row(id: int, stored: object, drop_catalogue: bool, attempts: int, deferred: bool) -> OutboxRow:
    try:
        targets = _parse_targets(stored)
    except (ValueError, TypeError) as error:
        return OutboxRow(id, [], True, attempts, unreadable=str(error), deferred=deferred)
    return OutboxRow(id, targets, drop_catalogue, attempts, deferred=deferred)


def _as_json(targets: Sequence[InvalidationTarget]) -> list[list[Any]]:
    return [
        [t.scope_type.value, t.scope_id, list(t.names) if t.names is not None else None]
        for t in targets
    ]


async def record(
    conn: AsyncConnection,
    cache_prefix: str,
    targets: Sequence[InvalidationTarget],
    drop_catalogue: bool,
) -> int:
    """Insert a row for a write's targets, in the write's transaction; returns its id."""
    row_id = await conn.scalar(
        insert(invalidation_outbox)
        .values(
            cache_prefix=cache_prefix,
            targets=_as_json(targets),
            drop_catalogue=drop_catalogue,
            deferred=True,
        )
        .returning(invalidation_outbox.c.id)
    )
    assert row_id is not None
    return int(row_id)


async def forget(conn: AsyncConnection, row_ids: Sequence[int]) -> None:
    """Delete rows whose invalidation has landed."""
    await conn.execute(delete(invalidation_outbox).where(invalidation_outbox.c.id.in_(row_ids)))


async def claim_due(
    conn: AsyncConnection,
    cache_prefix: str,
    older_than_s: float,
    limit: int,
    *,
    everything: bool = False,
) -> list[OutboxRow]:
    """Lock the rows of one cache whose next attempt is due: those the triggers recorded
    at once, those a write of this package recorded (``deferred``: it invalidates them
    itself) once older than ``older_than_s``; with ``everything``, every row, whatever
    its age or back-off (a failover: the new primary has seen none of them). Rows
    another process holds are skipped (FOR UPDATE SKIP LOCKED): none is replayed twice."""
    due = (
        select(
            invalidation_outbox.c.id,
            invalidation_outbox.c.targets,
            invalidation_outbox.c.drop_catalogue,
            invalidation_outbox.c.attempts,
            invalidation_outbox.c.deferred,
        )
        .where(invalidation_outbox.c.cache_prefix == cache_prefix)
        .order_by(invalidation_outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if not everything:
        due = due.where(
            or_(
                invalidation_outbox.c.deferred.is_(False),
                invalidation_outbox.c.created_at <= func.now() - timedelta(seconds=older_than_s),
            ),
            invalidation_outbox.c.next_attempt_at <= func.now(),
        )
    return [
        _row(row.id, row.targets, row.drop_catalogue, row.attempts, row.deferred)
        for row in (await conn.execute(due)).all()
    ]


async def postpone(conn: AsyncConnection, rows: Sequence[OutboxRow]) -> None:
    """A replay of these rows failed: try again later, backing off."""
    for row in rows:
        wait = timedelta(seconds=min(2**row.attempts, MAX_BACKOFF_S))
        await conn.execute(
            update(invalidation_outbox)
            .where(invalidation_outbox.c.id == row.id)
            .values(attempts=row.attempts + 1, next_attempt_at=func.now() + wait)
        )


async def backlog(conn: AsyncConnection, cache_prefix: str | None = None) -> int:
    """How many rows wait, for one cache or all (for the metrics and the tests)."""
    query = select(func.count()).select_from(invalidation_outbox)
    if cache_prefix is not None:
        query = query.where(invalidation_outbox.c.cache_prefix == cache_prefix)
    return int(await conn.scalar(query) or 0)


# -- the caches that follow the database ----------------------------------------------------

# The transaction setting that tells the triggers which cache the writer invalidates
# itself (``fan_out.sql``: the triggers record no row for it).
OWN_PREFIX_SETTING = "atomic_cache.own_prefix"


async def writing_for(conn: AsyncConnection, cache_prefix: str) -> None:
    """At the start of a write of this package: the triggers record no row for its own
    cache, which it invalidates (and records) itself."""
    await conn.execute(
        text(f"SELECT set_config('{OWN_PREFIX_SETTING}', :prefix, true)"),  # transaction-local
        {"prefix": cache_prefix},
    )


async def register(conn: AsyncConnection, cache_prefix: str) -> bool:
    """Register a cache so the triggers record rows for it (or mark it seen); True when
    it was not registered: it may have missed any number of changes."""
    inserted = await conn.scalar(
        text(
            "INSERT INTO app_config_cache_prefixes (prefix) VALUES (:prefix)"
            " ON CONFLICT (prefix) DO UPDATE SET seen_at = now()"
            " RETURNING xmax = 0"
        ),
        {"prefix": cache_prefix},
    )
    return bool(inserted)


async def unregister(conn: AsyncConnection, cache_prefix: str) -> None:
    """Forget a cache and its rows: the triggers record nothing for it until it registers
    again, which starts a new life of its index (a tool's clean slate)."""
    await conn.execute(delete(cache_prefixes).where(cache_prefixes.c.prefix == cache_prefix))
    await conn.execute(
        delete(invalidation_outbox).where(invalidation_outbox.c.cache_prefix == cache_prefix)
    )


async def heartbeat(conn: AsyncConnection, cache_prefix: str) -> bool:
    """Mark a registered cache seen; False if it is not registered any more (expired)."""
    seen = await conn.execute(
        update(cache_prefixes)
        .where(cache_prefixes.c.prefix == cache_prefix)
        .values(seen_at=func.now())
    )
    return bool(seen.rowcount)


async def expire(conn: AsyncConnection, unseen_for_s: float) -> list[str]:
    """Remove the caches not seen for ``unseen_for_s``, and their rows: a cache gone for
    good holds nothing forever. One that comes back registers anew (``register`` says it
    was not registered) and starts a new life of its index."""
    rows = await conn.execute(
        text(
            "WITH gone AS (DELETE FROM app_config_cache_prefixes"
            " WHERE seen_at < now() - make_interval(secs => :unseen) RETURNING prefix),"
            " dropped AS (DELETE FROM app_config_invalidation_outbox"
            " WHERE cache_prefix IN (SELECT prefix FROM gone))"
            " SELECT prefix FROM gone"
        ),
        {"unseen": unseen_for_s},
    )
    return [row.prefix for row in rows]


async def clock(conn: AsyncConnection) -> datetime:
    """The server's clock now (not the transaction's start)."""
    now = await conn.scalar(text("SELECT clock_timestamp()"))
    assert isinstance(now, datetime)
    return now


async def writers_started_before(conn: AsyncConnection, since: datetime) -> int:
    """How many transactions of this database that have written (they hold a
    transaction id) began before ``since`` and are still running: a write whose triggers
    ran before a cache registered is one of them until it commits or rolls back. (Where
    the role may not see other sessions' activity, they count as none.)"""
    count = await conn.scalar(
        text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL AND xact_start < :since"
        ),
        {"since": since},
    )
    return int(count or 0)
