"""A PostgreSQL database of a test module's own, on the suite's server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from atomic_cache import ranked


@contextlib.asynccontextmanager
async def ranked_database(
    server_url: str, label: str, **engine_options: Any
) -> AsyncIterator[AsyncEngine]:
    """A new database named after ``label``, with the ranked tables (and triggers) made
    by ``ranked.create_schema``; dropped when the block ends."""
    name = f"atomic_cache_{label}_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", pool_size=1)
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
        await admin.dispose()
