"""The ranked model's database layer on a real PostgreSQL: upstream's table shape,
the merge by rank, the write gate, upserts, purges and cascades.

The ranked tables share a name with the policy model's (``app_config_fragments``), so
these tests run in databases of their own on the suite's server, never in the one the
``engine`` fixture made; each engine keeps a pool of one or two connections.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from atomic_cache import ranked
from atomic_cache.ranked import (
    DefinitionExistsError,
    DefinitionNotFoundError,
    FragmentUpsert,
    GrantExistsError,
    GrantNotFoundError,
    InvalidInputError,
    RankedDBSource,
    Scope,
    WriteNotAllowedError,
)
from atomic_cache.ranked.db_source import _gate_violation
from atomic_cache.ranked.schema import BUILT_IN_UUID_DEFAULT, TABLE_NAMES, UUID_OSSP_DEFAULT

from .pg_tools import ranked_database

UPSTREAM_DDL = Path(__file__).with_name("ranked_upstream_ddl.sql")
CREATE_UUID_OSSP = 'CREATE EXTENSION IF NOT EXISTS "uuid-ossp";'
# Stands in for uuid-ossp's function where the server lacks the extension (the embedded
# pgserver PostgreSQL 16 does), so upstream's DDL can be applied unchanged otherwise.
UUID_STUB = (
    "CREATE FUNCTION public.uuid_generate_v4() RETURNS uuid"
    " LANGUAGE sql VOLATILE AS 'SELECT gen_random_uuid()'"
)
OWN_TABLES = ("app_config_cache_prefixes", "app_config_invalidation_outbox")

D1, D2 = uuid.UUID(int=0xD1), uuid.UUID(int=0xD2)
U1, U2 = uuid.UUID(int=0x01), uuid.UUID(int=0x02)


# -- databases of their own ---------------------------------------------------------------


def _engine(url: str, *, search_path: str | None = None, pool_size: int = 1) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if search_path is not None:
        connect_args["server_settings"] = {"search_path": search_path}
    return create_async_engine(url, pool_size=pool_size, max_overflow=0, connect_args=connect_args)


@pytest.fixture
async def fresh_database(postgres_server_url: str) -> AsyncIterator[str]:
    """An empty database for one test, dropped after it."""
    name = f"atomic_cache_ranked_{uuid.uuid4().hex[:10]}"
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT", pool_size=1)
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    async with admin.connect() as conn:
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture(scope="module")
async def ranked_engine(postgres_server_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of this module's, with the ranked tables made by create_schema."""
    async with ranked_database(
        postgres_server_url, "ranked", pool_size=2, max_overflow=0
    ) as engine:
        yield engine


@pytest.fixture
async def db(ranked_engine: AsyncEngine) -> RankedDBSource:
    """The module's database, emptied of the ranked model's rows."""
    async with ranked_engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLE_NAMES)} CASCADE"))
    return RankedDBSource(ranked_engine)


async def _uuid_ossp_available(conn: AsyncConnection) -> bool:
    found = await conn.scalar(
        text("SELECT count(*) FROM pg_available_extensions WHERE name = 'uuid-ossp'")
    )
    return bool(found)


async def _provide_uuid_generate_v4(conn: AsyncConnection) -> None:
    """``public.uuid_generate_v4()``: the extension where the server has it, else a stub."""
    if await _uuid_ossp_available(conn):
        await conn.execute(text('CREATE EXTENSION IF NOT EXISTS "uuid-ossp" SCHEMA public'))
    else:
        await conn.execute(text(UUID_STUB))


async def _apply_upstream_ddl(conn: AsyncConnection) -> None:
    """Upstream's DDL as the file has it, in the connection's first search-path schema
    (without its CREATE EXTENSION, which _provide_uuid_generate_v4 answered for)."""
    ddl = UPSTREAM_DDL.read_text()
    assert CREATE_UUID_OSSP in ddl
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    await raw.execute(ddl.replace(CREATE_UUID_OSSP, ""))  # several statements at once


# -- catalog facts ------------------------------------------------------------------------

