"""The ranked model's triggers on a real PostgreSQL: what each write to the definitions,
the allow-list and the fragments records in the outbox, for every registered cache but
the writer's own, whoever writes (plain SQL or ``RankedDBSource``).

A database of this module's own (the ranked tables share a name with the policy model's),
two connections at most. Each test registers a cache prefix (``OBSERVER``) directly in
``app_config_cache_prefixes``, writes, and reads back the rows recorded for it: the exact
targets (compared regardless of order) and ``drop_catalogue``, one row per statement.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from atomic_cache import ranked
from atomic_cache.db import outbox
from atomic_cache.ranked import FragmentUpsert, RankedDBSource, Scope
from atomic_cache.ranked.schema import TABLE_NAMES

from .pg_tools import ranked_database

OBSERVER = "observer"
D1, D2 = uuid.UUID(int=0xD1), uuid.UUID(int=0xD2)
U1, U2 = uuid.UUID(int=0x01), uuid.UUID(int=0x02)

# A target as compared here: (scope, id, sorted names or None for every name).
Target = tuple[str, str, tuple[str, ...] | None]
# A recorded row: its targets (a set: order does not matter) and drop_catalogue.
Row = tuple[frozenset[Target], bool]


# -- a database of this module's ----------------------------------------------------------


@pytest.fixture(scope="module")
async def engine(postgres_server_url: str) -> AsyncIterator[AsyncEngine]:
    """A database of this module's, made by ranked.create_schema (triggers included)."""
    async with ranked_database(postgres_server_url, "rtrig", pool_size=2, max_overflow=0) as engine:
        yield engine


@pytest.fixture
async def db(engine: AsyncEngine) -> RankedDBSource:
    """The module's database emptied (with no cache registered, so the truncate records
    nothing), then ``OBSERVER`` registered."""
    async with engine.begin() as conn:
        await conn.execute(
            text("TRUNCATE app_config_cache_prefixes, app_config_invalidation_outbox")
        )
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(TABLE_NAMES)} CASCADE"))
        await outbox.register(conn, OBSERVER)
    return RankedDBSource(engine)


async def sql(db: RankedDBSource, statement: str, **params: Any) -> None:
    """A write by someone else: plain SQL, a transaction of its own."""
    async with db.engine.begin() as conn:
        await conn.execute(text(statement), params)


async def take_all(db: RankedDBSource) -> dict[str, list[Row]]:
    """The rows recorded so far, by cache prefix, in order; then deleted, so the next
    write's rows come alone."""
    found: dict[str, list[Row]] = {}
    async with db.engine.begin() as conn:
        rows = await conn.execute(
            text(
                "SELECT cache_prefix, targets, drop_catalogue"
                " FROM app_config_invalidation_outbox ORDER BY id"
            )
        )
        for recorded in rows:
            found.setdefault(recorded.cache_prefix, []).append(
                (targets_of(recorded.targets), recorded.drop_catalogue)
            )
        await conn.execute(text("DELETE FROM app_config_invalidation_outbox"))
    return found


async def take(db: RankedDBSource, prefix: str = OBSERVER) -> list[Row]:
    """The rows recorded for ``prefix`` so far (every prefix's are then deleted)."""
    return (await take_all(db)).get(prefix, [])


def targets_of(stored: list[list[Any]]) -> frozenset[Target]:
    return frozenset(
        (scope, scope_id, tuple(sorted(names)) if names is not None else None)
        for scope, scope_id, names in stored
    )


def row(*targets: Target, catalogue: bool = False) -> Row:
    return frozenset(targets), catalogue


def public(*names: str) -> Target:
    return ("public", "public", tuple(sorted(names)))


def domain(domain_id: uuid.UUID, *names: str) -> Target:
    return ("domain", str(domain_id), tuple(sorted(names)))


def user(user_id: uuid.UUID, *names: str) -> Target:
    return ("user", str(user_id), tuple(sorted(names)))


EVERYTHING: Row = row(("public", "public", None), catalogue=True)


def frag(name: str, scope: Scope, scope_id: uuid.UUID | None, /, **config: Any) -> FragmentUpsert:
    return FragmentUpsert(scope_type=scope, scope_id=scope_id, config_name=name, config=config)


