"""The repositories while Valkey is killed or paused: answers from PostgreSQL, writes
commit, and after Valkey is back no read is stale."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    MyFragmentInput,
)
from atomic_cache.tools.embedded import EmbeddedValkey

from .repo_tools import Rig, open_rig, until_cached


@pytest.fixture(params=[False, True], ids=["no-persistence", "aof"])
async def rig(request: pytest.FixtureRequest, clean_db: AsyncEngine) -> AsyncIterator[Rig]:
    with EmbeddedValkey(persistence=request.param) as server:
        made = await open_rig(clean_db, server)
        yield made
        await made.client.close()


async def test_valkey_killed_then_restarted(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    a1, a2 = rig.world.domains["alpha"]
    await rig.repo.bulk_create_my(a1, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    await until_cached(rig, a1, "webui")
    await until_cached(rig, a2, "webui")

    rig.server.kill()
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 1}
    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        result = await rig.repo.bulk_update_my(
            a1, [MyFragmentInput(name="webui", extra_config={"v": 2})]
        )
    assert result.failures == [] and len(result.successes) == 1
    assert f"not invalidated: USER {a1}[webui]" in caplog.text
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
    assert [d.config for d in await rig.repo.my_app_configs(a1)] == [None, None, {"v": 2}]

    rig.server.start()  # with AOF the old entry of a1 comes back from disk
    for _ in range(3):
        assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
        assert [d.config for d in await rig.repo.my_app_configs(a1)] == [None, None, {"v": 2}]
    await until_cached(rig, a1, "webui")
    assert (await rig.repo.app_config(a1, "webui")).config == {"v": 2}
    assert (await rig.repo.app_config(a2, "webui")).config is None


async def test_valkey_paused_then_resumed(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    a1 = rig.world.domains["alpha"][0]
    b1 = rig.world.domains["beta"][0]
    await rig.repo.bulk_create_my(a1, [MyFragmentInput(name="theme", extra_config={"v": 1})])
    await until_cached(rig, a1, "theme")
    await until_cached(rig, b1, "theme")

    rig.server.pause()
    try:
        assert (await rig.repo.app_config(a1, "theme")).config == {"v": 1}
        with caplog.at_level(logging.WARNING, logger="atomic_cache"):
            result = await rig.repo.bulk_update_my(
                a1, [MyFragmentInput(name="theme", extra_config={"v": 2})]
            )
        assert len(result.successes) == 1
        assert f"not invalidated: USER {a1}[theme]" in caplog.text
        assert (await rig.repo.app_config(a1, "theme")).config == {"v": 2}
    finally:
        rig.server.resume()
    # The stale entry of a1 is still in Valkey unless the missed invalidation is replayed.
    for _ in range(3):
        assert (await rig.repo.app_config(a1, "theme")).config == {"v": 2}
    await until_cached(rig, a1, "theme")
    assert (await rig.repo.app_config(a1, "theme")).config == {"v": 2}
    assert (await rig.repo.app_config(b1, "theme")).config is None