_COLUMNS = """
SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated, coll.collname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation coll ON coll.oid = a.attcollation
WHERE n.nspname = :schema AND c.relname = ANY(:tables) AND a.attnum > 0
  AND NOT a.attisdropped
ORDER BY 1, 2
"""
_CONSTRAINTS = """
SELECT c.relname, con.conname, con.contype, pg_get_constraintdef(con.oid, true),
       con.condeferrable, con.condeferred, con.convalidated
FROM pg_constraint con
JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relname = ANY(:tables)
ORDER BY 1, 2
"""
_INDEXES = """
SELECT c.relname, i.relname, replace(pg_get_indexdef(i.oid), :qualified, ' '),
       ix.indisunique, ix.indisprimary, ix.indnullsnotdistinct
FROM pg_index ix
JOIN pg_class i ON i.oid = ix.indexrelid
JOIN pg_class c ON c.oid = ix.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relname = ANY(:tables)
ORDER BY 1, 2
"""
_TABLES = """
SELECT c.relname, c.relkind, c.relpersistence, c.reloptions
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relname = ANY(:tables)
ORDER BY 1
"""


async def catalog_facts(conn: AsyncConnection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What the catalog says of the three tables in ``schema``: tables, columns (order,
    type with length, nullability, default), constraints (name, kind, definition),
    indexes (definition, NULLS NOT DISTINCT)."""
    params = {"schema": schema, "tables": list(TABLE_NAMES), "qualified": f" {schema}."}
    facts = {}
    for what, query in (
        ("tables", _TABLES),
        ("columns", _COLUMNS),
        ("constraints", _CONSTRAINTS),
        ("indexes", _INDEXES),
    ):
        facts[what] = [tuple(row) for row in await conn.execute(text(query), params)]
    return facts


def _with_id_default(facts: dict[str, list[tuple[Any, ...]]], default: str) -> Any:
    """``facts`` with each id column's default replaced by ``default``."""
    columns = [(*row[:5], default, *row[6:]) if row[2] == "id" else row for row in facts["columns"]]
    return {**facts, "columns": columns}


# -- create_schema: upstream's exact shape ------------------------------------------------


async def test_create_schema_makes_exactly_upstreams_tables(fresh_database: str) -> None:
    """Upstream's DDL in one schema, create_schema in another, the same database: the
    catalog says the same of both (uuid_generate_v4() resolvable in both, from public)."""
    setup = _engine(fresh_database)
    async with setup.begin() as conn:
        await _provide_uuid_generate_v4(conn)
        await conn.execute(text("CREATE SCHEMA upstream"))
        await conn.execute(text("CREATE SCHEMA ours"))
    await setup.dispose()
    upstream = _engine(fresh_database, search_path="upstream, public")
    async with upstream.begin() as conn:
        await _apply_upstream_ddl(conn)
    ours = _engine(fresh_database, search_path="ours, public")
    await ranked.create_schema(ours)
    try:
        async with upstream.connect() as conn:
            expected = await catalog_facts(conn, "upstream")
        async with ours.connect() as conn:
            built = await catalog_facts(conn, "ours")
            own = await conn.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'ours' ORDER BY 1")
            )
            assert list(own) == sorted([*TABLE_NAMES, *OWN_TABLES])
    finally:
        await upstream.dispose()
        await ours.dispose()
    assert len(expected["columns"]) == 17 and len(expected["constraints"]) >= 9
    assert any(row[-1] for row in expected["indexes"])  # NULLS NOT DISTINCT, in the facts
    for what in expected:
        assert built[what] == expected[what], what


