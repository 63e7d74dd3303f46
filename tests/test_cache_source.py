"""AppConfigFragmentCacheSource against a real server: values, sets, scopes, tokens."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from glide import GlideClient, RequestError

from atomic_cache import (
    AppConfigData,
    AppConfigFragment,
    AppConfigFragmentCacheSource,
    InvalidationTarget,
    KeySchema,
    ScopeType,
    ScriptRegistry,
)

from .valkey_tools import keys_under, monitor, smembers, text

NAMES = ("webui", "theme", "limits")


def merged(user: uuid.UUID, domain: str, name: str, **config: object) -> AppConfigData:
    fragment = AppConfigFragment(
        scope_type=ScopeType.USER, scope_id=str(user), name=name, extra_config=dict(config)
    )
    return AppConfigData(
        user_id=user, domain_name=domain, name=name, fragments=[fragment], config=dict(config)
    )


async def fill(
    cache: AppConfigFragmentCacheSource, user: uuid.UUID, domain: str, *names: str
) -> None:
    for name in names:
        assert await cache.set_merged_config(
            user, name, merged(user, domain, name, owner=str(user))
        )


async def cached_pairs(
    cache: AppConfigFragmentCacheSource, users: list[uuid.UUID]
) -> set[tuple[uuid.UUID, str]]:
    present = set()
    for user in users:
        for name, found in (await cache.lookup_many(user, list(NAMES))).items():
            if found.value is not None:
                present.add((user, name))
    return present


@pytest.fixture
def world() -> dict[str, list[uuid.UUID]]:
    """Two domains with two users each."""
    return {"alpha": [uuid.uuid4(), uuid.uuid4()], "beta": [uuid.uuid4(), uuid.uuid4()]}


async def fill_world(
    cache: AppConfigFragmentCacheSource, world: dict[str, list[uuid.UUID]]
) -> list[uuid.UUID]:
    for domain, users in world.items():
        for user in users:
            await fill(cache, user, domain, *NAMES)
    return [user for users in world.values() for user in users]


def everything(users: list[uuid.UUID]) -> set[tuple[uuid.UUID, str]]:
    return {(user, name) for user in users for name in NAMES}


async def test_miss_then_hit_round_trips_the_value(cache: AppConfigFragmentCacheSource) -> None:
    user = uuid.uuid4()
    assert await cache.get_merged_config(user, "webui") is None
    value = merged(user, "default", "webui", theme={"dark": True}, tabs=[1, 2], label="é ✓")
    assert await cache.set_merged_config(user, "webui", value) is True
    assert await cache.get_merged_config(user, "webui") == value
    assert await cache.get_merged_config(user, "theme") is None
    assert await cache.get_merged_config(uuid.uuid4(), "webui") is None


async def test_config_none_round_trips(cache: AppConfigFragmentCacheSource) -> None:
    user = uuid.uuid4()
    empty = AppConfigData(user_id=user, domain_name="default", name="webui", config=None)
    assert await cache.set_merged_config(user, "webui", empty)
    found = await cache.lookup(user, "webui")
    assert found.hit and found.value == empty and found.fill_token is None


async def test_entry_ttl_and_membership_sets(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    await fill(cache, user, "alpha", "webui", "theme")
    await fill(cache, other, "beta", "webui")

    ttl = await valkey.ttl(keys.entry(user, "webui"))
    assert 590 <= ttl <= 600
    assert await smembers(valkey, keys.user_names(user)) == {"webui", "theme"}
    assert await smembers(valkey, keys.user_names(other)) == {"webui"}
    assert await smembers(valkey, keys.domain_users("alpha")) == {str(user)}
    assert await smembers(valkey, keys.domain_users("beta")) == {str(other)}
    assert await smembers(valkey, keys.name_users("webui")) == {str(user), str(other)}
    assert await smembers(valkey, keys.name_users("theme")) == {str(user)}
    assert await smembers(valkey, keys.all_users) == {str(user), str(other)}
    assert await keys_under(valkey, keys.prefix) == {
        keys.entry(user, "webui"), keys.entry(user, "theme"), keys.entry(other, "webui"),
        keys.user_names(user), keys.user_names(other),
        keys.domain_users("alpha"), keys.domain_users("beta"),
        keys.name_users("webui"), keys.name_users("theme"), keys.all_users,
    }  # fmt: skip


async def test_sets_outlive_their_longest_lived_member(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    long_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=5000, keys=keys)
    short_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=100, keys=keys)
    user, other = uuid.uuid4(), uuid.uuid4()
    await fill(long_lived, user, "alpha", "webui")
    await fill(short_lived, other, "alpha", "webui")  # must not shorten the shared sets
    await fill(short_lived, user, "alpha", "theme")
    for set_key in (
        keys.domain_users("alpha"),
        keys.name_users("webui"),
        keys.all_users,
        keys.user_names(user),
    ):
        assert await valkey.ttl(set_key) > 4900, set_key
    assert await valkey.ttl(keys.entry(other, "webui")) <= 100
    # A set first created by a short-lived entry grows when a longer-lived one joins.
    await fill(short_lived, other, "beta", "limits")
    assert await valkey.ttl(keys.domain_users("beta")) <= 100
    await fill(long_lived, user, "beta", "limits")
    assert await valkey.ttl(keys.domain_users("beta")) > 4900
    assert await valkey.ttl(keys.user_names(other)) <= 100


async def test_user_scope_drops_exactly_that_user(
    cache: AppConfigFragmentCacheSource,
    world: dict[str, list[uuid.UUID]],
    valkey: GlideClient,
    keys: KeySchema,
) -> None:
    users = await fill_world(cache, world)
    target = world["alpha"][0]
    assert await cache.invalidate_for_scope(ScopeType.USER, str(target)) == len(NAMES)
    assert await cached_pairs(cache, users) == everything(users) - everything([target])
    assert await smembers(valkey, keys.user_names(target)) == set()
    assert str(target) not in await smembers(valkey, keys.all_users)
    for name in NAMES:
        assert str(target) not in await smembers(valkey, keys.name_users(name))
    # Invalidating again finds nothing.
    assert await cache.invalidate_for_scope(ScopeType.USER, str(target)) == 0


async def test_user_scope_narrowed_to_names(
    cache: AppConfigFragmentCacheSource,
    world: dict[str, list[uuid.UUID]],
    valkey: GlideClient,
    keys: KeySchema,
) -> None:
    users = await fill_world(cache, world)
    target = world["beta"][1]
    dropped = await cache.invalidate_for_scope(
        ScopeType.USER, str(target).upper(), names=["webui", "nope"]
    )
    assert dropped == 1
    assert await cached_pairs(cache, users) == everything(users) - {(target, "webui")}
    assert await smembers(valkey, keys.user_names(target)) == {"theme", "limits"}


@pytest.mark.parametrize("scope", [ScopeType.DOMAIN, ScopeType.DOMAIN_USER_DEFAULTS])
async def test_domain_scope_drops_exactly_its_members(
    cache: AppConfigFragmentCacheSource, world: dict[str, list[uuid.UUID]], scope: ScopeType
) -> None:
    users = await fill_world(cache, world)
    assert await cache.invalidate_for_scope(scope, "alpha") == 2 * len(NAMES)
    assert await cached_pairs(cache, users) == everything(world["beta"])


async def test_domain_scope_narrowed_to_names(
    cache: AppConfigFragmentCacheSource, world: dict[str, list[uuid.UUID]]
) -> None:
    users = await fill_world(cache, world)
    assert (
        await cache.invalidate_for_scope(ScopeType.DOMAIN, "beta", names=["theme", "limits"]) == 4
    )
    expected = everything(users) - {
        (user, name) for user in world["beta"] for name in ("theme", "limits")
    }
    assert await cached_pairs(cache, users) == expected


async def test_public_scope_drops_everything_and_narrows(
    cache: AppConfigFragmentCacheSource,
    world: dict[str, list[uuid.UUID]],
    valkey: GlideClient,
    keys: KeySchema,
) -> None:
    users = await fill_world(cache, world)
    assert await cache.invalidate_for_scope(ScopeType.PUBLIC, "public", names=["theme"]) == 4
    assert await cached_pairs(cache, users) == everything(users) - {
        (user, "theme") for user in users
    }
    assert await cache.invalidate_for_scope(ScopeType.PUBLIC, "public") == 8
    assert await cached_pairs(cache, users) == set()
    assert await smembers(valkey, keys.all_users) == set()


async def test_policy_drops_that_name_for_everyone(
    cache: AppConfigFragmentCacheSource,
    world: dict[str, list[uuid.UUID]],
    valkey: GlideClient,
    keys: KeySchema,
) -> None:
    users = await fill_world(cache, world)
    assert await cache.invalidate_for_policy("limits") == len(users)
    assert await cached_pairs(cache, users) == everything(users) - {
        (user, "limits") for user in users
    }
    assert await smembers(valkey, keys.name_users("limits")) == set()


async def test_batch_invalidation_in_one_command(
    cache: AppConfigFragmentCacheSource,
    world: dict[str, list[uuid.UUID]],
    valkey: GlideClient,
    valkey_url: str,
) -> None:
    users = await fill_world(cache, world)
    alpha0, beta1 = world["alpha"][0], world["beta"][1]
    async with monitor(valkey_url, valkey) as sent:
        dropped = await cache.invalidate_many(
            [
                InvalidationTarget.of(ScopeType.USER, str(alpha0), ["webui"]),
                (ScopeType.DOMAIN, "beta", ["theme"]),
                (ScopeType.PUBLIC, "public", ["limits"]),
                (ScopeType.USER, str(beta1), []),  # nothing
            ]
        )
    assert sent.names == ["EVALSHA"]
    # webui of alpha0; theme of both beta users; limits of all four.
    assert dropped == 1 + 2 + 4
    expected = everything(users) - {(alpha0, "webui")} - {(u, "theme") for u in world["beta"]}
    expected -= {(user, "limits") for user in users}
    assert await cached_pairs(cache, users) == expected


async def test_empty_invalidation_sends_nothing(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, valkey_url: str
) -> None:
    async with monitor(valkey_url, valkey) as sent:
        assert await cache.invalidate_for_scope(ScopeType.DOMAIN, "alpha", names=[]) == 0
        assert await cache.invalidate_many([]) == 0
    assert sent.commands == []


async def test_fill_token_from_before_an_invalidation_is_refused(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    stale = await cache.lookup(user, "webui")
    assert stale.fill_token is not None
    # An invalidation of another user still moves the epoch: the token is global.
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    assert (
        await cache.set_merged_config(
            user, "webui", merged(user, "d", "webui", v=1), stale.fill_token
        )
        is False
    )
    assert await cache.get_merged_config(user, "webui") is None
    assert await keys_under(valkey, keys.prefix) == {keys.epoch}  # nothing written, no set touched

    fresh = await cache.lookup(user, "webui")
    assert fresh.fill_token is not None and fresh.fill_token != stale.fill_token
    assert (
        await cache.set_merged_config(
            user, "webui", merged(user, "d", "webui", v=2), fresh.fill_token
        )
        is True
    )
    found = await cache.get_merged_config(user, "webui")
    assert found is not None and found.config == {"v": 2}
    # A token is good for any number of fills until the next invalidation.
    assert (
        await cache.set_merged_config(
            user, "theme", merged(user, "d", "theme", v=3), fresh.fill_token
        )
        is True
    )


async def test_lost_epoch_never_revives_an_old_token(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    await cache.invalidate_for_scope(ScopeType.PUBLIC, "public")
    old = await cache.lookup(user, "webui")
    assert old.fill_token
    await valkey.delete([keys.epoch])  # as a restart without persistence would
    assert (
        await cache.set_merged_config(user, "webui", merged(user, "d", "webui"), old.fill_token)
        is False
    )
    await cache.invalidate_for_scope(ScopeType.PUBLIC, "public")
    restarted = await cache.lookup(user, "webui")
    assert restarted.fill_token is not None
    assert int(restarted.fill_token) > int(old.fill_token)


async def test_set_many_is_all_or_nothing_and_refused_together(
    cache: AppConfigFragmentCacheSource,
) -> None:
    user = uuid.uuid4()
    token = (await cache.lookup(user, "webui")).fill_token
    values = [merged(user, "d", name, n=name) for name in NAMES]
    await cache.invalidate_for_scope(ScopeType.DOMAIN, "d")
    assert await cache.set_many(user, values, fill_token=token) is False
    assert await cached_pairs(cache, [user]) == set()
    token = (await cache.lookup(user, "webui")).fill_token
    assert await cache.set_many(user, values, fill_token=token) is True
    assert await cached_pairs(cache, [user]) == everything([user])


async def test_each_call_is_one_server_command(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, valkey_url: str
) -> None:
    user = uuid.uuid4()
    value = merged(user, "d", "webui", a=1)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: cache.lookup(user, "webui"),
        lambda: cache.set_merged_config(user, "webui", value),
        lambda: cache.get_merged_config(user, "webui"),
        lambda: cache.lookup_many(user, list(NAMES)),
        lambda: cache.set_many(user, [merged(user, "d", n) for n in NAMES]),
        lambda: cache.invalidate_for_scope(ScopeType.USER, str(user), ["webui"]),
        lambda: cache.invalidate_for_scope(ScopeType.DOMAIN, "d"),
        lambda: cache.invalidate_for_scope(ScopeType.PUBLIC, "public"),
        lambda: cache.invalidate_for_policy("webui"),
    ]
    for call in calls:
        async with monitor(valkey_url, valkey) as sent:
            await call()
        assert len(sent.names) == 1 and sent.names[0] in {"EVALSHA", "EVALSHA_RO"}, sent.commands
    async with monitor(valkey_url, valkey) as sent:
        await cache.lookup(user, "webui")
    assert sent.names == ["EVALSHA_RO"]  # reads may be served by replicas


@pytest.mark.parametrize(
    ("name", "other"),
    [
        ("a:b", "a"),
        ("*", "webui"),
        ("{tag}", "tag"),
        ("we bui", "we"),
        ("x%3Ay", "x:y"),
        ("names", "webui"),
        ("ユーザー", "webui"),
    ],
)
async def test_odd_names_never_address_another_entry(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema, name: str, other: str
) -> None:
    user = uuid.uuid4()
    await fill(cache, user, "dom:ain *{x}", name, other)
    found = await cache.get_merged_config(user, name)
    assert found is not None and found.name == name
    assert await cache.invalidate_for_scope(ScopeType.USER, str(user), [name]) == 1
    assert await cache.get_merged_config(user, name) is None
    assert await cache.get_merged_config(user, other) is not None
    assert await smembers(valkey, keys.user_names(user)) == {
        keys.entry(user, other).rsplit(":", 1)[1]
    }
    # A glob-looking domain matches only itself.
    await fill(cache, uuid.uuid4(), "dom", other)
    assert await cache.invalidate_for_scope(ScopeType.DOMAIN, "dom:ain *{x}") == 1
    assert await cache.invalidate_for_scope(ScopeType.DOMAIN, "dom") == 1


@pytest.mark.parametrize(
    ("scope", "scope_id", "names", "message"),
    [
        ("nope", "x", None, "unknown scope type"),
        (ScopeType.DOMAIN, "", None, "non-empty"),
        (ScopeType.PUBLIC, "default", None, "PUBLIC scope id"),
        (ScopeType.USER, "not-a-uuid", None, "not a UUID"),
        (ScopeType.USER, str(uuid.uuid4()), "webui", "single string"),
        (ScopeType.DOMAIN, "d", [""], "must not be empty"),
        (ScopeType.DOMAIN, "x" * 300, None, "longer than"),
    ],
)
async def test_bad_invalidation_arguments_raise_before_io(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    valkey_url: str,
    scope: str,
    scope_id: str,
    names: object,
    message: str,
) -> None:
    async with monitor(valkey_url, valkey) as sent:
        with pytest.raises(ValueError, match=message):
            await cache.invalidate_for_scope(scope, scope_id, names)  # type: ignore[arg-type]
    assert sent.commands == []


async def test_bad_write_arguments_raise(cache: AppConfigFragmentCacheSource) -> None:
    user = uuid.uuid4()
    with pytest.raises(ValueError, match="not 'theme'"):
        await cache.set_merged_config(user, "theme", merged(user, "d", "webui"))
    with pytest.raises(ValueError, match="passed for user"):
        await cache.set_merged_config(user, "webui", merged(uuid.uuid4(), "d", "webui"))
    with pytest.raises(ValueError, match="several domains"):
        await cache.set_many(user, [merged(user, "a", "webui"), merged(user, "b", "theme")])
    with pytest.raises(ValueError, match="not a UUID"):
        await cache.lookup("bob", "webui")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must not be empty"):
        await cache.lookup(user, "")


async def test_oversized_entry_is_not_cached(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    small = AppConfigFragmentCacheSource(valkey, registry, keys=keys, max_entry_bytes=1000)
    user = uuid.uuid4()
    assert (
        await small.set_merged_config(user, "webui", merged(user, "d", "webui", blob="x" * 2000))
        is False
    )
    assert await keys_under(valkey, keys.prefix) == set()
    assert (
        await small.set_merged_config(user, "webui", merged(user, "d", "webui", blob="x")) is True
    )


@pytest.mark.parametrize(
    "payload",
    [b"not json", b'{"user_id": "nope"}', b"\xff\xfe", "wrong-key"],
)
async def test_corrupt_entry_is_a_miss_and_is_removed(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema, payload: bytes | str
) -> None:
    user = uuid.uuid4()
    if payload == "wrong-key":  # a valid entry of another user under this key
        payload = merged(uuid.uuid4(), "d", "webui").model_dump_json().encode()
    await valkey.set(keys.entry(user, "webui"), payload)
    found = await cache.lookup(user, "webui")
    assert found.value is None and found.fill_token is not None
    assert await valkey.exists([keys.entry(user, "webui")]) == 0
    assert await cache.set_merged_config(
        user, "webui", merged(user, "d", "webui"), found.fill_token
    )


async def test_wrong_type_entry_is_a_miss_and_is_removed(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    await valkey.sadd(keys.entry(user, "webui"), ["oops"])
    await fill(cache, user, "d", "theme")
    found = await cache.lookup_many(user, ["webui", "theme"])
    assert found["webui"].value is None and found["webui"].fill_token is not None
    assert found["theme"].value is not None
    assert await valkey.exists([keys.entry(user, "webui")]) == 0


async def test_wrong_type_membership_set_leaves_no_orphan_value(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    await valkey.set(keys.name_users("webui"), "not a set")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await cache.set_merged_config(user, "webui", merged(user, "d", "webui"))
    # The value is written last, so a failed write leaves no entry the sets cannot find.
    assert await valkey.exists([keys.entry(user, "webui")]) == 0


async def test_epoch_is_one_number_per_prefix(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    assert (await cache.lookup(uuid.uuid4(), "webui")).fill_token == ""
    await cache.invalidate_for_policy("webui")
    first = text(await valkey.get(keys.epoch))
    await cache.invalidate_for_policy("webui")
    assert int(text(await valkey.get(keys.epoch))) == int(first) + 1
    assert await valkey.ttl(keys.epoch) == -1  # never expires


async def test_lookup_all_needs_the_catalogue_and_reads_every_name(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema, valkey_url: str
) -> None:
    user = uuid.uuid4()
    empty = await cache.lookup_all(user)
    assert empty.names is None and empty.values == {} and empty.fill_token == ""
    values = [merged(user, "d", name, n=name) for name in ("webui", "a:b")]
    assert await cache.set_many(user, values, fill_token="", catalogue=["webui", "a:b", "theme"])
    assert await smembers(valkey, keys.catalogue) == {"webui", "a%3Ab", "theme"}
    assert 590 <= await valkey.ttl(keys.catalogue) <= 600
    async with monitor(valkey_url, valkey) as sent:
        found = await cache.lookup_all(user)
    assert sent.names == ["EVALSHA_RO"]
    assert found.names == ["a:b", "theme", "webui"]
    assert found.values == {"webui": values[0], "a:b": values[1], "theme": None}
    assert found.missing == ["theme"]
    # Another user sees the catalogue and only misses.
    other = await cache.lookup_all(uuid.uuid4())
    assert other.missing == ["a:b", "theme", "webui"]


async def test_policy_invalidation_drops_the_catalogue(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    assert await cache.set_many(user, [merged(user, "d", "webui")], catalogue=["webui", "theme"])
    assert await cache.invalidate_for_scope(ScopeType.PUBLIC, "public", ["theme"]) == 0
    assert await valkey.exists([keys.catalogue]) == 1  # a fragment change keeps it
    assert await cache.invalidate_for_policy("theme") == 0
    assert await valkey.exists([keys.catalogue]) == 0
    assert (await cache.lookup_all(user)).names is None
    assert await cache.get_merged_config(user, "webui") is not None


@pytest.mark.parametrize(
    "corrupt",
    ["domain set", "user names set", "name users set", "all users set", "epoch"],
)
async def test_a_corrupt_index_key_makes_an_invalidation_drop_the_whole_prefix(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema, corrupt: str
) -> None:
    """A key of another type where the index belongs cannot say what a target covers:
    the invalidation drops everything under the prefix instead of failing (a failing
    invalidation would fail again on every replay), and starts a fresh epoch."""
    alpha, beta = uuid.uuid4(), uuid.uuid4()
    await fill(cache, alpha, "alpha", *NAMES)
    await fill(cache, beta, "beta", *NAMES)
    stale_token = (await cache.lookup(uuid.uuid4(), "webui")).fill_token
    key = {
        "domain set": keys.domain_users("alpha"),
        "user names set": keys.user_names(alpha),
        "name users set": keys.name_users("webui"),
        "all users set": keys.all_users,
        "epoch": keys.epoch,
    }[corrupt]
    await valkey.delete([key])
    await valkey.custom_command(["HSET", key, "field", "value"])

    if corrupt == "all users set":  # only a whole-PUBLIC invalidation reads that one
        dropped = await cache.invalidate_for_scope(ScopeType.PUBLIC, "public")
    else:
        dropped = await cache.invalidate_for_scope(ScopeType.DOMAIN, "alpha", ["webui"])
    assert dropped == 2 * len(NAMES)  # beta's entries too, each counted once
    assert await keys_under(valkey, keys.prefix) == {keys.epoch}
    assert text(await valkey.get(keys.epoch)).isdigit()
    assert await cached_pairs(cache, [alpha, beta]) == set()
    fresh = merged(alpha, "alpha", "webui")
    assert await cache.set_merged_config(alpha, "webui", fresh, stale_token) is False
    token = (await cache.lookup(alpha, "webui")).fill_token
    assert await cache.set_merged_config(alpha, "webui", fresh, token) is True
    assert await cache.get_merged_config(alpha, "webui") == fresh


async def test_other_script_errors_still_fail_the_invalidation(
    cache: AppConfigFragmentCacheSource,
    registry: ScriptRegistry,
    valkey: GlideClient,
    keys: KeySchema,
) -> None:
    with pytest.raises(RequestError, match="unknown invalidation scope: bogus"):
        await registry.call(
            valkey,
            "invalidate",
            [keys.epoch, keys.all_users, keys.catalogue],
            [keys.prefix, "0", "bogus", "x", "-1"],
        )


@pytest.mark.parametrize("suffix", ["tenant2", "user", "merged", "domain", "name"])
async def test_a_prefix_reset_leaves_a_longer_prefix_alone(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    registry: ScriptRegistry,
    keys: KeySchema,
    suffix: str,
) -> None:
    """Even a longer prefix named like one of the schema's key families."""
    nested = AppConfigFragmentCacheSource(
        valkey, registry, keys=KeySchema(f"{keys.prefix}:{suffix}")
    )
    user = uuid.uuid4()
    await fill(cache, user, "alpha", *NAMES)
    await fill(nested, user, "alpha", *NAMES)
    await nested.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))  # gives it an epoch

    def schema_keys(schema: KeySchema) -> list[str]:
        return [
            *(schema.entry(user, name) for name in NAMES),
            *(schema.name_users(name) for name in NAMES),
            schema.user_names(user),
            schema.domain_users("alpha"),
            schema.all_users,
        ]

    nested_epoch = await valkey.get(nested.keys.epoch)
    assert await cache.reset_index() == len(NAMES)
    assert await valkey.exists(schema_keys(keys)) == 0
    assert await valkey.exists([keys.epoch]) == 1
    nested_schema_keys = schema_keys(nested.keys)
    assert await valkey.exists(nested_schema_keys) == len(nested_schema_keys)
    assert await valkey.get(nested.keys.epoch) == nested_epoch
    assert await cached_pairs(nested, [user]) == {(user, name) for name in NAMES}
    assert await cached_pairs(cache, [user]) == set()
