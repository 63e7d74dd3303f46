"""One rule for user ids at every public entry point: a ``uuid.UUID`` or its string form
(8-4-4-4-12 hex digits, either case) is taken, as the same user; anything else raises
ValueError naming the argument before any SQL or Valkey call (in a bulk write's items, a
USER scope id string in another form is that item's ``invalid_scope_id`` failure). The
ranked model's ids follow the same rule (its ValueError is ``InvalidInputError``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from glide import GlideClient
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    FragmentInput,
    FragmentKey,
    InvalidationTarget,
    KeySchema,
    LocalCache,
    MyFragmentInput,
    ScopeType,
    ensure_domain,
    ensure_user,
)
from atomic_cache.keys import user_component
from atomic_cache.policy import users
from atomic_cache.ranked import (
    AllowListRepository,
    AppConfigRepository,
    DefinitionRepository,
    FragmentUpsert,
    InvalidInputError,
    RankedDBSource,
    Scope,
)

from .pg_tools import emptied, ranked_database
from .repo_tools import CountingRegistry, count_sql

USER = uuid.UUID("0b8f4a52-3f6e-4c1d-9a57-6d2e8c4b7f10")
DOMAIN_ID = uuid.UUID("5d1c7a20-9e43-4b6f-8f12-3a4b5c6d7e8f")
RULE = r"must be a uuid\.UUID or its string form \(8-4-4-4-12 hex digits\)"


def accepted(user: uuid.UUID) -> list[Any]:
    """Every form the rule takes, each the same user."""
    return [user, str(user), str(user).upper()]


def refused_text(user: uuid.UUID) -> list[str]:
    """Strings the rule refuses (uuid.UUID() itself would parse the first five)."""
    return [
        user.hex,
        "{" + str(user) + "}",
        user.urn,
        f" {user}",
        f"{user}\n",
        "bob",
        "",
    ]


def refused(user: uuid.UUID) -> list[Any]:
    """Everything the rule refuses: other strings, and values that are no string."""
    return [*refused_text(user), user.int, user.bytes, str(user).encode(), None]


# -- pure: keys, targets, models --------------------------------------------------------------


def test_keys_take_a_uuid_or_its_string_form_alike() -> None:
    keys = KeySchema()
    for form in accepted(USER):
        assert user_component(form) == str(USER)
        assert keys.entry(form, "webui") == f"app_config:merged:{USER}:webui"
        assert keys.user_stamps(form) == f"app_config:stamp:user:{USER}"
        assert keys.user_index(form) == f"app_config:idx:user:{USER}"
    for form in refused(USER):
        with pytest.raises(ValueError, match=f"^user_id {RULE}, not "):
            user_component(form)
        with pytest.raises(ValueError, match=f"^user_id {RULE}"):
            keys.entry(form, "webui")


def test_a_user_invalidation_target_takes_a_uuid_or_its_string_form_alike() -> None:
    for form in accepted(USER):
        target = InvalidationTarget.of(ScopeType.USER, form, ["webui"])
        assert (target.scope_id, target.script_args()) == (
            str(USER),
            ["user", str(USER), 1, "webui"],
        )
    for form in refused(USER):
        with pytest.raises(ValueError, match=f"^a USER scope id {RULE}"):
            InvalidationTarget.of(ScopeType.USER, form)
    with pytest.raises(ValueError, match="DOMAIN scope id must be a non-empty string"):
        InvalidationTarget.of(ScopeType.DOMAIN, USER)


def test_fragment_keys_and_inputs_take_a_uuid_for_user_scope() -> None:
    for form in accepted(USER):
        key = FragmentKey(scope_type=ScopeType.USER, scope_id=form, name="webui")
        item = FragmentInput(
            scope_type=ScopeType.USER, scope_id=form, name="webui", extra_config={}
        )
        assert key.scope_id == item.scope_id == str(USER)
        assert key == FragmentKey(scope_type=ScopeType.USER, scope_id=USER, name="webui")
    # Another string is kept: the repository reports it as that item's failure.
    for text in refused_text(USER):
        kept = FragmentKey(scope_type=ScopeType.USER, scope_id=text, name="webui")
        assert kept.scope_id == text
    not_text: list[Any] = [USER.int, USER.bytes, str(USER).encode(), None]
    for value in not_text:
        with pytest.raises(ValidationError, match=r"a USER scope_id must be a uuid\.UUID"):
            FragmentKey(scope_type=ScopeType.USER, scope_id=value, name="webui")
    # The domain scopes' ids are domain names, PUBLIC's is "public": no UUID there.
    for scope in [ScopeType.DOMAIN, ScopeType.DOMAIN_USER_DEFAULTS, ScopeType.PUBLIC]:
        with pytest.raises(ValidationError, match="only for USER scope"):
            FragmentInput(scope_type=scope, scope_id=USER, name="webui", extra_config={})
    domain = FragmentKey(scope_type=ScopeType.DOMAIN, scope_id=str(USER).upper(), name="w")
    assert domain.scope_id == str(USER).upper()  # a domain name is kept as given


def test_ranked_fragment_upserts_take_a_uuid_or_its_string_form_alike() -> None:
    for scope in [Scope.USER, Scope.DOMAIN]:
        for form in accepted(USER):
            item = FragmentUpsert(scope_type=scope, scope_id=form, config_name="t", config={})
            assert item.scope_id == USER
        for form in refused(USER):
            if form is None:
                continue  # None is a public fragment's scope id: refused as a missing id
            with pytest.raises(ValidationError, match=f"scope_id {RULE}"):
                FragmentUpsert(scope_type=scope, scope_id=form, config_name="t", config={})
        with pytest.raises(ValidationError, match="needs a scope_id"):
            FragmentUpsert(scope_type=scope, scope_id=None, config_name="t", config={})


# -- the policy model: identities and repositories ---------------------------------------------


async def test_ensure_user_takes_a_uuid_or_its_string_form_alike(clean_db: AsyncEngine) -> None:
    await ensure_domain(clean_db, "default")
    assert await ensure_user(clean_db, str(USER).upper(), "default") is True
    assert await ensure_user(clean_db, USER, "default") is False
    assert await ensure_user(clean_db, str(USER), "default") is False
    async with clean_db.connect() as conn:
        rows = (await conn.execute(select(users.c.uuid, users.c.domain_name))).all()
    assert [tuple(row) for row in rows] == [(USER, "default")]


async def test_ensure_user_refuses_any_other_form_before_any_sql(clean_db: AsyncEngine) -> None:
    await ensure_domain(clean_db, "default")
    other = uuid.uuid4()
    for form in refused(other):
        with count_sql(clean_db) as sql, pytest.raises(ValueError, match=f"^user_id {RULE}"):
            await ensure_user(clean_db, form, "default")
        assert sql.statements == []
    async with clean_db.connect() as conn:
        assert (await conn.execute(select(users.c.uuid))).all() == []


@pytest.fixture
async def counted(
    valkey: GlideClient, keys: KeySchema
) -> tuple[AppConfigFragmentCacheSource, CountingRegistry]:
    """A cache source whose script calls (Valkey round trips) are counted, from 0 after
    the first invalidation of its prefix (which starts a life of the index: fills with a
    lookup's token are accepted from then on)."""
    registry = CountingRegistry()
    await registry.load(valkey)
    cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys)
    await cache.invalidate_for_scope(ScopeType.USER, str(uuid.UUID(int=0)))
    registry.calls.clear()
    return cache, registry