async def test_create_schema_on_an_empty_database_needs_nothing_else(
    fresh_database: str,
) -> None:
    """On a database with nothing in it: uuid-ossp created and upstream's default where the
    server ships it; gen_random_uuid() where it does not; the rest of the shape either way;
    the tables work (ids filled by the server)."""
    engine = _engine(fresh_database)
    try:
        await ranked.create_schema(engine)
        async with engine.begin() as conn:
            available = await _uuid_ossp_available(conn)
            installed = await conn.scalar(
                text("SELECT count(*) FROM pg_extension WHERE extname = 'uuid-ossp'")
            )
            built = await catalog_facts(conn, "public")
        defaults = {row[5] for row in built["columns"] if row[2] == "id"}
        if available:
            assert installed == 1
            assert defaults == {UUID_OSSP_DEFAULT}
        else:
            assert installed == 0
            assert defaults == {BUILT_IN_UUID_DEFAULT}
        # Everything but the id default is upstream's: compare with upstream's DDL.
        async with engine.begin() as conn:
            await conn.execute(text("CREATE SCHEMA upstream"))
            if not available:
                await conn.execute(text(UUID_STUB))
        upstream = _engine(fresh_database, search_path="upstream, public")
        try:
            async with upstream.begin() as conn:
                await _apply_upstream_ddl(conn)
                expected = await catalog_facts(conn, "upstream")
        finally:
            await upstream.dispose()
        constraints = [(row[0], row[1], row[2], row[3]) for row in built["constraints"]]
        assert constraints == [(row[0], row[1], row[2], row[3]) for row in expected["constraints"]]
        assert _with_id_default(built, "id") == _with_id_default(expected, "id")
        source = RankedDBSource(engine)
        definition = await source.create_definition("theme")
        grant = await source.create_grant("theme", Scope.PUBLIC)
        assert definition.id.version == 4 and grant.id.version == 4
    finally:
        await engine.dispose()


@pytest.mark.parametrize("dropped", [None, "app_config_fragments"])
async def test_create_schema_never_alters_existing_tables(
    fresh_database: str, dropped: str | None
) -> None:
    """On tables from upstream's DDL (one with a column and an index of a site's own),
    create_schema changes nothing of theirs, keeps their rows, and adds only its own
    tables; with one of the three missing it creates that one, in upstream's shape."""
    engine = _engine(fresh_database)
    try:
        async with engine.begin() as conn:
            await _provide_uuid_generate_v4(conn)
            await _apply_upstream_ddl(conn)
            pristine = await catalog_facts(conn, "public")
            for statement in (
                "ALTER TABLE app_config_definitions ADD COLUMN note text",
                "CREATE INDEX ix_site_own ON app_config_definitions (note)",
                "INSERT INTO app_config_definitions (config_name) VALUES ('theme')",
            ):
                await conn.execute(text(statement))
            if dropped is not None:
                await conn.execute(text(f"DROP TABLE {dropped}"))
            before = await catalog_facts(conn, "public")
        await ranked.create_schema(engine)
        await ranked.create_schema(engine)  # and again: idempotent
        async with engine.connect() as conn:
            after = await catalog_facts(conn, "public")
            names = await conn.scalars(text("SELECT config_name FROM app_config_definitions"))
            assert list(names) == ["theme"]
            tables = await conn.scalars(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            )
            assert list(tables) == sorted([*TABLE_NAMES, *OWN_TABLES])
        if dropped is None:
            assert after == before
        else:
            for what in after:
                assert [r for r in after[what] if r[0] != dropped] == [
                    r for r in before[what] if r[0] != dropped
                ], what
                assert [r for r in after[what] if r[0] == dropped] == [
                    r for r in pristine[what] if r[0] == dropped
                ], what
        assert ("app_config_definitions", "ix_site_own") in [r[:2] for r in after["indexes"]]
    finally:
        await engine.dispose()


# -- helpers for the model's behaviour ----------------------------------------------------


async def register(
    db: RankedDBSource, name: str, ranks: dict[Scope, int | None] | None = None
) -> None:
    """Define ``name`` and grant it at each scope of ``ranks`` (all three, default ranks,
    when None)."""
    await db.create_definition(name)
    for scope, rank in (ranks or dict.fromkeys(Scope)).items():
        await db.create_grant(name, scope, rank)


def frag(name: str, scope: Scope, scope_id: uuid.UUID | None, /, **config: Any) -> FragmentUpsert:
    return FragmentUpsert(scope_type=scope, scope_id=scope_id, config_name=name, config=config)


async def fragment_rows(db: RankedDBSource) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT config_name, scope_type, scope_id, config FROM app_config_fragments"
                " ORDER BY config_name, scope_type, scope_id NULLS FIRST"
            )
        )
        return [tuple(row) for row in rows]


