"""Fault injection on a real valkey-server: every request is answered (from PostgreSQL
when it must), no write is lost, and once Valkey recovers no read is stale."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import AppConfigFragmentRepository, MyFragmentInput, create_valkey_client
from atomic_cache.tools.embedded import EmbeddedValkey

from .repo_tools import Rig, count_sql, open_rig, until_cached
from .valkey_tools import busy_script, is_loading, raw_command, text, write_filler


@pytest.fixture
async def rig(clean_db: AsyncEngine) -> AsyncIterator[Rig]:
    with EmbeddedValkey(extra_args=["--busy-reply-threshold", "50"]) as server:
        made = await open_rig(clean_db, server)
        yield made
        await made.client.close()


async def write_version(rig: Rig, user: uuid.UUID, name: str, v: int) -> None:
    result = await rig.repo.bulk_update_my(
        user, [MyFragmentInput(name=name, extra_config={"v": v})]
    )
    assert result.failures == [] and len(result.successes) == 1


async def config_of(rig: Rig, user: uuid.UUID, name: str) -> object:
    return (await rig.repo.app_config(user, name)).config


async def seed(rig: Rig) -> tuple[uuid.UUID, uuid.UUID]:
    a1, a2 = rig.world.domains["alpha"]
    for user in (a1, a2):
        await rig.repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 0})])
        await until_cached(rig, user, "webui")
    return a1, a2


async def test_busy_server(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    a1, a2 = await seed(rig)
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        async with busy_script(rig.server.port):
            assert await config_of(rig, a1, "webui") == {"v": 0}
            await write_version(rig, a1, "webui", 1)
            assert await config_of(rig, a1, "webui") == {"v": 1}
    assert "BUSY" in caplog.text
    assert rig.repo.stats().fall_throughs.get("busy", 0) > 0
    assert await config_of(rig, a1, "webui") == {"v": 1}
    await until_cached(rig, a1, "webui")
    assert await config_of(rig, a1, "webui") == {"v": 1}
    assert await config_of(rig, a2, "webui") == {"v": 0}


async def test_full_server_with_noeviction(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    a1, a2 = await seed(rig)
    admin = rig.client
    memory = text(await admin.custom_command(["INFO", "memory"])).splitlines()
    used = int(next(line.split(":")[1] for line in memory if line.startswith("used_memory:")))
    await admin.custom_command(["CONFIG", "SET", "maxmemory-policy", "noeviction"])
    # Below what it uses: whatever a write's invalidation frees, a fill still does not fit.
    await admin.custom_command(["CONFIG", "SET", "maxmemory", str(used - 64 * 1024)])
    try:
        # Reads still hit (get.lua is no-writes); a write's invalidation still runs
        # (invalidate.lua is allow-oom); refills fail with OOM and fall through.
        with count_sql(rig.engine) as sql:
            assert await config_of(rig, a2, "webui") == {"v": 0}
        assert len(sql) == 0
        await write_version(rig, a1, "webui", 1)
        assert not rig.repo._cache.pending
        with caplog.at_level(logging.WARNING, logger="atomic_cache"):
            for _ in range(3):
                assert await config_of(rig, a1, "webui") == {"v": 1}
        # Every refill met OOM; the log says so once, not once per request.
        assert [r.getMessage().split(":")[0] for r in caplog.records] == [
            "cache fill failed, falling through to the database"
        ]
        miss = await rig.cache.lookup(a1, "webui")
        assert miss.value is None  # the fill was refused for memory
        stats = rig.repo.stats()
        assert stats.fall_throughs.get("oom", 0) >= 3  # each refill met OOM
        assert stats.breaker_state == "closed"  # a full server still serves reads
    finally:
        await admin.custom_command(["CONFIG", "SET", "maxmemory", "0"])
    await until_cached(rig, a1, "webui")
    assert await config_of(rig, a1, "webui") == {"v": 1}


async def versioned_load(
    rig: Rig,
    user: uuid.UUID,
    disturb: Callable[[asyncio.Event], Awaitable[None]],
    *,
    versions: int,
    readers: int,
    write_gap_s: float = 0.0,
    read_gap_s: float = 0.0,
) -> int:
    """A writer bumps the version while readers read and ``disturb`` runs until the
    writer is done; returns the stale reads (older than a write that had returned)."""
    floor = 0
    stale = 0
    done = asyncio.Event()

    async def reader() -> None:
        nonlocal stale
        while not done.is_set():
            expected = floor
            got = await config_of(rig, user, "webui")
            assert isinstance(got, dict)
            stale += got["v"] < expected
            await asyncio.sleep(read_gap_s)

    async def writer() -> None:
        nonlocal floor
        for v in range(1, versions + 1):
            await write_version(rig, user, "webui", v)
            floor = v
            await asyncio.sleep(write_gap_s)
        done.set()

    await asyncio.gather(disturb(done), writer(), *(reader() for _ in range(readers)))
    return stale


async def test_script_and_function_flush_under_traffic(rig: Rig) -> None:
    a1, _ = await seed(rig)

    async def flusher(done: asyncio.Event) -> None:
        # FUNCTION FLUSH too: the scripts are not a FUNCTION library, so it must not matter.
        flushes = [("SCRIPT", "FLUSH"), ("FUNCTION", "FLUSH"), ("SCRIPT", "FLUSH", "ASYNC")]
        turn = 0
        while not done.is_set():
            reply = await raw_command(rig.server.port, *flushes[turn % len(flushes)])
            assert reply.startswith(b"+OK")
            turn += 1
            await asyncio.sleep(0.005)

    assert await versioned_load(rig, a1, flusher, versions=19, readers=5) == 0
    assert rig.cache._registry.reloads > 0
    assert rig.repo.stats().script_reloads == rig.cache._registry.reloads
    await until_cached(rig, a1, "webui")
    assert await config_of(rig, a1, "webui") == {"v": 19}


async def assert_recovered(rig: Rig, written: uuid.UUID, untouched: uuid.UUID) -> None:
    """After the fault: v1 of ``written`` from the first read on, served from Valkey again
    once the missed invalidation was replayed; ``untouched`` keeps v0."""
    for _ in range(3):
        assert await config_of(rig, written, "webui") == {"v": 1}
    await until_cached(rig, written, "webui")
    assert not rig.repo._cache.pending
    assert await config_of(rig, written, "webui") == {"v": 1}
    assert await config_of(rig, untouched, "webui") == {"v": 0}


async def test_loading_after_a_restart(clean_db: AsyncEngine) -> None:
    """Killed and restarted with AOF, the server answers LOADING for seconds while it
    restores its data set, old entries included: every request is answered from
    PostgreSQL, the write's missed invalidation is replayed once loading ends, and the
    entry restored from disk is never served."""
    with EmbeddedValkey(persistence=True) as server:
        rig = await open_rig(clean_db, server)
        try:
            a1, a2 = await seed(rig)
            await write_filler(server.port, 20_000)
            server.kill()
            # Each key read back from the AOF waits 100 µs: LOADING lasts about two seconds.
            server.extra_args = [*server.extra_args, "--key-load-delay", "100"]
            server.start()  # returns as soon as the server answers, LOADING included
            assert await is_loading(server.port)

            await write_version(rig, a1, "webui", 1)  # commits; its invalidation waits
            assert rig.repo._cache.pending
            reads_while_loading = 0
            while await is_loading(server.port):
                assert await config_of(rig, a1, "webui") == {"v": 1}
                assert await config_of(rig, a2, "webui") == {"v": 0}
                reads_while_loading += 1
                await asyncio.sleep(0.02)
            assert reads_while_loading > 0
            # glide cannot finish its reconnect handshake against a loading server, so
            # here LOADING surfaces as timeouts; the breaker bounds what they cost.
            assert rig.repo.stats().fall_throughs.get("timeout", 0) > 0

            await assert_recovered(rig, a1, a2)
        finally:
            await rig.client.close()


async def test_loading_on_a_live_connection(clean_db: AsyncEngine) -> None:
    """DEBUG RELOAD: the connection stays up and the server answers LOADING while it
    reads its data set back; same guarantees, and the cause is counted as ``loading``."""
    debug = ["--enable-debug-command", "yes", "--loading-process-events-interval-bytes", "1024"]
    with EmbeddedValkey(extra_args=debug) as server:
        rig = await open_rig(clean_db, server)
        try:
            a1, a2 = await seed(rig)
            await raw_command(server.port, "DEBUG", "POPULATE", "8000")
            await raw_command(server.port, "CONFIG", "SET", "key-load-delay", "100")
            reload = asyncio.create_task(raw_command(server.port, "DEBUG", "RELOAD"))
            while not await is_loading(server.port):
                assert not reload.done()
                await asyncio.sleep(0.005)

            await write_version(rig, a1, "webui", 1)  # commits; its invalidation waits
            assert rig.repo._cache.pending
            while not reload.done():
                assert await config_of(rig, a1, "webui") == {"v": 1}
                assert await config_of(rig, a2, "webui") == {"v": 0}
                await asyncio.sleep(0.02)
            assert (await reload).startswith(b"+OK")
            assert rig.repo.stats().fall_throughs.get("loading", 0) > 0

            await assert_recovered(rig, a1, a2)
        finally:
            await rig.client.close()


async def test_a_corrupt_index_key_does_not_block_invalidations(rig: Rig) -> None:
    """Someone wrote a hash where a1's index of names belongs: the write's invalidation
    still lands (it starts a new life of the index), nothing waits for a replay, nothing
    is stale, and the cache fills again."""
    a1, a2 = await seed(rig)
    names_key = rig.cache.keys.user_index(a1)
    await rig.client.delete([names_key])
    await rig.client.custom_command(["HSET", names_key, "oops", "1"])
    await write_version(rig, a1, "webui", 1)
    assert not rig.repo._cache.pending
    assert rig.repo.stats().failed_invalidations == 0
    assert await config_of(rig, a1, "webui") == {"v": 1}
    assert await config_of(rig, a2, "webui") == {"v": 0}
    await until_cached(rig, a1, "webui")
    await until_cached(rig, a2, "webui")
    assert await config_of(rig, a1, "webui") == {"v": 1}


async def test_client_kill(rig: Rig) -> None:
    a1, _ = await seed(rig)
    await raw_command(rig.server.port, "CLIENT", "KILL", "TYPE", "normal")
    assert await config_of(rig, a1, "webui") == {"v": 0}
    await raw_command(rig.server.port, "CLIENT", "KILL", "TYPE", "normal")
    await write_version(rig, a1, "webui", 1)
    await raw_command(rig.server.port, "CLIENT", "KILL", "TYPE", "normal")
    assert await config_of(rig, a1, "webui") == {"v": 1}
    await until_cached(rig, a1, "webui")
    assert await config_of(rig, a1, "webui") == {"v": 1}


async def wait_for_sync(port: int) -> None:
    for _ in range(200):
        info = await raw_info(port, "replication")
        if "master_link_status:up" in info:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica never synced")


async def raw_info(port: int, section: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"INFO {section}\r\n".encode())
        header = await reader.readline()  # $<length>
        body = await reader.readexactly(int(header[1:]) + 2)
        return body.decode()
    finally:
        writer.close()


async def test_replica_promoted(clean_db: AsyncEngine) -> None:
    with (
        EmbeddedValkey() as primary,
        EmbeddedValkey(extra_args=["--replicaof", "127.0.0.1", "0"]) as replica,
    ):
        await raw_command(replica.port, "REPLICAOF", "127.0.0.1", str(primary.port))
        await wait_for_sync(replica.port)
        rig = await open_rig(clean_db, primary)
        try:
            a1, a2 = await seed(rig)
            # Failover: the replica becomes primary, the old primary follows it. This
            # process still talks to the old one, now a read-only replica.
            await raw_command(replica.port, "REPLICAOF", "NO", "ONE")
            await raw_command(primary.port, "REPLICAOF", "127.0.0.1", str(replica.port))
            await wait_for_sync(primary.port)
            await write_version(rig, a1, "webui", 1)  # invalidation: READONLY, kept for replay
            assert rig.repo._cache.pending
            stats = rig.repo.stats()
            assert (stats.fall_throughs, stats.failed_invalidations) == ({"readonly": 1}, 1)
            assert stats.breaker_state == "closed"  # a read-only server still serves reads
            for _ in range(3):
                assert await config_of(rig, a1, "webui") == {"v": 1}  # covered: database
                with count_sql(rig.engine) as sql:
                    assert await config_of(rig, a2, "webui") == {"v": 0}
                assert len(sql) == 0  # only the pending slice bypasses the cache

            # Traffic moves to the new primary: its script cache is empty (scripts do not
            # replicate) and it still holds a1's old entry; the registry reloads and the
            # pending invalidation is replayed before any read is trusted.
            moved = await create_valkey_client(replica.url, request_timeout_ms=300)
            rig.cache._client = moved
            try:
                for _ in range(3):
                    assert await config_of(rig, a1, "webui") == {"v": 1}
                await until_cached(rig, a1, "webui")
                assert not rig.repo._cache.pending
                assert rig.repo.stats().replayed_invalidations == 1
                assert await config_of(rig, a1, "webui") == {"v": 1}
                assert await config_of(rig, a2, "webui") == {"v": 0}
            finally:
                await moved.close()
        finally:
            await rig.client.close()


async def test_random_kill_and_pause_under_load(clean_db: AsyncEngine) -> None:
    """Readers and a writer run while the server is killed, paused and restarted."""
    with EmbeddedValkey(persistence=True) as server:
        rig = await open_rig(clean_db, server)
        try:
            a1, _ = await seed(rig)
            rng = random.Random(7)

            async def chaos(done: asyncio.Event) -> None:
                while not done.is_set():
                    action = rng.choice(["kill", "pause", "none"])
                    if action == "kill":
                        server.kill()
                        await asyncio.sleep(0.2)
                        server.start()
                    elif action == "pause":
                        server.pause()
                        await asyncio.sleep(0.4)
                        server.resume()
                    await asyncio.sleep(0.1)

            stale = await versioned_load(
                rig, a1, chaos, versions=24, readers=4, write_gap_s=0.08, read_gap_s=0.005
            )
            assert stale == 0
            await until_cached(rig, a1, "webui")
            assert await config_of(rig, a1, "webui") == {"v": 24}
            fresh = AppConfigFragmentRepository(clean_db, cache=rig.cache)
            assert (await fresh.app_config(a1, "webui")).config == {"v": 24}
        finally:
            await rig.client.close()
