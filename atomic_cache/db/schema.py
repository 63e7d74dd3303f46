"""The BEP-1052 tables (SQLAlchemy Core) and create_schema."""

from __future__ import annotations

import uuid

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    false,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine

from ..models import ScopeType

metadata = MetaData()

_SCOPE_VALUES = ", ".join(f"'{scope.value}'" for scope in ScopeType)

domains = Table(
    "domains",
    metadata,
    Column("name", String(64), primary_key=True),
)

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
    Index("ix_outbox_prefix_due", "cache_prefix", "next_attempt_at"),
)


async def create_schema(engine: AsyncEngine) -> None:
    """Create the tables that do not exist yet; safe to call any number of times."""
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all, checkfirst=True)
