"""A server that comes back with older data than it acknowledged — a failover that
promoted a replica which lacked the last invalidations, or a restore from an older
snapshot — is a lost index: the cache source that sees its sequence go back starts a new
life, so no entry or fill token from before is trusted again."""

from __future__ import annotations

import asyncio
import uuid

from glide import GlideClient

from atomic_cache import AppConfigData, AppConfigFragmentCacheSource, KeySchema, ScopeType

from .valkey_tools import keys_under


def config(user: uuid.UUID, version: int) -> AppConfigData:
    return AppConfigData(
        user_id=user, domain_name="d1", name="webui", fragments=[], config={"v": version}
    )


async def snapshot(valkey: GlideClient, keys: KeySchema) -> dict[str, tuple[bytes, int]]:
    """Every key under the prefix, as DUMP and PTTL: what a replica holds at one moment."""
    taken: dict[str, tuple[bytes, int]] = {}
    for key in await keys_under(valkey, keys.prefix):
        dumped = await valkey.custom_command(["DUMP", key])
        ttl = await valkey.pttl(key)
        assert isinstance(dumped, bytes)
        taken[key] = (dumped, max(ttl, 0))
    return taken


async def restore(
    valkey: GlideClient, keys: KeySchema, taken: dict[str, tuple[bytes, int]]
) -> None:
    """Replace everything under the prefix by ``taken``: the promoted replica's data."""
    present = await keys_under(valkey, keys.prefix)
    if present:
        await valkey.delete(list(present))
    for key, (dumped, ttl) in taken.items():
        await valkey.custom_command(["RESTORE", key, str(ttl), dumped])


async def test_a_sequence_that_went_back_starts_a_new_life_of_the_index(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    await cache.invalidate_for_scope(ScopeType.USER, str(other))  # the index's life begins
    miss = await cache.lookup(user, "webui")
    assert await cache.set_merged_config(user, "webui", config(user, 1), fill_token=miss.fill_token)
    await cache.invalidate_for_scope(ScopeType.USER, str(other))  # the sequence moves on
    before_loss = await snapshot(valkey, keys)
    old_token = (await cache.lookup(other, "webui")).fill_token

    # The write this invalidation covers is acknowledged, then lost with the primary.
    await cache.invalidate_for_scope(ScopeType.USER, str(user))
    await restore(valkey, keys, before_loss)
    # Nothing on the server can tell: the promoted data serves the entry the lost
    # invalidation had covered. Only a client that saw the newer sequence knows.
    served = await cache.get_merged_config(user, "webui")
    assert served is not None and served.config == {"v": 1}
    assert cache.metrics.index_resets == 0

    # This source's next invalidation, of anything, sees the sequence go back.
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    assert cache.metrics.index_resets == 1
    assert await cache.get_merged_config(user, "webui") is None
    assert old_token is not None
    assert not await cache.set_merged_config(
        other, "webui", config(other, 1), fill_token=old_token
    )  # a token of the old life is refused
    fresh = await cache.lookup(user, "webui")
    assert await cache.set_merged_config(
        user, "webui", config(user, 2), fill_token=fresh.fill_token
    )
    assert (await cache.get_merged_config(user, "webui")) == config(user, 2)
    await cache.reclaiming()


async def test_a_sequence_moving_on_in_other_processes_is_not_a_loss(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    keys: KeySchema,
    registry: object,
) -> None:
    """Other sources move the sequence forward between this one's calls; a restart that
    lost everything starts a new life above the clock: neither is a loss."""
    from atomic_cache import AppConfigFragmentCacheSource as Source
    from atomic_cache import ScriptRegistry

    assert isinstance(registry, ScriptRegistry)
    elsewhere = Source(valkey, registry, keys=keys)
    for _ in range(3):
        await cache.invalidate_for_scope(ScopeType.PUBLIC, "public", ["webui"])
        await elsewhere.invalidate_for_scope(ScopeType.PUBLIC, "public", ["webui"])
    await valkey.delete(list(await keys_under(valkey, keys.prefix)))  # FLUSHALL, in effect
    await cache.invalidate_for_scope(ScopeType.PUBLIC, "public", ["webui"])
    assert cache.metrics.index_resets == elsewhere.metrics.index_resets == 0


async def test_concurrent_invalidations_of_one_source_are_not_a_loss(
    cache: AppConfigFragmentCacheSource,
) -> None:
    """Their replies come back in order, but their tasks resume in any order: a reply
    lower than a sibling's is not a sequence that went back."""
    for _ in range(5):
        await asyncio.gather(
            *(cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4())) for _ in range(50))
        )
    assert cache.metrics.index_resets == 0
