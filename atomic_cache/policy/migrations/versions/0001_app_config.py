"""The BEP-1052 app-config tables: domains, users, policies, fragments and the
invalidation outbox, exactly as ``atomic_cache.policy.create_schema`` builds them.

Revision ID: 0001_app_config
Revises:
Create Date: 2026-01-01

Written out in full rather than built from the schema modules: a revision must keep
creating what it created when later releases change the schema (they add revisions of
their own). ``tests/test_migrations.py`` checks that it matches ``create_schema``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0001_app_config"
down_revision: str | None = None
# A root of its own: a service's history and this one meet by `alembic upgrade heads`
# (or by a merge revision, or `depends_on` in the service's revisions).
branch_labels = ("atomic_cache",)
depends_on: str | None = None

# ScopeType's values when this revision was written.
_SCOPES = "'public', 'domain', 'domain_user_defaults', 'user'"


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("name", sa.String(64), primary_key=True),
    )
    op.create_table(
        "users",
        sa.Column("uuid", sa.Uuid, primary_key=True),
        sa.Column(
            "domain_name",
            sa.String(64),
            sa.ForeignKey("domains.name", onupdate="CASCADE"),
            nullable=False,
        ),
    )
    op.create_index("ix_users_domain_name", "users", ["domain_name"])
    op.create_table(
        "app_config_policies",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("config_name", sa.String(64), nullable=False, unique=True),
        sa.Column("scope_sources", ARRAY(sa.String(32)), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.CheckConstraint(
            f"scope_sources <@ ARRAY[{_SCOPES}]::varchar[]", name="ck_policy_scope_sources"
        ),
    )
    op.create_table(
        "app_config_fragments",
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("scope_type", sa.String(32), nullable=False),
        sa.Column("scope_id", sa.String(256), nullable=False),
        sa.Column(
            "name",
            sa.String(64),
            sa.ForeignKey(
                "app_config_policies.config_name", onupdate="CASCADE", ondelete="RESTRICT"
            ),
            nullable=False,
        ),
        sa.Column("extra_config", JSONB, nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("scope_type", "scope_id", "name", name="uq_fragment_scope_name"),
        sa.CheckConstraint(f"scope_type IN ({_SCOPES})", name="ck_fragment_scope_type"),
        sa.CheckConstraint("jsonb_typeof(extra_config) = 'object'", name="ck_fragment_object"),
    )
    op.create_index("ix_fragment_name", "app_config_fragments", ["name"])
    op.create_table(
        "app_config_invalidation_outbox",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("cache_prefix", sa.String(256), nullable=False),
        sa.Column("targets", JSONB, nullable=False),
        sa.Column("drop_catalogue", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
    )
    op.create_index(
        "ix_outbox_prefix_due",
        "app_config_invalidation_outbox",
        ["cache_prefix", "next_attempt_at"],
    )


def downgrade() -> None:
    # Indexes, constraints and the outbox's identity sequence go with their tables.
    op.drop_table("app_config_invalidation_outbox")
    op.drop_table("app_config_fragments")
    op.drop_table("app_config_policies")
    op.drop_table("users")
    op.drop_table("domains")
