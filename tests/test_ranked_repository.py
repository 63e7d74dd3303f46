"""The ranked model's repositories on real servers: merges by rank through the cache, the
``{}`` rule, the anonymous read, the domain an entry was filled under, and what each write
invalidates (exactly its slice: every other name, user and domain still hits).

The ranked tables share a name with the policy model's, so these tests run in a database
of their own (as tests/test_ranked_db.py); each test has a key prefix of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from glide import GlideClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import AppConfigFragmentCacheSource, KeySchema, ScriptRegistry
from atomic_cache.cache.client import create_valkey_client
from atomic_cache.cache.local import LocalCache
from atomic_cache.ranked import (
    ANONYMOUS_DOMAIN,
    ANONYMOUS_USER,
    AllowListRepository,
    AppConfigRepository,
    DefinitionRepository,
    FragmentUpsert,
    RankedDBSource,
    Scope,
    WriteNotAllowedError,
)
from atomic_cache.tools.embedded import EmbeddedValkey

from .pg_tools import emptied, ranked_database
from .repo_tools import CountingRegistry, count_sql
from .valkey_tools import raw_command

D1, D2 = uuid.UUID(int=0xD1), uuid.UUID(int=0xD2)
U1, U2, U3 = uuid.UUID(int=0x01), uuid.UUID(int=0x02), uuid.UUID(int=0x03)
NAMES = ["theme", "menu"]
# Who reads: two users of D1, one of D2, and the anonymous caller (None).
READERS: list[tuple[uuid.UUID, uuid.UUID] | None] = [(U1, D1), (U2, D1), (U3, D2), None]
BOUND_S = 15.0


@pytest.fixture(scope="module")
async def ranked_engine(postgres_server_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of this module's, with the ranked tables made by create_schema."""
    async with ranked_database(postgres_server_url, "rrepo", pool_size=5, max_overflow=5) as engine:
        yield engine


@pytest.fixture
async def engine(ranked_engine: AsyncEngine) -> AsyncEngine:
    """The module's database, emptied (the caches of earlier tests too)."""
    return await emptied(ranked_engine)


@dataclass
class Rig:
    engine: AsyncEngine
    cache: AppConfigFragmentCacheSource
    defs: DefinitionRepository
    allow: AllowListRepository
    configs: AppConfigRepository
    db: RankedDBSource
    frags: dict[str, uuid.UUID]  # fragment ids by a short label


def frag(scope: Scope, scope_id: uuid.UUID | None, name: str, **config: Any) -> FragmentUpsert:
    return FragmentUpsert(scope_type=scope, scope_id=scope_id, config_name=name, config=config)


@pytest.fixture
async def rig(engine: AsyncEngine, cache: AppConfigFragmentCacheSource) -> Rig:
    """theme: granted at every scope, with public, D1, D2 and U1 fragments; menu: public
    and domain only (no user grant), with public and D1 fragments; limits: registered,
    granted at public, no fragment (its merge is ``{}``)."""
    defs = DefinitionRepository(engine, cache=cache)
    allow = AllowListRepository(engine, cache=cache)
    configs = AppConfigRepository(engine, cache=cache)
    for name in [*NAMES, "limits"]:
        await defs.create(name)
    for scope in Scope:
        await allow.create("theme", scope)
    await allow.create("menu", Scope.PUBLIC)
    await allow.create("menu", Scope.DOMAIN)
    await allow.create("limits", Scope.PUBLIC)
    written = await configs.bulk_upsert(
        [
            frag(Scope.PUBLIC, None, "theme", color="blue", size=1, font="serif"),
            frag(Scope.DOMAIN, D1, "theme", color="red"),
            frag(Scope.DOMAIN, D2, "theme", color="green"),
            frag(Scope.USER, U1, "theme", size=3),
            frag(Scope.PUBLIC, None, "menu", items=["home"]),
            frag(Scope.DOMAIN, D1, "menu", items=["home", "admin"]),
        ]
    )
    labels = ["theme/public", "theme/D1", "theme/D2", "theme/U1", "menu/public", "menu/D1"]
    return Rig(
        engine,
        cache,
        defs,
        allow,
        configs,
        RankedDBSource(engine),
        {label: f.id for label, f in zip(labels, written, strict=True)},
    )