# -- the merge ----------------------------------------------------------------------------


async def test_merge_is_by_ascending_rank_the_highest_wins(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert(
        [
            frag("theme", Scope.USER, U1, nested={"x": 3}, mode="user"),
            frag("theme", Scope.DOMAIN, D1, nested={"y": 2}, mode="domain", only_domain=1),
            frag("theme", Scope.PUBLIC, None, nested={"x": 1, "z": 1}, mode="public", pub=[1]),
        ]
    )
    merged = await db.merged(U1, D1, ["theme"])
    assert merged == {
        "theme": {
            "nested": {"x": 3, "y": 2, "z": 1},
            "mode": "user",
            "only_domain": 1,
            "pub": [1],
        }
    }
    # Another user of the domain: public + domain; of another domain: public only.
    assert (await db.merged(U2, D1, ["theme"]))["theme"]["mode"] == "domain"
    assert (await db.merged(U2, D2, ["theme"]))["theme"] == {
        "nested": {"x": 1, "z": 1},
        "mode": "public",
        "pub": [1],
    }


async def test_a_changed_rank_changes_the_merge(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert(
        [
            frag("theme", Scope.PUBLIC, None, mode="public"),
            frag("theme", Scope.DOMAIN, D1, mode="domain"),
            frag("theme", Scope.USER, U1, mode="user"),
        ]
    )
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"mode": "user"}
    change = await db.update_rank("theme", Scope.DOMAIN, 400)
    assert (change.old_rank, change.entry.rank, change.changed) == (200, 400, True)
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"mode": "domain"}
    change = await db.update_rank("theme", Scope.PUBLIC, 500)
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"mode": "public"}
    # The rank it has already: nothing written.
    async with db.engine.connect() as conn:
        stamp = "SELECT updated_at FROM app_config_allow_list WHERE scope_type = 'public'"
        before = await conn.scalar(text(stamp))
    again = await db.update_rank("theme", Scope.PUBLIC, 500)
    assert (again.old_rank, again.entry.rank, again.changed) == (500, 500, False)
    async with db.engine.connect() as conn:
        assert await conn.scalar(text(stamp)) == before
    with pytest.raises(GrantNotFoundError):
        await db.update_rank("menu", Scope.PUBLIC, 1)


@pytest.mark.parametrize("inserted", list(itertools.permutations(Scope)))
async def test_equal_ranks_merge_public_then_domain_then_user(
    db: RankedDBSource, inserted: tuple[Scope, ...]
) -> None:
    """Upstream leaves ties undefined; here the scope order breaks them, whatever order
    the rows were written in."""
    await register(db, "theme", dict.fromkeys(Scope, 7))
    owner = {Scope.PUBLIC: None, Scope.DOMAIN: D1, Scope.USER: U1}
    for scope in inserted:
        await db.bulk_upsert([frag("theme", scope, owner[scope], winner=scope.value)])
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"winner": "user"}
    await db.update_rank("theme", Scope.USER, 6)  # now below the tie of public and domain
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"winner": "domain"}


async def test_nothing_contributes_is_an_empty_config(db: RankedDBSource) -> None:
    await db.create_definition("no-grants")
    await register(db, "no-fragments")
    await register(db, "elsewhere")
    await db.bulk_upsert(
        [frag("elsewhere", Scope.DOMAIN, D2, x=1), frag("elsewhere", Scope.USER, U2, x=2)]
    )
    names = ["unregistered", "no-grants", "no-fragments", "elsewhere", "n" * 129]
    assert await db.merged(U1, D1, names) == {name: {} for name in names}
    assert await db.merged_public(names) == {name: {} for name in names}
    assert await db.merged(U1, D1, []) == {}


async def test_distinct_names_in_request_order(db: RankedDBSource) -> None:
    for name in ("a", "b", "c"):
        await register(db, name)
        await db.bulk_upsert([frag(name, Scope.PUBLIC, None, name=name)])
    merged = await db.merged(U1, D1, ["c", "zz", "a", "c", "a"])
    assert list(merged.items()) == [("c", {"name": "c"}), ("zz", {}), ("a", {"name": "a"})]
    public = await db.merged_public(("b", "b"))
    assert list(public.items()) == [("b", {"name": "b"})]
    # Each name its own dict: changing one result changes no other.
    merged["c"]["name"] = "changed"
    assert (await db.merged(U1, D1, ["c"]))["c"] == {"name": "c"}


