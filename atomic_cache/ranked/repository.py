"""The ranked model's repositories: merged reads around the cache core, writes to
PostgreSQL that invalidate exactly what they changed before they return.

Cache layout (the core's, unchanged): a user's merged config of a name is the core entry
of (user, name), an ``AppConfigData`` with ``domain_name`` the caller's domain id as text,
``fragments`` empty and ``config`` the merge; it is looked up with that domain required,
so an entry filled under one domain is never served to a caller in another. The
anonymous read's entry is the same under the reserved user ``ANONYMOUS_USER`` (the nil
UUID) and the domain ``ANONYMOUS_DOMAIN`` (``"-"``, never a domain id): only public
stamps cover it. A real user whose id is the nil UUID is not supported (its entries and
the anonymous ones would share keys: never served across, since the domains differ, but
each fill would displace the other).

What each write invalidates (the core's targets; public ``public[n]``, a domain's
``domain:{id}[n]``, a user's ``user:{id}[n]``):

- a fragment written or purged: its own slice (public, that domain, that user; name n);
- a rank changed: ``public[n]`` (the order of n, for everyone); unchanged: nothing;
- a grant created: nothing (no fragment of it exists yet);
- a grant purged: the slice of each fragment its cascade deleted;
- a definition created: the catalogue of names only (no merge changes);
- a definition purged: ``public[n]`` and the catalogue.

The catalogue of registered names is cached too (filled with the first read that misses
without it; dropped when a definition is created or purged): a name it does not hold is
answered ``{}`` with no entry read or written and no SQL, so no caller, the anonymous one
included, can grow the cache with made-up names. ``{}`` of a registered name is cached.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..after_commit import AfterCommit
from ..cache.source import AppConfigFragmentCacheSource
from ..following import Following
from ..keys import token_sequence
from ..metrics import CacheStats
from ..models import PUBLIC_SCOPE_ID, AppConfigData, ScopeType
from ..replayer import DEFAULT_REPLAY_AFTER_S, DEFAULT_REPLAY_EVERY_S, OutboxReplayer
from ..resilience.guard import GuardedCache
from ..single_flight import SingleFlight
from ..targets import InvalidationTarget
from .db_source import RankedDBSource, _read_names
from .models import (
    MAX_CONFIG_NAME_LENGTH,
    AllowListEntry,
    AppConfig,
    Definition,
    Fragment,
    FragmentUpsert,
    InvalidInputError,
    RankUpdate,
    Scope,
    check_uuid,
)

T = TypeVar("T")

# The anonymous read's entries: the nil UUID as the user, "-" (never a UUID) as the domain.
ANONYMOUS_USER = uuid.UUID(int=0)
"""The user of the anonymous read's cache entries (``resolve_public``): the nil UUID, so
no real user may have it."""
ANONYMOUS_DOMAIN = "-"
"""The domain of the anonymous read's cache entries: ``"-"``, never a domain's id."""

# The catalogue of definitions is cached (so that an unregistered name costs no SQL) only
# up to this many names: each fill that replaces it sends them all.
MAX_CACHED_CATALOGUE = 10_000

_NO_CACHE = GuardedCache(None)  # what reads use while the cache does not follow yet


def _cached_catalogue(every: list[str]) -> list[str] | None:
    """The catalogue to cache: every registered name, or None (not cached) beyond
    ``MAX_CACHED_CATALOGUE``."""
    return every if len(every) <= MAX_CACHED_CATALOGUE else None


def _public(name: str) -> InvalidationTarget:
    return InvalidationTarget.of(ScopeType.PUBLIC, PUBLIC_SCOPE_ID, [name])


def fragment_target(fragment: Fragment) -> InvalidationTarget:
    """The cached merges a change of this fragment can affect: its scope's slice of its
    name (public: everyone's, the anonymous entry too)."""
    if fragment.scope_type is Scope.PUBLIC:
        return _public(fragment.config_name)
    scope = ScopeType.DOMAIN if fragment.scope_type is Scope.DOMAIN else ScopeType.USER
    return InvalidationTarget.of(scope, str(fragment.scope_id), [fragment.config_name])


def fragment_targets(fragments: Iterable[Fragment]) -> list[InvalidationTarget]:
    """One target per distinct fragment slice, in first-seen order."""
    return list(dict.fromkeys(fragment_target(fragment) for fragment in fragments))


class _Repository:
    """What every ranked repository holds: the SQL, the guarded cache, the outbox replayer
    and the cache's registration with the database (as the policy model's do)."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache: AppConfigFragmentCacheSource | None = None,
        *,
        replay_after_s: float = DEFAULT_REPLAY_AFTER_S,
        replay_every_s: float = DEFAULT_REPLAY_EVERY_S,
        durable: bool = True,
    ) -> None:
        self._engine = engine
        self._db = RankedDBSource(engine)
        self._cache = GuardedCache.of(cache)
        # False: no outbox row per write; a missed invalidation lives only in this
        # process's memory until it is replayed.
        self._durable = durable
        self._replayer = OutboxReplayer(
            engine, self._cache, after_s=replay_after_s, every_s=replay_every_s
        )
        self._following = Following.of(engine, self._cache) if self._cache.enabled else None

    async def start(self) -> bool:
        """Register the cache with the database (so that every change, whoever makes it,
        reaches it) and start the outbox replayer: what the first call does otherwise.
        True once the cache follows the database (always without a cache)."""
        self._replayer.ensure_running()
        return self._following is None or await self._following.ready()

    async def close(self) -> None:
        """Stop this repository's outbox replayer (the engine and cache stay open)."""
        await self._replayer.close()

    def stats(self) -> CacheStats:
        """The cache's counters in this process (one set per cache source)."""
        return self._cache.stats()

    async def _reading(self) -> GuardedCache:
        """The cache, once its prefix follows the database; until then, no cache."""
        self._replayer.ensure_running()
        if self._following is None or self._following.registered:
            return self._cache
        if await self._following.ready():
            return self._cache
        return _NO_CACHE

    async def _write(
        self,
        change: Callable[[AsyncConnection], Awaitable[T]],
        targets_of: Callable[[T], list[InvalidationTarget]],
        *,
        drops_catalogue: bool = False,
    ) -> T:
        """Run ``change`` in one transaction with the outbox row of what it covers
        (``targets_of`` its result; the catalogue too if ``drops_catalogue``), and
        invalidate that once the transaction ended. A change refused before it wrote
        anything (it raised) covers nothing, so nothing is invalidated."""
        await self._reading()  # registers the cache's prefix on a first call
        after = AfterCommit(self._engine, self._cache, [], durable=self._durable)
        try:
            async with self._engine.begin() as conn:
                await after.begin(conn)
                result = await change(conn)
                after.targets.extend(targets_of(result))
                after.drop_catalogue = drops_catalogue
                await after.record(conn)
            return result
        finally:
            # Also when the commit failed or was cancelled half-way: an invalidation of a
            # change that did not happen costs a miss; a missing one, a stale read.
            await after.invalidate()


class AppConfigRepository(_Repository):
    """Merged configs, read around the cache; fragment upserts and purges."""

    def __init__(
        self,
        engine: AsyncEngine,
        cache: AppConfigFragmentCacheSource | None = None,
        *,
        replay_after_s: float = DEFAULT_REPLAY_AFTER_S,
        replay_every_s: float = DEFAULT_REPLAY_EVERY_S,
        durable: bool = True,
    ) -> None:
        super().__init__(
            engine,
            cache,
            replay_after_s=replay_after_s,
            replay_every_s=replay_every_s,
            durable=durable,
        )
        self._flights = SingleFlight()

    async def start(self) -> bool:
        """As every repository's ``start``, and caches the catalogue of definitions, so
        that the first readers do not each read it from SQL."""
        following = await super().start()
        if following and self._cache.enabled:
            await self._cache_catalogue()
        return following

    async def _cache_catalogue(self) -> None:
        token = await self._cache.read(lambda source: source.ping())
        if not token:
            return
        names = _cached_catalogue(await self._db.definitions())
        if names is not None:
            await self._cache.call(
                "fill",
                lambda source: source.set_many(
                    ANONYMOUS_USER, [], fill_token=token, catalogue=names
                ),
            )

    # -- reads ---------------------------------------------------------------------------

    async def resolve(
        self, user_id: uuid.UUID | str, domain_id: uuid.UUID | str, names: Sequence[str]
    ) -> list[AppConfig]:
        """The merged config of each name for a user of a domain (both the caller's own,
        from its session), in request order, a repeated name repeated; ``{}`` where
        nothing contributes. Warm: one cache round trip and no SQL.

        ``user_id`` and ``domain_id`` are each a ``uuid.UUID`` or its string form
        (8-4-4-4-12 hex digits, either case). InvalidInputError (a ValueError), before any
        I/O, for an id in any other form or for ``names`` given as one string."""
        user = check_uuid(user_id, "user_id")
        domain = check_uuid(domain_id, "domain_id")
        distinct = _read_names(names)

        def load(missing: list[str], conn: AsyncConnection) -> Awaitable[dict[str, Any]]:
            return self._db.merged(user, domain, missing, conn=conn)

        merged = await self._resolve(user, str(domain), distinct, load)
        return [AppConfig(config_name=name, config=merged[name]) for name in names]

    async def resolve_public(self, names: Sequence[str]) -> list[AppConfig]:
        """The anonymous read: as ``resolve``, from the public fragments only."""
        distinct = _read_names(names)

        def load(missing: list[str], conn: AsyncConnection) -> Awaitable[dict[str, Any]]:
            return self._db.merged_public(missing, conn=conn)

        merged = await self._resolve(ANONYMOUS_USER, ANONYMOUS_DOMAIN, distinct, load)
        return [AppConfig(config_name=name, config=merged[name]) for name in names]

    async def _resolve(
        self,
        user: uuid.UUID,
        domain: str,
        names: list[str],
        load: Callable[[list[str], AsyncConnection], Awaitable[dict[str, Any]]],
    ) -> dict[str, dict[str, Any]]:
        """Each distinct name's merge: ``{}`` for a name the cached catalogue does not
        hold; from the cache where it holds a servable entry filled under ``domain``; the
        rest from SQL, filled with the lookup's token (and the catalogue, if it was not
        cached)."""
        # A name that can never be registered is never looked up (nor cached).
        result: dict[str, dict[str, Any]] = {
            name: {} for name in names if not 1 <= len(name) <= MAX_CONFIG_NAME_LENGTH
        }
        keyed = [name for name in names if name not in result]
        if not keyed:
            return result
        cache = await self._reading()
        found = await cache.read(
            lambda source: source.lookup_registered(user, keyed, domain=domain)
        )
        token, catalogue_cached = "", False
        if found is not None:
            held = [value for value in found.values.values() if value is not None]
            present = [value for value in held if self._cache.servable(value)]
            self._cache.record_lookups(hits=len(present), misses=len(found.values) - len(held))
            result.update({value.name: value.config or {} for value in present})
            unregistered = found.unregistered
            if unregistered is not None and not self._cache.catalogue_servable():
                # A missed invalidation of the catalogue is pending: the cached one may
                # lack a name registered since. Its names are read from SQL instead.
                unregistered = None
            result.update({name: {} for name in unregistered or ()})
            token, catalogue_cached = found.fill_token, unregistered is not None
        missing = [name for name in keyed if name not in result]
        if missing:
            if token:
                # Readers whose lookups saw the same sequence and the same invalidation
                # generation of this process share one query (as the policy model's).
                key = (user, domain, tuple(missing), token_sequence(token), self._cache.generation)
                loaded = await self._flights.run(
                    key,
                    lambda: self._load_and_fill(
                        user, domain, missing, load, token, with_catalogue=not catalogue_cached
                    ),
                )
            else:
                loaded, _, _ = await self._load(missing, load, with_catalogue=False)
            result.update(loaded)
        return result

    async def _load(
        self,
        missing: list[str],
        load: Callable[[list[str], AsyncConnection], Awaitable[dict[str, Any]]],
        *,
        with_catalogue: bool,
    ) -> tuple[dict[str, dict[str, Any]], set[str], list[str] | None]:
        """The merges of ``missing``; which of them may be cached (those that are
        registered definitions, read in the same transaction); and, ``with_catalogue``,
        every registered name (None beyond ``MAX_CACHED_CATALOGUE``: not cached). A name
        with a fragment is registered (the foreign keys say so); without the catalogue,
        only the ``{}`` ones are asked about."""
        catalogue: list[str] | None = None
        async with self._engine.connect() as conn:
            loaded = await load(missing, conn)
            if with_catalogue:
                every = await self._db.definitions(conn=conn)
                catalogue = _cached_catalogue(every)
                registered = set(every).intersection(loaded)
            else:
                empty = [name for name, config in loaded.items() if not config]
                registered = await self._db.registered(empty, conn=conn) if empty else set()
        cacheable = {name for name, config in loaded.items() if config} | registered
        return loaded, cacheable, catalogue

    async def _load_and_fill(
        self,
        user: uuid.UUID,
        domain: str,
        missing: list[str],
        load: Callable[[list[str], AsyncConnection], Awaitable[dict[str, Any]]],
        fill_token: str,
        *,
        with_catalogue: bool,
    ) -> dict[str, dict[str, Any]]:
        loaded, cacheable, catalogue = await self._load(
            missing, load, with_catalogue=with_catalogue
        )
        data = [
            AppConfigData(user_id=user, domain_name=domain, name=name, config=config)
            for name, config in loaded.items()
            if name in cacheable
        ]
        if data or catalogue is not None:
            stored = await self._cache.call(
                "fill",
                lambda source: source.set_many(
                    user, data, fill_token=fill_token, catalogue=catalogue
                ),
            )
            if stored is not None and data:
                self._cache.record_fill(stored=stored, entries=len(data))
        return loaded

    # -- writes --------------------------------------------------------------------------

    async def bulk_upsert(self, items: Sequence[FragmentUpsert]) -> list[Fragment]:
        """Write every fragment or none (``WriteNotAllowedError`` names every pair without
        an allow-list row, and nothing is written or invalidated); returns the rows
        written. Returns after each row's slice is invalidated."""
        return await self._write(
            lambda conn: self._db.bulk_upsert(items, conn=conn), fragment_targets
        )

    async def purge_fragments(self, ids: Sequence[uuid.UUID | str]) -> list[Fragment]:
        """Delete the fragments with these ids (each a ``uuid.UUID`` or its string form);
        returns the rows deleted (an unknown id is left out). Returns after each deleted
        row's slice is invalidated. InvalidInputError, before any SQL, for an id in any
        other form."""
        if isinstance(ids, str | bytes):
            raise InvalidInputError("ids must be a sequence of ids, not one str")
        wanted = [check_uuid(i, "a fragment id") for i in ids]
        return await self._write(
            lambda conn: self._db.purge_fragments(wanted, conn=conn), fragment_targets
        )


class DefinitionRepository(_Repository):
    """Registered config names: creating one changes no merge; purging one cascades."""

    async def create(self, name: str) -> Definition:
        """Register ``name``; ``DefinitionExistsError`` if it is already. Invalidates the
        catalogue of names only."""
        return await self._write(
            lambda conn: self._db.create_definition(name, conn=conn),
            lambda _: [],
            drops_catalogue=True,
        )

    async def purge(self, name: str) -> Definition:
        """Delete the definition of ``name``, its grants and their fragments (cascade);
        ``DefinitionNotFoundError`` if none. Invalidates the name for everyone and the
        catalogue of names."""
        purged = await self._write(
            lambda conn: self._db.purge_definition(name, conn=conn),
            lambda purge: [_public(purge.definition.config_name)],
            drops_catalogue=True,
        )
        return purged.definition


class AllowListRepository(_Repository):
    """Grants of a (name, scope) and their ranks."""

    async def create(self, name: str, scope: Scope, rank: int | None = None) -> AllowListEntry:
        """Grant ``scope`` of ``name`` at ``rank`` (by default the scope's). Invalidates
        nothing: no fragment of that pair can exist yet."""
        return await self._write(
            lambda conn: self._db.create_grant(name, scope, rank, conn=conn), lambda _: []
        )

    async def update_rank(self, name: str, scope: Scope, rank: int) -> RankUpdate:
        """Set the rank of the grant; ``GrantNotFoundError`` if none. A changed rank
        reorders the name for everyone (its public slice is invalidated); the same rank
        writes and invalidates nothing (``RankUpdate.changed`` is False)."""
        return await self._write(
            lambda conn: self._db.update_rank(name, scope, rank, conn=conn),
            lambda done: [_public(done.entry.config_name)] if done.changed else [],
        )

    async def purge(self, name: str, scope: Scope) -> list[Fragment]:
        """Delete the grant; the cascade deletes its fragments, whose slices are
        invalidated. Returns those fragments. ``GrantNotFoundError`` if no such grant."""
        return await self._write(
            lambda conn: self._db.purge_grant(name, scope, conn=conn), fragment_targets
        )


__all__ = [
    "ANONYMOUS_DOMAIN",
    "ANONYMOUS_USER",
    "AllowListRepository",
    "AppConfigRepository",
    "DefinitionRepository",
    "fragment_target",
    "fragment_targets",
]