async def read(rig: Rig, reader: tuple[uuid.UUID, uuid.UUID] | None, names: list[str]) -> Any:
    if reader is None:
        return [c.config for c in await rig.configs.resolve_public(names)]
    return [c.config for c in await rig.configs.resolve(reader[0], reader[1], names)]


async def fresh(rig: Rig, reader: tuple[uuid.UUID, uuid.UUID] | None, names: list[str]) -> Any:
    if reader is None:
        merged = await rig.db.merged_public(names)
    else:
        merged = await rig.db.merged(reader[0], reader[1], names)
    return [merged[name] for name in names]


async def cached(rig: Rig) -> set[tuple[int, str]]:
    """(reader index, name) of every entry the cache serves now, looked up directly."""
    present = set()
    for index, reader in enumerate(READERS):
        user, domain = (ANONYMOUS_USER, ANONYMOUS_DOMAIN) if reader is None else reader
        found = await rig.cache.lookup_many(user, NAMES, domain=str(domain))
        present |= {(index, name) for name, hit in found.items() if hit.value is not None}
    return present


ALL = {(index, name) for index in range(len(READERS)) for name in NAMES}


async def warm(rig: Rig) -> None:
    for reader in READERS:
        assert await read(rig, reader, NAMES) == await fresh(rig, reader, NAMES)
    assert await cached(rig) == ALL


# -- reads ---------------------------------------------------------------------------------


async def test_merge_by_rank_through_the_cache(rig: Rig) -> None:
    assert await read(rig, (U1, D1), ["theme"]) == [{"color": "red", "size": 3, "font": "serif"}]
    assert await read(rig, (U2, D1), ["theme"]) == [{"color": "red", "size": 1, "font": "serif"}]
    assert await read(rig, (U3, D2), ["theme"]) == [{"color": "green", "size": 1, "font": "serif"}]
    before = rig.configs.stats().hits
    with count_sql(rig.engine) as sql:
        assert await read(rig, (U1, D1), ["theme"]) == [
            {"color": "red", "size": 3, "font": "serif"}
        ]
    assert len(sql) == 0
    assert rig.configs.stats().hits == before + 1
    # The domain ranked above the user: the domain's color and, now, its size win.
    await rig.configs.bulk_upsert([frag(Scope.DOMAIN, D1, "theme", color="red", size=7)])
    await rig.allow.update_rank("theme", Scope.DOMAIN, 400)
    assert await read(rig, (U1, D1), ["theme"]) == [{"color": "red", "size": 7, "font": "serif"}]
    assert await read(rig, (U1, D1), ["theme"]) == await fresh(rig, (U1, D1), ["theme"])


async def test_a_warm_resolve_of_many_names_is_one_round_trip_and_no_sql(rig: Rig) -> None:
    names = ["theme", "menu", "limits"]
    await read(rig, (U1, D1), names)
    before = rig.configs.stats()
    with count_sql(rig.engine) as sql:
        assert await read(rig, (U1, D1), names) == await fresh(rig, (U1, D1), names)
        sql_of_fresh = 1
    assert len(sql) == sql_of_fresh  # the comparison's own read, nothing of resolve's
    after = rig.configs.stats()
    assert after.hits == before.hits + 3 and after.misses == before.misses


async def test_request_order_and_repeats(rig: Rig) -> None:
    names = ["menu", "nope", "theme", "menu", "limits", "nope"]
    for _ in range(2):  # cold, then warm
        found = await rig.configs.resolve(U2, D1, names)
        assert [c.config_name for c in found] == names
        assert [c.config for c in found] == [
            {"items": ["home", "admin"]},
            {},
            {"color": "red", "size": 1, "font": "serif"},
            {"items": ["home", "admin"]},
            {},
            {},
        ]
    assert await rig.configs.resolve(U2, D1, []) == []


async def entry_keys(valkey: GlideClient, keys: KeySchema) -> list[str]:
    stored = await valkey.custom_command(["KEYS", f"{keys.prefix}:merged:*"])
    assert isinstance(stored, list)
    return sorted(key.decode() for key in stored)