@pytest.fixture
async def repo(
    clean_db: AsyncEngine, counted: tuple[AppConfigFragmentCacheSource, CountingRegistry]
) -> AsyncIterator[AppConfigFragmentRepository]:
    """A repository with a cache; USER in the domain "default"; a policy "webui"."""
    cache, _ = counted
    await ensure_domain(clean_db, "default")
    await ensure_user(clean_db, USER, "default")
    policies = AppConfigPolicyRepository(clean_db, cache=cache)
    await policies.create("webui", [ScopeType.PUBLIC, ScopeType.DOMAIN, ScopeType.USER])
    repository = AppConfigFragmentRepository(clean_db, cache=cache)
    await repository.start()
    yield repository
    await repository.close()
    await policies.close()


async def test_the_repository_takes_a_uuid_or_its_string_form_as_the_same_user(
    repo: AppConfigFragmentRepository,
) -> None:
    for version, form in enumerate(accepted(USER)):
        item = [MyFragmentInput(name="webui", extra_config={"v": version})]
        created = await repo.bulk_create_my(form, item)
        assert (created.failures, [f.scope_id for f in created.successes]) == ([], [str(USER)])
        read = await repo.app_config(form, "webui")
        assert (read.user_id, read.config) == (USER, {"v": version})
        item = [MyFragmentInput(name="webui", extra_config={"v": version, "updated": True})]
        updated = await repo.bulk_update_my(form, item)
        assert updated.failures == []
        every = await repo.my_app_configs(form)
        assert [(c.user_id, c.config) for c in every] == [(USER, {"v": version, "updated": True})]
        deleted = await repo.bulk_delete_my(form, ["webui"])
        assert deleted.successes == [
            FragmentKey(scope_type=ScopeType.USER, scope_id=USER, name="webui")
        ]
        assert (await repo.app_config(form, "webui")).config is None


