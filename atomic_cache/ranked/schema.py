"""The ranked model's tables, in upstream Backend.AI's exact shape, and ``create_schema``.

The shape is the final state of upstream's Alembic chain (9fc9e6bfe695 ... b93d1c47af52,
read at lablup/backend.ai c0032c47): names, columns and their order, types, lengths,
server defaults, constraint names, UNIQUE NULLS NOT DISTINCT, the CHECK and the composite
foreign key with ON DELETE CASCADE. ``tests/ranked_upstream_ddl.sql`` carries upstream's
DDL and a test compares the catalog of both.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.engine.reflection import Inspector
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..db.schema import FAN_OUT_SQL, create_own_tables, run_trigger_scripts
from .models import MAX_CONFIG_NAME_LENGTH

# What upstream's id columns default to (uuid-ossp), and the built-in stand-in used only
# where that extension cannot be had.
UUID_OSSP_DEFAULT = "uuid_generate_v4()"
BUILT_IN_UUID_DEFAULT = "gen_random_uuid()"

DEFINITIONS = "app_config_definitions"
ALLOW_LIST = "app_config_allow_list"
FRAGMENTS = "app_config_fragments"
TABLE_NAMES = (DEFINITIONS, ALLOW_LIST, FRAGMENTS)


def _timestamps() -> list[Column[Any]]:
    return [
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ]


def _id(id_default: str) -> Column[Any]:
    return Column("id", Uuid(), nullable=False, server_default=text(id_default))


def build_tables(metadata: MetaData, id_default: str) -> tuple[Table, Table, Table]:
    """The three tables on ``metadata``, their ids defaulting to ``id_default``."""
    definitions = Table(
        DEFINITIONS,
        metadata,
        _id(id_default),
        Column("config_name", String(MAX_CONFIG_NAME_LENGTH), nullable=False),
        *_timestamps(),
        PrimaryKeyConstraint("id", name="pk_app_config_definitions"),
        UniqueConstraint("config_name", name="uq_app_config_definitions_config_name"),
    )
    allow_list = Table(
        ALLOW_LIST,
        metadata,
        _id(id_default),
        Column("config_name", String(MAX_CONFIG_NAME_LENGTH), nullable=False),
        Column("scope_type", String(64), nullable=False),
        *_timestamps(),
        # Last, as upstream's migration 66d0f891ed20 added it (its ORM declares it earlier).
        # No server default: the defaults by scope are the caller's (Scope.default_rank).
        Column("rank", Integer, nullable=False),
        PrimaryKeyConstraint("id", name="pk_app_config_allow_list"),
        UniqueConstraint(
            "config_name", "scope_type", name="uq_app_config_allow_list_config_name_scope_type"
        ),
        ForeignKeyConstraint(
            ["config_name"],
            [f"{DEFINITIONS}.config_name"],
            name="fk_app_config_allow_list_config_name_app_config_definitions",
            ondelete="CASCADE",
        ),
    )
    fragments = Table(
        FRAGMENTS,
        metadata,
        _id(id_default),
        Column("config_name", String(MAX_CONFIG_NAME_LENGTH), nullable=False),
        Column("scope_type", String(64), nullable=False),
        # A domain's or a user's UUID; NULL for public. No foreign key (upstream has none).
        Column("scope_id", Uuid(), nullable=True),
        Column("config", JSONB, nullable=False),
        *_timestamps(),
        PrimaryKeyConstraint("id", name="pk_app_config_fragments"),
        UniqueConstraint(
            "config_name",
            "scope_type",
            "scope_id",
            name="uq_app_config_fragments_config_name_scope_type_scope_id",
            postgresql_nulls_not_distinct=True,
        ),
        CheckConstraint(
            "(scope_type = 'public') = (scope_id IS NULL)",
            name="ck_app_config_fragments_scope_id_matches_scope_type",
        ),
        # The write gate: a fragment exists only while its (name, scope) is granted, and
        # purging the grant purges its fragments.
        ForeignKeyConstraint(
            ["config_name", "scope_type"],
            [f"{ALLOW_LIST}.config_name", f"{ALLOW_LIST}.scope_type"],
            name="fk_app_config_fragments_config_name_scope_type",
            ondelete="CASCADE",
        ),
    )
    return definitions, allow_list, fragments


# The tables the queries use; their own MetaData, apart from the policy model's (whose
# fragment table has the same name: a database holds one model).
metadata = MetaData()
app_config_definitions, app_config_allow_list, app_config_fragments = build_tables(
    metadata, UUID_OSSP_DEFAULT
)

# The ranked model's triggers: what each write to the three tables records in the outbox.
TRIGGERS_SQL = files(__package__) / "triggers.sql"

# PostgreSQL 15 brought UNIQUE NULLS NOT DISTINCT.
MIN_SERVER_VERSION = 150000


class SchemaError(RuntimeError):
    """The server cannot hold the ranked model's tables (a PostgreSQL before 15)."""


