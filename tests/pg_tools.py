"""A PostgreSQL database of a test module's own, on the suite's server."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache.ranked.schema import TABLE_NAMES
from atomic_cache.tools.databases import ranked_database

__all__ = ["emptied", "ranked_database"]


async def emptied(engine: AsyncEngine) -> AsyncEngine:
    """``engine``'s ranked tables emptied, and the caches and outbox rows of earlier
    tests gone."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"TRUNCATE {', '.join(TABLE_NAMES)}, app_config_cache_prefixes,"
                " app_config_invalidation_outbox CASCADE"
            )
        )
    return engine
