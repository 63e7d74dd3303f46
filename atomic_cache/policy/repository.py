"""Repositories: read around the cache, write to PostgreSQL, invalidate after commit.

``AppConfigFragmentRepository`` serves merged configs from Valkey after the first read
and invalidates exactly the slices a bulk write changed before it returns;
``AppConfigPolicyRepository`` does the same for policies. Both keep working, correctly,
when Valkey fails: every cache call falls through to the database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..after_commit import AfterCommit
from ..cache.source import AppConfigFragmentCacheSource
from ..following import Following
from ..ids import as_uuid
from ..keys import MAX_COMPONENT_LENGTH, token_sequence
from ..metrics import CacheStats
from ..models import DOMAIN_SCOPES, AppConfigData, AppConfigFragment, ScopeType
from ..replayer import DEFAULT_REPLAY_AFTER_S, DEFAULT_REPLAY_EVERY_S, OutboxReplayer
from ..resilience.guard import GuardedCache
from ..single_flight import SingleFlight
from ..targets import InvalidationTarget
from .consistency import DEFAULT_VERIFY_SAMPLE, ConsistencyChecker
from .db_source import AppConfigDBSource, UnknownPolicyError, UnknownUserError
from .models import (
    AppConfigPolicy,
    BulkFailure,
    BulkResult,
    FragmentInput,
    FragmentKey,
    MyFragmentInput,
)
from .validation import (
    ALREADY_EXISTS,
    DUPLICATE_ITEM,
    NOT_FOUND,
    UNKNOWN_DOMAIN,
    UNKNOWN_POLICY,
    UNKNOWN_USER,
    ConfigLimits,
    Problem,
    canonical_scope_id,
    check_extra_config,
    check_policy,
)

T = TypeVar("T")
_NO_CACHE = GuardedCache(None)  # what reads use while the cache does not follow yet
Operation = Literal["create", "update", "delete"]


class PolicyExistsError(ValueError):
    """A policy with that config name exists already."""


class PolicyInUseError(ValueError):
    """The policy still has fragments; delete them first or pass ``cascade=True``."""


def _by_name(configs: Sequence[AppConfigData]) -> list[AppConfigData]:
    return sorted(configs, key=lambda config: config.name)


def _target(key: FragmentKey) -> InvalidationTarget:
    """The cache slice a change of this fragment can affect."""
    return InvalidationTarget.of(key.scope_type, key.scope_id, [key.name])


class AppConfigFragmentRepository:
    """Merged app configs, read around the cache; bulk fragment writes with invalidation.

    Every method that takes a ``user_id`` takes a ``uuid.UUID`` or its string form
    (8-4-4-4-12 hex digits, either case) and raises ValueError, before any I/O, for
    anything else. Valkey failures never reach the caller: reads fall through to
    PostgreSQL, and invalidations that could not be applied are replayed.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        cache: AppConfigFragmentCacheSource | None = None,
        *,
        limits: ConfigLimits | None = None,
        replay_after_s: float = DEFAULT_REPLAY_AFTER_S,
        replay_every_s: float = DEFAULT_REPLAY_EVERY_S,
        durable: bool = True,
        verify_sample: float = DEFAULT_VERIFY_SAMPLE,
    ) -> None:
        self._db = AppConfigDBSource(engine)
        self._engine = engine
        self._cache = GuardedCache.of(cache)
        self._limits = limits or ConfigLimits()
        # False: no outbox row per write (one INSERT and one DELETE less), and a missed
        # invalidation lives only in this process's memory until it is replayed.
        self._durable = durable
        self._flights = SingleFlight()
        # Replays what other writes left in the outbox; started on the first call.
        # Woken by a NOTIFY at each commit the triggers recorded; polls every
        # replay_every_s as well, in case a notification is lost.
        self._replayer = OutboxReplayer(
            engine, self._cache, after_s=replay_after_s, every_s=replay_every_s
        )
        self._following = Following.of(engine, self._cache) if self._cache.enabled else None
        # That fraction of cache hits is re-read from PostgreSQL in the background and
        # compared (consistency.py); 0 turns it off.
        self.checker = ConsistencyChecker(engine, self._cache, sample=verify_sample)

    async def start(self) -> bool:
        """Register the cache with the database (so that every change, whoever makes it,
        reaches it) and start the outbox replayer: what the first call does otherwise,
        done at start-up. True once the cache follows the database (always without a
        cache); False while PostgreSQL cannot register it (reads go to the database)."""
        self._replayer.ensure_running()
        return self._following is None or await self._following.ready()

    async def close(self) -> None:
        """Stop this repository's outbox replayer and wait for its consistency checks
        (the engine and cache stay open)."""
        await self._replayer.close()
        await self.checker.idle()

    # -- reads ---------------------------------------------------------------------------

    async def app_config(self, user_id: uuid.UUID | str, name: str) -> AppConfigData:
        """The merged config of one name for one user (``config`` None without fragments).

        Warm: one Valkey round trip (none with a local cache that holds it), no SQL. On a
        miss, one SQL statement, then a fill that an invalidation since the lookup refuses.
        Raises UnknownUserError / UnknownPolicyError for a user or name that does not exist;
        ValueError for a ``user_id`` that is neither a ``uuid.UUID`` nor its string form.
        """
        user_id = as_uuid(user_id, "user_id")
        self._replayer.ensure_running()
        cache = self._following_cache or await self._reading()
        found = await cache.read(lambda source: source.lookup(user_id, name))
        if found is not None and found.value is not None:
            if self._cache.servable(found.value):
                self._cache.record_lookups(hits=1, misses=0)
                self.checker.offer(found.value)
                return found.value
        elif found is not None:
            self._cache.record_lookups(hits=0, misses=1)
        if found is None or found.fill_token is None:
            # No cache answer: no fill token, so no sharing either. A flight started
            # before a write returned could hand its older result to a read started after.
            return await self._load(user_id, name)
        token = found.fill_token
        # Readers whose lookups saw the same sequence and the same invalidation generation
        # of this process share one query. Every write moves the generation before it
        # returns (and the sequence, when its invalidation lands), so no reader joins a
        # flight older than a write it saw.
        return await self._flights.run(
            (user_id, name, token_sequence(token), self._cache.generation),
            lambda: self._load_and_fill(user_id, name, token),
        )

    @property
    def _following_cache(self) -> GuardedCache | None:
        """The cache once it follows the database, without a coroutine: the hot path."""
        if self._following is None or self._following.registered:
            return self._cache
        return None

    async def _reading(self) -> GuardedCache:
        """The cache, once its prefix follows the database (``following.py``: registered,
        so that every change made by anyone reaches it); until then, no cache."""
        if self._following is None or await self._following.ready():
            return self._cache
        return _NO_CACHE

    async def _load(self, user_id: uuid.UUID, name: str) -> AppConfigData:
        loaded = await self._db.merged_configs(user_id, [name])
        if not loaded:
            raise UnknownPolicyError(f"no app-config policy named {name!r}")
        return loaded[0]

    async def _load_and_fill(self, user_id: uuid.UUID, name: str, fill_token: str) -> AppConfigData:
        data = await self._load(user_id, name)
        await self._fill(user_id, [data], fill_token)
        return data

    async def _fill(
        self,
        user_id: uuid.UUID,
        data: Sequence[AppConfigData],
        fill_token: str,
        catalogue: Sequence[str] | None = None,
    ) -> None:
        """Store what was read from the database, unless an invalidation ran since the
        lookup that handed out ``fill_token``.

        Never without a token taken before the SQL read: a lookup in which Valkey served
        every name hands out none (``""``), and a write without one would overwrite
        whatever another process wrote and invalidated after that read. Then nothing is
        filled, as ``app_config`` does when its lookup brought no token."""
        if not fill_token:
            return
        stored = await self._cache.call(
            "fill",
            lambda cache: cache.set_many(user_id, data, fill_token=fill_token, catalogue=catalogue),
        )
        if stored is not None:
            self._cache.record_fill(stored=stored, entries=len(data))

    async def my_app_configs(self, user_id: uuid.UUID | str) -> list[AppConfigData]:
        """The merged config of every policy name for one user, sorted by name.

        Warm: one Valkey round trip and no SQL. Otherwise the missing names come from one
        SQL statement and are filled in one round trip. Raises UnknownUserError for a user
        who does not exist; ValueError for a ``user_id`` that is neither a ``uuid.UUID``
        nor its string form.
        """
        user_id = as_uuid(user_id, "user_id")
        self._replayer.ensure_running()
        cache = self._following_cache or await self._reading()
        found = await cache.read(lambda source: source.lookup_all(user_id))
        if found is None:
            return _by_name(await self._db.merged_configs(user_id))
        if found.names is None or not self._cache.catalogue_servable():
            # No catalogue, or a missed invalidation of it (a policy was created or
            # deleted) is pending: the list of names comes from the database.
            loaded = await self._db.merged_configs(user_id)
            if found.names is None:
                self._cache.record_lookups(hits=0, misses=len(loaded))
            else:
                self._cache.metrics.fall_throughs["pending_invalidation"] += len(loaded)
            await self._fill(user_id, loaded, found.fill_token, [c.name for c in loaded])
            return _by_name(loaded)
        held = [value for value in found.values.values() if value is not None]
        present = [value for value in held if self._cache.servable(value)]
        served = {value.name for value in present}
        missing = [name for name in found.values if name not in served]
        self._cache.record_lookups(hits=len(present), misses=len(found.values) - len(held))
        for value in present:
            self.checker.offer(value)
        if not missing:
            return _by_name(present)
        loaded = await self._db.merged_configs(user_id, missing)
        await self._fill(user_id, loaded, found.fill_token)
        return _by_name([*present, *loaded])

    def stats(self) -> CacheStats:
        """What the cache did in this process: hits, misses, fills, fall-throughs by
        cause, invalidations, breaker state... One set of counters per cache source, shared
        by every repository that uses it (all zero without a cache)."""
        return self._cache.stats()

    # -- the "my" bulk paths: USER fragments of the caller -------------------------------

    async def bulk_create_my(
        self, user_id: uuid.UUID | str, items: Sequence[MyFragmentInput]
    ) -> BulkResult[AppConfigFragment]:
        """Create the user's own (USER) fragments, one per item, each in its own
        savepoint, in one transaction; returns the fragments created and, per item, why
        one was not (``already_exists``, ``unknown_user``, ``scope_not_allowed``...,
        never raised). Returns after the touched names of this user are invalidated.
        ValueError, before any I/O, for a ``user_id`` that is neither a ``uuid.UUID`` nor
        its string form."""
        user = as_uuid(user_id, "user_id")
        return await self._write_fragments("create", [self._mine(user, item) for item in items])

    async def bulk_update_my(
        self, user_id: uuid.UUID | str, items: Sequence[MyFragmentInput]
    ) -> BulkResult[AppConfigFragment]:
        """Replace the ``extra_config`` of the user's own fragments; as
        ``bulk_create_my``, with ``not_found`` for a fragment that does not exist."""
        user = as_uuid(user_id, "user_id")
        return await self._write_fragments("update", [self._mine(user, item) for item in items])

    async def bulk_delete_my(
        self, user_id: uuid.UUID | str, names: Sequence[str]
    ) -> BulkResult[FragmentKey]:
        """Delete the user's own fragments of these names; returns the keys deleted and a
        ``not_found`` failure for each name without one. Returns after the deleted names
        of this user are invalidated. ValueError, before any I/O, for a single string as
        ``names`` or a ``user_id`` that is neither a ``uuid.UUID`` nor its string form."""
        user = as_uuid(user_id, "user_id")
        if isinstance(names, str):
            raise ValueError("names must be a list of names, not a single string")
        keys = [FragmentKey(scope_type=ScopeType.USER, scope_id=user, name=name) for name in names]
        return await self._delete_fragments(keys)

    @staticmethod
    def _mine(user_id: uuid.UUID, item: MyFragmentInput) -> FragmentInput:
        return FragmentInput(
            scope_type=ScopeType.USER,
            scope_id=user_id,
            name=item.name,
            extra_config=item.extra_config,
        )

    # -- the admin bulk paths: any scope the policy allows -------------------------------

    async def admin_bulk_create(
        self, items: Sequence[FragmentInput]
    ) -> BulkResult[AppConfigFragment]:
        """Create fragments of any scope their policy allows, each in its own savepoint,
        in one transaction; returns the fragments created and, per item, why one was not
        (``BulkFailure.code``: ``invalid_scope_id`` for a USER scope id that is not a
        UUID or its string form, ``unknown_user``, ``already_exists``..., never raised).
        Returns after exactly the touched slices are invalidated."""
        return await self._write_fragments("create", items)

    async def admin_bulk_update(
        self, items: Sequence[FragmentInput]
    ) -> BulkResult[AppConfigFragment]:
        """Replace the ``extra_config`` of fragments of any scope; as
        ``admin_bulk_create``, with ``not_found`` for a fragment that does not exist."""
        return await self._write_fragments("update", items)

    async def admin_bulk_delete(self, keys: Sequence[FragmentKey]) -> BulkResult[FragmentKey]:
        """Delete fragments of any scope; returns the keys deleted (scope ids in their
        stored form) and a ``not_found`` failure for each key without a fragment. Returns
        after the deleted slices are invalidated."""
        return await self._delete_fragments(keys)

    # -- the bulk machinery --------------------------------------------------------------

    async def _write_fragments(
        self, operation: Operation, items: Sequence[FragmentInput]
    ) -> BulkResult[AppConfigFragment]:
        result: BulkResult[AppConfigFragment] = BulkResult()
        touched: list[InvalidationTarget] = []

        async def apply(conn: AsyncConnection, index: int, key: FragmentKey) -> Problem | None:
            config = items[index].extra_config
            if operation == "create":
                try:
                    async with conn.begin_nested():
                        written = await self._db.insert_fragment(conn, key, config)
                except IntegrityError:
                    return Problem(ALREADY_EXISTS, f"{_describe(key)} exists already")
            else:
                async with conn.begin_nested():
                    found = await self._db.update_fragment(conn, key, config)
                if found is None:
                    return Problem(NOT_FOUND, f"{_describe(key)} does not exist")
                written = found
            result.successes.append(written)
            touched.append(_target(key))
            return None

        after = AfterCommit(self._engine, self._cache, touched, durable=self._durable)
        try:
            await self._bulk(operation, items, apply, result, after)
        finally:
            # Also when the commit fails or is cancelled half-way: an invalidation of a
            # change that did not happen costs a miss; a missing one, a stale read.
            await after.invalidate()
        return result

    async def _delete_fragments(self, keys: Sequence[FragmentKey]) -> BulkResult[FragmentKey]:
        result: BulkResult[FragmentKey] = BulkResult()
        touched: list[InvalidationTarget] = []

        async def apply(conn: AsyncConnection, index: int, key: FragmentKey) -> Problem | None:
            async with conn.begin_nested():
                deleted = await self._db.delete_fragment(conn, key)
            if not deleted:
                return Problem(NOT_FOUND, f"{_describe(key)} does not exist")
            result.successes.append(key)
            touched.append(_target(key))
            return None

        after = AfterCommit(self._engine, self._cache, touched, durable=self._durable)
        try:
            await self._bulk("delete", keys, apply, result, after)
        finally:
            await after.invalidate()
        return result

    async def _bulk(
        self,
        operation: Operation,
        items: Sequence[FragmentKey],
        apply: Callable[[AsyncConnection, int, FragmentKey], Awaitable[Problem | None]],
        result: BulkResult[Any],
        after: AfterCommit,
    ) -> None:
        """Validate every item, apply the valid ones each in its own savepoint, record
        what the cache must invalidate in the outbox, commit once."""
        self._replayer.ensure_running()
        await self._reading()  # registers the cache's prefix on a repository's first call

        def fail(index: int, problem: Problem) -> None:
            result.failures.append(
                BulkFailure(index=index, code=problem.code, message=problem.message)
            )

        checked: list[tuple[int, FragmentKey]] = []
        for index, item in enumerate(items):
            outcome = self._check_item(operation, item)
            if isinstance(outcome, Problem):
                fail(index, outcome)
            else:
                checked.append((index, outcome))

        async with self._engine.begin() as conn:
            await after.begin(conn)
            policies = await self._db.policies(conn, {key.name for _, key in checked})
            known_users = await self._db.existing_users(
                conn, [uuid.UUID(k.scope_id) for _, k in checked if k.scope_type is ScopeType.USER]
            )
            known_domains = await self._db.existing_domains(
                conn, [k.scope_id for _, k in checked if k.scope_type in DOMAIN_SCOPES]
            )
            seen: set[FragmentKey] = set()
            for index, key in checked:
                problem = None
                if key in seen:
                    problem = Problem(
                        DUPLICATE_ITEM, f"{_describe(key)} appears twice in this call"
                    )
                elif operation != "delete":
                    problem = check_policy(key, policies) or _check_scope_owner(
                        key, known_users, known_domains
                    )
                seen.add(key)
                problem = problem or await apply(conn, index, key)
                if problem is not None:
                    fail(index, problem)
            await after.record(conn)
        result.failures.sort(key=lambda failure: failure.index)

    def _check_item(self, operation: Operation, item: FragmentKey) -> FragmentKey | Problem:
        """Checks that need no database: scope id form, name, extra_config."""
        scope_id = canonical_scope_id(item.scope_type, item.scope_id)
        if isinstance(scope_id, Problem):
            return scope_id
        if not item.name or len(item.name) > min(64, MAX_COMPONENT_LENGTH):
            return Problem(UNKNOWN_POLICY, "a config name must have 1-64 characters")
        if operation != "delete" and isinstance(item, FragmentInput):
            problem = check_extra_config(item.extra_config, self._limits)
            if problem is not None:
                return problem
        return FragmentKey(scope_type=item.scope_type, scope_id=scope_id, name=item.name)


