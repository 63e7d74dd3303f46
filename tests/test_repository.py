"""The repositories on real PostgreSQL and Valkey: merged view, read-around, bulk writes."""

from __future__ import annotations

import itertools
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    FragmentInput,
    FragmentKey,
    MyFragmentInput,
    PolicyExistsError,
    PolicyInUseError,
    ScopeType,
    UnknownPolicyError,
    UnknownUserError,
)
from atomic_cache.policy.validation import ConfigLimits

from .repo_tools import ALL_SCOPES, World, add_users, count_sql, make_world

P, D, DUD, U = ScopeType.PUBLIC, ScopeType.DOMAIN, ScopeType.DOMAIN_USER_DEFAULTS, ScopeType.USER


@pytest.fixture
async def world(clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource) -> World:
    return await make_world(clean_db, cache)


@pytest.fixture
def repo(clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource) -> AppConfigFragmentRepository:
    return AppConfigFragmentRepository(clean_db, cache=cache)


@pytest.fixture
def policies(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> AppConfigPolicyRepository:
    return AppConfigPolicyRepository(clean_db, cache=cache)


def scope_id(scope: ScopeType, world: World, user: uuid.UUID) -> str:
    return {P: "public", D: world.domain_of(user), DUD: world.domain_of(user), U: str(user)}[scope]


async def cached(cache: AppConfigFragmentCacheSource, world: World) -> set[tuple[uuid.UUID, str]]:
    present = set()
    for user in world.users:
        for name, found in (await cache.lookup_many(user, list(world.names))).items():
            if found.value is not None:
                present.add((user, name))
    return present


def every(
    world: World, users: list[uuid.UUID] | None = None, names: tuple[str, ...] | None = None
) -> set[tuple[uuid.UUID, str]]:
    return set(itertools.product(users or world.users, names or world.names))


# -- merged view ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4])
async def test_merge_order_for_every_combination_of_scopes(
    clean_db: AsyncEngine, repo: AppConfigFragmentRepository, world: World, size: int
) -> None:
    user = world.domains["alpha"][0]
    priority = {scope: rank for rank, scope in enumerate(ALL_SCOPES)}
    for combo in itertools.combinations(ALL_SCOPES, size):
        name = "webui"
        await repo.admin_bulk_delete(
            [
                FragmentKey(scope_type=s, scope_id=scope_id(s, world, user), name=name)
                for s in ALL_SCOPES
            ]
        )
        result = await repo.admin_bulk_create(
            [
                FragmentInput(
                    scope_type=s,
                    scope_id=scope_id(s, world, user),
                    name=name,
                    extra_config={"winner": s.value, "seen": {s.value: True}, "list": [s.value]},
                )
                for s in combo
            ]
        )
        assert result.failures == []
        for _ in range(2):  # from the database, then from the cache
            data = await repo.app_config(user, name)
            top = max(combo, key=priority.__getitem__)
            assert data.config == {
                "winner": top.value,
                "seen": {s.value: True for s in combo},
                "list": [top.value],
            }, combo
            assert [f.scope_type for f in data.fragments] == sorted(combo, key=priority.__getitem__)
            assert data.domain_name == "alpha"


async def test_fragments_of_other_users_and_domains_do_not_apply(
    repo: AppConfigFragmentRepository, world: World
) -> None:
    a1, a2 = world.domains["alpha"]
    (b1,) = world.domains["beta"]
    await repo.admin_bulk_create(
        [
            FragmentInput(scope_type=U, scope_id=str(a2), name="webui", extra_config={"who": "a2"}),
            FragmentInput(
                scope_type=D, scope_id="beta", name="webui", extra_config={"who": "beta"}
            ),
            FragmentInput(scope_type=DUD, scope_id="beta", name="webui", extra_config={"d": 1}),
        ]
    )
    assert (await repo.app_config(a1, "webui")).config is None
    assert (await repo.app_config(a2, "webui")).config == {"who": "a2"}
    assert (await repo.app_config(b1, "webui")).config == {"who": "beta", "d": 1}


async def test_reordered_policy_reverses_the_merge(
    repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository, world: World
) -> None:
    user = world.domains["beta"][0]
    await repo.admin_bulk_create(
        [
            FragmentInput(
                scope_type=P,
                scope_id="public",
                name="theme",
                extra_config={"color": "grey", "p": 1},
            ),
            FragmentInput(
                scope_type=U, scope_id=str(user), name="theme", extra_config={"color": "red"}
            ),
        ]
    )
    assert (await repo.app_config(user, "theme")).config == {"color": "red", "p": 1}
    await policies.update("theme", [U, P])
    assert (await repo.app_config(user, "theme")).config == {"color": "grey", "p": 1}
    # Restricting the policy hides fragments of scopes it no longer lists.
    await policies.update("theme", [U])
    data = await repo.app_config(user, "theme")
    assert data.config == {"color": "red"} and [f.scope_type for f in data.fragments] == [U]


async def test_lists_replace_and_objects_merge(
    repo: AppConfigFragmentRepository, world: World
) -> None:
    user = world.domains["alpha"][1]
    await repo.admin_bulk_create(
        [
            FragmentInput(
                scope_type=D, scope_id="alpha", name="webui",
                extra_config={
                    "tabs": [1, 2, 3],
                    "ui": {"theme": "dark", "font": {"size": 12, "face": "mono"}},
                    "x": {"k": 1},
                },
            ),
            FragmentInput(
                scope_type=U, scope_id=str(user), name="webui",
                extra_config={"tabs": [9], "ui": {"font": {"size": 14}}, "x": None},
            ),
        ]
    )  # fmt: skip
    assert (await repo.app_config(user, "webui")).config == {
        "tabs": [9],
        "ui": {"theme": "dark", "font": {"size": 14, "face": "mono"}},
        "x": None,
    }


async def test_no_fragment_means_config_none(
    repo: AppConfigFragmentRepository, world: World
) -> None:
    data = await repo.app_config(world.users[0], "limits")
    assert data.config is None and data.fragments == [] and data.name == "limits"
    assert [(d.name, d.config) for d in await repo.my_app_configs(world.users[0])] == [
        ("limits", None), ("theme", None), ("webui", None),
    ]  # fmt: skip


async def test_unknown_user_and_unknown_name(
    repo: AppConfigFragmentRepository, world: World
) -> None:
    with pytest.raises(UnknownUserError):
        await repo.app_config(uuid.uuid4(), "webui")
    with pytest.raises(UnknownUserError):
        await repo.my_app_configs(uuid.uuid4())
    with pytest.raises(UnknownPolicyError):
        await repo.app_config(world.users[0], "nope")


# -- read-around -----------------------------------------------------------------------------


async def test_second_read_runs_no_sql(
    clean_db: AsyncEngine, repo: AppConfigFragmentRepository, world: World
) -> None:
    user = world.users[0]
    await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"a": 1})])
    with count_sql(clean_db) as first:
        cold = await repo.app_config(user, "webui")
    assert len(first) == 1  # the merged view is one statement
    with count_sql(clean_db) as second:
        warm = await repo.app_config(user, "webui")
    assert len(second) == 0 and warm == cold


