"""The invalidation outbox's SQL: record a write's targets in its transaction, forget them
once invalidated, claim what others left behind. The repository owns the transactions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..targets import InvalidationTarget
from .schema import invalidation_outbox

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


def _row(id: int, stored: object, drop_catalogue: bool, attempts: int) -> OutboxRow:
    try:
        targets = _parse_targets(stored)
    except (ValueError, TypeError) as error:
        return OutboxRow(id, [], True, attempts, unreadable=str(error))
    return OutboxRow(id, targets, drop_catalogue, attempts)


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
        .values(cache_prefix=cache_prefix, targets=_as_json(targets), drop_catalogue=drop_catalogue)
        .returning(invalidation_outbox.c.id)
    )
    assert row_id is not None
    return int(row_id)


async def forget(conn: AsyncConnection, row_ids: Sequence[int]) -> None:
    """Delete rows whose invalidation has landed."""
    await conn.execute(delete(invalidation_outbox).where(invalidation_outbox.c.id.in_(row_ids)))


async def claim_due(
    conn: AsyncConnection, cache_prefix: str, older_than_s: float, limit: int
) -> list[OutboxRow]:
    """Lock the rows of one cache older than ``older_than_s`` whose next attempt is due;
    rows another process holds are skipped (FOR UPDATE SKIP LOCKED): none is replayed
    twice."""
    due = (
        select(
            invalidation_outbox.c.id,
            invalidation_outbox.c.targets,
            invalidation_outbox.c.drop_catalogue,
            invalidation_outbox.c.attempts,
        )
        .where(
            invalidation_outbox.c.cache_prefix == cache_prefix,
            invalidation_outbox.c.created_at <= func.now() - timedelta(seconds=older_than_s),
            invalidation_outbox.c.next_attempt_at <= func.now(),
        )
        .order_by(invalidation_outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [
        _row(row.id, row.targets, row.drop_catalogue, row.attempts)
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


async def backlog(conn: AsyncConnection) -> int:
    """How many rows wait (for the metrics and the tests)."""
    return int(await conn.scalar(select(func.count()).select_from(invalidation_outbox)) or 0)
