"""The policy model's tables (SQLAlchemy Core: domains, users, policies, fragments) and
``create_schema``, which also creates the package's own tables and the triggers."""

from __future__ import annotations

import uuid
from importlib.resources import files

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..db.schema import FAN_OUT_SQL, create_own_tables, run_trigger_scripts
from ..models import ScopeType

metadata = MetaData()

_SCOPE_VALUES = ", ".join(f"'{scope.value}'" for scope in ScopeType)

domains = Table(
    "domains",
    metadata,
    Column("name", String(64), primary_key=True),
)
"""BEP-1052's ``domains`` table (a name per domain); a service usually owns it."""

users = Table(
    "users",
    metadata,
    Column("uuid", Uuid, primary_key=True),
    Column(
        "domain_name",
        String(64),
        ForeignKey("domains.name", onupdate="CASCADE"),
        nullable=False,
        index=True,
    ),
)
"""BEP-1052's ``users`` table: each user's UUID and domain; a service usually owns it."""

app_config_policies = Table(
    "app_config_policies",
    metadata,
    Column("id", Uuid, primary_key=True, default=uuid.uuid4),
    Column("config_name", String(64), nullable=False, unique=True),
    # Lowest priority first: the write allow-list and the merge order.
    Column("scope_sources", ARRAY(String(32)), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(
        f"scope_sources <@ ARRAY[{_SCOPE_VALUES}]::varchar[]", name="ck_policy_scope_sources"
    ),
)
"""One row per config name: the scopes that may hold its fragments, lowest priority first
(the merge order)."""

app_config_fragments = Table(
    "app_config_fragments",
    metadata,
    Column("id", Uuid, primary_key=True, default=uuid.uuid4),
    Column("scope_type", String(32), nullable=False),
    Column("scope_id", String(256), nullable=False),
    Column(
        "name",
        String(64),
        ForeignKey("app_config_policies.config_name", onupdate="CASCADE", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("extra_config", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("scope_type", "scope_id", "name", name="uq_fragment_scope_name"),
    CheckConstraint(f"scope_type IN ({_SCOPE_VALUES})", name="ck_fragment_scope_type"),
    CheckConstraint("jsonb_typeof(extra_config) = 'object'", name="ck_fragment_object"),
    Index("ix_fragment_name", "name"),
)
"""One row per fragment: its scope, scope id (``public``, a domain name, a user's UUID as
lower-case text) and config name, and its ``extra_config`` (a JSON object)."""

# The policy model's trigger functions and triggers (they call the shared fan_out.sql).
TRIGGERS_SQL = files(__package__) / "triggers.sql"


async def install_triggers(conn: AsyncConnection) -> None:
    """Create or replace the shared functions (``fan_out.sql``), the policy model's trigger
    functions and its triggers (``triggers.sql``), in the caller's transaction."""
    await run_trigger_scripts(conn, FAN_OUT_SQL, TRIGGERS_SQL)


async def create_schema(engine: AsyncEngine) -> None:
    """Create the tables that do not exist yet, the outbox's ``deferred`` column where a
    table of an earlier release lacks it, and the triggers; safe to call any number of
    times (what Alembic's revisions 0001 and 0002 build)."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all, checkfirst=True)
        await create_own_tables(conn)
        await install_triggers(conn)