async def test_the_anonymous_read_merges_public_fragments_only(db: RankedDBSource) -> None:
    await register(db, "theme", {Scope.PUBLIC: 500, Scope.DOMAIN: None, Scope.USER: None})
    await register(db, "private")
    await db.bulk_upsert(
        [
            frag("theme", Scope.PUBLIC, None, mode="public", a=1),
            frag("theme", Scope.DOMAIN, D1, mode="domain", b=2),
            frag("theme", Scope.USER, U1, mode="user", c=3),
            frag("private", Scope.USER, U1, secret=1),
        ]
    )
    assert await db.merged_public(["theme", "private"]) == {
        "theme": {"mode": "public", "a": 1},
        "private": {},
    }
    # Signed in, the public fragment ranked highest wins over the others.
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {
        "mode": "public",
        "a": 1,
        "b": 2,
        "c": 3,
    }


async def test_a_read_is_one_statement(db: RankedDBSource) -> None:
    await register(db, "theme")
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(args[2])

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        await db.merged(U1, D1, ["theme", "a", "b", "c", "d"])
        await db.merged_public(["theme", "a"])
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 2
    assert all("JOIN app_config_allow_list" in s for s in statements)


async def test_ids_are_uuids_and_domains_are_ids(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.DOMAIN, D1, mode="d1")])
    assert (await db.merged(U1, D2, ["theme"]))["theme"] == {}
    with pytest.raises(InvalidInputError, match="domain_id"):
        await db.merged(U1, "default", ["theme"])
    with pytest.raises(InvalidInputError, match="user_id"):
        await db.merged(U1.hex, D1, ["theme"])
    with pytest.raises(ValidationError):
        frag("theme", Scope.DOMAIN, "default", mode="x")  # type: ignore[arg-type]
    # A UUID's text form is taken and stored as the UUID.
    written = await db.bulk_upsert([frag("theme", Scope.DOMAIN, str(D2), mode="d2")])  # type: ignore[arg-type]
    assert written[0].scope_id == D2
    assert (await db.merged(U1, D2, ["theme"]))["theme"] == {"mode": "d2"}
    # ... as are the ids of a read.
    assert (await db.merged(str(U1), str(D2).upper(), ["theme"]))["theme"] == {"mode": "d2"}


async def test_a_config_that_is_not_an_object_contributes_nothing(db: RankedDBSource) -> None:
    """Upstream writes only objects; one written by plain SQL fails no read."""
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.PUBLIC, None, a=1)])
    async with db.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO app_config_fragments (config_name, scope_type, scope_id, config)"
                " VALUES ('theme', 'user', :u, '[1, 2]')"
            ),
            {"u": U1},
        )
    assert await db.merged(U1, D1, ["theme"]) == {"theme": {"a": 1}}


# -- fragment writes ----------------------------------------------------------------------


async def test_a_write_not_allowed_names_every_pair_and_writes_nothing(
    db: RankedDBSource,
) -> None:
    await register(db, "theme", {Scope.PUBLIC: None, Scope.USER: None})
    await db.create_definition("menu")  # registered, granted nowhere
    await db.bulk_upsert([frag("theme", Scope.PUBLIC, None, v="before")])
    before = await fragment_rows(db)
    items = [
        frag("theme", Scope.PUBLIC, None, v="after"),
        frag("unregistered", Scope.USER, U1, v=1),
        frag("theme", Scope.USER, U1, v=2),
        frag("theme", Scope.DOMAIN, D1, v=3),
        frag("menu", Scope.PUBLIC, None, v=4),
        frag("theme", Scope.DOMAIN, D2, v=5),  # the same pair again: named once
    ]
    with pytest.raises(WriteNotAllowedError) as refused:
        await db.bulk_upsert(items)
    assert refused.value.pairs == [
        ("unregistered", Scope.USER),
        ("theme", Scope.DOMAIN),
        ("menu", Scope.PUBLIC),
    ]
    assert "'unregistered'" in str(refused.value) and "nothing was written" in str(refused.value)
    assert await fragment_rows(db) == before