def counting_repository(
    rig: Rig, valkey: GlideClient, keys: KeySchema, counting: CountingRegistry
) -> AppConfigRepository:
    """Another repository on the same cache, its round trips counted."""
    return AppConfigRepository(
        rig.engine, cache=AppConfigFragmentCacheSource(valkey, counting, keys=keys)
    )


async def test_empty_is_cached_for_a_registered_name_never_for_an_unregistered_one(
    rig: Rig, valkey: GlideClient, keys: KeySchema
) -> None:
    for _ in range(2):
        assert await read(rig, (U1, D1), ["limits", "nope"]) == [{}] * 2
        assert await read(rig, None, ["limits", "nope"]) == [{}] * 2
    # Names that can never be registered (too long, empty) are not even looked up.
    with count_sql(rig.engine) as sql:
        assert await read(rig, (U1, D1), ["x" * 200, "", "limits"]) == [{}] * 3
        assert await read(rig, None, ["x" * 200, ""]) == [{}] * 2
    assert len(sql) == 0
    assert await entry_keys(valkey, keys) == [
        keys.entry(ANONYMOUS_USER, "limits"),
        keys.entry(U1, "limits"),
    ]
    # The catalogue of registered names was cached with the first fill.
    members = await valkey.smembers(keys.catalogue)
    assert sorted(m.decode() for m in members) == ["limits", "menu", "theme"]


async def test_a_warm_resolve_with_unregistered_names_is_one_round_trip_and_no_sql(
    rig: Rig, valkey: GlideClient, keys: KeySchema
) -> None:
    names = ["theme", "nope", "menu", "limits", "other"]
    expected = await fresh(rig, (U1, D1), names)
    assert await read(rig, (U1, D1), names) == expected  # fills, catalogue included
    counting = CountingRegistry()
    await counting.load(valkey)
    repo = counting_repository(rig, valkey, keys, counting)
    with count_sql(rig.engine) as sql:
        assert [c.config for c in await repo.resolve(U1, D1, names)] == expected
    assert counting.calls == {"get_all": 1} and len(sql) == 0
    # A resolve of unregistered names only: the same one round trip.
    with count_sql(rig.engine) as sql:
        assert [c.config for c in await repo.resolve(U2, D1, ["nope", "other"])] == [{}, {}]
    assert counting.calls == {"get_all": 2} and len(sql) == 0
    assert repo.stats().hits == 3 and repo.stats().misses == 0


async def test_made_up_names_never_grow_the_cache(
    rig: Rig, valkey: GlideClient, keys: KeySchema
) -> None:
    """The anonymous caller, and a signed-in one, asking for a thousand names nobody
    registered: no entry, no SQL once the catalogue is cached, the same key count."""
    await read(rig, None, ["theme"])  # fills the catalogue
    before = await valkey.custom_command(["KEYS", f"{keys.prefix}:*"])
    assert isinstance(before, list)
    made_up = [f"made-up-{i}" for i in range(1000)]
    with count_sql(rig.engine) as sql:
        for start in range(0, len(made_up), 100):
            assert await read(rig, None, made_up[start : start + 100]) == [{}] * 100
            assert await read(rig, (U3, D2), made_up[start : start + 100]) == [{}] * 100
    assert len(sql) == 0
    after = await valkey.custom_command(["KEYS", f"{keys.prefix}:*"])
    assert isinstance(after, list)
    assert sorted(after) == sorted(before)


async def test_a_name_registered_after_it_was_read_as_unregistered_is_served_at_once(
    rig: Rig,
) -> None:
    for reader in READERS:
        assert await read(rig, reader, ["late", "theme"]) == [
            {},
            *await fresh(rig, reader, ["theme"]),
        ]
        assert await read(rig, reader, ["late"]) == [{}]  # from the cached catalogue
    await rig.defs.create("late")
    await rig.allow.create("late", Scope.PUBLIC)
    await rig.configs.bulk_upsert([frag(Scope.PUBLIC, None, "late", on=True)])
    for reader in READERS:
        assert await read(rig, reader, ["late"]) == [{"on": True}]
    # Purged: unregistered again, for everyone, the name's entries and all.
    await rig.defs.purge("late")
    for reader in READERS:
        assert await read(rig, reader, ["late", "theme"]) == [
            {},
            *await fresh(rig, reader, ["theme"]),
        ]