async def register(db: RankedDBSource, *names: str) -> None:
    """Define each name and grant it at all three scopes (default ranks); forget what that
    recorded."""
    for name in names:
        await db.create_definition(name)
        for scope in Scope:
            await db.create_grant(name, scope)
    await take(db)


async def insert_fragment(
    db: RankedDBSource, name: str, scope: str, scope_id: str | None, config: str = "{}"
) -> None:
    await sql(
        db,
        "INSERT INTO app_config_fragments (config_name, scope_type, scope_id, config)"
        " VALUES (:name, :scope, CAST(:scope_id AS uuid), CAST(:config AS jsonb))",
        name=name,
        scope=scope,
        scope_id=scope_id,
        config=config,
    )


# One fragment of "theme" at each scope, and the slice each one is.
AT_EACH_SCOPE = [
    pytest.param(Scope.PUBLIC, None, public("theme"), id="public"),
    pytest.param(Scope.DOMAIN, D1, domain(D1, "theme"), id="domain"),
    pytest.param(Scope.USER, U1, user(U1, "theme"), id="user"),
]


# -- the triggers ---------------------------------------------------------------------------


async def test_the_triggers_are_enable_always_one_per_table_and_event(
    db: RankedDBSource,
) -> None:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT c.relname, t.tgname, t.tgenabled::text FROM pg_trigger t"
                " JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal ORDER BY 1, 2"
            )
        )
        found = [tuple(r) for r in rows]
    short = {"app_config_definitions": "definitions", "app_config_allow_list": "allow_list"}
    expected = sorted(
        (table, f"app_config_ranked_{short.get(table, 'fragments')}_{event}", "A")
        for table in TABLE_NAMES
        for event in ("inserted", "updated", "deleted", "truncated")
    )
    assert found == expected


async def test_create_schema_again_keeps_one_set_of_triggers(db: RankedDBSource) -> None:
    await ranked.create_schema(db.engine)
    await ranked.create_schema(db.engine)
    async with db.engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'A'")
        )
    assert count == 12
    await register(db, "theme")
    await insert_fragment(db, "theme", "public", None)
    assert await take(db) == [row(public("theme"))]


# -- fragments ------------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "scope_id", "target"), AT_EACH_SCOPE)
async def test_a_fragment_inserted_with_sql(
    db: RankedDBSource, scope: Scope, scope_id: uuid.UUID | None, target: Target
) -> None:
    await register(db, "theme")
    await insert_fragment(db, "theme", scope.value, str(scope_id) if scope_id else None)
    assert await take(db) == [row(target)]


@pytest.mark.parametrize(("scope", "scope_id", "target"), AT_EACH_SCOPE)
async def test_a_fragment_upserted_and_purged(
    db: RankedDBSource, scope: Scope, scope_id: uuid.UUID | None, target: Target
) -> None:
    await register(db, "theme")
    [written] = await db.bulk_upsert([frag("theme", scope, scope_id, v=1)])
    assert await take(db) == [row(target)]
    await db.bulk_upsert([frag("theme", scope, scope_id, v=2)])  # on conflict: an update
    assert await take(db) == [row(target)]
    await db.purge_fragments([written.id])
    assert await take(db) == [row(target)]


@pytest.mark.parametrize(("scope", "scope_id", "target"), AT_EACH_SCOPE)
async def test_a_fragment_updated_and_deleted_with_sql(
    db: RankedDBSource, scope: Scope, scope_id: uuid.UUID | None, target: Target
) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", scope, scope_id, v=1)])
    await take(db)
    await sql(db, "UPDATE app_config_fragments SET config = '{\"v\": 2}'")
    assert await take(db) == [row(target)]
    await sql(db, "DELETE FROM app_config_fragments")
    assert await take(db) == [row(target)]


async def test_one_statement_at_every_scope_is_one_row(db: RankedDBSource) -> None:
    await register(db, "theme", "menu")
    await db.bulk_upsert(
        [
            frag("theme", Scope.PUBLIC, None),
            frag("theme", Scope.DOMAIN, D1),
            frag("theme", Scope.DOMAIN, D2),
            frag("theme", Scope.USER, U1),
            frag("menu", Scope.USER, U1),
        ]
    )
    assert await take(db) == [
        row(public("theme"), domain(D1, "theme"), domain(D2, "theme"), user(U1, "theme", "menu"))
    ]


