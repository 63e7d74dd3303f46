"""atomic_cache end to end: a Valkey cache in front of the BEP-1052 tables in PostgreSQL.

    VALKEY_URL=valkey://127.0.0.1:6379/0 \\
    DATABASE_URL=postgresql://postgres@127.0.0.1/appdb \\
    python examples/quickstart.py

It creates the tables it needs in that database (if missing), one domain, one user and one
policy, and uses the key prefix ``myapp:app_config`` on that Valkey. Every step is
idempotent: it can run any number of times. The policy model's guide (docs/policy.md)
shows this file between the ``# --- readme:`` markers.
"""

# --- readme: application (begin)
import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable

from glide import GlideClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    KeySchema,
    MyFragmentInput,
    PolicyExistsError,
    ScopeType,
    ScriptRegistry,
    create_schema,
    create_valkey_client,
    ensure_domain,
    ensure_user,
)

Loader = Callable[[uuid.UUID, str], Awaitable[AppConfigData]]


async def open_cache(valkey_url: str) -> tuple[GlideClient, AppConfigFragmentCacheSource]:
    client = await create_valkey_client(valkey_url)  # lazy: a dead server never blocks start-up
    registry = ScriptRegistry()  # reads the packaged lua/*.lua
    await registry.load(client)  # once, at start-up; False if Valkey is down: they load later
    keys = KeySchema(prefix="myapp:app_config")  # every key starts with it; default "app_config"
    return client, AppConfigFragmentCacheSource(client, registry, ttl_seconds=600, keys=keys)


async def read_through(
    cache: AppConfigFragmentCacheSource, user_id: uuid.UUID, name: str, load_from_db: Loader
) -> AppConfigData:
    """Cache-aside by hand: what AppConfigFragmentRepository.app_config does for you."""
    hit = await cache.lookup(user_id, name)  # the value, or a miss with a fill token
    if hit.value is not None:
        return hit.value
    merged = await load_from_db(user_id, name)  # any read that returns an AppConfigData
    # Refused (False) if an invalidation that covers it ran since the lookup.
    await cache.set_merged_config(user_id, name, merged, fill_token=hit.fill_token)
    return merged


async def use_the_cache_alone(
    cache: AppConfigFragmentCacheSource, user_id: uuid.UUID, load_from_db: Loader
) -> None:
    # After a change to the "webui" fragments of the domain "default" in the database:
    await cache.invalidate_for_scope(ScopeType.DOMAIN, "default", names=["webui"])
    print("cached after invalidate_for_scope:", (await cache.lookup(user_id, "webui")).hit)
    webui = await read_through(cache, user_id, "webui", load_from_db)
    print("read_through:", webui.config)
    print("cached after read_through:", (await cache.lookup(user_id, "webui")).hit)


# --- readme: application (end)


# --- readme: repositories (begin)
async def main() -> None:
    client, cache = await open_cache(os.environ["VALKEY_URL"])
    # SQLAlchemy opens PostgreSQL through asyncpg: postgresql+asyncpg://, not postgresql://
    url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url)
    policies = AppConfigPolicyRepository(engine, cache=cache)
    repo = AppConfigFragmentRepository(engine, cache=cache)  # cache=None works too
    try:
        await create_schema(engine)  # idempotent; or the Alembic revision (see below)
        user_id = uuid.UUID("0b8f4a52-3f6e-4c1d-9a57-6d2e8c4b7f10")  # or its string form
        await ensure_domain(engine, "default")  # a service owns these tables; these two
        await ensure_user(engine, user_id, "default")  # add a row only where it is missing
        with contextlib.suppress(PolicyExistsError):  # it exists after the first run
            await policies.create("webui", [ScopeType.PUBLIC, ScopeType.DOMAIN, ScopeType.USER])

        theme = [MyFragmentInput(name="webui", extra_config={"theme": "dark"})]
        result = await repo.bulk_create_my(user_id, theme)
        if [failure.code for failure in result.failures] == ["already_exists"]:
            result = await repo.bulk_update_my(user_id, theme)  # a later run
        if result.failures:  # reported per item, never raised: unknown_user, unknown_policy...
            raise SystemExit(f"not written: {result.failures}")

        webui = await repo.app_config(user_id, "webui")  # SQL once, then one Valkey round trip
        print("app_config:", webui.config)
        every = await repo.my_app_configs(user_id)  # every name: no SQL when warm
        print("my_app_configs:", [config.name for config in every])

        sql_only = AppConfigFragmentRepository(engine)  # no cache: every read is SQL
        await use_the_cache_alone(cache, user_id, sql_only.app_config)
    finally:  # at shutdown
        await repo.close()  # stops its outbox replayer
        await policies.close()
        await client.close()
        await engine.dispose()


# --- readme: repositories (end)


if __name__ == "__main__":
    asyncio.run(main())
