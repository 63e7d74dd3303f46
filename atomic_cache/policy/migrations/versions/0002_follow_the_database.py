"""The cache follows the database: the registry of caches, the outbox's ``deferred``
column, and the triggers that record every change for every registered cache, exactly as
``atomic_cache.policy.create_schema`` builds them.

Revision ID: 0002_follow_the_database
Revises: 0001_app_config
Create Date: 2026-12-07

The trigger functions and triggers come from the package's ``db/fan_out.sql`` (the
functions every model's triggers share) and ``policy/triggers.sql`` (CREATE OR REPLACE, DROP
... IF EXISTS: idempotent); a release that changes them ships a revision that runs them
again. ``tests/test_migrations.py`` checks that head matches create_schema,
triggers and functions included.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.util import await_only

from atomic_cache.db.schema import FAN_OUT_SQL
from atomic_cache.policy.schema import TRIGGERS_SQL

revision = "0002_follow_the_database"
down_revision: str | None = "0001_app_config"
branch_labels: tuple[str, ...] | None = None
depends_on: str | None = None

_FUNCTIONS = (
    "app_config_fragments_changed()",
    "app_config_policies_changed()",
    "app_config_users_changed()",
    "app_config_domains_changed()",
    "app_config_truncated()",
    "app_config_slices(jsonb)",
    "app_config_fan_out(jsonb, boolean)",
)


def upgrade() -> None:
    op.add_column(
        "app_config_invalidation_outbox",
        sa.Column("deferred", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "app_config_cache_prefixes",
        sa.Column("prefix", sa.String(256), primary_key=True),
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.func.now(),
        ),
        sa.Column(
            "seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    # Several statements: the driver's own connection (asyncpg) takes them as one script.
    driver = op.get_bind().connection.driver_connection
    for script in (FAN_OUT_SQL, TRIGGERS_SQL):
        await_only(driver.execute(script.read_text()))  # type: ignore[union-attr]


def downgrade() -> None:
    for function in _FUNCTIONS:  # CASCADE: the triggers that call them go too
        op.execute(f"DROP FUNCTION IF EXISTS {function} CASCADE")
    op.drop_table("app_config_cache_prefixes")
    op.drop_column("app_config_invalidation_outbox", "deferred")