async def test_ids_are_lower_case_canonical_text(db: RankedDBSource) -> None:
    await register(db, "theme")
    await insert_fragment(db, "theme", "user", "ABCDEF01-2345-6789-ABCD-EF0123456789")
    assert await take(db) == [row(("user", "abcdef01-2345-6789-abcd-ef0123456789", ("theme",)))]


async def test_an_update_that_changes_nothing_records_nothing(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.PUBLIC, None, v=1), frag("theme", Scope.USER, U1)])
    await take(db)
    await sql(db, "UPDATE app_config_fragments SET config = config, updated_at = now()")
    await sql(db, "UPDATE app_config_fragments SET config = config WHERE false")
    await db.bulk_upsert([frag("theme", Scope.PUBLIC, None, v=1)])  # the same config again
    assert await take(db) == []


async def test_an_update_records_only_the_rows_it_changed(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.USER, U1, v=1), frag("theme", Scope.USER, U2, v=2)])
    await take(db)
    await sql(db, "UPDATE app_config_fragments SET config = '{\"v\": 2}'")  # U2's was that
    assert await take(db) == [row(user(U1, "theme"))]


async def test_a_fragment_moved_to_another_user_records_both(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.USER, U1, gift=1)])
    await take(db)
    await sql(db, "UPDATE app_config_fragments SET scope_id = :to", to=U2)
    assert await take(db) == [row(user(U1, "theme"), user(U2, "theme"))]


async def test_a_fragment_moved_to_another_scope_records_both(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.DOMAIN, D1)])
    await take(db)
    await sql(db, "UPDATE app_config_fragments SET scope_type = 'user', scope_id = :to", to=U1)
    assert await take(db) == [row(domain(D1, "theme"), user(U1, "theme"))]
    await sql(db, "UPDATE app_config_fragments SET scope_type = 'public', scope_id = NULL")
    assert await take(db) == [row(user(U1, "theme"), public("theme"))]


async def test_a_fragment_moved_to_another_name_records_both(db: RankedDBSource) -> None:
    await register(db, "theme", "menu")
    await db.bulk_upsert([frag("theme", Scope.USER, U1)])
    await take(db)
    await sql(db, "UPDATE app_config_fragments SET config_name = 'menu'")
    assert await take(db) == [row(user(U1, "theme", "menu"))]


async def test_an_upsert_that_inserts_and_updates(db: RankedDBSource) -> None:
    """INSERT ... ON CONFLICT DO UPDATE fires the insert trigger (the rows inserted) and the
    update trigger (the rows replaced): a row each."""
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.USER, U1, v=1)])
    await take(db)
    await db.bulk_upsert([frag("theme", Scope.USER, U1, v=2), frag("theme", Scope.USER, U2)])
    assert sorted(await take(db)) == sorted([row(user(U1, "theme")), row(user(U2, "theme"))])


async def test_a_thousand_fragments_in_one_statement_is_one_row_per_cache(
    db: RankedDBSource,
) -> None:
    await register(db, "theme")
    async with db.engine.begin() as conn:
        await outbox.register(conn, "another")
    users = [uuid.uuid4() for _ in range(1000)]
    slices = {user(u, "theme") for u in users}
    await sql(
        db,
        "INSERT INTO app_config_fragments (config_name, scope_type, scope_id, config)"
        " SELECT 'theme', 'user', u, '{}' FROM unnest(CAST(:users AS uuid[])) AS u",
        users=users,
    )
    assert await take(db, "another") == [row(*slices)]  # (take clears every prefix's rows)
    for statement in (
        "UPDATE app_config_fragments SET config = '{\"n\": 1}'",
        "DELETE FROM app_config_fragments",
    ):
        await sql(db, statement)
        async with db.engine.connect() as conn:
            counts = await conn.execute(
                text(
                    "SELECT cache_prefix, count(*), sum(jsonb_array_length(targets))"
                    " FROM app_config_invalidation_outbox GROUP BY 1 ORDER BY 1"
                )
            )
            assert [tuple(c) for c in counts] == [("another", 1, 1000), (OBSERVER, 1, 1000)]
        assert await take(db) == [row(*slices)]


# -- the allow-list -------------------------------------------------------------------------


