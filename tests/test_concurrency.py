"""After a write returns, no read returns an older value — and without fill tokens,
the same scenarios do serve stale values, so these tests can fail."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    FragmentInput,
    MyFragmentInput,
    ScopeType,
)

from .repo_tools import make_world

# After a load's writes, how long its readers may go on until every process has served
# from the path under test.
SERVE_WAIT_S = 30.0


class ReadersStop:
    """When a load's readers stop: once the writes are done and ``served()`` holds (the
    test asserts it afterwards), or SERVE_WAIT_S after the writes if it never does."""

    def __init__(self, served: Callable[[], bool]) -> None:
        self.served = served
        self._give_up_at: float | None = None

    def writes_done(self) -> None:
        self._give_up_at = asyncio.get_running_loop().time() + SERVE_WAIT_S

    def now(self) -> bool:
        if self._give_up_at is None:
            return False
        return self.served() or asyncio.get_running_loop().time() > self._give_up_at


class RacyRepository(AppConfigFragmentRepository):
    """Widens the window between the database read and the fill, and can drop the fill
    token (the unsafe, classic cache-aside)."""

    def __init__(
        self, *args: object, use_tokens: bool, gate: asyncio.Event | None = None, **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.use_tokens = use_tokens
        self.gate = gate
        self.read_db = asyncio.Event()

    async def _fill(
        self,
        user_id: uuid.UUID,
        data: Sequence[AppConfigData],
        fill_token: str,
        catalogue: Sequence[str] | None = None,
    ) -> None:
        self.read_db.set()
        if self.gate is not None:
            await self.gate.wait()
        else:
            await asyncio.sleep(random.uniform(0, 0.015))
        if self.use_tokens:
            await super()._fill(user_id, data, fill_token, catalogue)
        else:  # what the repository never does: write what it read, unconditionally
            await self._cache.call(
                "fill", lambda cache: cache.set_many(user_id, data, catalogue=catalogue)
            )


def version(data: AppConfigData) -> int:
    assert data.config is not None
    return int(data.config["v"])


@pytest.mark.parametrize("use_tokens", [True, False], ids=["fill-tokens", "no-tokens"])
async def test_fill_that_raced_a_write_never_lands(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource, use_tokens: bool
) -> None:
    world = await make_world(clean_db, cache)
    user = world.users[0]
    writer = AppConfigFragmentRepository(clean_db, cache=cache)
    await writer.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"v": 0})])

    gate = asyncio.Event()
    slow = RacyRepository(clean_db, cache=cache, use_tokens=use_tokens, gate=gate)
    reader = asyncio.create_task(slow.app_config(user, "webui"))
    await slow.read_db.wait()  # it has read v0 from the database and holds its fill
    await writer.bulk_update_my(user, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    gate.set()
    assert version(await reader) == 0  # it began before the write returned: allowed

    after = await writer.app_config(user, "webui")  # begins after the write returned
    if use_tokens:
        assert version(after) == 1
    else:
        assert version(after) == 0  # the stale fill landed: what fill tokens prevent


async def run_mixed_load(
    engine: AsyncEngine,
    caches: Sequence[AppConfigFragmentCacheSource],
    use_tokens: bool,
    served: Callable[[], bool] = lambda: True,
) -> tuple[int, int]:
    """Writers bump versions while readers read, through one repository per cache source
    (several sources on one server stand for several processes); returns (reads, stale
    reads), where a read is stale if it returns a version older than one whose write had
    returned before the read began. Once the writes are done, the readers go on (at most
    SERVE_WAIT_S) until ``served()``: whether an entry lives long enough under the write
    load to be served again depends on the machine's pace, and the test asserts it."""
    world = await make_world(engine, caches[0])
    users = world.users[:2]
    names = ["webui", "theme"]
    writers = [AppConfigFragmentRepository(engine, cache=cache) for cache in caches]
    for user in users:
        await writers[0].bulk_create_my(
            user, [MyFragmentInput(name=n, extra_config={"v": 0}) for n in names]
        )
    readers = [RacyRepository(engine, cache=cache, use_tokens=use_tokens) for cache in caches]
    floor = {(u, n): 0 for u in users for n in names}
    stop = ReadersStop(served)
    reads = stale = 0

    async def write(user: uuid.UUID, name: str, writer: AppConfigFragmentRepository) -> None:
        for v in range(1, 16):
            if random.random() < 0.5:
                await writer.bulk_update_my(
                    user, [MyFragmentInput(name=name, extra_config={"v": v})]
                )
            else:
                item = FragmentInput(
                    scope_type=ScopeType.USER, scope_id=str(user), name=name, extra_config={"v": v}
                )
                await writer.admin_bulk_update([item])
            floor[(user, name)] = v
            await asyncio.sleep(random.uniform(0, 0.01))

    async def read(seed: int) -> None:
        nonlocal reads, stale
        rng = random.Random(seed)
        while not stop.now():
            user, name, reader = rng.choice(users), rng.choice(names), rng.choice(readers)
            expected_at_least = floor[(user, name)]
            if rng.random() < 0.5:
                got = version(await reader.app_config(user, name))
            else:
                got = next(version(d) for d in await reader.my_app_configs(user) if d.name == name)
            reads += 1
            stale += got < expected_at_least

    reader_tasks = [asyncio.create_task(read(seed)) for seed in range(12)]
    await asyncio.gather(
        *(write(u, n, writers[i % len(writers)]) for i, (u, n) in enumerate(floor))
    )
    stop.writes_done()
    await asyncio.gather(*reader_tasks)
    # After everything settled, every cache agrees with the database.
    for user in users:
        for name in names:
            final = version(await AppConfigFragmentRepository(engine).app_config(user, name))
            for reader in readers:
                stale += version(await reader.app_config(user, name)) != final
    return reads, stale


async def test_many_readers_and_writers_never_read_stale(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    reads, stale = await run_mixed_load(clean_db, [cache], use_tokens=True)
    assert reads > 100
    assert stale == 0


async def test_same_load_without_fill_tokens_reads_stale(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    reads, stale = await run_mixed_load(clean_db, [cache], use_tokens=False)
    assert reads > 100
    assert stale > 0