def _describe(key: FragmentKey) -> str:
    return f"the {key.scope_type.name} fragment {key.name!r} of {key.scope_id!r}"


def _check_scope_owner(
    key: FragmentKey, known_users: dict[uuid.UUID, str], known_domains: set[str]
) -> Problem | None:
    if key.scope_type is ScopeType.USER and uuid.UUID(key.scope_id) not in known_users:
        return Problem(UNKNOWN_USER, f"no user {key.scope_id}")
    if key.scope_type in DOMAIN_SCOPES and key.scope_id not in known_domains:
        return Problem(UNKNOWN_DOMAIN, f"no domain {key.scope_id!r}")
    return None


class AppConfigPolicyRepository:
    """App-config policies; every change invalidates that name's slice for everyone."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache: AppConfigFragmentCacheSource | None = None,
        *,
        replay_after_s: float = DEFAULT_REPLAY_AFTER_S,
    ) -> None:
        self._db = AppConfigDBSource(engine)
        self._engine = engine
        self._cache = GuardedCache.of(cache)
        self._replayer = OutboxReplayer(engine, self._cache, after_s=replay_after_s)
        self._following = Following.of(engine, self._cache) if self._cache.enabled else None

    async def close(self) -> None:
        """Stop this repository's outbox replayer (the engine and cache stay open)."""
        await self._replayer.close()

    def stats(self) -> CacheStats:
        """The cache's counters (the same snapshot as the fragment repository's)."""
        return self._cache.stats()

    @staticmethod
    def _checked(name: str, scope_sources: Sequence[ScopeType | str]) -> list[ScopeType]:
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise ValueError("a config name must have 1-64 characters")
        if isinstance(scope_sources, str):
            raise ValueError("scope_sources must be a list of scopes, not a single string")
        try:
            scopes = [ScopeType(scope) for scope in scope_sources]
        except ValueError as error:
            raise ValueError(f"unknown scope in scope_sources: {error}") from None
        if not scopes:
            raise ValueError("scope_sources must name at least one scope")
        if len(set(scopes)) != len(scopes):
            raise ValueError("scope_sources names a scope twice")
        return scopes

    async def get(self, name: str) -> AppConfigPolicy | None:
        """The policy of ``name``, or None; read from PostgreSQL (policies are not cached)."""
        async with self._engine.connect() as conn:
            return (await self._db.policies(conn, [name])).get(name)

    async def list(self) -> list[AppConfigPolicy]:
        """Every policy, sorted by config name; read from PostgreSQL."""
        async with self._engine.connect() as conn:
            return await self._db.list_policies(conn)

    @asynccontextmanager
    async def _invalidating(self, name: str, *, drop_catalogue: bool) -> AsyncIterator[AfterCommit]:
        """Invalidate the name's slice after the block: when it succeeded, and also when it
        was cancelled or failed in a way that may have committed. Not after the refusals
        that leave the database as it was (they would drop every user's entry for
        nothing). The block records the outbox row in its transaction."""
        self._replayer.ensure_running()
        if self._following is not None:
            await self._following.ready()  # registers the cache's prefix on a first call
        target = [InvalidationTarget.of(ScopeType.PUBLIC, "public", [name])]
        after = AfterCommit(self._engine, self._cache, target, drop_catalogue)
        try:
            yield after
        except (PolicyExistsError, PolicyInUseError, UnknownPolicyError):
            raise
        except BaseException:
            await after.invalidate()
            raise
        await after.invalidate()

    async def create(self, name: str, scope_sources: Sequence[ScopeType | str]) -> AppConfigPolicy:
        """Add a policy: which scopes may hold fragments of ``name``, in merge order (the
        last wins). Returns it after the name and the catalogue of names are invalidated
        for everyone. Raises PolicyExistsError if the name has one; ValueError, before
        any I/O, for a name not of 1-64 characters or a scope list that is empty, repeats
        a scope or names an unknown one."""
        scopes = self._checked(name, scope_sources)
        async with self._invalidating(name, drop_catalogue=True) as after:
            try:
                async with self._engine.begin() as conn:
                    await after.begin(conn)
                    policy = await self._db.insert_policy(conn, name, scopes)
                    await after.record(conn)
                    return policy
            except IntegrityError:
                raise PolicyExistsError(f"a policy named {name!r} exists already") from None

    async def update(self, name: str, scope_sources: Sequence[ScopeType | str]) -> AppConfigPolicy:
        """Replace the scope list (and so the merge order) of a policy; returns it after the
        name is invalidated for everyone. UnknownPolicyError if there is none; ValueError
        as ``create``."""
        scopes = self._checked(name, scope_sources)
        async with self._invalidating(name, drop_catalogue=False) as after:
            async with self._engine.begin() as conn:
                await after.begin(conn)
                policy = await self._db.update_policy(conn, name, scopes)
                if policy is not None:
                    await after.record(conn)
            if policy is None:
                raise UnknownPolicyError(f"no app-config policy named {name!r}")
            return policy

    async def delete(self, name: str, *, cascade: bool = False) -> None:
        """Delete a policy; refused (PolicyInUseError) while it has fragments unless
        ``cascade`` deletes them too. Returns after the name and the catalogue of names are
        invalidated for everyone; UnknownPolicyError if there is no such policy."""
        async with (
            self._invalidating(name, drop_catalogue=True) as after,
            self._engine.begin() as conn,
        ):
            await after.begin(conn)
            in_use = await self._db.count_fragments(conn, name)
            if in_use and not cascade:
                raise PolicyInUseError(
                    f"policy {name!r} still has {in_use} fragment(s); delete them first"
                    " or pass cascade=True"
                )
            if not await self._db.delete_policy(conn, name, cascade=cascade):
                raise UnknownPolicyError(f"no app-config policy named {name!r}")
            await after.record(conn)


__all__ = [
    "AppConfigFragmentRepository",
    "AppConfigPolicyRepository",
    "PolicyExistsError",
    "PolicyInUseError",
    "UnknownPolicyError",
    "UnknownUserError",
]