async def test_a_rank_changed_records_that_name_for_everyone(db: RankedDBSource) -> None:
    await register(db, "theme", "menu")
    update = await db.update_rank("theme", Scope.DOMAIN, 400)
    assert update.changed
    assert await take(db) == [row(public("theme"))]
    await sql(
        db,
        "UPDATE app_config_allow_list SET rank = rank + 1 WHERE scope_type = 'user'",
    )
    assert await take(db) == [row(public("theme", "menu"))]


async def test_a_rank_unchanged_records_nothing(db: RankedDBSource) -> None:
    await register(db, "theme", "menu")
    update = await db.update_rank("theme", Scope.DOMAIN, Scope.DOMAIN.default_rank())
    assert not update.changed
    await sql(db, "UPDATE app_config_allow_list SET rank = rank, updated_at = now()")
    assert await take(db) == []
    await sql(
        db,
        "UPDATE app_config_allow_list SET rank = CASE WHEN config_name = 'menu'"
        " THEN rank + 1 ELSE rank END",
    )
    assert await take(db) == [row(public("menu"))]


async def test_a_grant_created_records_nothing(db: RankedDBSource) -> None:
    await db.create_definition("theme")
    await take(db)
    await db.create_grant("theme", Scope.USER)
    await sql(
        db,
        "INSERT INTO app_config_allow_list (config_name, scope_type, rank)"
        " VALUES ('theme', 'domain', 200), ('theme', 'public', 100)",
    )
    assert await take(db) == []


async def test_a_grant_renamed_without_fragments_records_nothing(db: RankedDBSource) -> None:
    await register(db, "theme", "menu")
    await db.purge_grant("menu", Scope.USER)
    await take(db)
    await sql(
        db,
        "UPDATE app_config_allow_list SET config_name = 'menu'"
        " WHERE config_name = 'theme' AND scope_type = 'user'",
    )
    assert await take(db) == []


async def fragments_at_several_scopes(db: RankedDBSource) -> None:
    await register(db, "theme", "menu")
    await db.bulk_upsert(
        [
            frag("theme", Scope.PUBLIC, None),
            frag("theme", Scope.DOMAIN, D1),
            frag("theme", Scope.DOMAIN, D2),
            frag("theme", Scope.USER, U1),
            frag("theme", Scope.USER, U2),
            frag("menu", Scope.USER, U1),
        ]
    )
    await take(db)


# A grant purge records each cascaded fragment's slice (the fragments' own trigger, fired
# once for the statement with every cascaded row), nothing else.
GRANT_PURGES = [
    pytest.param(Scope.PUBLIC, row(public("theme")), id="public"),
    pytest.param(Scope.DOMAIN, row(domain(D1, "theme"), domain(D2, "theme")), id="domain"),
    pytest.param(Scope.USER, row(user(U1, "theme"), user(U2, "theme")), id="user"),
]


@pytest.mark.parametrize(("scope", "expected"), GRANT_PURGES)
async def test_a_grant_purged_records_each_cascaded_fragment(
    db: RankedDBSource, scope: Scope, expected: Row
) -> None:
    await fragments_at_several_scopes(db)
    cascaded = await db.purge_grant("theme", scope)
    assert len(cascaded) == len(expected[0])
    assert await take(db) == [expected]


@pytest.mark.parametrize(("scope", "expected"), GRANT_PURGES)
async def test_a_grant_deleted_with_sql_records_each_cascaded_fragment(
    db: RankedDBSource, scope: Scope, expected: Row
) -> None:
    await fragments_at_several_scopes(db)
    await sql(
        db,
        "DELETE FROM app_config_allow_list WHERE config_name = 'theme' AND scope_type = :scope",
        scope=scope.value,
    )
    assert await take(db) == [expected]


async def test_grants_deleted_in_one_statement_are_one_row(db: RankedDBSource) -> None:
    await fragments_at_several_scopes(db)
    await sql(db, "DELETE FROM app_config_allow_list WHERE scope_type = 'user'")
    assert await take(db) == [row(user(U1, "theme", "menu"), user(U2, "theme"))]


async def test_a_grant_purged_without_fragments_records_nothing(db: RankedDBSource) -> None:
    await register(db, "theme")
    await db.purge_grant("theme", Scope.DOMAIN)
    assert await take(db) == []


# -- definitions ----------------------------------------------------------------------------


