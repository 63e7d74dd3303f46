"""Alembic environment for atomic_cache's own revisions (script_location
``atomic_cache:policy/migrations``).

A service with an Alembic setup of its own does not need this file: it adds
``atomic_cache:policy/migrations/versions`` to its ``version_locations`` (see docs/policy.md). This
one serves ``alembic upgrade`` run against these revisions alone, either with
``sqlalchemy.url`` set (any PostgreSQL URL: it is opened with asyncpg) or, from Python,
with a connection passed in ``config.attributes["connection"]`` (a synchronous
connection, as ``AsyncConnection.run_sync`` hands out), which it uses as it is.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from atomic_cache.db.schema import metadata as own_metadata
from atomic_cache.policy.schema import metadata as policy_metadata

# The policy model's tables and the package's own (the outbox, the caches' registry).
metadata = [policy_metadata, own_metadata]

config = context.config


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url, or pass a connection in config.attributes")
    return url


def run_offline() -> None:
    """``alembic upgrade --sql``: print the SQL instead of running it."""
    context.configure(url=database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    url = make_url(database_url()).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_on(connection)
else:
    asyncio.run(run_online())
