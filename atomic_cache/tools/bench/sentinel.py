"""Scenario m: where Backend.AI runs Valkey. A primary behind three Sentinels is killed
under a read load (50 reader tasks through a repository): from the kill to the
promotion, and to the first cache hit on the new primary, over several failovers, with
what answered the requests meanwhile; then a cache hit over TLS against the same server
in plain TCP (Debian's ``redis-server``, which has TLS; certificates from ``trustme``)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from ...cache.client import create_valkey_client
from ...cache.scripts import ScriptRegistry
from ...cache.source import AppConfigFragmentCacheSource
from ...models import AppConfigData
from ...policy.repository import AppConfigFragmentRepository
from ...resilience.breaker import CircuitBreaker
from ..embedded import EmbeddedValkey, _ping, free_port
from ..embedded_sentinel import SERVICE, EmbeddedSentinelGroup
from .data import seeded_database
from .kit import BenchContext, BenchRow, Op, ScenarioSkipped, compare_rows, percentile

FAILOVER = "m. Sentinel failover (SIGKILL the primary), 50 reader tasks"
TLS = "m. cache hit over TLS vs plain TCP (redis-server), 1 task"
READERS = 50


async def scenario_sentinel(ctx: BenchContext) -> list[BenchRow]:
    return [*await _failovers(ctx), *await _tls_vs_plain(ctx)]


async def _failovers(ctx: BenchContext) -> list[BenchRow]:
    async with seeded_database(ctx) as database, _sentinel_group() as group:
        client = await create_valkey_client(
            group.url(), sentinel_service=SERVICE, request_timeout_ms=250
        )
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        cache = AppConfigFragmentCacheSource(
            client, registry, keys=ctx.keys("m"), breaker=CircuitBreaker()
        )
        repo = AppConfigFragmentRepository(database.engine, cache=cache, verify_sample=0)
        users = database.users[:200]
        served = {"cache": 0, "database": 0, "error": 0}
        stop = asyncio.Event()
        # Set by the first read served by the cache after the client followed a failover.
        hit_after: dict[int, float] = {}
        hit = asyncio.Event()

        async def reader(task: int) -> None:
            i = task
            while not stop.is_set():
                before, failovers = repo.stats().hits, client.failovers
                try:
                    await repo.app_config(users[i % len(users)], "webui")
                except Exception:
                    served["error"] += 1
                else:
                    from_cache = repo.stats().hits > before
                    served["cache" if from_cache else "database"] += 1
                    if from_cache and failovers not in hit_after:
                        hit_after[failovers] = time.perf_counter()
                        hit.set()
                i += READERS
                await asyncio.sleep(0)

        readers = [asyncio.create_task(reader(task)) for task in range(READERS)]
        kill_to_promotion: list[float] = []
        promotion_to_hit: list[float] = []
        kill_to_hit: list[float] = []
        during = {"cache": 0, "database": 0, "error": 0}
        try:
            await asyncio.sleep(1.0)  # warm: every user's entry filled
            for n in range(ctx.sizes.failovers):
                ctx.log(f"{FAILOVER}: failover {n + 1} of {ctx.sizes.failovers}")
                at_kill, followed = dict(served), client.failovers
                killed_at = time.perf_counter()
                old = await asyncio.to_thread(group.kill_primary)
                await asyncio.to_thread(group.wait_for_new_primary, old)
                # A hit of a read that began once the client followed the new primary.
                while client.failovers == followed or client.failovers not in hit_after:
                    hit.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(hit.wait(), 0.01)
                hit_at = hit_after[client.failovers]
                promoted_at = group.promoted_at
                kill_to_promotion.append(promoted_at - killed_at)
                promotion_to_hit.append(hit_at - promoted_at)
                kill_to_hit.append(hit_at - killed_at)
                for way in during:
                    during[way] += served[way] - at_kill[way]
                if n + 1 < ctx.sizes.failovers:  # after the last one the group is stopped
                    await asyncio.to_thread(_bring_back, group, old)
        finally:
            stop.set()
            await asyncio.gather(*readers)
            await repo.close()
            await client.close()
    kill_to_promotion.sort()
    promotion_to_hit.sort()
    kill_to_hit.sort()
    return [
        BenchRow(
            scenario=FAILOVER,
            variant="kill -> first cache hit on the new primary",
            p50_us=percentile(kill_to_hit, 0.5) * 1e6,
            p99_us=kill_to_hit[-1] * 1e6,
            samples=len(kill_to_hit),
            baseline=True,
            extra={
                "kill -> promotion p50 ms": round(percentile(kill_to_promotion, 0.5) * 1e3, 1),
                "kill -> promotion max ms": round(kill_to_promotion[-1] * 1e3, 1),
                "promotion -> first hit p50 ms": round(percentile(promotion_to_hit, 0.5) * 1e3, 1),
                "promotion -> first hit max ms": round(promotion_to_hit[-1] * 1e3, 1),
                "served by the cache meanwhile": during["cache"],
                "served by PostgreSQL meanwhile": during["database"],
                "errors meanwhile": during["error"],
            },
        )
    ]


@contextlib.asynccontextmanager
async def _sentinel_group() -> AsyncIterator[EmbeddedSentinelGroup]:
    group = await asyncio.to_thread(EmbeddedSentinelGroup().start)
    try:
        yield group
    finally:
        await asyncio.to_thread(group.cleanup)


def _bring_back(group: EmbeddedSentinelGroup, old: EmbeddedValkey) -> None:
    """Restart the killed node; the Sentinels make it a replica of the new primary."""
    old.start()
    group.wait_until(lambda: group.replicas_known() == 1, "the old primary known as a replica")
    group.wait_until(group.replicas_in_sync, "the old primary in sync", timeout_s=60)


async def _tls_vs_plain(ctx: BenchContext) -> list[BenchRow]:
    try:
        import trustme
    except ImportError:
        raise ScenarioSkipped("needs trustme (the dev extra) for the TLS certificates") from None
    binary = shutil.which("redis-server")
    if binary is None:
        raise ScenarioSkipped("needs a redis-server built with TLS (Debian's) for TLS")
    authority = trustme.CA()
    with _tls_server(binary, authority) as (plain_port, tls_port, ca_file):
        plain = await create_valkey_client(f"redis://127.0.0.1:{plain_port}/0")
        secure = await create_valkey_client(f"rediss://127.0.0.1:{tls_port}/0", tls_ca_file=ca_file)
        try:
            registry = ScriptRegistry()
            await registry.load(plain, required=True)
            keys = ctx.keys("m-tls")
            caches = {
                name: AppConfigFragmentCacheSource(client, registry, keys=keys)
                for name, client in (("plain TCP", plain), ("TLS", secure))
            }
            user = uuid.uuid4()
            value = AppConfigData(
                user_id=user, domain_name="d", name="webui", fragments=[], config={"v": 1}
            )
            await caches["plain TCP"].set_merged_config(user, "webui", value)
            for cache in caches.values():  # both serve the entry, the TLS one included
                assert (await cache.lookup(user, "webui")).value == value

            def lookup(cache: AppConfigFragmentCacheSource) -> Op:
                return lambda _: cache.lookup(user, "webui")

            rows = await compare_rows(
                ctx,
                TLS,
                [(name, lookup(cache)) for name, cache in caches.items()],
                rounds=ctx.sizes.rounds,
                ops=ctx.sizes.ops_per_round,
                tasks=1,
            )
        finally:
            await plain.close()
            await secure.close()
    return [row for row, _ in rows]


@contextlib.contextmanager
def _tls_server(binary: str, authority: object) -> Iterator[tuple[int, int, Path]]:
    """redis-server listening on a plain port and a TLS port, certificates from
    ``authority`` (a trustme CA)."""
    directory = Path(tempfile.mkdtemp(prefix="atomic-cache-tls-"))
    leaf = authority.issue_cert("127.0.0.1", "localhost")  # type: ignore[attr-defined]
    leaf.cert_chain_pems[0].write_to_path(directory / "cert.pem")
    leaf.private_key_pem.write_to_path(directory / "key.pem")
    authority.cert_pem.write_to_path(directory / "ca.pem")  # type: ignore[attr-defined]
    plain_port, tls_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port", str(plain_port),
            "--tls-port", str(tls_port),
            "--bind", "127.0.0.1",
            "--tls-cert-file", str(directory / "cert.pem"),
            "--tls-key-file", str(directory / "key.pem"),
            "--tls-ca-cert-file", str(directory / "ca.pem"),
            "--tls-auth-clients", "no",
            "--save", "", "--appendonly", "no",
            "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _ping(plain_port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ScenarioSkipped("redis-server did not start with TLS")
            time.sleep(0.02)
        yield plain_port, tls_port, directory / "ca.pem"
    finally:
        process.kill()
        process.wait()
        shutil.rmtree(directory, ignore_errors=True)
