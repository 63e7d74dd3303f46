"""The package's own tables, whichever model the database holds (the outbox and the
registry of caches that follow the database), and the running of trigger scripts."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

metadata = MetaData()

# What committed writes still have to invalidate in the cache. A write inserts its row in
# the same transaction as its change and deletes it once the invalidation has landed; a
# row left behind (the process died, Valkey was down) is replayed by any process that
# runs a repository with a cache (``atomic_cache/replayer.py``).
invalidation_outbox = Table(
    "app_config_invalidation_outbox",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    # The key prefix of the cache to invalidate: services with caches of their own may
    # share the database, and each replays only its own rows.
    Column("cache_prefix", String(256), nullable=False),
    # [[scope_type, scope_id, [names] or null], ...]: InvalidationTarget, as JSON.
    Column("targets", JSONB, nullable=False),
    Column("drop_catalogue", Boolean, nullable=False, server_default=false()),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # True for a row this package's write recorded for its own cache: that write
    # invalidates and deletes it itself, so replayers leave it alone for replay_after_s.
    # False for the rows the triggers record (no one else will send those): replayed at
    # once. (Last: revision 0002 adds it to tables revision 0001 made.)
    Column("deferred", Boolean, nullable=False, server_default=false()),
    Index("ix_outbox_prefix_due", "cache_prefix", "next_attempt_at"),
)

# The caches that follow this database: one row per key prefix, registered by a cache's
# first use and kept by its replayers' heartbeat. The triggers record one outbox row per
# registered prefix; a prefix whose heartbeat stopped longer than its expiry is removed,
# with its rows (``outbox.expire``).
cache_prefixes = Table(
    "app_config_cache_prefixes",
    metadata,
    Column("prefix", String(256), primary_key=True),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# The functions every model's triggers call (the outbox row per registered cache, the
# grouping of slices into targets).
FAN_OUT_SQL = files(__package__) / "fan_out.sql"


async def run_trigger_scripts(conn: AsyncConnection, *scripts: Traversable) -> None:
    """Run SQL scripts of trigger functions and triggers (CREATE OR REPLACE: idempotent),
    in order, in the caller's transaction; one lock, shared by every model's install,
    keeps two processes from replacing the same functions at once."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('atomic_cache.triggers'))"))
    raw = await conn.get_raw_connection()
    for script in scripts:
        # Several statements in one: asyncpg's execute without arguments takes a script.
        await raw.driver_connection.execute(script.read_text())  # type: ignore[union-attr]


# The package's own tables, whichever model the database holds: the outbox and the
# registry of the caches that follow the database.
OWN_TABLES = (invalidation_outbox, cache_prefixes)


async def create_own_tables(conn: AsyncConnection) -> None:
    """Create the package's own tables (``OWN_TABLES``) where missing, and the outbox's
    ``deferred`` column where a table of an earlier release lacks it, in the caller's
    transaction; touches no model's tables. Safe to call any number of times."""
    await conn.run_sync(metadata.create_all, tables=list(OWN_TABLES), checkfirst=True)
    await conn.execute(
        text(
            "ALTER TABLE app_config_invalidation_outbox"
            " ADD COLUMN IF NOT EXISTS deferred boolean NOT NULL DEFAULT false"
        )
    )