async def test_a_definition_created_records_the_catalogue_only(db: RankedDBSource) -> None:
    await db.create_definition("theme")
    assert await take(db) == [row(catalogue=True)]
    await sql(db, "INSERT INTO app_config_definitions (config_name) VALUES ('a'), ('b')")
    assert await take(db) == [row(catalogue=True)]
    await sql(
        db,
        "INSERT INTO app_config_definitions (config_name) VALUES ('a')"
        " ON CONFLICT (config_name) DO NOTHING",
    )
    assert await take(db) == []  # nothing inserted


async def test_a_definition_purged_records_its_name_and_the_catalogue_once(
    db: RankedDBSource,
) -> None:
    """The cascade deletes its grants and their fragments; their triggers leave the name
    out, covered by the definition's: one row."""
    await fragments_at_several_scopes(db)
    purged = await db.purge_definition("theme")
    assert len(purged.grants) == 3 and len(purged.fragments) == 5
    assert await take(db) == [row(public("theme"), catalogue=True)]


async def test_definitions_deleted_with_sql_in_one_statement(db: RankedDBSource) -> None:
    await fragments_at_several_scopes(db)
    await sql(db, "DELETE FROM app_config_definitions")
    assert await take(db) == [row(public("theme", "menu"), catalogue=True)]


async def test_a_definition_renamed_records_both_names_and_the_catalogue(
    db: RankedDBSource,
) -> None:
    await db.create_definition("theme")
    await take(db)
    await sql(db, "UPDATE app_config_definitions SET updated_at = now()")
    assert await take(db) == []
    await sql(db, "UPDATE app_config_definitions SET config_name = 'colours'")
    assert await take(db) == [row(public("theme", "colours"), catalogue=True)]


# -- TRUNCATE -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "TRUNCATE app_config_fragments",
        "TRUNCATE app_config_allow_list CASCADE",
        "TRUNCATE app_config_definitions CASCADE",
        "TRUNCATE app_config_definitions, app_config_allow_list, app_config_fragments",
    ],
)
async def test_a_truncate_records_everything_and_the_catalogue_once(
    db: RankedDBSource, statement: str
) -> None:
    await fragments_at_several_scopes(db)
    await sql(db, statement)
    assert await take(db) == [EVERYTHING]


async def test_a_truncate_of_empty_tables_still_records_everything(db: RankedDBSource) -> None:
    await sql(db, "TRUNCATE app_config_fragments")
    assert await take(db) == [EVERYTHING]


# -- whose cache ----------------------------------------------------------------------------


async def own_write(conn: AsyncConnection, prefix: str) -> None:
    await conn.execute(text(f"SET LOCAL atomic_cache.own_prefix = '{prefix}'"))


async def test_the_writers_own_prefix_gets_no_row(db: RankedDBSource) -> None:
    """A write of this package sets atomic_cache.own_prefix for its transaction: its own
    cache gets no row (it invalidates that one itself), every other cache gets its row."""
    await register(db, "theme")
    async with db.engine.begin() as conn:
        await outbox.register(conn, "writer")
    async with db.engine.begin() as conn:
        await own_write(conn, "writer")
        await db.bulk_upsert([frag("theme", Scope.USER, U1)], conn=conn)
    assert await take_all(db) == {OBSERVER: [row(user(U1, "theme"))]}
    async with db.engine.begin() as conn:
        await own_write(conn, "writer")
        await conn.execute(text("DELETE FROM app_config_fragments"))
    assert await take_all(db) == {OBSERVER: [row(user(U1, "theme"))]}
    async with db.engine.begin() as conn:
        await own_write(conn, "writer")
        await db.purge_definition("theme", conn=conn)
    assert await take_all(db) == {OBSERVER: [row(public("theme"), catalogue=True)]}
    await db.create_definition("theme")  # not the package's write: both get a row
    assert await take_all(db) == {OBSERVER: [row(catalogue=True)], "writer": [row(catalogue=True)]}


async def test_a_name_covered_in_a_transaction_is_not_recorded_again(
    db: RankedDBSource,
) -> None:
    """After a rank change of a name (its public slice recorded), the same transaction's
    fragment writes of that name add nothing: the outbox is delivered after the commit."""
    await register(db, "theme", "menu")
    async with db.engine.begin() as conn:
        await db.update_rank("theme", Scope.USER, 500, conn=conn)
        await db.bulk_upsert(
            [frag("theme", Scope.USER, U1), frag("menu", Scope.USER, U1)], conn=conn
        )
    assert await take(db) == [row(public("theme")), row(user(U1, "menu"))]