async def test_the_gates_own_error_names_its_pair(db: RankedDBSource) -> None:
    """What bulk_upsert maps the foreign key's violation from, should one ever get past
    the locked check: PostgreSQL's error names the constraint and the pair."""
    await register(db, "a, b", {Scope.PUBLIC: None})
    with pytest.raises(IntegrityError) as violation:
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO app_config_fragments (config_name, scope_type, scope_id, config)"
                    " VALUES ('a, b', 'user', :u, '{}')"
                ),
                {"u": U1},
            )
    assert _gate_violation(violation.value) == ("a, b", Scope.USER)


async def test_upsert_replaces_the_config_and_keeps_the_id(db: RankedDBSource) -> None:
    await register(db, "theme")
    first = await db.bulk_upsert(
        [frag("theme", Scope.PUBLIC, None, a=1, b=1), frag("theme", Scope.USER, U1, a=1)]
    )
    async with db.engine.connect() as conn:
        stamps = "SELECT id, created_at, updated_at FROM app_config_fragments ORDER BY id"
        before = {row.id: row for row in await conn.execute(text(stamps))}
    second = await db.bulk_upsert(
        [frag("theme", Scope.PUBLIC, None, b=2), frag("theme", Scope.USER, U1, c=3)]
    )
    assert [f.id for f in second] == [f.id for f in first]
    assert [f.config for f in second] == [{"b": 2}, {"c": 3}]  # replaced, not merged
    async with db.engine.connect() as conn:
        after = {row.id: row for row in await conn.execute(text(stamps))}
    assert after.keys() == before.keys()  # one public row still: NULLS NOT DISTINCT
    for fid in after:
        assert after[fid].created_at == before[fid].created_at
        assert after[fid].updated_at > before[fid].updated_at
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"b": 2, "c": 3}


async def test_public_rows_are_unique_by_nulls_not_distinct(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.PUBLIC, None, a=1)])
    with pytest.raises(IntegrityError, match="uq_app_config_fragments"):
        async with db.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO app_config_fragments (config_name, scope_type, config)"
                    " VALUES ('theme', 'public', '{}')"
                )
            )


async def test_upsert_returns_rows_in_input_order_the_last_config_wins(
    db: RankedDBSource,
) -> None:
    await register(db, "a")
    await register(db, "b")
    written = await db.bulk_upsert(
        [
            frag("b", Scope.USER, U1, v=1),
            frag("a", Scope.DOMAIN, D1, v=1),
            frag("b", Scope.USER, U1, v=2),
            frag("a", Scope.PUBLIC, None, v=1),
        ]
    )
    assert [(f.config_name, f.scope_type, f.scope_id, f.config) for f in written] == [
        ("b", Scope.USER, U1, {"v": 2}),
        ("a", Scope.DOMAIN, D1, {"v": 1}),
        ("b", Scope.USER, U1, {"v": 2}),
        ("a", Scope.PUBLIC, None, {"v": 1}),
    ]
    assert written[0] == written[2]
    assert len(await fragment_rows(db)) == 3
    assert await db.bulk_upsert([]) == []


async def test_a_large_upsert_spans_several_statements_in_one_transaction(
    db: RankedDBSource,
) -> None:
    await register(db, "theme")
    users = [uuid.UUID(int=i) for i in range(1, 2501)]
    written = await db.bulk_upsert([frag("theme", Scope.USER, u, n=i) for i, u in enumerate(users)])
    assert [f.scope_id for f in written] == users and written[-1].config == {"n": 2499}
    assert (await db.merged(users[1234], D1, ["theme"]))["theme"] == {"n": 1234}