async def test_my_app_configs_warm_runs_no_sql(
    clean_db: AsyncEngine,
    repo: AppConfigFragmentRepository,
    world: World,
    cache: AppConfigFragmentCacheSource,
) -> None:
    user = world.users[0]
    await repo.bulk_create_my(user, [MyFragmentInput(name="theme", extra_config={"dark": True})])
    with count_sql(clean_db) as cold:
        first = await repo.my_app_configs(user)
    assert len(cold) == 1
    with count_sql(clean_db) as warm:
        second = await repo.my_app_configs(user)
    assert len(warm) == 0 and second == first
    assert [d.name for d in second] == ["limits", "theme", "webui"]
    # One name dropped: only that name is read, in one statement.
    await cache.invalidate_for_scope(U, str(user), ["theme"])
    with count_sql(clean_db) as partial:
        third = await repo.my_app_configs(user)
    assert len(partial) == 1 and third == first
    assert "'theme'" in partial.parameters[0] and "'webui'" not in partial.parameters[0]
    # And app_config of any name is now warm too.
    with count_sql(clean_db) as single:
        assert await repo.app_config(user, "limits") == first[0]
    assert len(single) == 0


async def test_policy_changes_reach_my_app_configs(
    repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository, world: World
) -> None:
    user = world.users[0]
    assert [d.name for d in await repo.my_app_configs(user)] == ["limits", "theme", "webui"]
    await policies.create("extra", [P])
    assert [d.name for d in await repo.my_app_configs(user)] == [
        "extra",
        "limits",
        "theme",
        "webui",
    ]
    await policies.delete("limits")
    assert [d.name for d in await repo.my_app_configs(user)] == ["extra", "theme", "webui"]