async def test_the_repository_refuses_any_other_form_before_any_io(
    clean_db: AsyncEngine,
    counted: tuple[AppConfigFragmentCacheSource, CountingRegistry],
    repo: AppConfigFragmentRepository,
) -> None:
    _, registry = counted
    item = [MyFragmentInput(name="webui", extra_config={"v": 1})]
    calls: list[Callable[[Any], Awaitable[object]]] = [
        lambda user: repo.app_config(user, "webui"),
        lambda user: repo.my_app_configs(user),
        lambda user: repo.bulk_create_my(user, item),
        lambda user: repo.bulk_update_my(user, item),
        lambda user: repo.bulk_delete_my(user, ["webui"]),
    ]
    before = registry.total
    for call in calls:
        for form in refused(USER):
            with count_sql(clean_db) as sql, pytest.raises(ValueError, match=f"^user_id {RULE}"):
                await call(form)
            assert sql.statements == []
    assert registry.total == before


async def test_admin_writes_take_a_uuid_scope_id_and_report_other_forms_per_item(
    repo: AppConfigFragmentRepository,
) -> None:
    items = [
        FragmentInput(scope_type=ScopeType.USER, scope_id=form, name="webui", extra_config={})
        for form in refused_text(USER)
    ]
    result = await repo.admin_bulk_create(items)
    assert result.successes == []
    assert [(f.index, f.code) for f in result.failures] == [
        (index, "invalid_scope_id") for index in range(len(items))
    ]
    assert "must be a uuid.UUID or its string form" in result.failures[0].message
    for form in accepted(USER):
        written = await repo.admin_bulk_create(
            [FragmentInput(scope_type=ScopeType.USER, scope_id=form, name="webui", extra_config={})]
        )
        assert (written.failures, [f.scope_id for f in written.successes]) == ([], [str(USER)])
        key = FragmentKey(scope_type=ScopeType.USER, scope_id=form, name="webui")
        assert [k.scope_id for k in (await repo.admin_bulk_delete([key])).successes] == [str(USER)]


# -- the cache source and the local cache -----------------------------------------------------


def merged(user: uuid.UUID, name: str = "webui") -> AppConfigData:
    return AppConfigData(user_id=user, domain_name="default", name=name, config={"v": 1})


async def test_the_cache_source_takes_a_uuid_or_its_string_form_as_the_same_user(
    counted: tuple[AppConfigFragmentCacheSource, CountingRegistry],
) -> None:
    cache, _ = counted
    for form in accepted(USER):
        miss = await cache.lookup(form, "webui")
        assert miss.fill_token is not None
        assert await cache.set_merged_config(form, "webui", merged(USER), miss.fill_token)
        for reader in accepted(USER):
            assert await cache.get_merged_config(reader, "webui") == merged(USER)
            assert (await cache.lookup(reader, "webui")).value == merged(USER)
            assert (await cache.lookup_many(reader, ["webui"]))["webui"].value == merged(USER)
            registered = await cache.lookup_registered(reader, ["webui"])
            assert registered.values == {"webui": merged(USER)}
            assert (await cache.lookup_all(reader)).names is None  # no catalogue cached
        target = InvalidationTarget.of(ScopeType.USER, form, ["webui"])
        assert await cache.invalidate_many([target]) == 1
        assert await cache.get_merged_config(USER, "webui") is None
    assert await cache.set_many(str(USER).upper(), [merged(USER)])
    assert await cache.invalidate_for_scope(ScopeType.USER, str(USER).upper()) == 1