async def test_the_anonymous_read_is_public_only_and_follows_public_writes_only(rig: Rig) -> None:
    assert await read(rig, None, NAMES) == [
        {"color": "blue", "size": 1, "font": "serif"},
        {"items": ["home"]},
    ]
    with count_sql(rig.engine) as sql:
        assert await read(rig, None, NAMES) == await fresh(rig, None, NAMES)
    assert len(sql) == 1  # the comparison's own
    # Domain and user writes leave the anonymous entries alone...
    await rig.configs.bulk_upsert(
        [frag(Scope.DOMAIN, D1, "theme", color="pink"), frag(Scope.USER, U1, "theme", size=9)]
    )
    anonymous = READERS.index(None)
    assert {(anonymous, "theme"), (anonymous, "menu")} <= await cached(rig)
    # ...a public write does not.
    await rig.configs.bulk_upsert([frag(Scope.PUBLIC, None, "theme", color="black")])
    assert (anonymous, "theme") not in await cached(rig)
    assert await read(rig, None, ["theme"]) == [{"color": "black"}]


async def test_an_entry_of_one_domain_is_not_served_in_another(rig: Rig) -> None:
    """The same user, moved from D1 to D2 (the domain comes from the caller's session)."""
    in_d1 = [{"color": "red", "size": 3, "font": "serif"}]
    in_d2 = [{"color": "green", "size": 3, "font": "serif"}]
    assert await read(rig, (U1, D1), ["theme"]) == in_d1
    assert await read(rig, (U1, D2), ["theme"]) == in_d2
    assert await read(rig, (U1, D2), ["theme"]) == in_d2
    assert await read(rig, (U1, D1), ["theme"]) == in_d1
    # And what is cached now (filled under D1) is served to D1 alone.
    assert (await rig.cache.lookup(U1, "theme", domain=str(D1))).value is not None
    assert (await rig.cache.lookup(U1, "theme", domain=str(D2))).value is None


# -- what each write invalidates -----------------------------------------------------------

Write = Callable[[Rig], Awaitable[object]]


def theme_of(*indexes: int) -> set[tuple[int, str]]:
    return {(index, "theme") for index in indexes}


Stamp = tuple[str, str, str]  # (scope, id, name) as the stamp keys and fields spell them


async def stamps(valkey: GlideClient, keys: KeySchema) -> dict[Stamp, bytes]:
    """Every stamp under the prefix: which slice of which name, and its sequence."""
    found: dict[Stamp, bytes] = {}
    listed = await valkey.custom_command(["KEYS", f"{keys.prefix}:stamp:*"])
    assert isinstance(listed, list)
    for key in listed:
        scope, _, scope_id = key.decode()[len(keys.prefix) + len(":stamp:") :].partition(":")
        for field, value in (await valkey.hgetall(key)).items():
            found[scope, scope_id or "public", field.decode()] = value
    return found


def stamped(*slices: Stamp) -> set[Stamp]:
    return set(slices)


CATALOGUE = ("public", "public", "#names")  # the stamp of the catalogue of names