async def test_a_write_in_the_callers_transaction_rolls_back_with_it(
    db: RankedDBSource,
) -> None:
    await register(db, "theme")
    async with db.engine.connect() as conn:
        written = await db.bulk_upsert([frag("theme", Scope.PUBLIC, None, a=1)], conn=conn)
        assert (await db.merged_public(["theme"], conn=conn))["theme"] == {"a": 1}
        assert written[0].config == {"a": 1}
        await conn.rollback()
    assert await fragment_rows(db) == []


async def test_purge_fragments_returns_what_it_deleted(db: RankedDBSource) -> None:
    await register(db, "theme")
    written = await db.bulk_upsert(
        [
            frag("theme", Scope.PUBLIC, None, a=1),
            frag("theme", Scope.DOMAIN, D1, b=2),
            frag("theme", Scope.USER, U1, c=3),
        ]
    )
    public, domain, user = written
    unknown = uuid.uuid4()
    purged = await db.purge_fragments([user.id, unknown, public.id, user.id])
    assert purged == [user, public]  # in the order asked, unknown ids left out
    assert (await db.merged(U1, D1, ["theme"]))["theme"] == {"b": 2}
    assert await db.purge_fragments([user.id]) == []
    assert await db.purge_fragments([]) == []
    assert await db.purge_fragments([domain.id]) == [domain]


# -- grants and definitions ---------------------------------------------------------------


async def test_grants_default_their_rank_by_scope(db: RankedDBSource) -> None:
    assert [s.default_rank() for s in Scope] == [100, 200, 300]
    await db.create_definition("theme")
    entries = [await db.create_grant("theme", scope) for scope in Scope]
    assert [(e.config_name, e.scope_type, e.rank) for e in entries] == [
        ("theme", Scope.PUBLIC, 100),
        ("theme", Scope.DOMAIN, 200),
        ("theme", Scope.USER, 300),
    ]
    await db.create_definition("menu")
    assert (await db.create_grant("menu", "user", rank=-5)).rank == -5  # type: ignore[arg-type]
    with pytest.raises(GrantExistsError):
        await db.create_grant("theme", Scope.DOMAIN, 1)
    with pytest.raises(DefinitionNotFoundError):
        await db.create_grant("unregistered", Scope.DOMAIN)
    with pytest.raises(DefinitionExistsError):
        await db.create_definition("theme")
    assert await db.definitions() == ["menu", "theme"]


async def test_a_grant_purge_cascades_to_that_scopes_fragments(db: RankedDBSource) -> None:
    await register(db, "theme")
    await register(db, "menu")
    written = await db.bulk_upsert(
        [
            frag("theme", Scope.DOMAIN, D2, d=2),
            frag("theme", Scope.PUBLIC, None, p=1),
            frag("theme", Scope.DOMAIN, D1, d=1),
            frag("theme", Scope.USER, U1, u=1),
            frag("menu", Scope.DOMAIN, D1, m=1),
        ]
    )
    cascaded = await db.purge_grant("theme", Scope.DOMAIN)
    assert sorted(cascaded, key=lambda f: str(f.scope_id)) == sorted(
        [written[0], written[2]], key=lambda f: str(f.scope_id)
    )
    assert [(r[0], r[1]) for r in await fragment_rows(db)] == [
        ("menu", "domain"),
        ("theme", "public"),
        ("theme", "user"),
    ]
    assert (await db.merged(U1, D1, ["theme", "menu"])) == {
        "theme": {"p": 1, "u": 1},
        "menu": {"m": 1},
    }
    # Without the grant, that scope cannot be written any more.
    with pytest.raises(WriteNotAllowedError):
        await db.bulk_upsert([frag("theme", Scope.DOMAIN, D1, d=1)])
    with pytest.raises(GrantNotFoundError):
        await db.purge_grant("theme", Scope.DOMAIN)
    assert await db.purge_grant("theme", Scope.USER) == [written[3]]


async def test_a_grant_purge_returns_a_fragment_written_while_it_waited(
    db: RankedDBSource,
) -> None:
    """An upsert holding its grant (FOR KEY SHARE) makes the purge wait; what the purge
    returns is what its cascade deleted, the upsert's fragment included."""
    await register(db, "theme")
    async with db.engine.connect() as writer:
        await db.bulk_upsert([frag("theme", Scope.USER, U1, a=1)], conn=writer)
        purge = asyncio.create_task(db.purge_grant("theme", Scope.USER))
        await asyncio.sleep(0.3)
        assert not purge.done()  # waits for the writer's grant lock
        await writer.commit()
    cascaded = await asyncio.wait_for(purge, 10)
    assert [(f.scope_id, f.config) for f in cascaded] == [(U1, {"a": 1})]
    assert await fragment_rows(db) == []