async def test_the_cache_source_refuses_any_other_form_before_any_io(
    counted: tuple[AppConfigFragmentCacheSource, CountingRegistry],
) -> None:
    cache, registry = counted
    calls: list[Callable[[Any], Awaitable[object]]] = [
        lambda user: cache.get_merged_config(user, "webui"),
        lambda user: cache.lookup(user, "webui"),
        lambda user: cache.lookup_many(user, ["webui"]),
        lambda user: cache.lookup_registered(user, ["webui"]),
        lambda user: cache.lookup_all(user),
        lambda user: cache.set_merged_config(user, "webui", merged(USER)),
        lambda user: cache.set_many(user, [merged(USER)]),
    ]
    for call in calls:
        for form in refused(USER):
            with pytest.raises(ValueError, match=f"^user_id {RULE}"):
                await call(form)
    for form in refused(USER):
        with pytest.raises(ValueError, match=f"^a USER scope id {RULE}"):
            await cache.invalidate_for_scope(ScopeType.USER, form)
    assert registry.total == 0


async def test_the_local_cache_takes_a_uuid_or_its_string_form_as_the_same_user(
    valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    local = await LocalCache.create(valkey_url, keys=keys, check_interval_s=0.2, poll_s=0.02)
    try:
        registry = CountingRegistry()
        await registry.load(valkey)
        cache = AppConfigFragmentCacheSource(valkey, registry, keys=keys, local_cache=local)
        await cache.invalidate_for_scope(ScopeType.USER, str(uuid.UUID(int=0)))  # a life
        for _ in range(1500):  # until it serves, and has heard of that invalidation
            server = int(await valkey.hget(keys.seq, "n") or 0)
            if local.serving and local.sequence == server:
                break
            await asyncio.sleep(0.01)
        miss = await cache.lookup(USER, "webui")
        assert await cache.set_merged_config(USER, "webui", merged(USER), miss.fill_token)
        calls = registry.total
        for form in accepted(USER):
            assert local.get(form, "webui") == merged(USER)
            assert local.get_many(form, ["webui"]) == [merged(USER)]
            assert (await cache.lookup(form, "webui")).value == merged(USER)
        assert registry.total == calls  # every read above was answered locally
        for form in refused(USER):
            with pytest.raises(ValueError, match=f"^user_id {RULE}"):
                local.get(form, "webui")
            with pytest.raises(ValueError, match=f"^user_id {RULE}"):
                local.get_many(form, ["webui"])
    finally:
        await local.close()


# -- the ranked model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def ranked_engine(postgres_server_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of this module's with the ranked tables (they share the policy model's
    table names)."""
    async with ranked_database(postgres_server_url, "uids", pool_size=3, max_overflow=3) as engine:
        yield engine


async def test_the_ranked_model_takes_a_uuid_or_its_string_form_alike(
    ranked_engine: AsyncEngine, counted: tuple[AppConfigFragmentCacheSource, CountingRegistry]
) -> None:
    engine = await emptied(ranked_engine)
    cache, registry = counted
    definitions = DefinitionRepository(engine, cache=cache)
    grants = AllowListRepository(engine, cache=cache)
    configs = AppConfigRepository(engine, cache=cache)
    db = RankedDBSource(engine)
    await definitions.create("theme")
    for scope in Scope:
        await grants.create("theme", scope)
    written = await configs.bulk_upsert(
        [
            FragmentUpsert(
                scope_type=Scope.DOMAIN, scope_id=str(DOMAIN_ID), config_name="theme", config={}
            ),
            FragmentUpsert(
                scope_type=Scope.USER,
                scope_id=str(USER).upper(),
                config_name="theme",
                config={"mine": True},
            ),
        ]
    )
    assert [f.scope_id for f in written] == [DOMAIN_ID, USER]
    for user in accepted(USER):
        for domain in accepted(DOMAIN_ID):
            resolved = await configs.resolve(user, domain, ["theme"])
            assert [c.config for c in resolved] == [{"mine": True}]
            assert await db.merged(user, domain, ["theme"]) == {"theme": {"mine": True}}
    purged = await configs.purge_fragments([str(written[1].id).upper()])
    assert [f.id for f in purged] == [written[1].id]

    before = registry.total
    for form in refused(USER):
        with count_sql(engine) as sql:
            with pytest.raises(InvalidInputError, match=f"^user_id {RULE}"):
                await configs.resolve(form, DOMAIN_ID, ["theme"])
            with pytest.raises(InvalidInputError, match=f"^domain_id {RULE}"):
                await configs.resolve(USER, form, ["theme"])
            with pytest.raises(InvalidInputError, match=f"^user_id {RULE}"):
                await db.merged(form, DOMAIN_ID, ["theme"])
            with pytest.raises(InvalidInputError, match=f"^a fragment id {RULE}"):
                await configs.purge_fragments([form])
        assert sql.statements == []
    assert registry.total == before
    for repository in (definitions, grants, configs):
        await repository.close()