EVERYONE = range(len(READERS))
WRITES: dict[str, tuple[Write, set[tuple[int, str]], set[Stamp]]] = {
    "public upsert": (
        lambda r: r.configs.bulk_upsert([frag(Scope.PUBLIC, None, "theme", color="white")]),
        theme_of(*EVERYONE),
        stamped(("public", "public", "theme")),
    ),
    "domain upsert": (
        lambda r: r.configs.bulk_upsert([frag(Scope.DOMAIN, D1, "theme", color="pink")]),
        theme_of(0, 1),
        stamped(("domain", str(D1), "theme")),
    ),
    "domain upsert, new fragment": (
        lambda r: r.configs.bulk_upsert([frag(Scope.DOMAIN, D2, "menu", items=[])]),
        {(2, "menu")},
        stamped(("domain", str(D2), "menu")),
    ),
    "user upsert": (
        lambda r: r.configs.bulk_upsert([frag(Scope.USER, U2, "theme", size=5)]),
        theme_of(1),
        stamped(("user", str(U2), "theme")),
    ),
    "public purge": (
        lambda r: r.configs.purge_fragments([r.frags["menu/public"]]),
        {(index, "menu") for index in EVERYONE},
        stamped(("public", "public", "menu")),
    ),
    "domain purge": (
        lambda r: r.configs.purge_fragments([r.frags["theme/D2"]]),
        theme_of(2),
        stamped(("domain", str(D2), "theme")),
    ),
    "user purge": (
        lambda r: r.configs.purge_fragments([r.frags["theme/U1"]]),
        theme_of(0),
        stamped(("user", str(U1), "theme")),
    ),
    "rank changed": (
        lambda r: r.allow.update_rank("theme", Scope.DOMAIN, 400),
        theme_of(*EVERYONE),
        stamped(("public", "public", "theme")),
    ),
    "rank unchanged": (lambda r: r.allow.update_rank("theme", Scope.DOMAIN, 200), set(), stamped()),
    "grant created": (lambda r: r.allow.create("menu", Scope.USER), set(), stamped()),
    "domain grant purged": (
        lambda r: r.allow.purge("theme", Scope.DOMAIN),
        theme_of(0, 1, 2),
        stamped(("domain", str(D1), "theme"), ("domain", str(D2), "theme")),
    ),
    "user grant purged": (
        lambda r: r.allow.purge("theme", Scope.USER),
        theme_of(0),
        stamped(("user", str(U1), "theme")),
    ),
    "public grant purged": (
        lambda r: r.allow.purge("menu", Scope.PUBLIC),
        {(index, "menu") for index in EVERYONE},
        stamped(("public", "public", "menu")),
    ),
    "definition created": (lambda r: r.defs.create("other"), set(), stamped(CATALOGUE)),
    "definition purged": (
        lambda r: r.defs.purge("theme"),
        theme_of(*EVERYONE),
        stamped(("public", "public", "theme"), CATALOGUE),
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
async def test_each_write_invalidates_exactly_its_slice(
    rig: Rig, write: str, valkey: GlideClient, keys: KeySchema
) -> None:
    change, covered, slices = WRITES[write]
    await warm(rig)
    before = rig.configs.stats().invalidations
    stamps_before = await stamps(valkey, keys)
    await change(rig)
    assert await cached(rig) == ALL - covered
    stamps_after = await stamps(valkey, keys)
    moved = {slice_ for slice_, seq in stamps_after.items() if stamps_before.get(slice_) != seq}
    assert moved == slices
    if not covered:
        # Nothing of the entries; a definition created drops the catalogue of names only.
        assert rig.configs.stats().invalidations == before + (write == "definition created")
    for reader in READERS:
        assert await read(rig, reader, NAMES) == await fresh(rig, reader, NAMES)


async def test_an_upsert_is_all_or_none(rig: Rig) -> None:
    await warm(rig)
    before = rig.configs.stats().invalidations
    with pytest.raises(WriteNotAllowedError) as refused:
        await rig.configs.bulk_upsert(
            [
                frag(Scope.PUBLIC, None, "theme", color="never"),
                frag(Scope.USER, U1, "menu", never=True),  # no user grant for menu
                frag(Scope.DOMAIN, D1, "unknown", never=True),  # not registered
            ]
        )
    assert refused.value.pairs == [("menu", Scope.USER), ("unknown", Scope.DOMAIN)]
    assert await cached(rig) == ALL
    assert rig.configs.stats().invalidations == before
    assert await rig.db.merged_public(["theme"]) == {
        "theme": {"color": "blue", "size": 1, "font": "serif"}
    }


async def test_a_plain_sql_write_reaches_another_repository(
    rig: Rig, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    """Another process's cache (its own source on the same prefix), registered first; a
    psql-like write it never sees is recorded by the triggers and replayed."""
    other_cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    other = AppConfigRepository(rig.engine, cache=other_cache)
    assert await other.start()
    assert await rig.configs.start()
    for reader in READERS:
        await read(rig, reader, NAMES)
    assert await cached(rig) == ALL
    async with rig.engine.begin() as conn:
        await conn.execute(
            text(
                'UPDATE app_config_fragments SET config = \'{"color": "plain"}\''
                " WHERE scope_type = 'domain' AND config_name = 'theme' AND scope_id = :d"
            ),
            {"d": D1},
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while await cached(rig) != ALL - theme_of(0, 1):
        assert loop.time() < deadline, "the plain-SQL write never reached the cache"
        await asyncio.sleep(0.02)
    got = await other.resolve(U1, D1, ["theme"])
    assert got[0].config == {"color": "plain", "size": 3, "font": "serif"}
    await other.close()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND_S
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


async def test_with_a_local_cache_a_warm_resolve_makes_no_round_trip(
    rig: Rig, valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    """Unregistered names included; another process's writes (a fragment, a definition)
    still reach it, announced."""
    local = await LocalCache.create(valkey_url, keys=keys)
    counting = CountingRegistry()
    await counting.load(valkey)
    source = AppConfigFragmentCacheSource(valkey, counting, keys=keys, local_cache=local)
    repo = AppConfigRepository(rig.engine, cache=source)
    names = ["theme", "nope", "menu"]

    async def resolved(user: uuid.UUID, domain: uuid.UUID) -> list[dict[str, Any]]:
        return [c.config for c in await repo.resolve(user, domain, names)]

    try:
        assert await local.ready(10.0)
        # Another process filled Valkey, the catalogue included: this one copies what it
        # is served, the catalogue too.
        assert await rig.configs.start()
        for reader in [(U1, D1), (U3, D2)]:
            await read(rig, reader, names)
            assert await resolved(*reader) == await fresh(rig, reader, names)
        assert counting.calls == {"get_all": 2}
        calls = counting.total
        with count_sql(rig.engine) as sql:
            for reader in [(U1, D1), (U3, D2)]:
                assert await resolved(*reader) == await fresh(rig, reader, names)
        assert counting.total == calls and len(sql) == 2  # the comparisons' own
        await rig.configs.bulk_upsert([frag(Scope.DOMAIN, D1, "theme", color="gold")])

        async def gold() -> bool:
            return bool((await resolved(U1, D1))[0]["color"] == "gold")

        await until(gold, "the other process's fragment never reached the local cache")
        assert (await resolved(U3, D2))[0]["color"] == "green"
        await rig.defs.create("nope")
        await rig.allow.create("nope", Scope.PUBLIC)
        await rig.configs.bulk_upsert([frag(Scope.PUBLIC, None, "nope", x=1)])

        async def registered() -> bool:
            return (await resolved(U3, D2))[1] == {"x": 1}

        await until(registered, "the other process's definition never reached the local cache")
    finally:
        await repo.close()
        await local.close()


async def test_start_caches_the_catalogue(rig: Rig, valkey: GlideClient, keys: KeySchema) -> None:
    assert await valkey.exists([keys.catalogue]) == 0  # the rig's definitions dropped it
    assert await rig.configs.start()
    assert sorted(m.decode() for m in await valkey.smembers(keys.catalogue)) == [
        "limits",
        "menu",
        "theme",
    ]
    with count_sql(rig.engine) as sql:  # the merge alone: no read of the definitions
        assert await read(rig, (U1, D1), ["menu", "nope"]) == [{"items": ["home", "admin"]}, {}]
    assert len(sql) == 1


async def test_a_new_definition_shows_while_the_catalogue_invalidation_is_pending(
    engine: AsyncEngine, registry: ScriptRegistry, keys: KeySchema
) -> None:
    """The catalogue's invalidation failed (the node turned read-only, as an old primary
    after a failover): the cached catalogue, which lacks the new name, is not trusted."""
    with EmbeddedValkey() as server:
        client = await create_valkey_client(server.url, request_timeout_ms=2000)
        await registry.load(client)
        cache = AppConfigFragmentCacheSource(client, registry, keys=keys)
        defs, allow = (
            DefinitionRepository(engine, cache=cache),
            AllowListRepository(engine, cache=cache),
        )
        configs = AppConfigRepository(engine, cache=cache)
        await defs.create("theme")
        await allow.create("theme", Scope.PUBLIC)
        await configs.bulk_upsert([frag(Scope.PUBLIC, None, "theme", color="blue")])
        assert await configs.start()
        resolved = await configs.resolve_public(["theme", "late"])
        assert [c.config for c in resolved] == [{"color": "blue"}, {}]
        await raw_command(server.port, "REPLICAOF", "127.0.0.1", "1")
        await defs.create("late")
        await allow.create("late", Scope.PUBLIC)
        await configs.bulk_upsert([frag(Scope.PUBLIC, None, "late", on=True)])
        assert configs._cache.pending.drop_catalogue
        resolved = await configs.resolve_public(["theme", "late"])
        assert [c.config for c in resolved] == [{"color": "blue"}, {"on": True}]
        for repo in (defs, allow, configs):
            await repo.close()
        await client.close()


async def test_a_name_registered_with_plain_sql_reaches_another_repository(
    rig: Rig, valkey: GlideClient, registry: ScriptRegistry, keys: KeySchema
) -> None:
    """Another process has the catalogue cached without ``late``; a psql-like transaction
    registers, grants and writes it: the other process serves it without a write of
    its own (the triggers dropped the catalogue)."""
    other = AppConfigRepository(
        rig.engine, cache=AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    )
    assert await other.start()
    assert [c.config for c in await other.resolve_public(["late"])] == [{}]
    assert (await valkey.smembers(keys.catalogue)) != set()
    async with rig.engine.begin() as conn:
        for statement in (
            "INSERT INTO app_config_definitions (config_name) VALUES ('late')",
            "INSERT INTO app_config_allow_list (config_name, scope_type, rank)"
            " VALUES ('late', 'public', 100)",
            "INSERT INTO app_config_fragments (config_name, scope_type, scope_id, config)"
            """ VALUES ('late', 'public', NULL, '{"on": true}')""",
        ):
            await conn.execute(text(statement))

    async def served() -> bool:
        return [c.config for c in await other.resolve_public(["late"])] == [{"on": True}]

    await until(served, "the plain-SQL definition never reached the cache")
    await other.close()


async def test_with_the_cache_down_reads_and_writes_go_to_sql(
    engine: AsyncEngine, valkey_url: str, registry: ScriptRegistry, keys: KeySchema
) -> None:
    client = await create_valkey_client(valkey_url, request_timeout_ms=500)
    down = AppConfigFragmentCacheSource(client, registry, keys=keys)
    await client.close()  # every call on it fails from now on
    defs = DefinitionRepository(engine, cache=down)
    allow = AllowListRepository(engine, cache=down)
    configs = AppConfigRepository(engine, cache=down)
    await defs.create("theme")
    await allow.create("theme", Scope.PUBLIC)
    await configs.bulk_upsert([frag(Scope.PUBLIC, None, "theme", color="blue")])
    for _ in range(2):
        assert [c.config for c in await configs.resolve(U1, D1, ["theme", "nope"])] == [
            {"color": "blue"},
            {},
        ]
        assert [c.config for c in await configs.resolve_public(["theme"])] == [{"color": "blue"}]
    assert configs.stats().fills == 0


async def test_without_a_cache(engine: AsyncEngine) -> None:
    defs, allow, configs = (
        DefinitionRepository(engine),
        AllowListRepository(engine),
        AppConfigRepository(engine),
    )
    await defs.create("theme")
    await allow.create("theme", Scope.USER)
    await configs.bulk_upsert([frag(Scope.USER, U1, "theme", a=1)])
    assert [c.config for c in await configs.resolve(U1, D1, ["theme"])] == [{"a": 1}]
    assert [c.config for c in await configs.resolve_public(["theme"])] == [{}]
    await defs.purge("theme")
    assert [c.config for c in await configs.resolve(U1, D1, ["theme"])] == [{}]