async def _missing_tables(conn: AsyncConnection) -> list[str]:
    def missing(sync_conn: Connection) -> list[str]:
        inspector: Inspector = inspect(sync_conn)
        return [name for name in TABLE_NAMES if not inspector.has_table(name)]

    return await conn.run_sync(missing)


async def _uuid_default(conn: AsyncConnection) -> str:
    """``uuid_generate_v4()`` when it can be called (uuid-ossp installed, or installed now),
    else ``gen_random_uuid()``."""
    resolvable = text("SELECT to_regprocedure('uuid_generate_v4()') IS NOT NULL")
    if await conn.scalar(resolvable):
        return UUID_OSSP_DEFAULT
    available = await conn.scalar(
        text("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
    )
    if available:
        try:
            async with conn.begin_nested():
                await conn.execute(text('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"'))
        except DBAPIError:
            pass  # not allowed here (privileges): fall back below
        # Installed in a schema off the search path, it would still not resolve.
        if await conn.scalar(resolvable):
            return UUID_OSSP_DEFAULT
    return BUILT_IN_UUID_DEFAULT


async def create_schema(engine: AsyncEngine) -> None:
    """Create whichever of the three tables is missing, in upstream's exact shape, the
    package's own tables (the invalidation outbox and the registry of cache prefixes) and
    the triggers; safe to call any number of times and from several processes at once.

    An existing table is never altered, whatever its shape: this runs on Backend.AI's own
    database, whose tables its migrations own. With all three tables present, nothing of
    theirs is touched (not even the extension) but the package's triggers on them.

    The ids default to ``uuid_generate_v4()``, as upstream's do. That function comes
    from the ``uuid-ossp`` extension: when it does not resolve, ``CREATE EXTENSION IF NOT
    EXISTS "uuid-ossp"`` is tried; only when the extension cannot be created (the server
    does not ship it, as the embedded pgserver PostgreSQL 16 does not, or the role may not
    create it) do the tables created now default to the built-in ``gen_random_uuid()``
    instead, the one difference from upstream's shape (both give random version-4 UUIDs).

    Then installs the triggers (``triggers.sql``, after the functions they share with the
    policy model's, ``db/fan_out.sql``): statement-level triggers on the three tables that
    record what each change must invalidate in the writer's transaction, for every cache
    registered with the database. They are the package's own addition, replaced in place
    on every call (CREATE OR REPLACE; a table's columns, constraints and indexes are never
    touched).

    Raises SchemaError on a PostgreSQL before 15 (no NULLS NOT DISTINCT) when a table is
    missing.
    """
    async with engine.begin() as conn:
        # Two processes starting at once must not both create a table.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('atomic_cache.ranked'))"))
        missing = await _missing_tables(conn)
        if missing:
            version = int(await conn.scalar(text("SHOW server_version_num")) or 0)
            if version < MIN_SERVER_VERSION:
                raise SchemaError(
                    f"the ranked model's tables need PostgreSQL 15 or later (UNIQUE NULLS"
                    f" NOT DISTINCT); this server is {version}"
                )
            id_default = await _uuid_default(conn)
            tables = build_tables(MetaData(), id_default)
            await conn.run_sync(
                tables[0].metadata.create_all,
                tables=[t for t in tables if t.name in missing],
                checkfirst=False,
            )
        await create_own_tables(conn)
        await install_triggers(conn)


async def install_triggers(conn: AsyncConnection) -> None:
    """Create or replace the shared functions (``db/fan_out.sql``), the ranked model's
    trigger functions and its triggers (``triggers.sql``), in the caller's transaction,
    under the lock every model's install takes."""
    await run_trigger_scripts(conn, FAN_OUT_SQL, TRIGGERS_SQL)
