"""AppConfigDBSource: the SQL of the merged view, policies and fragment writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import String, and_, any_, cast, delete, func, insert, or_, select, true, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..merge import merge_fragments
from ..models import (
    DOMAIN_SCOPES,
    PUBLIC_SCOPE_ID,
    AppConfigData,
    AppConfigFragment,
    ScopeType,
)
from .models import AppConfigPolicy, FragmentKey
from .schema import app_config_fragments, app_config_policies, domains, users


class UnknownUserError(LookupError):
    """The user does not exist: raised by the reads (``app_config``,
    ``my_app_configs``); a bulk write reports it per item, as ``unknown_user``."""


class UnknownPolicyError(LookupError):
    """No app-config policy has that name: raised by ``app_config`` and by a policy's
    ``update`` and ``delete``; a bulk write reports it per item, as ``unknown_policy``."""


def _fragment(row: Row[Any], name: str) -> AppConfigFragment:
    return AppConfigFragment(
        id=row.id,
        scope_type=ScopeType(row.scope_type),
        scope_id=row.scope_id,
        name=name,
        extra_config=row.extra_config,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _merged_view_statement(user_id: uuid.UUID, names: Sequence[str] | None) -> Any:
    """One statement: the user's domain by sub-query, each policy, the fragments that
    apply to the user, restricted to and ordered by the policy's scope_sources."""
    user = select(users.c.uuid, users.c.domain_name).where(users.c.uuid == user_id).subquery("u")
    policy = app_config_policies
    fragment = app_config_fragments
    applies_to_user = or_(
        and_(
            fragment.c.scope_type == ScopeType.PUBLIC.value, fragment.c.scope_id == PUBLIC_SCOPE_ID
        ),
        and_(
            fragment.c.scope_type.in_([scope.value for scope in DOMAIN_SCOPES]),
            fragment.c.scope_id == user.c.domain_name,
        ),
        and_(
            fragment.c.scope_type == ScopeType.USER.value,
            fragment.c.scope_id == cast(user.c.uuid, String),
        ),
    )
    statement = (
        select(
            user.c.domain_name,
            policy.c.config_name,
            fragment.c.id,
            fragment.c.scope_type,
            fragment.c.scope_id,
            fragment.c.extra_config,
            fragment.c.created_at,
            fragment.c.updated_at,
        )
        .select_from(
            user.join(policy, true()).outerjoin(
                fragment,
                and_(
                    fragment.c.name == policy.c.config_name,
                    fragment.c.scope_type == any_(policy.c.scope_sources),
                    applies_to_user,
                ),
            )
        )
        .order_by(
            policy.c.config_name,
            func.array_position(policy.c.scope_sources, fragment.c.scope_type),
        )
    )
    if names is not None:
        statement = statement.where(policy.c.config_name.in_(list(names)))
    return statement


