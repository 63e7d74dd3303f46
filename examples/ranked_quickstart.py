"""atomic_cache's ranked model end to end: Backend.AI's own app-config tables, read and
written through a Valkey cache.

    VALKEY_URL=valkey://127.0.0.1:6379/0 \\
    DATABASE_URL=postgresql://postgres@127.0.0.1/appdb \\
    python examples/ranked_quickstart.py

It creates the ranked tables in that database where missing (in upstream's exact shape;
existing ones are left as they are), one definition, its grants and two fragments, and
uses the key prefix ``myapp:ranked`` on that Valkey. Every step is idempotent: it can
run any number of times. The ranked model's guide (docs/ranked.md) shows this file
between the ``# --- guide:`` markers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    KeySchema,
    ScriptRegistry,
    create_valkey_client,
    ranked,
)


# --- guide: ranked (begin)
async def main() -> None:
    client = await create_valkey_client(os.environ["VALKEY_URL"])
    registry = ScriptRegistry()
    await registry.load(client)  # once, at start-up
    cache = AppConfigFragmentCacheSource(client, registry, keys=KeySchema("myapp:ranked"))
    url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url)
    definitions = ranked.DefinitionRepository(engine, cache=cache)
    grants = ranked.AllowListRepository(engine, cache=cache)
    configs = ranked.AppConfigRepository(engine, cache=cache)
    try:
        await ranked.create_schema(engine)  # adds the outbox and the triggers
        await configs.start()  # registers the cache with the database, caches the names
        with contextlib.suppress(ranked.DefinitionExistsError):  # after the first run
            await definitions.create("theme")
        for scope in (ranked.Scope.PUBLIC, ranked.Scope.DOMAIN):
            with contextlib.suppress(ranked.GrantExistsError):
                await grants.create("theme", scope)  # ranks 100 and 200 by default

        # The caller's user and domain come from its session; nothing is looked up.
        user_id = uuid.UUID("0b8f4a52-3f6e-4c1d-9a57-6d2e8c4b7f10")
        domain_id = uuid.UUID("6a1f9c3e-2b7d-4e58-8c0a-5d4b3e2f1a09")
        await configs.bulk_upsert(  # all or none; returns after the cache is invalidated
            [
                ranked.FragmentUpsert(
                    scope_type=ranked.Scope.PUBLIC,
                    scope_id=None,
                    config_name="theme",
                    config={"color": "blue", "font": "serif"},
                ),
                ranked.FragmentUpsert(
                    scope_type=ranked.Scope.DOMAIN,
                    scope_id=domain_id,
                    config_name="theme",
                    config={"color": "red"},
                ),
            ]
        )
        try:  # the user scope has no grant: refused, nothing written
            await configs.bulk_upsert(
                [
                    ranked.FragmentUpsert(
                        scope_type=ranked.Scope.USER,
                        scope_id=user_id,
                        config_name="theme",
                        config={"color": "green"},
                    )
                ]
            )
        except ranked.WriteNotAllowedError as refused:
            print("refused:", refused)

        for _ in range(2):  # from SQL and filled, then one Valkey round trip
            merged = await configs.resolve(user_id, domain_id, ["theme", "menu"])
        print("resolve:", [(each.config_name, each.config) for each in merged])
        print("resolve_public:", (await configs.resolve_public(["theme"]))[0].config)
        print("stats:", configs.stats().hits, "hits")
    finally:  # at shutdown
        for repository in (configs, grants, definitions):
            await repository.close()
        await client.close()
        await engine.dispose()


# --- guide: ranked (end)


if __name__ == "__main__":
    asyncio.run(main())
