"""The Alembic revision builds exactly what create_schema builds, and a service runs it
from its own Alembic setup through ``version_locations``."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from atomic_cache.policy import create_schema

MIGRATIONS = Path(__file__).resolve().parent.parent / "atomic_cache" / "policy" / "migrations"
PACKAGED_VERSIONS = "atomic_cache:policy/migrations/versions"
TABLES = [
    "app_config_cache_prefixes",
    "app_config_fragments",
    "app_config_invalidation_outbox",
    "app_config_policies",
    "domains",
    "users",
]

# Every property of the schema that PostgreSQL keeps, per kind, leaving out Alembic's
# own version table. Constraint and index definitions come back as PostgreSQL prints
# them, with their names, columns, referential actions and expressions.
CATALOGUE = {
    "relations": """
        SELECT c.relname, c.relkind::text FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relname NOT LIKE 'alembic_version%'
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
               a.attgenerated::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0
          AND NOT a.attisdropped AND c.relname <> 'alembic_version'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT c.relname, k.conname, k.contype::text, pg_get_constraintdef(k.oid)
        FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relname <> 'alembic_version'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'alembic_version'
        ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, t.tgenabled::text, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE NOT t.tgisinternal
        ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public'
        ORDER BY 1, 2""",
    "sequences": """
        SELECT sequencename, data_type, start_value, min_value, max_value, increment_by,
               cycle, cache_size
        FROM pg_sequences WHERE schemaname = 'public'
        ORDER BY 1""",
}


@contextlib.asynccontextmanager
async def fresh_database(server_url: str) -> AsyncIterator[str]:
    """An empty database on the suite's PostgreSQL, dropped afterwards."""
    name = f"atomic_cache_empty_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def schema_of(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                kind: [tuple(row) for row in await conn.execute(text(sql))]
                for kind, sql in CATALOGUE.items()
            }
    finally:
        await engine.dispose()


def alembic(connection: Connection, verb: str, target: str) -> None:
    """Run ``alembic upgrade|downgrade target`` on this connection, with the revisions as
    the wheel ships them (a package resource, not a path in the source tree)."""
    config = Config()
    config.set_main_option("script_location", "atomic_cache:policy/migrations")
    config.attributes["connection"] = connection
    getattr(command, verb)(config, target)


async def run_alembic(url: str, verb: str, target: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(alembic, verb, target)
    finally:
        await engine.dispose()


async def version_rows(url: str) -> list[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text("SELECT version_num FROM alembic_version ORDER BY 1"))
            return [row[0] for row in rows]
    finally:
        await engine.dispose()


def test_the_revision_is_a_root_labelled_atomic_cache() -> None:
    """A service reaches it as ``atomic_cache@head``, next to a history of its own."""
    config = Config()
    config.set_main_option("script_location", "atomic_cache:policy/migrations")
    scripts = ScriptDirectory.from_config(config)
    head = scripts.get_revision("atomic_cache@head")
    assert head is not None
    assert (head.revision, head.down_revision, scripts.get_bases()) == (
        "0002_follow_the_database",
        "0001_app_config",
        ["0001_app_config"],
    )


async def test_upgrade_head_builds_what_create_schema_builds(postgres_server_url: str) -> None:
    async with (
        fresh_database(postgres_server_url) as migrated,
        fresh_database(postgres_server_url) as created,
    ):
        await run_alembic(migrated, "upgrade", "head")
        engine = create_async_engine(created)
        await create_schema(engine)
        await engine.dispose()

        by_alembic, by_create_schema = await schema_of(migrated), await schema_of(created)
        tables = sorted(name for name, kind in by_create_schema["relations"] if kind == "r")
        assert tables == TABLES
        for kind in CATALOGUE:
            assert by_alembic[kind] == by_create_schema[kind], kind
        assert await version_rows(migrated) == ["0002_follow_the_database"]
        # Every trigger fires ALWAYS ("A"), also under session_replication_role = replica.
        assert {row[2] for row in by_create_schema["triggers"]} == {"A"}
        assert len(by_create_schema["triggers"]) == 14


async def test_upgrade_head_twice_changes_nothing(postgres_server_url: str) -> None:
    async with fresh_database(postgres_server_url) as url:
        await run_alembic(url, "upgrade", "head")
        once = await schema_of(url)
        await run_alembic(url, "upgrade", "head")
        assert await schema_of(url) == once
        assert await version_rows(url) == ["0002_follow_the_database"]


async def test_downgrade_base_leaves_no_table(postgres_server_url: str) -> None:
    async with fresh_database(postgres_server_url) as url:
        await run_alembic(url, "upgrade", "head")
        assert len((await schema_of(url))["relations"]) > len(TABLES)
        await run_alembic(url, "downgrade", "base")
        assert await schema_of(url) == {kind: [] for kind in CATALOGUE}
        assert await version_rows(url) == []


SERVICE_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "service_0001"
down_revision = None
branch_labels = ("service",)
depends_on = "0001_app_config"  # its table refers to users


def upgrade() -> None:
    op.create_table(
        "service_sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("user_uuid", sa.Uuid, sa.ForeignKey("users.uuid"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("service_sessions")
"""


async def test_a_service_runs_the_revision_from_its_own_alembic_setup(
    postgres_server_url: str, tmp_path: Path
) -> None:
    """What the README tells a service to do: add the package's versions to its
    ``version_locations`` (with a path separator other than ':'), run ``upgrade heads``."""
    service = tmp_path / "migrations"
    (service / "versions").mkdir(parents=True)
    shutil.copy(MIGRATIONS / "env.py", service / "env.py")  # an async env.py of its own
    (service / "versions" / "service_0001.py").write_text(SERVICE_REVISION)
    async with fresh_database(postgres_server_url) as url:
        # The URL as a service's alembic.ini has it: no driver named.
        plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        ini = tmp_path / "alembic.ini"
        ini.write_text(
            textwrap.dedent(
                f"""\
                [alembic]
                script_location = %(here)s/migrations
                path_separator = space
                version_locations = %(here)s/migrations/versions {PACKAGED_VERSIONS}
                sqlalchemy.url = {plain.replace("%", "%%")}
                """
            )
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(ini),
            "upgrade",
            "heads",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
        assert process.returncode == 0, output.decode()

        relations = (await schema_of(url))["relations"]
        tables = sorted(name for name, kind in relations if kind == "r")
        assert tables == sorted([*TABLES, "service_sessions"])
        # Alembic records the package's head and the service's: the service depends on the
        # package's first revision, and 0002 comes after that one.
        assert await version_rows(url) == ["0002_follow_the_database", "service_0001"]
