"""A PostgreSQL database of one's own on a given server, for the ranked model (whose
tables share a name with the policy model's): the demo, the bench and the tests."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .. import ranked


@contextlib.asynccontextmanager
async def ranked_database(
    server_url: str, label: str, **engine_options: Any
) -> AsyncIterator[AsyncEngine]:
    """A new database (``atomic_cache_<label>_<random>``) on the server of
    ``server_url``, with the ranked tables and triggers made by ``ranked.create_schema``,
    behind an engine made with ``engine_options``; dropped when the block ends. The role
    must be allowed to create databases."""
    name = f"atomic_cache_{label}_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", pool_size=1)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        engine = create_async_engine(url, **engine_options)
        try:
            await ranked.create_schema(engine)
            yield engine
        finally:
            await engine.dispose()
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