async def test_a_definition_purge_cascades_to_grants_and_fragments(db: RankedDBSource) -> None:
    await register(db, "theme")
    await register(db, "menu")
    written = await db.bulk_upsert(
        [
            frag("theme", Scope.USER, U1, u=1),
            frag("theme", Scope.PUBLIC, None, p=1),
            frag("theme", Scope.DOMAIN, D1, d=1),
            frag("menu", Scope.PUBLIC, None, m=1),
        ]
    )
    purge = await db.purge_definition("theme")
    assert purge.definition.config_name == "theme"
    assert [(g.scope_type, g.rank) for g in purge.grants] == [
        (Scope.PUBLIC, 100),
        (Scope.DOMAIN, 200),
        (Scope.USER, 300),
    ]
    assert purge.fragments == [written[1], written[2], written[0]]
    assert await db.definitions() == ["menu"]
    assert [r[0] for r in await fragment_rows(db)] == ["menu"]
    async with db.engine.connect() as conn:
        grants = await conn.scalars(text("SELECT DISTINCT config_name FROM app_config_allow_list"))
        assert list(grants) == ["menu"]
    assert await db.merged(U1, D1, ["theme"]) == {"theme": {}}
    with pytest.raises(DefinitionNotFoundError):
        await db.purge_definition("theme")


# -- input checks -------------------------------------------------------------------------


async def test_bad_input_is_a_clear_error_and_writes_nothing(db: RankedDBSource) -> None:
    await register(db, "theme")
    long_name = "n" * 129
    with pytest.raises(InvalidInputError, match="1 to 128"):
        await db.create_definition(long_name)
    with pytest.raises(InvalidInputError, match="1 to 128"):
        await db.create_definition("")
    with pytest.raises(InvalidInputError, match="scope must be one of"):
        await db.create_grant("theme", "project")  # type: ignore[arg-type]
    for rank in (2**31, True, "1", 1.5):
        with pytest.raises(InvalidInputError, match="rank"):
            await db.update_rank("theme", Scope.USER, rank)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not one str"):
        await db.merged(U1, D1, "theme")
    with pytest.raises(InvalidInputError, match="must be a str"):
        await db.merged_public(["theme", 1])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match=r"a fragment id must be a uuid\.UUID"):
        await db.purge_fragments([uuid.uuid4().hex])
    with pytest.raises(InvalidInputError, match="FragmentUpsert"):
        await db.bulk_upsert([{"config_name": "theme"}])  # type: ignore[list-item]
    bad_fragments: list[dict[str, Any]] = [
        {"scope_type": "public", "scope_id": U1, "config_name": "theme", "config": {}},
        {"scope_type": "user", "scope_id": None, "config_name": "theme", "config": {}},
        {"scope_type": "project", "scope_id": U1, "config_name": "theme", "config": {}},
        {"scope_type": "public", "scope_id": None, "config_name": long_name, "config": {}},
        {"scope_type": "public", "scope_id": None, "config_name": "", "config": {}},
        {"scope_type": "public", "scope_id": None, "config_name": "theme", "config": [1]},
        {"scope_type": "public", "scope_id": None, "config_name": "theme", "config": {"a": 1e999}},
        {"scope_type": "public", "scope_id": None, "config_name": "theme", "config": {"a\x00": 1}},
        {"scope_type": "public", "scope_id": None, "config_name": "theme", "config": {"a": {1}}},
    ]
    for fields in bad_fragments:
        with pytest.raises(ValidationError):
            FragmentUpsert(**fields)
    assert await fragment_rows(db) == []
    assert await db.definitions() == ["theme"]
    assert json.dumps(await db.merged(U1, D1, ["theme"])) == '{"theme": {}}'