async def test_concurrent_misses_share_one_query(
    clean_db: AsyncEngine, repo: AppConfigFragmentRepository, world: World
) -> None:
    import asyncio

    user = world.users[0]
    with count_sql(clean_db) as sql:
        results = await asyncio.gather(*(repo.app_config(user, "webui") for _ in range(20)))
    assert len(sql) == 1
    assert all(r == results[0] for r in results)


async def test_works_without_a_cache(clean_db: AsyncEngine, world: World) -> None:
    repo = AppConfigFragmentRepository(clean_db)
    user = world.users[0]
    result = await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"a": 1})])
    assert len(result.successes) == 1
    assert (await repo.app_config(user, "webui")).config == {"a": 1}
    assert [d.config for d in await repo.my_app_configs(user)] == [None, None, {"a": 1}]


# -- bulk writes invalidate exactly their slice ----------------------------------------------


async def warm(
    repo: AppConfigFragmentRepository, cache: AppConfigFragmentCacheSource, world: World
) -> None:
    for user in world.users:
        await repo.my_app_configs(user)
    assert await cached(cache, world) == every(world)


async def test_my_write_invalidates_only_that_user_and_name(
    repo: AppConfigFragmentRepository, cache: AppConfigFragmentCacheSource, world: World
) -> None:
    a1 = world.domains["alpha"][0]
    await warm(repo, cache, world)
    await repo.bulk_create_my(a1, [MyFragmentInput(name="webui", extra_config={"v": 1})])
    assert await cached(cache, world) == every(world) - {(a1, "webui")}
    assert (await repo.app_config(a1, "webui")).config == {"v": 1}

    await warm(repo, cache, world)
    await repo.bulk_update_my(a1, [MyFragmentInput(name="webui", extra_config={"v": 2})])
    assert await cached(cache, world) == every(world) - {(a1, "webui")}
    assert (await repo.app_config(a1, "webui")).config == {"v": 2}

    await warm(repo, cache, world)
    await repo.bulk_delete_my(a1, ["webui"])
    assert await cached(cache, world) == every(world) - {(a1, "webui")}
    assert (await repo.app_config(a1, "webui")).config is None


@pytest.mark.parametrize("scope", [D, DUD])
async def test_domain_write_reaches_only_its_members(
    repo: AppConfigFragmentRepository,
    cache: AppConfigFragmentCacheSource,
    world: World,
    scope: ScopeType,
) -> None:
    await warm(repo, cache, world)
    item = FragmentInput(scope_type=scope, scope_id="alpha", name="theme", extra_config={"d": 1})
    await repo.admin_bulk_create([item])
    assert await cached(cache, world) == every(world) - every(
        world, world.domains["alpha"], ("theme",)
    )
    for user in world.domains["alpha"]:
        assert (await repo.app_config(user, "theme")).config == {"d": 1}
    assert (await repo.app_config(world.domains["beta"][0], "theme")).config is None

    await warm(repo, cache, world)
    await repo.admin_bulk_update([item.model_copy(update={"extra_config": {"d": 2}})])
    assert await cached(cache, world) == every(world) - every(
        world, world.domains["alpha"], ("theme",)
    )
    await warm(repo, cache, world)
    await repo.admin_bulk_delete([FragmentKey(scope_type=scope, scope_id="alpha", name="theme")])
    assert await cached(cache, world) == every(world) - every(
        world, world.domains["alpha"], ("theme",)
    )