async def test_a_cover_holds_only_for_the_writers_prefix_it_was_made_under(
    db: RankedDBSource,
) -> None:
    """A name covered while cache A was the writer's own (recorded for B only) is recorded
    again, for A, once the transaction writes for B."""
    await register(db, "theme")
    async with db.engine.begin() as conn:
        await outbox.register(conn, "a")
        await outbox.register(conn, "b")
    async with db.engine.begin() as conn:
        await own_write(conn, "a")
        await db.update_rank("theme", Scope.USER, 500, conn=conn)
        await own_write(conn, "b")
        await db.bulk_upsert([frag("theme", Scope.USER, U1)], conn=conn)
    assert await take_all(db) == {
        "a": [row(user(U1, "theme"))],
        "b": [row(public("theme"))],
        OBSERVER: [row(public("theme")), row(user(U1, "theme"))],
    }


async def test_a_cover_rolled_back_with_its_savepoint_covers_nothing(
    db: RankedDBSource,
) -> None:
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.USER, U1)])
    await take(db)
    async with db.engine.begin() as conn:
        savepoint = await conn.begin_nested()
        await conn.execute(text("DELETE FROM app_config_definitions"))
        await savepoint.rollback()
        await conn.execute(text("DELETE FROM app_config_fragments"))
    assert await take(db) == [row(user(U1, "theme"))]


async def test_a_cover_from_another_transaction_is_ignored(db: RankedDBSource) -> None:
    """The note is honoured only under its own transaction's mark: one set for the whole
    session (by hand, or a note of an earlier transaction) covers nothing."""
    await register(db, "theme")
    async with db.engine.connect() as conn:
        async with conn.begin():
            mark = await conn.scalar(text("SELECT app_config_ranked_mark()"))
            note = f'{mark}{{"all": true, "names": {{"theme": true}}}}'
            await conn.execute(
                text("SELECT set_config('atomic_cache.ranked_covered', :note, false)"),
                {"note": note},
            )
        try:
            async with conn.begin():
                await db.bulk_upsert([frag("theme", Scope.USER, U1)], conn=conn)
        finally:
            await conn.execute(text("RESET atomic_cache.ranked_covered"))
            await conn.commit()
    assert await take(db) == [row(user(U1, "theme"))]


async def test_statements_that_touch_no_row_record_nothing(db: RankedDBSource) -> None:
    await fragments_at_several_scopes(db)
    for table in TABLE_NAMES:
        await sql(db, f"DELETE FROM {table} WHERE false")
        await sql(db, f"UPDATE {table} SET updated_at = now() WHERE false")
    await sql(db, "INSERT INTO app_config_fragments SELECT * FROM app_config_fragments LIMIT 0")
    assert await take(db) == []


# -- with the foreign keys off ----------------------------------------------------------------


async def test_grants_and_fragments_out_of_step_under_replica_role(db: RankedDBSource) -> None:
    """Under session_replication_role = replica (a superuser's), the foreign keys' actions
    do not run but the triggers (ENABLE ALWAYS) do: a grant deleted leaves its fragments,
    which stop counting (the reads join the allow-list), and a grant created again makes
    them count: both record those fragments' slices."""
    await register(db, "theme")
    await db.bulk_upsert([frag("theme", Scope.USER, U1), frag("theme", Scope.DOMAIN, D1)])
    await take(db)
    async with db.engine.begin() as conn:
        try:
            async with conn.begin_nested():
                await conn.execute(text("SET LOCAL session_replication_role = replica"))
        except DBAPIError:
            pytest.skip("the role may not set session_replication_role")
        await conn.execute(text("DELETE FROM app_config_allow_list WHERE scope_type = 'user'"))
    assert await take(db) == [row(user(U1, "theme"))]
    async with db.engine.begin() as conn:
        await conn.execute(text("SET LOCAL session_replication_role = replica"))
        await conn.execute(
            text(
                "INSERT INTO app_config_allow_list (config_name, scope_type, rank)"
                " VALUES ('theme', 'user', 300)"
            )
        )
    assert await take(db) == [row(user(U1, "theme"))]
