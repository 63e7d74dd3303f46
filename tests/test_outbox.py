"""Durable invalidations: a committed write's invalidation survives the death of the
process that made it, and every row of the outbox is replayed exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    InvalidationTarget,
    MyFragmentInput,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.db import invalidation_outbox, outbox
from atomic_cache.replayer import OutboxReplayer
from atomic_cache.resilience.guard import GuardedCache
from atomic_cache.tools.embedded import EmbeddedValkey, free_port

from .repo_tools import count_sql, make_world

ROOT = Path(__file__).resolve().parent.parent


async def rows(engine: AsyncEngine, prefix: str = "app_config") -> int:
    """The rows of one cache (the triggers record rows for every registered cache)."""
    async with engine.connect() as conn:
        return await outbox.backlog(conn, prefix)


async def attempts_and_wait(engine: AsyncEngine) -> tuple[int, timedelta]:
    """The one row's failed attempts, and how long until its next one."""
    async with engine.connect() as conn:
        query = select(
            invalidation_outbox.c.attempts, invalidation_outbox.c.next_attempt_at - func.now()
        )
        attempts, wait = (await conn.execute(query)).one()
    return int(attempts), wait


async def test_a_write_leaves_no_row_once_its_invalidation_landed(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    world = await make_world(clean_db, cache)
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    await repo.bulk_create_my(world.users[0], [MyFragmentInput(name="webui", extra_config={})])
    assert await rows(clean_db, cache.keys.prefix) == 0
    await repo.close()


async def test_a_write_whose_invalidation_failed_leaves_its_row_for_any_process(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    world = await make_world(clean_db, None)
    user = world.users[0]
    dead = await create_valkey_client(
        f"valkey://127.0.0.1:{free_port()}/0", request_timeout_ms=200, connect_timeout_ms=200
    )
    registry = ScriptRegistry()
    writer = AppConfigFragmentRepository(
        clean_db, cache=AppConfigFragmentCacheSource(dead, registry, keys=cache.keys)
    )
    best_effort = AppConfigFragmentRepository(
        clean_db, cache=AppConfigFragmentCacheSource(dead, registry, keys=cache.keys), durable=False
    )
    await best_effort.bulk_create_my(user, [MyFragmentInput(name="theme", extra_config={})])
    assert (
        await rows(clean_db, cache.keys.prefix) == 0
    )  # durable=False: no row, the miss lives in memory only
    await writer.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    await writer.close()
    await dead.close()
    assert await rows(clean_db, cache.keys.prefix) == 1
    async with clean_db.connect() as conn:
        (stored,) = (await conn.execute(select(invalidation_outbox.c.targets))).one()
    assert stored == [["user", str(user), ["webui"]]]
    # Another process's replayer sends it once it is old enough, and deletes it.
    replayer = OutboxReplayer(clean_db, GuardedCache.of(cache), after_s=0)
    assert await replayer.replay_once() == 1
    assert await rows(clean_db, cache.keys.prefix) == 0
    assert GuardedCache.of(cache).stats().outbox_replayed == 1


async def test_two_processes_replay_each_row_once(
    clean_db: AsyncEngine,
    valkey_url: str,
    registry: ScriptRegistry,
    cache: AppConfigFragmentCacheSource,
) -> None:
    targets = [[InvalidationTarget.of(ScopeType.USER, str(uuid.uuid4()))] for _ in range(300)]
    async with clean_db.begin() as conn:
        for target in targets:
            await outbox.record(conn, cache.keys.prefix, target, False)
    other_client = await create_valkey_client(valkey_url, request_timeout_ms=5000)
    try:
        other = AppConfigFragmentCacheSource(other_client, registry, keys=cache.keys)
        replayers = [
            OutboxReplayer(clean_db, GuardedCache.of(source), after_s=0)
            for source in (cache, other)
        ]
        done = [0, 0]

        async def drain(i: int) -> None:
            while await rows(clean_db, cache.keys.prefix):
                done[i] += await replayers[i].replay_once()

        await asyncio.gather(drain(0), drain(1))
    finally:
        await other_client.close()
    assert sum(done) == 300  # each row replayed once, by one of the two
    assert await rows(clean_db, cache.keys.prefix) == 0
    replayed = [GuardedCache.of(s).stats().outbox_replayed for s in (cache, other)]
    assert replayed == done


async def test_a_failing_replay_backs_off_and_is_counted(clean_db: AsyncEngine) -> None:
    async with clean_db.begin() as conn:
        await outbox.record(
            conn, "app_config", [InvalidationTarget.of(ScopeType.DOMAIN, "d")], False
        )
    dead = await create_valkey_client(
        f"valkey://127.0.0.1:{free_port()}/0", request_timeout_ms=200, connect_timeout_ms=200
    )
    try:
        source = AppConfigFragmentCacheSource(dead, ScriptRegistry())
        replayer = OutboxReplayer(clean_db, GuardedCache.of(source), after_s=0)
        assert await replayer.replay_once() == 0
        assert await replayer.replay_once() == 0  # postponed: not due yet
        attempts, wait = await attempts_and_wait(clean_db)
        assert attempts == 1 and wait.total_seconds() > 0.5
        assert GuardedCache.of(source).stats().outbox_retries == 1
        async with clean_db.begin() as conn:  # due again: a second failure waits longer
            await conn.execute(update(invalidation_outbox).values(next_attempt_at=func.now()))
        assert await replayer.replay_once() == 0
        attempts, wait = await attempts_and_wait(clean_db)
        assert attempts == 2 and wait.total_seconds() > 1.5
        assert await rows(clean_db) == 1
    finally:
        await dead.close()


async def test_a_write_committed_by_a_process_killed_before_its_invalidation(
    clean_db: AsyncEngine, database_url: str
) -> None:
    """The writer commits while Valkey holds writes (CLIENT PAUSE WRITE: its invalidation
    waits on the server), is killed (SIGKILL), and its connection goes with it, command
    and all. Another process, which had the old value cached, serves the new one within
    seconds, from the cache again, and nobody called anything but reads."""
    world = await make_world(clean_db, None)
    user = world.users[0]
    await AppConfigFragmentRepository(clean_db).bulk_create_my(
        user, [MyFragmentInput(name="webui", extra_config={"v": 0})]
    )
    with EmbeddedValkey() as server:
        client = await create_valkey_client(server.url, request_timeout_ms=5000)
        registry = ScriptRegistry()
        await registry.load(client)
        reader = AppConfigFragmentRepository(
            clean_db, cache=AppConfigFragmentCacheSource(client, registry), replay_after_s=1.0
        )
        try:
            for _ in range(2):  # miss and fill, then a hit
                assert (await reader.app_config(user, "webui")).config == {"v": 0}
            await client.custom_command(["CLIENT", "PAUSE", "60000", "WRITE"])
            writer = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.outbox_writer",
                server.url, database_url, str(user), "1",
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                for _ in range(300):  # until its commit is visible
                    if await rows(clean_db):
                        break
                    await asyncio.sleep(0.05)
                assert await rows(clean_db) == 1, "the writer never committed"
                await asyncio.sleep(0.3)  # its invalidation reaches the paused server
                writer.send_signal(signal.SIGKILL)
                await asyncio.wait_for(writer.wait(), 10)
            finally:
                if writer.returncode is None:
                    writer.kill()
                    await writer.wait()
            assert writer.stdout is not None
            assert await writer.stdout.read() == b""  # its invalidation never landed
            await client.custom_command(["CLIENT", "UNPAUSE"])
            # The killed writer's command died with its connection: the entry still holds
            # v0, and only the outbox knows. Reads alone bring the new value.
            unpaused = time.monotonic()
            seen = [(await reader.app_config(user, "webui")).config]
            while seen[-1] == {"v": 0} and time.monotonic() - unpaused < 20:
                await asyncio.sleep(0.05)
                seen.append((await reader.app_config(user, "webui")).config)
            assert seen[-1] == {"v": 1}, f"still the old value after {len(seen)} reads"
            print(f"replayed after the crash in {time.monotonic() - unpaused:.2f} s")
            with count_sql(clean_db) as sql:  # and served from the cache again
                for _ in range(3):
                    assert (await reader.app_config(user, "webui")).config == {"v": 1}
            assert len(sql) <= 1  # at most the one miss that refills it
            # The replay deletes the row once its invalidation has landed, in the
            # transaction that locked it: the new value can be read a moment before.
            for _ in range(100):
                if not await rows(clean_db):
                    break
                await asyncio.sleep(0.05)
            assert await rows(clean_db) == 0
            assert reader.stats().outbox_replayed == 1
        finally:
            await reader.close()
            await client.close()


async def test_a_replayer_leaves_the_rows_of_another_cache_alone(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    """Services with caches of their own (another prefix) may share the database."""
    target = [InvalidationTarget.of(ScopeType.PUBLIC, "public")]
    async with clean_db.begin() as conn:
        await outbox.record(conn, f"{cache.keys.prefix}-other", target, False)
        await outbox.record(conn, cache.keys.prefix, target, False)
    replayer = OutboxReplayer(clean_db, GuardedCache.of(cache), after_s=0)
    assert await replayer.replay_once() == 1
    assert await replayer.replay_once() == 0
    async with clean_db.connect() as conn:
        left = (await conn.execute(select(invalidation_outbox.c.cache_prefix))).scalars().all()
    assert left == [f"{cache.keys.prefix}-other"]