async def test_public_write_reaches_everyone_for_that_name(
    repo: AppConfigFragmentRepository, cache: AppConfigFragmentCacheSource, world: World
) -> None:
    await warm(repo, cache, world)
    await repo.admin_bulk_create(
        [FragmentInput(scope_type=P, scope_id="public", name="limits", extra_config={"cpu": 4})]
    )
    assert await cached(cache, world) == every(world) - every(world, names=("limits",))
    assert {(await repo.app_config(u, "limits")).config["cpu"] for u in world.users} == {4}  # type: ignore[index]


async def test_policy_change_reaches_that_name_for_everyone(
    repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository,
    cache: AppConfigFragmentCacheSource, world: World,
) -> None:  # fmt: skip
    await warm(repo, cache, world)
    await policies.update("webui", [U, P])
    assert await cached(cache, world) == every(world) - every(world, names=("webui",))


async def test_mixed_bulk_invalidates_union_in_one_round_trip(
    repo: AppConfigFragmentRepository, cache: AppConfigFragmentCacheSource, world: World,
) -> None:  # fmt: skip
    a2 = world.domains["alpha"][1]
    await warm(repo, cache, world)
    await repo.admin_bulk_create(
        [
            FragmentInput(scope_type=U, scope_id=str(a2), name="limits", extra_config={"x": 1}),
            FragmentInput(scope_type=D, scope_id="beta", name="webui", extra_config={"x": 2}),
            FragmentInput(scope_type=U, scope_id="nope", name="webui", extra_config={}),  # fails
        ]
    )
    b1 = world.domains["beta"][0]
    assert await cached(cache, world) == every(world) - {(a2, "limits"), (b1, "webui")}


# -- partial success and failure codes -------------------------------------------------------


async def test_partial_success_and_every_failure_code(
    clean_db: AsyncEngine,
    cache: AppConfigFragmentCacheSource,
    policies: AppConfigPolicyRepository,
    world: World,
) -> None:
    repo = AppConfigFragmentRepository(
        clean_db, cache=cache, limits=ConfigLimits(max_bytes=200, max_depth=3)
    )
    await policies.create("public_only", [P])
    a1 = world.domains["alpha"][0]
    deep: dict[str, object] = {"a": {"b": {"c": {"d": 1}}}}
    items = [
        FragmentInput(scope_type=U, scope_id=str(a1), name="webui", extra_config={"ok": 1}),  # 0 ok
        FragmentInput(scope_type=U, scope_id=str(a1), name="nope", extra_config={}),  # 1
        FragmentInput(scope_type=D, scope_id="alpha", name="public_only", extra_config={}),  # 2
        FragmentInput(scope_type=U, scope_id=str(uuid.uuid4()), name="webui", extra_config={}),  # 3
        FragmentInput(scope_type=D, scope_id="gamma", name="webui", extra_config={}),  # 4
        FragmentInput(scope_type=U, scope_id=str(a1), name="theme", extra_config=[1, 2]),  # 5
        FragmentInput(scope_type=U, scope_id=str(a1), name="theme", extra_config=deep),  # 6
        FragmentInput(
            scope_type=U, scope_id=str(a1), name="theme", extra_config={"x": "y" * 300}
        ),  # 7
        FragmentInput(scope_type=U, scope_id="not-a-uuid", name="theme", extra_config={}),  # 8
        FragmentInput(scope_type=P, scope_id="alpha", name="theme", extra_config={}),  # 9
        FragmentInput(
            scope_type=U, scope_id=str(a1), name="webui", extra_config={"again": 1}
        ),  # 10
        FragmentInput(
            scope_type=U, scope_id=str(a1), name="theme", extra_config={"n": float("nan")}
        ),  # 11
        FragmentInput(
            scope_type=P, scope_id="public", name="public_only", extra_config={"ok": 2}
        ),  # 12 ok
    ]
    result = await repo.admin_bulk_create(items)
    assert [(f.index, f.code) for f in result.failures] == [
        (1, "unknown_policy"),
        (2, "scope_not_allowed"),
        (3, "unknown_user"),
        (4, "unknown_domain"),
        (5, "invalid_config"),
        (6, "config_too_deep"),
        (7, "config_too_large"),
        (8, "invalid_scope_id"),
        (9, "invalid_scope_id"),
        (10, "duplicate_item"),
        (11, "invalid_config"),
    ]
    assert all(f.message for f in result.failures)
    assert [(s.name, s.extra_config) for s in result.successes] == [
        ("webui", {"ok": 1}),
        ("public_only", {"ok": 2}),
    ]
    # Committed once, each success stored.
    assert (await repo.app_config(a1, "webui")).config == {"ok": 1}
    assert (await repo.app_config(a1, "public_only")).config == {"ok": 2}

    again = await repo.admin_bulk_create([items[0]])
    assert [(f.index, f.code) for f in again.failures] == [(0, "already_exists")]
    missing = await repo.admin_bulk_update([items[0].model_copy(update={"name": "theme"})])
    assert [(f.index, f.code) for f in missing.failures] == [(0, "not_found")]
    gone = await repo.admin_bulk_delete([FragmentKey(scope_type=U, scope_id=str(a1), name="theme")])
    assert [(f.index, f.code) for f in gone.failures] == [(0, "not_found")]


