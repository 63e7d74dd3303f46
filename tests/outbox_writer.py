"""A writer process for the outbox crash test: one write, then it waits to be killed.

python -m tests.outbox_writer VALKEY_URL DATABASE_URL USER_ID VERSION
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from sqlalchemy.ext.asyncio import create_async_engine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    MyFragmentInput,
    ScriptRegistry,
    create_valkey_client,
)


async def main(valkey_url: str, database_url: str, user: uuid.UUID, version: int) -> None:
    client = await create_valkey_client(valkey_url, request_timeout_ms=60_000)
    registry = ScriptRegistry()
    await registry.load(client)
    engine = create_async_engine(database_url)
    repo = AppConfigFragmentRepository(engine, cache=AppConfigFragmentCacheSource(client, registry))
    # Commits, then sends its invalidation, which the paused server holds: the test kills
    # this process while it waits.
    await repo.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": version})])
    print("the invalidation landed: the server was not paused", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], uuid.UUID(sys.argv[3]), int(sys.argv[4])))
