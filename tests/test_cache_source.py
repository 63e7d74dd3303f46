"""AppConfigFragmentCacheSource against a real server: values, sets, scopes, tokens."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable

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
from atomic_cache.cache.source import FILL_TOKEN_MAX_AGE_MS

from .valkey_tools import keys_under, monitor, smembers, text

NAMES = ("webui", "theme", "limits")

# Each (scope, id, names) against one entry: user U of domain "d", name "webui".
U = uuid.uuid4()
COVERING = [
    (ScopeType.USER, str(U), None),
    (ScopeType.USER, str(U), ["webui"]),
    (ScopeType.DOMAIN, "d", None),
    (ScopeType.DOMAIN_USER_DEFAULTS, "d", None),
    (ScopeType.DOMAIN, "d", ["webui", "theme"]),
    (ScopeType.PUBLIC, "public", None),
    (ScopeType.PUBLIC, "public", ["webui"]),
]
NOT_COVERING = [
    (ScopeType.USER, str(uuid.uuid4()), None),
    (ScopeType.USER, str(U), ["theme"]),
    (ScopeType.DOMAIN, "other", None),
    (ScopeType.DOMAIN, "d", ["theme"]),
    (ScopeType.DOMAIN_USER_DEFAULTS, "dd", None),
    (ScopeType.PUBLIC, "public", ["theme"]),
]


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
    # The index follows the live entries: the user has none left.
    assert await valkey.exists([keys.user_index(target)]) == 0
    assert str(target) not in await index_members(valkey, keys.users_index)
    assert await index_members(valkey, keys.domain_index("alpha")) == {str(world["alpha"][1])}
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
    assert await index_members(valkey, keys.user_index(target)) == {"theme", "limits"}


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
    assert await keys_under(valkey, keys.prefix) == {keys.seq, keys.public_stamps}


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
    for user in users:
        assert await index_members(valkey, keys.user_index(user)) == {"webui", "theme"}
    assert await index_members(valkey, keys.users_index) == {str(user) for user in users}


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
    assert await index_members(valkey, keys.user_index(user)) == {
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
        (ScopeType.USER, "not-a-uuid", None, r"a USER scope id must be a uuid\.UUID or its"),
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
    with pytest.raises(ValueError, match=r"user_id must be a uuid\.UUID or its string form"):
        await cache.lookup("bob", "webui")
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
    [b"not json", b'{"user_id": "nope"}', b"\xff\xfe", b'{"no": "header"}', "wrong-key"],
)
async def test_corrupt_entry_is_a_miss_and_is_removed(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema, payload: bytes | str
) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    await fill(cache, other, "d", "webui")
    valid = await valkey.get(keys.entry(other, "webui"))
    assert valid is not None
    if payload == "wrong-key":  # a valid entry of another user under this key
        payload = valid
    elif isinstance(payload, bytes) and payload != b'{"no": "header"}':
        payload = valid.split(b"\n", 1)[0] + b"\n" + payload  # behind a valid header
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


async def test_lookup_all_needs_the_catalogue_and_reads_every_name(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema, valkey_url: str
) -> None:
    user = uuid.uuid4()
    empty = await cache.lookup_all(user)
    assert empty.names is None and empty.values == {} and empty.fill_token.startswith("0:")
    values = [merged(user, "d", name, n=name) for name in ("webui", "a:b")]
    assert await cache.set_many(user, values, catalogue=["webui", "a:b", "theme"])
    assert await smembers(valkey, keys.catalogue) == {"webui", "a%3Ab", "theme"}
    assert 590_000 <= await valkey.pttl(keys.catalogue) <= 600_000
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
            [keys.seq, keys.catalogue, keys.cleanup_queue],
            [keys.prefix, "1000", "1000", "100", "0", "bogus", "x", "-1"],
        )
    assert await valkey.exists([keys.seq]) == 0  # refused before any write


@pytest.mark.parametrize("suffix", ["tenant2", "idx", "merged", "stamp", "seq"])
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
    other = str(uuid.uuid4())
    await nested.invalidate_for_scope(ScopeType.USER, other)  # gives it a stamp
    await valkey.set(keys.user_stamps(user), "someone else's")

    def schema_keys(schema: KeySchema) -> list[str]:
        return [
            *(schema.entry(user, name) for name in NAMES),
            schema.user_stamps(user),
        ]

    nested_seq = await valkey.hgetall(nested.keys.seq)
    await cache.reset_index()
    await cache.reclaim()
    assert await valkey.exists(schema_keys(keys)) == 0
    assert await valkey.exists([keys.seq]) == 1
    nested_schema_keys = [*schema_keys(nested.keys)[:-1], nested.keys.user_stamps(other)]
    assert await valkey.exists(nested_schema_keys) == len(nested_schema_keys)
    assert await valkey.hgetall(nested.keys.seq) == nested_seq
    assert await cached_pairs(nested, [user]) == {(user, name) for name in NAMES}
    assert await cached_pairs(cache, [user]) == set()


async def index_members(valkey: GlideClient, key: str) -> set[str]:
    reply = await valkey.custom_command(["ZRANGE", key, "0", "-1"])
    assert isinstance(reply, list)
    return {text(member) for member in reply}


async def server_ms(valkey: GlideClient) -> int:
    reply = await valkey.custom_command(["TIME"])
    assert isinstance(reply, list)
    return int(text(reply[0])) * 1000 + int(text(reply[1])) // 1000


async def test_entry_ttl_and_index(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    before = await server_ms(valkey)
    await fill(cache, user, "alpha", "webui", "theme")
    await fill(cache, other, "beta", "webui")
    after = await server_ms(valkey)

    assert 590_000 <= await valkey.pttl(keys.entry(user, "webui")) <= 600_000
    assert await index_members(valkey, keys.user_index(user)) == {"webui", "theme"}
    assert await index_members(valkey, keys.user_index(other)) == {"webui"}
    assert await index_members(valkey, keys.domain_index("alpha")) == {str(user)}
    assert await index_members(valkey, keys.domain_index("beta")) == {str(other)}
    assert await index_members(valkey, keys.users_index) == {str(user), str(other)}
    # Members are scored by their entry's expiry in ms, so they can leave with it.
    score = await valkey.zscore(keys.user_index(user), "webui")
    assert score is not None and before + 600_000 <= score <= after + 600_000
    assert await keys_under(valkey, keys.prefix) == {
        keys.entry(user, "webui"), keys.entry(user, "theme"), keys.entry(other, "webui"),
        keys.user_index(user), keys.user_index(other),
        keys.domain_index("alpha"), keys.domain_index("beta"), keys.users_index, keys.seq,
        keys.public_stamps,  # the index's life began: its first value stamps public "*"
    }  # fmt: skip


async def test_index_keys_outlive_their_longest_lived_member_in_ms(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    long_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=5000, keys=keys)
    short_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=100, keys=keys)
    user, other = uuid.uuid4(), uuid.uuid4()
    await fill(long_lived, user, "alpha", "webui")
    await fill(short_lived, other, "alpha", "webui")  # must not shorten the shared keys
    await fill(short_lived, user, "alpha", "theme")
    for index_key in (keys.domain_index("alpha"), keys.users_index, keys.user_index(user)):
        assert await valkey.pttl(index_key) > 4_990_000, index_key
    assert await valkey.pttl(keys.entry(other, "webui")) <= 100_000
    # A key first created by a short-lived entry grows when a longer-lived one joins.
    await fill(short_lived, other, "beta", "limits")
    assert await valkey.pttl(keys.domain_index("beta")) <= 100_000
    await fill(long_lived, user, "beta", "limits")
    assert await valkey.pttl(keys.domain_index("beta")) > 4_990_000
    assert await valkey.pttl(keys.user_index(other)) <= 100_000

    # In ms, not whole seconds: no index key expires before the newest entry it lists.
    async def expires_at(key: str) -> int:
        reply = await valkey.custom_command(["PEXPIRETIME", key])
        assert isinstance(reply, int)
        return reply

    entry_expiry = await expires_at(keys.entry(user, "limits"))
    for index_key in (keys.user_index(user), keys.domain_index("beta"), keys.users_index):
        assert await expires_at(index_key) >= entry_expiry


async def test_stamps_outlive_every_entry_and_token_they_cover(
    valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    long_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=5000, keys=keys)
    short_lived = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=100, keys=keys)
    user = uuid.uuid4()
    await fill(long_lived, user, "alpha", "webui")
    # The invalidating process has a short TTL, but an entry of 5,000 s may be covered.
    await short_lived.invalidate_for_scope(ScopeType.DOMAIN, "alpha")
    assert (
        await valkey.pttl(keys.domain_stamps("alpha")) > 5_000_000 + FILL_TOKEN_MAX_AGE_MS - 10_000
    )
    await short_lived.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))
    fresh_prefix = KeySchema(f"{keys.prefix}x")
    alone = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=100, keys=fresh_prefix)
    await alone.invalidate_for_scope(ScopeType.DOMAIN, "d", ["webui"])
    assert (
        await valkey.pttl(fresh_prefix.domain_stamps("d"))
        > 100_000 + FILL_TOKEN_MAX_AGE_MS - 10_000
    )
    # Refresh, never shorten.
    long_alone = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=5000, keys=fresh_prefix)
    await long_alone.invalidate_for_scope(ScopeType.DOMAIN, "d", ["webui"])
    await alone.invalidate_for_scope(ScopeType.DOMAIN, "d", ["webui"])
    assert await valkey.pttl(fresh_prefix.domain_stamps("d")) > 5_000_000
    # Public stamps (one field per name) carry the start of the index's life: no expiry.
    assert await valkey.pttl(fresh_prefix.public_stamps) == -1


@pytest.mark.parametrize("target", COVERING, ids=lambda t: f"{t[0].name}-{t[2]}")
async def test_a_fill_is_refused_by_an_invalidation_that_covers_it(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    keys: KeySchema,
    target: tuple[ScopeType, str, list[str] | None],
) -> None:
    await fill(cache, uuid.uuid4(), "d", "webui")  # gives the prefix a sequence
    stale = await cache.lookup(U, "webui")
    assert stale.fill_token is not None
    await cache.invalidate_for_scope(*target)
    value = merged(U, "d", "webui", v=1)
    assert await cache.set_merged_config(U, "webui", value, stale.fill_token) is False
    assert await cache.get_merged_config(U, "webui") is None
    assert await valkey.exists([keys.entry(U, "webui"), keys.user_index(U)]) == 0  # nothing
    fresh = await cache.lookup(U, "webui")
    assert fresh.fill_token is not None
    assert await cache.set_merged_config(U, "webui", value, fresh.fill_token) is True
    assert await cache.get_merged_config(U, "webui") == value


@pytest.mark.parametrize("target", NOT_COVERING, ids=lambda t: f"{t[0].name}-{t[1][:5]}-{t[2]}")
async def test_a_fill_is_not_refused_by_an_invalidation_of_another_slice(
    cache: AppConfigFragmentCacheSource, target: tuple[ScopeType, str, list[str] | None]
) -> None:
    await fill(cache, uuid.uuid4(), "d", "webui")  # gives the prefix a sequence
    token = (await cache.lookup(U, "webui")).fill_token
    await cache.invalidate_for_scope(*target)
    value = merged(U, "d", "webui", v=1)
    assert await cache.set_merged_config(U, "webui", value, token) is True
    assert await cache.get_merged_config(U, "webui") == value


async def test_a_token_serves_many_fills_until_an_invalidation_covers_them(
    cache: AppConfigFragmentCacheSource,
) -> None:
    user = uuid.uuid4()
    await fill(cache, uuid.uuid4(), "d", "webui")
    token = (await cache.lookup(user, "webui")).fill_token
    assert await cache.set_merged_config(user, "webui", merged(user, "d", "webui"), token)
    assert await cache.set_merged_config(user, "theme", merged(user, "d", "theme"), token)
    await cache.invalidate_for_scope(ScopeType.USER, str(user), ["limits"])
    assert await cache.set_merged_config(user, "theme", merged(user, "d", "theme"), token)
    await cache.invalidate_for_scope(ScopeType.USER, str(user), ["theme"])
    assert not await cache.set_merged_config(user, "theme", merged(user, "d", "theme"), token)
    assert await cache.get_merged_config(user, "webui") is not None


async def test_a_lost_index_refuses_every_older_token_and_entry(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    """A restart without persistence, FLUSHALL or a failover can lose the sequence, the
    stamps and the index: no token handed out before, nor an entry left behind, is valid."""
    user = uuid.uuid4()
    value = merged(user, "d", "webui")
    # The "no sequence yet" token of an empty prefix...
    first = await cache.lookup(user, "webui")
    assert first.fill_token is not None and first.fill_token.startswith("0:")
    assert await cache.set_merged_config(user, "webui", value, first.fill_token) is False
    # ...and a real token, followed by an invalidation that covers it; then all is lost.
    old = (await cache.lookup(user, "webui")).fill_token
    assert old is not None and not old.startswith("0:")
    await cache.invalidate_for_scope(ScopeType.USER, str(user))
    await valkey.delete(list(await keys_under(valkey, keys.prefix)))
    for token in (first.fill_token, old):
        assert await cache.set_merged_config(user, "webui", value, token) is False
    assert await valkey.exists([keys.entry(user, "webui")]) == 0
    # An entry that outlives the rest of the index is not served...
    fresh = (await cache.lookup(user, "webui")).fill_token
    assert await cache.set_merged_config(user, "webui", value, fresh) is True
    assert await cache.get_merged_config(user, "webui") == value
    left = await keys_under(valkey, keys.prefix)
    await valkey.delete(list(left - {keys.entry(user, "webui")}))
    assert await cache.get_merged_config(user, "webui") is None
    assert (await cache.lookup_many(user, ["webui"]))["webui"].value is None
    # ...nor one that outlives its sequence alone, once a new life has begun.
    assert await cache.set_merged_config(user, "webui", value) is True
    fresh = (await cache.lookup(user, "theme")).fill_token
    await valkey.delete([keys.seq])
    await fill(cache, uuid.uuid4(), "d", "theme")  # a new life of the sequence begins
    assert await cache.get_merged_config(user, "webui") is None
    assert not await cache.set_merged_config(user, "theme", merged(user, "d", "theme"), fresh)
    # A life stamp lost alone: nothing it vouched for is served, and the next fill starts
    # a new life, so the cache serves again.
    limits = merged(user, "d", "limits")
    assert await cache.set_merged_config(user, "limits", limits) is True
    await valkey.delete([keys.public_stamps])
    assert await cache.get_merged_config(user, "limits") is None
    old_life = (await cache.lookup(user, "limits")).fill_token
    assert not await cache.set_merged_config(user, "limits", limits, old_life)  # starts one
    new_life = (await cache.lookup(user, "limits")).fill_token
    assert await cache.set_merged_config(user, "limits", limits, new_life) is True
    assert await cache.get_merged_config(user, "limits") == limits


async def test_a_token_from_a_sequence_the_server_never_reached_is_refused(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    """A failover to a replica that missed invalidations moves the sequence back: a token
    (or an entry) from beyond it belongs to a lost history."""
    user = uuid.uuid4()
    await fill(cache, uuid.uuid4(), "d", "webui")
    token = (await cache.lookup(user, "webui")).fill_token
    assert token is not None
    seq, ms = token.split(":")
    ahead = f"{int(seq) + 1}:{ms}"
    assert await cache.set_merged_config(user, "webui", merged(user, "d", "webui"), ahead) is False
    await valkey.custom_command(["HINCRBY", keys.seq, "n", "-1"])  # the history rolls back
    assert await cache.set_merged_config(user, "webui", merged(user, "d", "webui"), token) is False


async def test_a_fill_token_older_than_its_max_age_is_refused(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient
) -> None:
    """Stamps expire; a fill that waited longer than they live must not land."""
    user = uuid.uuid4()
    await fill(cache, uuid.uuid4(), "d", "webui")
    token = (await cache.lookup(user, "webui")).fill_token
    assert token is not None
    seq = token.split(":")[0]
    now = await server_ms(valkey)
    late = f"{seq}:{now - FILL_TOKEN_MAX_AGE_MS - 1000}"
    assert await cache.set_merged_config(user, "webui", merged(user, "d", "webui"), late) is False
    recent = f"{seq}:{now - FILL_TOKEN_MAX_AGE_MS + 5000}"
    assert await cache.set_merged_config(user, "webui", merged(user, "d", "webui"), recent)
    for bad in ("12", "a:b", "1:2:3", f"{seq}:"):
        assert not await cache.set_merged_config(user, "x", merged(user, "d", "x"), bad)


@pytest.mark.parametrize(
    "target",
    [
        (ScopeType.USER, "{user}", None),
        (ScopeType.DOMAIN, "alpha", None),
        (ScopeType.DOMAIN_USER_DEFAULTS, "alpha", ["webui"]),
        (ScopeType.PUBLIC, "public", None),
        (ScopeType.PUBLIC, "public", ["limits"]),
    ],
    ids=lambda t: f"{t[0].name}-{t[2]}",
)
async def test_validity_never_depends_on_the_index(
    valkey: GlideClient,
    registry: ScriptRegistry,
    keys: KeySchema,
    target: tuple[ScopeType, str, list[str] | None],
) -> None:
    """The stale read of the one-script design: an index key that expired (or was lost)
    before its entry let an invalidation miss the entry. Here the index is gone, so the
    clean-up cannot find the entries: they stay in memory, and still are never served."""
    cache = AppConfigFragmentCacheSource(valkey, registry, ttl_seconds=2, keys=keys)
    user = uuid.uuid4()
    await fill(cache, user, "alpha", *NAMES)
    index_keys = [keys.user_index(user), keys.domain_index("alpha"), keys.users_index]
    assert await valkey.delete(index_keys) == 3
    scope, scope_id, names = target
    await cache.invalidate_for_scope(scope, scope_id.format(user=user), names)
    await cache.reclaim()
    covered = set(names or NAMES)
    assert await valkey.exists([keys.entry(user, name) for name in covered]) == len(covered)
    expected = everything([user]) - pairs_of(user, covered)
    assert await cached_pairs(cache, [user]) == expected  # several names: get_all.lua
    one_by_one = {  # one name: get.lua
        (user, name) for name in NAMES if await cache.get_merged_config(user, name) is not None
    }
    assert one_by_one == expected


def pairs_of(user: uuid.UUID, names: Iterable[str]) -> set[tuple[uuid.UUID, str]]:
    return {(user, name) for name in names}


async def test_a_user_who_moved_domains_keeps_the_entries_of_the_new_one(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    """Entries carry the domain they were filled under: invalidating the old domain
    neither serves nor deletes what was filled under the new one."""
    user = uuid.uuid4()
    await fill(cache, user, "old", "webui")
    await fill(cache, user, "new", "theme")  # the user moved; the old index still lists it
    assert await cache.invalidate_for_scope(ScopeType.DOMAIN, "old") == 1
    assert await cached_pairs(cache, [user]) == {(user, "theme")}
    assert await valkey.exists([keys.entry(user, "theme")]) == 1
    assert await cache.invalidate_for_scope(ScopeType.DOMAIN, "new") == 1
    assert await cached_pairs(cache, [user]) == set()


async def test_wrong_type_index_key_leaves_no_orphan_value(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    await valkey.set(keys.domain_index("d"), "not a sorted set")
    with pytest.raises(Exception, match="WRONGTYPE"):
        await cache.set_merged_config(user, "webui", merged(user, "d", "webui"))
    # The value is written last, so a failed write leaves no entry the index cannot find.
    assert await valkey.exists([keys.entry(user, "webui")]) == 0


async def test_the_sequence_is_one_counter_per_prefix(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    token = (await cache.lookup(uuid.uuid4(), "webui")).fill_token
    assert token is not None and token.startswith("0:")
    await cache.invalidate_for_policy("webui")
    first = int(text(await valkey.hget(keys.seq, "n")))
    await cache.invalidate_for_policy("webui")
    await cache.invalidate_many([(ScopeType.USER, str(uuid.uuid4())), (ScopeType.DOMAIN, "d")])
    assert int(text(await valkey.hget(keys.seq, "n"))) == first + 2
    assert await valkey.pttl(keys.seq) == -1  # never expires
    token = (await cache.lookup(uuid.uuid4(), "webui")).fill_token
    assert token is not None and token.startswith(f"{first + 2}:")


@pytest.mark.parametrize(
    "corrupt",
    ["domain index", "user index", "users index", "sequence", "domain stamps", "queue"],
)
async def test_a_corrupt_index_key_starts_a_new_life_of_the_index(
    cache: AppConfigFragmentCacheSource,
    valkey: GlideClient,
    keys: KeySchema,
    corrupt: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A key of another type where the index belongs: the invalidation does not fail
    (it would fail again on every replay); a new life of the index makes every older
    entry and token invalid at once, and a sweep removes the wrong-typed key. The new
    life is counted and said once: a missing ACL grant looks the same to the scripts."""
    alpha, beta = uuid.uuid4(), uuid.uuid4()
    await fill(cache, alpha, "alpha", *NAMES)
    await fill(cache, beta, "beta", *NAMES)
    stale_token = (await cache.lookup(uuid.uuid4(), "webui")).fill_token
    key = {
        "domain index": keys.domain_index("alpha"),
        "user index": keys.user_index(alpha),
        "users index": keys.users_index,
        "sequence": keys.seq,
        "domain stamps": keys.domain_stamps("alpha"),
        "queue": keys.cleanup_queue,
    }[corrupt]
    await valkey.delete([key])
    await valkey.custom_command(["SADD", key, "someone else's"])

    with caplog.at_level(logging.WARNING, logger="atomic_cache"):
        if corrupt == "user index":
            await cache.invalidate_for_scope(ScopeType.USER, str(alpha))
        elif corrupt == "users index":
            await cache.invalidate_for_scope(ScopeType.PUBLIC, "public")
        else:
            await cache.invalidate_for_scope(ScopeType.DOMAIN, "alpha")
        assert await cached_pairs(cache, [alpha, beta]) == set()  # beta's entries too
        await cache.reclaim()
    assert cache.metrics.index_resets == 1
    said = [record.getMessage() for record in caplog.records]
    assert [message for message in said if "new life" in message] == [
        f"an invalidation under prefix {keys.prefix!r} met a key of another type in the"
        " cache's index, or a command the server refused (an ACL without a grant the"
        " scripts need?): starting a new life of the index"
    ]
    left = await keys_under(valkey, keys.prefix)
    assert not any(k.startswith(f"{keys.prefix}:merged:") for k in left)
    assert key not in left or text(await valkey.custom_command(["TYPE", key])) != "set"
    fresh = merged(alpha, "alpha", "webui")
    assert await cache.set_merged_config(alpha, "webui", fresh, stale_token) is False
    token = (await cache.lookup(alpha, "webui")).fill_token
    assert await cache.set_merged_config(alpha, "webui", fresh, token) is True
    assert await cache.get_merged_config(alpha, "webui") == fresh