async def test_my_paths_require_user_in_the_policy(
    repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository, world: World
) -> None:
    await policies.create("domain_only", [D])
    user = world.users[0]
    result = await repo.bulk_create_my(
        user,
        [
            MyFragmentInput(name="domain_only", extra_config={}),
            MyFragmentInput(name="webui", extra_config={"k": 1}),
        ],
    )
    assert [(f.index, f.code) for f in result.failures] == [(0, "scope_not_allowed")]
    assert [s.scope_id for s in result.successes] == [str(user)]
    unknown = await repo.bulk_create_my(
        uuid.uuid4(), [MyFragmentInput(name="webui", extra_config={})]
    )
    assert [(f.index, f.code) for f in unknown.failures] == [(0, "unknown_user")]


async def test_bulk_delete_my_returns_keys(repo: AppConfigFragmentRepository, world: World) -> None:
    user = world.users[0]
    await repo.bulk_create_my(
        user, [MyFragmentInput(name=n, extra_config={"n": n}) for n in ("webui", "theme")]
    )
    result = await repo.bulk_delete_my(user, ["theme", "limits"])
    assert result.successes == [FragmentKey(scope_type=U, scope_id=str(user), name="theme")]
    assert [(f.index, f.code) for f in result.failures] == [(1, "not_found")]
    with pytest.raises(ValueError, match="single string"):
        await repo.bulk_delete_my(user, "theme")


# -- policies ----------------------------------------------------------------------------------


async def test_policy_lifecycle(
    clean_db: AsyncEngine, repo: AppConfigFragmentRepository, policies: AppConfigPolicyRepository
) -> None:
    (user,) = (await add_users(clean_db, {"d": 1}))["d"]
    created = await policies.create("webui", [P, U])
    assert created.scope_sources == [P, U]
    with pytest.raises(PolicyExistsError):
        await policies.create("webui", [P])
    for bad in ([], [P, P], ["bogus"], "public"):
        with pytest.raises(ValueError, match="scope"):
            await policies.create("x", bad)
    with pytest.raises(ValueError, match="1-64"):
        await policies.create("", [P])
    with pytest.raises(UnknownPolicyError):
        await policies.update("nope", [P])
    await repo.bulk_create_my(user, [MyFragmentInput(name="webui", extra_config={"a": 1})])
    assert (await repo.app_config(user, "webui")).config == {"a": 1}
    with pytest.raises(PolicyInUseError, match="1 fragment"):
        await policies.delete("webui")
    assert (await policies.get("webui")) is not None
    await policies.delete("webui", cascade=True)
    assert await policies.get("webui") is None and await policies.list() == []
    with pytest.raises(UnknownPolicyError):
        await repo.app_config(user, "webui")  # and not served from the cache
    with pytest.raises(UnknownPolicyError):
        await policies.delete("webui")
