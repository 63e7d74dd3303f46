"""RankedDBSource: the ranked model's SQL (merged reads, fragment writes, grants,
definitions) on upstream Backend.AI's tables. No cache: the repositories put one in front.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import (
    ARRAY,
    Text,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ..merge import merge_fragments
from .models import (
    MAX_CONFIG_NAME_LENGTH,
    AllowListEntry,
    Definition,
    DefinitionExistsError,
    DefinitionNotFoundError,
    DefinitionPurge,
    Fragment,
    FragmentUpsert,
    GrantExistsError,
    GrantNotFoundError,
    InvalidInputError,
    RankUpdate,
    Scope,
    WriteNotAllowedError,
    check_config_name,
    check_rank,
    check_scope,
    check_uuid,
)
from .schema import app_config_allow_list, app_config_definitions, app_config_fragments

_definitions = app_config_definitions
_grants = app_config_allow_list
_fragments = app_config_fragments

FRAGMENT_GATE = "fk_app_config_fragments_config_name_scope_type"

# Rows per INSERT of a bulk upsert (4 parameters each, well under asyncpg's 32,767).
UPSERT_CHUNK = 1000

# Equal ranks merge public, then domain, then user (the later wins), then by fragment id.
_SCOPE_ORDER = case(
    {scope.value: scope.order for scope in Scope}, value=_fragments.c.scope_type, else_=len(Scope)
)

_FRAGMENT_COLUMNS = (
    _fragments.c.id,
    _fragments.c.config_name,
    _fragments.c.scope_type,
    _fragments.c.scope_id,
    _fragments.c.config,
)
_GRANT_COLUMNS = (_grants.c.id, _grants.c.config_name, _grants.c.scope_type, _grants.c.rank)


def _names_param(names: Iterable[str]) -> Any:
    # text[], not varchar(128)[]: a cast to varchar(128) would cut a longer name short.
    return bindparam("names", list(names), type_=ARRAY(Text))


def _fragment(row: Any) -> Fragment:
    return Fragment(
        id=row.id,
        config_name=row.config_name,
        scope_type=Scope(row.scope_type),
        scope_id=row.scope_id,
        config=row.config,
    )


def _grant(row: Any) -> AllowListEntry:
    return AllowListEntry(
        id=row.id, config_name=row.config_name, scope_type=Scope(row.scope_type), rank=row.rank
    )


def _read_names(names: Sequence[str]) -> list[str]:
    """The distinct names of a read, in request order; InvalidInputError for a bare str
    (a name, not a list of them) or an item that is not a str."""
    if isinstance(names, str | bytes):
        raise InvalidInputError("names must be a sequence of names, not one str")
    distinct: dict[str, None] = {}
    for name in names:
        if not isinstance(name, str):
            raise InvalidInputError(f"a config name must be a str, not {type(name).__name__}")
        distinct[name] = None
    return list(distinct)


def _gate_violation(error: IntegrityError) -> tuple[str, Scope] | None:
    """The (name, scope) an FK violation of the write gate names (from PostgreSQL's
    detail), when it is one."""
    cause = error.orig.__cause__ if error.orig is not None else None
    if getattr(cause, "constraint_name", None) != FRAGMENT_GATE:
        return None
    detail = str(getattr(cause, "detail", "") or "")
    found = re.search(r"=\((.*), (public|domain|user)\)", detail)
    return (found[1], Scope(found[2])) if found else None


class RankedDBSource:
    """The ranked model's reads and writes, each one transaction.

    Every method opens its own transaction (a write commits on return, rolls back on an
    error), or, given ``conn=``, runs in the caller's (which the caller commits or rolls
    back; a repository uses that to record its outbox row in the same transaction).
    Arguments are checked before any SQL runs: a bad one raises ``InvalidInputError`` (a
    ``ValueError``) and writes nothing.
    """

    def __init__(self, engine: AsyncEngine, *, label: str | None = None) -> None:
        self.engine = engine
        # A comment in the merged reads' SQL (``SELECT /* label */ ...``): who reads, for
        # pg_stat_statements, and for counters that leave background reads out.
        self._prefix = f"/* {label} */" if label else None

    @asynccontextmanager
    async def _write(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
            return
        async with self.engine.begin() as own:
            yield own

    @asynccontextmanager
    async def _read(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        if conn is not None:
            yield conn
            return
        async with self.engine.connect() as own:
            yield own

    # -- merged reads --------------------------------------------------------------------

    async def merged(
        self,
        user_id: uuid.UUID | str,
        domain_id: uuid.UUID | str,
        names: Sequence[str],
        *,
        conn: AsyncConnection | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The merged config of each distinct name of ``names`` for a user of a domain, in
        one SQL statement: the public fragment, the domain's and the user's, each granted
        by an allow-list row, deep-merged by ascending rank (the highest rank wins).

        Keys are the distinct names in request order (mapping back to a request with
        repeats is the caller's). A name nothing contributes to (unregistered, without
        grants, without fragments at these scopes; a name over 128 characters can never
        match) is ``{}``. ``user_id`` and ``domain_id`` are the caller's own (the
        session's), taken as given: no users or domains table is read. Each is a
        ``uuid.UUID`` or its string form; InvalidInputError, before any SQL, otherwise.

        Equal ranks, which upstream leaves in an undefined order, merge public, then
        domain, then user (the later wins), then by fragment id, so a read is repeatable
        and a cached merge equals a fresh one.
        """
        user = check_uuid(user_id, "user_id")
        domain = check_uuid(domain_id, "domain_id")
        visible = or_(
            _fragments.c.scope_type == Scope.PUBLIC.value,
            and_(_fragments.c.scope_type == Scope.DOMAIN.value, _fragments.c.scope_id == domain),
            and_(_fragments.c.scope_type == Scope.USER.value, _fragments.c.scope_id == user),
        )
        return await self._merged(visible, _read_names(names), conn)

    async def merged_public(
        self, names: Sequence[str], *, conn: AsyncConnection | None = None
    ) -> dict[str, dict[str, Any]]:
        """The anonymous read: as ``merged``, from the public fragments only."""
        return await self._merged(
            _fragments.c.scope_type == Scope.PUBLIC.value, _read_names(names), conn
        )

    async def _merged(
        self, visible: ColumnElement[bool], names: list[str], conn: AsyncConnection | None
    ) -> dict[str, dict[str, Any]]:
        found: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        wanted = [name for name in names if len(name) <= MAX_CONFIG_NAME_LENGTH]
        if wanted:
            statement = (
                select(_fragments.c.config_name, _fragments.c.config)
                .select_from(
                    _fragments.join(
                        _grants,
                        and_(
                            _grants.c.config_name == _fragments.c.config_name,
                            _grants.c.scope_type == _fragments.c.scope_type,
                        ),
                    )
                )
                .where(visible, _fragments.c.config_name == any_(_names_param(wanted)))
                .order_by(_grants.c.rank, _SCOPE_ORDER, _fragments.c.id)
            )
            if self._prefix is not None:
                statement = statement.prefix_with(self._prefix)
            async with self._read(conn) as c:
                rows = (await c.execute(statement)).all()
            for row in rows:
                # Upstream writes only JSON objects; a plain-SQL one that is not an object
                # contributes nothing rather than failing every read of the name.
                if isinstance(row.config, dict):
                    found[row.config_name].append(row.config)
        return {name: merge_fragments(configs) or {} for name, configs in found.items()}

    # -- fragments -----------------------------------------------------------------------

    async def bulk_upsert(
        self, items: Sequence[FragmentUpsert], *, conn: AsyncConnection | None = None
    ) -> list[Fragment]:
        """Write every fragment or none: insert, or on (config_name, scope_type, scope_id)
        replace ``config`` (``updated_at = now()``; ``id`` kept).

        Each item's (config_name, scope_type) must have an allow-list row: those of the
        call are read up front, in the same transaction, under FOR KEY SHARE (no grant can
        go before the commit), and if any is missing ``WriteNotAllowedError`` names every
        such pair and nothing is written. The same fragment twice: the later config wins.

        Returns the rows as written, one per item in input order (a repeated fragment
        repeated): their scope_type, scope_id and config_name are what each write touched.
        An empty ``items`` writes nothing and returns ``[]``.
        """
        batch = list(items)
        for item in batch:
            if not isinstance(item, FragmentUpsert):
                raise InvalidInputError(f"items must be FragmentUpsert, not {type(item).__name__}")
        if not batch:
            return []
        pairs = list(dict.fromkeys((item.config_name, item.scope_type) for item in batch))
        # One row per fragment, the last config of a repeated one.
        latest = {(i.config_name, i.scope_type, i.scope_id): i.config for i in batch}
        async with self._write(conn) as c:
            granted = await c.execute(
                select(_grants.c.config_name, _grants.c.scope_type)
                .where(_grants.c.config_name == any_(_names_param({n for n, _ in pairs})))
                .with_for_update(read=True, key_share=True)
            )
            allowed = {(row.config_name, row.scope_type) for row in granted}
            refused = [(name, scope) for name, scope in pairs if (name, scope.value) not in allowed]
            if refused:
                raise WriteNotAllowedError(refused)
            written: dict[tuple[str, Scope, uuid.UUID | None], Fragment] = {}
            keys = list(latest)
            for start in range(0, len(keys), UPSERT_CHUNK):
                rows = [
                    {
                        "config_name": name,
                        "scope_type": scope.value,
                        "scope_id": scope_id,
                        "config": latest[name, scope, scope_id],
                    }
                    for name, scope, scope_id in keys[start : start + UPSERT_CHUNK]
                ]
                insert = pg_insert(_fragments).values(rows)
                upsert = insert.on_conflict_do_update(
                    index_elements=["config_name", "scope_type", "scope_id"],
                    set_={"config": insert.excluded.config, "updated_at": func.now()},
                ).returning(*_FRAGMENT_COLUMNS)
                try:
                    result = await c.execute(upsert)
                except IntegrityError as error:
                    # Unreachable while the grants read above stay locked; kept so the
                    # gate's own error is never reported as anything else.
                    pair = _gate_violation(error)
                    if pair is None:
                        raise
                    raise WriteNotAllowedError([pair]) from None
                for row in result:
                    fragment = _fragment(row)
                    written[fragment.config_name, fragment.scope_type, fragment.scope_id] = fragment
        return [written[i.config_name, i.scope_type, i.scope_id] for i in batch]

    async def purge_fragments(
        self, ids: Sequence[uuid.UUID | str], *, conn: AsyncConnection | None = None
    ) -> list[Fragment]:
        """Delete the fragments with these ids, in one statement; returns the rows deleted,
        in the order of ``ids`` (each once). An id no fragment has is ignored: the caller
        tells which by the ids missing from the result (upstream's bulk purge reports them
        as per-id failures; nothing else differs). An empty ``ids`` returns ``[]``."""
        if isinstance(ids, str | bytes):
            raise InvalidInputError("ids must be a sequence of ids, not one str")
        wanted = list(dict.fromkeys(check_uuid(i, "a fragment id") for i in ids))
        if not wanted:
            return []
        async with self._write(conn) as c:
            result = await c.execute(
                delete(_fragments)
                .where(_fragments.c.id == any_(bindparam("ids", wanted, type_=ARRAY(Uuid()))))
                .returning(*_FRAGMENT_COLUMNS)
            )
            deleted = {row.id: _fragment(row) for row in result}
        return [deleted[i] for i in wanted if i in deleted]

    # -- the allow-list ------------------------------------------------------------------

    async def create_grant(
        self,
        name: str,
        scope: Scope,
        rank: int | None = None,
        *,
        conn: AsyncConnection | None = None,
    ) -> AllowListEntry:
        """Allow fragments of ``name`` at ``scope``, merged at ``rank`` (by default the
        scope's: ``Scope.default_rank()``). DefinitionNotFoundError if the name is not
        registered, GrantExistsError if the pair is granted already. Changes no merge."""
        name = check_config_name(name)
        scope = check_scope(scope)
        rank = scope.default_rank() if rank is None else check_rank(rank)
        async with self._write(conn) as c:
            try:
                row = (
                    await c.execute(
                        pg_insert(_grants)
                        .values(config_name=name, scope_type=scope.value, rank=rank)
                        .on_conflict_do_nothing(index_elements=["config_name", "scope_type"])
                        .returning(*_GRANT_COLUMNS)
                    )
                ).one_or_none()
            except IntegrityError:
                # The one constraint ON CONFLICT DO NOTHING leaves to fail: the definition.
                raise DefinitionNotFoundError(f"no definition named {name!r}") from None
            if row is None:
                raise GrantExistsError(f"{name!r} is granted at {scope.value} already")
        return _grant(row)

    async def update_rank(
        self, name: str, scope: Scope, rank: int, *, conn: AsyncConnection | None = None
    ) -> RankUpdate:
        """Set the rank of the grant of ``name`` at ``scope`` (the one thing of a grant that
        changes). Returns the grant and its old rank; when the rank was that already,
        nothing is written (``RankUpdate.changed`` is False). GrantNotFoundError if no
        such grant."""
        name = check_config_name(name)
        scope = check_scope(scope)
        rank = check_rank(rank)
        async with self._write(conn) as c:
            current = (
                await c.execute(
                    select(*_GRANT_COLUMNS)
                    .where(_grants.c.config_name == name, _grants.c.scope_type == scope.value)
                    # NO KEY UPDATE: fragment writes (KEY SHARE on the grant) go on meanwhile.
                    .with_for_update(key_share=True)
                )
            ).one_or_none()
            if current is None:
                raise GrantNotFoundError(f"{name!r} is not granted at {scope.value}")
            if current.rank == rank:
                return RankUpdate(entry=_grant(current), old_rank=rank)
            row = (
                await c.execute(
                    update(_grants)
                    .where(_grants.c.id == current.id)
                    .values(rank=rank, updated_at=func.now())
                    .returning(*_GRANT_COLUMNS)
                )
            ).one()
        return RankUpdate(entry=_grant(row), old_rank=current.rank)

    async def purge_grant(
        self, name: str, scope: Scope, *, conn: AsyncConnection | None = None
    ) -> list[Fragment]:
        """Delete the grant of ``name`` at ``scope``; the foreign key's ON DELETE CASCADE
        deletes every fragment of that pair (every scope id). Returns those fragments,
        read FOR UPDATE after the grant is locked, so none can be added or removed before
        the delete. GrantNotFoundError if no such grant."""
        name = check_config_name(name)
        scope = check_scope(scope)
        async with self._write(conn) as c:
            grant = await c.scalar(
                select(_grants.c.id)
                .where(_grants.c.config_name == name, _grants.c.scope_type == scope.value)
                .with_for_update()
            )
            if grant is None:
                raise GrantNotFoundError(f"{name!r} is not granted at {scope.value}")
            cascaded = await self._fragments_of(
                c,
                and_(_fragments.c.config_name == name, _fragments.c.scope_type == scope.value),
            )
            await c.execute(delete(_grants).where(_grants.c.id == grant))
        return cascaded

    @staticmethod
    async def _fragments_of(conn: AsyncConnection, where: ColumnElement[bool]) -> list[Fragment]:
        rows = await conn.execute(
            select(*_FRAGMENT_COLUMNS)
            .where(where)
            .order_by(_SCOPE_ORDER, _fragments.c.scope_id.nulls_first(), _fragments.c.id)
            .with_for_update()
        )
        return [_fragment(row) for row in rows]

    # -- definitions ---------------------------------------------------------------------

    async def create_definition(
        self, name: str, *, conn: AsyncConnection | None = None
    ) -> Definition:
        """Register ``name`` (1..128 characters). DefinitionExistsError if it is already.
        Changes no merge (a name without grants merges to ``{}``)."""
        name = check_config_name(name)
        async with self._write(conn) as c:
            row = (
                await c.execute(
                    pg_insert(_definitions)
                    .values(config_name=name)
                    .on_conflict_do_nothing(index_elements=["config_name"])
                    .returning(_definitions.c.id, _definitions.c.config_name)
                )
            ).one_or_none()
            if row is None:
                raise DefinitionExistsError(f"a definition named {name!r} exists already")
        return Definition(id=row.id, config_name=row.config_name)

    async def purge_definition(
        self, name: str, *, conn: AsyncConnection | None = None
    ) -> DefinitionPurge:
        """Delete the definition of ``name``; the cascade deletes its grants and their
        fragments. Returns all three, read FOR UPDATE (definition, then grants, then
        fragments) before the delete. DefinitionNotFoundError if no such definition."""
        name = check_config_name(name)
        async with self._write(conn) as c:
            row = (
                await c.execute(
                    select(_definitions.c.id, _definitions.c.config_name)
                    .where(_definitions.c.config_name == name)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise DefinitionNotFoundError(f"no definition named {name!r}")
            grants = await c.execute(
                select(*_GRANT_COLUMNS)
                .where(_grants.c.config_name == name)
                .order_by(_grants.c.rank, _grants.c.id)
                .with_for_update()
            )
            cascaded_grants = [_grant(g) for g in grants]
            cascaded = await self._fragments_of(c, _fragments.c.config_name == name)
            await c.execute(delete(_definitions).where(_definitions.c.id == row.id))
        return DefinitionPurge(
            definition=Definition(id=row.id, config_name=row.config_name),
            grants=cascaded_grants,
            fragments=cascaded,
        )

    async def registered(
        self, names: Sequence[str], *, conn: AsyncConnection | None = None
    ) -> set[str]:
        """Which of ``names`` are registered definitions, in one statement."""
        wanted = [n for n in _read_names(names) if 1 <= len(n) <= MAX_CONFIG_NAME_LENGTH]
        if not wanted:
            return set()
        async with self._read(conn) as c:
            found = await c.execute(
                select(_definitions.c.config_name).where(
                    _definitions.c.config_name == any_(_names_param(wanted))
                )
            )
            return set(found.scalars())

    async def definitions(self, *, conn: AsyncConnection | None = None) -> list[str]:
        """The registered names (the catalogue), sorted by code point."""
        async with self._read(conn) as c:
            names = (await c.execute(select(_definitions.c.config_name))).scalars().all()
        return sorted(names)