# -- the required domain (the ranked model's entries) ------------------------------------


async def test_an_entry_of_another_domain_is_a_miss_with_a_token(
    cache: AppConfigFragmentCacheSource, valkey: GlideClient, keys: KeySchema
) -> None:
    user = uuid.uuid4()
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))  # a life: tokens fill
    await fill(cache, user, "alpha", "webui", "theme")
    # Filled under alpha: served to a caller in alpha, and to one that requires no domain.
    for domain in ("alpha", None):
        found = await cache.lookup_many(user, ["webui", "theme"], domain=domain)
        assert all(hit.value is not None for hit in found.values())
        assert (await cache.lookup(user, "webui", domain=domain)).value is not None
    # A caller of the same user in beta: a miss, with a token that fills over the entry.
    found = await cache.lookup_many(user, ["webui", "theme"], domain="beta")
    assert [hit.value for hit in found.values()] == [None, None]
    token = found["webui"].fill_token
    assert token
    single = await cache.lookup(user, "webui", domain="beta")
    assert single.value is None and single.fill_token
    assert await cache.set_many(user, [merged(user, "beta", "webui", v=2)], fill_token=token)
    raw = await valkey.get(keys.entry(user, "webui"))
    assert raw is not None and raw.split(b"\n")[0].endswith(b" beta")
    hit = (await cache.lookup_many(user, ["webui"], domain="beta"))["webui"].value
    assert hit is not None and hit.config == {"v": 2}
    assert (await cache.lookup_many(user, ["webui"], domain="alpha"))["webui"].value is None
    # The required domain is encoded as the header's is: a domain with a colon, a space.
    await fill(cache, user, "a b:c", "limits")
    assert (await cache.lookup_many(user, ["limits"], domain="a b:c"))["limits"].value
    assert (await cache.lookup(user, "limits", domain="a b")).value is None
