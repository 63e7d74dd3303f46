"""ensure_domain / ensure_user: add missing identities, never change existing ones."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from atomic_cache import (
    AppConfigFragmentCacheSource,
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    MyFragmentInput,
    ScopeType,
    UnknownUserError,
)
from atomic_cache.policy import (
    UnknownDomainError,
    UserDomainMismatchError,
    domains,
    ensure_domain,
    ensure_user,
    users,
)


async def domain_rows(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.scalars(select(domains.c.name).order_by(domains.c.name))).all())


async def user_rows(engine: AsyncEngine) -> list[tuple[uuid.UUID, str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(users.c.uuid, users.c.domain_name).order_by(users.c.uuid))
        return [(row.uuid, row.domain_name) for row in rows]


async def test_ensure_domain_adds_a_domain_once(clean_db: AsyncEngine) -> None:
    assert await ensure_domain(clean_db, "default") is True
    assert await ensure_domain(clean_db, "default") is False
    assert await ensure_domain(clean_db, "research") is True
    assert await domain_rows(clean_db) == ["default", "research"]


async def test_ensure_user_adds_a_user_once(clean_db: AsyncEngine) -> None:
    user = uuid.uuid4()
    await ensure_domain(clean_db, "default")
    assert await ensure_user(clean_db, user, "default") is True
    assert await ensure_user(clean_db, user, "default") is False
    assert await user_rows(clean_db) == [(user, "default")]


async def test_ensure_user_never_moves_a_user(clean_db: AsyncEngine) -> None:
    user = uuid.uuid4()
    await ensure_domain(clean_db, "default")
    await ensure_domain(clean_db, "research")
    await ensure_user(clean_db, user, "default")
    with pytest.raises(UserDomainMismatchError, match="is in domain 'default', not 'research'"):
        await ensure_user(clean_db, user, "research")
    assert await user_rows(clean_db) == [(user, "default")]


async def test_ensure_user_in_an_unknown_domain_raises_and_adds_nothing(
    clean_db: AsyncEngine,
) -> None:
    with pytest.raises(UnknownDomainError, match="no domain 'nowhere'"):
        await ensure_user(clean_db, uuid.uuid4(), "nowhere")
    assert await user_rows(clean_db) == []
    assert await domain_rows(clean_db) == []


@pytest.mark.parametrize("name", ["", "d" * 65, None])
async def test_a_bad_domain_name_is_refused_before_any_io(clean_db: AsyncEngine, name: Any) -> None:
    with pytest.raises(ValueError, match="1-64 characters"):
        await ensure_domain(clean_db, name)
    with pytest.raises(ValueError, match="1-64 characters"):
        await ensure_user(clean_db, uuid.uuid4(), name)
    assert await domain_rows(clean_db) == []


async def test_a_user_id_is_a_uuid_or_its_string_form(clean_db: AsyncEngine) -> None:
    await ensure_domain(clean_db, "default")
    user = uuid.uuid4()
    assert await ensure_user(clean_db, str(user), "default") is True
    assert await ensure_user(clean_db, user, "default") is False
    for other in [user.hex, f"{{{user}}}", "bob", user.int]:
        with pytest.raises(ValueError, match=r"^user_id must be a uuid\.UUID or its string form"):
            await ensure_user(clean_db, other, "default")  # type: ignore[arg-type]
    assert await user_rows(clean_db) == [(user, "default")]


async def test_an_ensured_user_can_write_and_read_fragments(
    clean_db: AsyncEngine, cache: AppConfigFragmentCacheSource
) -> None:
    user = uuid.uuid4()
    policies = AppConfigPolicyRepository(clean_db, cache=cache)
    repo = AppConfigFragmentRepository(clean_db, cache=cache)
    try:
        await policies.create("webui", [ScopeType.PUBLIC, ScopeType.DOMAIN, ScopeType.USER])
        theme = [MyFragmentInput(name="webui", extra_config={"theme": "dark"})]
        before = await repo.bulk_create_my(user, theme)
        assert [failure.code for failure in before.failures] == ["unknown_user"]
        with pytest.raises(UnknownUserError):
            await repo.app_config(user, "webui")

        await ensure_domain(clean_db, "default")
        await ensure_user(clean_db, user, "default")
        after = await repo.bulk_create_my(user, theme)
        assert after.failures == []
        config = await repo.app_config(user, "webui")
        assert (config.domain_name, config.config) == ("default", {"theme": "dark"})
    finally:
        await repo.close()
        await policies.close()