class AppConfigDBSource:
    """Reads and writes of the BEP-1052 tables; the repository owns the transactions."""

    def __init__(self, engine: AsyncEngine, *, label: str | None = None) -> None:
        self.engine = engine
        # A comment in the merged view's SQL (``SELECT /* label */ ...``): who reads,
        # for pg_stat_statements, and for counters that leave background reads out.
        self._prefix = f"/* {label} */" if label else None

    # -- the merged view -----------------------------------------------------------------

    async def merged_configs(
        self, user_id: uuid.UUID, names: Sequence[str] | None = None
    ) -> list[AppConfigData]:
        """The merged view of ``names`` (every policy name when None) for one user, in one
        SQL statement; a name without a policy is left out. UnknownUserError if no user."""
        statement = _merged_view_statement(user_id, names)
        if self._prefix is not None:
            statement = statement.prefix_with(self._prefix)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(statement)).all()
            if not rows and not await self._user_exists(conn, user_id):
                raise UnknownUserError(f"no user {user_id}")
        grouped: dict[str, tuple[str, list[AppConfigFragment]]] = {}
        for row in rows:
            _, fragments = grouped.setdefault(row.config_name, (row.domain_name, []))
            if row.id is not None:
                fragments.append(_fragment(row, row.config_name))
        return [
            AppConfigData(
                user_id=user_id,
                domain_name=domain_name,
                name=name,
                fragments=fragments,
                config=merge_fragments(f.extra_config for f in fragments),
            )
            for name, (domain_name, fragments) in grouped.items()
        ]

    async def _user_exists(self, conn: AsyncConnection, user_id: uuid.UUID) -> bool:
        query = select(users.c.uuid).where(users.c.uuid == user_id)
        if self._prefix is not None:
            query = query.prefix_with(self._prefix)
        return await conn.scalar(query) is not None

    # -- lookups inside a write transaction ----------------------------------------------

    @staticmethod
    async def policies(conn: AsyncConnection, names: Iterable[str]) -> dict[str, AppConfigPolicy]:
        rows = await conn.execute(
            select(app_config_policies).where(app_config_policies.c.config_name.in_(set(names)))
        )
        return {
            row.config_name: AppConfigPolicy(
                id=row.id,
                config_name=row.config_name,
                scope_sources=[ScopeType(s) for s in row.scope_sources],
            )
            for row in rows
        }

    @staticmethod
    async def existing_users(
        conn: AsyncConnection, ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, str]:
        """The given users that exist, with their domain."""
        wanted = set(ids)
        if not wanted:
            return {}
        rows = await conn.execute(
            select(users.c.uuid, users.c.domain_name).where(users.c.uuid.in_(wanted))
        )
        return {row.uuid: row.domain_name for row in rows}

    @staticmethod
    async def existing_domains(conn: AsyncConnection, names: Iterable[str]) -> set[str]:
        wanted = set(names)
        if not wanted:
            return set()
        rows = await conn.execute(select(domains.c.name).where(domains.c.name.in_(wanted)))
        return {row.name for row in rows}

    # -- fragment writes (each inside the caller's savepoint) ----------------------------

    @staticmethod
    def _matches(key: FragmentKey) -> Any:
        fragment = app_config_fragments
        return and_(
            fragment.c.scope_type == key.scope_type.value,
            fragment.c.scope_id == key.scope_id,
            fragment.c.name == key.name,
        )

    @staticmethod
    async def insert_fragment(
        conn: AsyncConnection, key: FragmentKey, extra_config: dict[str, Any]
    ) -> AppConfigFragment:
        row = (
            await conn.execute(
                insert(app_config_fragments)
                .values(
                    id=uuid.uuid4(),
                    scope_type=key.scope_type.value,
                    scope_id=key.scope_id,
                    name=key.name,
                    extra_config=extra_config,
                )
                .returning(app_config_fragments)
            )
        ).one()
        return _fragment(row, key.name)

    @classmethod
    async def update_fragment(
        cls, conn: AsyncConnection, key: FragmentKey, extra_config: dict[str, Any]
    ) -> AppConfigFragment | None:
        row = (
            await conn.execute(
                update(app_config_fragments)
                .where(cls._matches(key))
                .values(extra_config=extra_config, updated_at=func.now())
                .returning(app_config_fragments)
            )
        ).one_or_none()
        return None if row is None else _fragment(row, key.name)

    @classmethod
    async def delete_fragment(cls, conn: AsyncConnection, key: FragmentKey) -> bool:
        result = await conn.execute(
            delete(app_config_fragments)
            .where(cls._matches(key))
            .returning(app_config_fragments.c.id)
        )
        return result.first() is not None

    # -- policies ------------------------------------------------------------------------

    @staticmethod
    async def insert_policy(
        conn: AsyncConnection, name: str, scope_sources: Sequence[ScopeType]
    ) -> AppConfigPolicy:
        row = (
            await conn.execute(
                insert(app_config_policies)
                .values(
                    id=uuid.uuid4(),
                    config_name=name,
                    scope_sources=[s.value for s in scope_sources],
                )
                .returning(app_config_policies.c.id)
            )
        ).one()
        return AppConfigPolicy(id=row.id, config_name=name, scope_sources=list(scope_sources))

    @staticmethod
    async def update_policy(
        conn: AsyncConnection, name: str, scope_sources: Sequence[ScopeType]
    ) -> AppConfigPolicy | None:
        row = (
            await conn.execute(
                update(app_config_policies)
                .where(app_config_policies.c.config_name == name)
                .values(scope_sources=[s.value for s in scope_sources], updated_at=func.now())
                .returning(app_config_policies.c.id)
            )
        ).one_or_none()
        if row is None:
            return None
        return AppConfigPolicy(id=row.id, config_name=name, scope_sources=list(scope_sources))

    @staticmethod
    async def count_fragments(conn: AsyncConnection, name: str) -> int:
        count = await conn.scalar(
            select(func.count())
            .select_from(app_config_fragments)
            .where(app_config_fragments.c.name == name)
        )
        return int(count or 0)

    @staticmethod
    async def delete_policy(conn: AsyncConnection, name: str, *, cascade: bool) -> bool:
        if cascade:
            await conn.execute(
                delete(app_config_fragments).where(app_config_fragments.c.name == name)
            )
        result = await conn.execute(
            delete(app_config_policies)
            .where(app_config_policies.c.config_name == name)
            .returning(app_config_policies.c.id)
        )
        return result.first() is not None

    @staticmethod
    async def list_policies(conn: AsyncConnection) -> list[AppConfigPolicy]:
        rows = await conn.execute(
            select(app_config_policies).order_by(app_config_policies.c.config_name)
        )
        return [
            AppConfigPolicy(
                id=row.id,
                config_name=row.config_name,
                scope_sources=[ScopeType(s) for s in row.scope_sources],
            )
            for row in rows
        ]
