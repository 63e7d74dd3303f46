"""AppConfigFragmentCacheSource: build keys, call one script, (de)serialise.

Every public call is one server command (one EVALSHA), except that a corrupt entry,
found on a read, is removed with one more, and that an invalidation of more targets than
one call carries (``MAX_TARGETS_PER_CALL``) is sent as several calls, one after another.
An invalidation that leaves clean-up work queued (a large domain or PUBLIC scope, many
users) returns at once; a background task of this source then runs the clean-up steps,
each a bounded script call (``reclaim``). A key of another type in the index (someone
else's) makes a call start a new life of the index (``reset.lua``) with one more.

With a ``LocalCache`` (``local.py``), a read is answered from process memory when it
holds everything the read needs (for ``lookup_all``, the catalogue of names and every
name of it), and what Valkey serves or accepts is copied there; an invalidation drops
what it covers locally before it returns, and announces itself to every other process
from inside its script.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from glide import GlideClient, GlideClusterClient
from pydantic import ValidationError

from ..keys import (
    CLUSTER_DEFAULT_PREFIX,
    DEFAULT_PREFIX,
    KeySchema,
    decode_component,
    encode_component,
    has_hash_tag,
    user_component,
)
from ..metrics import CacheMetrics
from ..models import PUBLIC_SCOPE_ID, AppConfigData, CacheLookup, ScopeType
from ..resilience.breaker import CircuitBreaker
from ..resilience.errors import CACHE_ERRORS, CacheError
from ..resilience.logs import LogThrottle
from ..targets import InvalidationTarget, ScriptArg, pack_calls
from .local import LocalCache, announce_command
from .replicas import DEFAULT_REPLICA_ACK_TIMEOUT_MS, ReplicaBarrier
from .scripts import ScriptRegistry, ValkeyClient
from .sentinel import SentinelClient

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 600
DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024
# A fill whose lookup is older than this is refused; stamps live at least this long
# beyond the longest entry TTL, so none expires while a token it must refuse is valid.
FILL_TOKEN_MAX_AGE_MS = 60_000
# Entries an invalidation call may examine while cleaning up, and a clean-up step: each
# bounds one script's server time (a few µs per entry; see docs/benchmarks.md).
INVALIDATE_CLEANUP_BUDGET = 100
STEP_CLEANUP_BUDGET = 100


@dataclass(frozen=True, slots=True)
class RegisteredLookup:
    """``lookup_registered``: the cached values of the registered names (None for a
    miss), the fill token for those missing, and the names the cached catalogue does not
    hold (None when no catalogue is cached: then every name was looked up)."""

    fill_token: str
    values: dict[str, AppConfigData | None]
    unregistered: set[str] | None


@dataclass(frozen=True, slots=True)
class AllLookup:
    """``lookup_all``: the catalogue of names (None if not cached), the cached values by
    name (None for a miss), and the fill token for whatever is missing."""

    fill_token: str
    names: list[str] | None
    values: dict[str, AppConfigData | None]

    @property
    def missing(self) -> list[str]:
        """The names looked up that are not cached (their value is None)."""
        return [name for name, value in self.values.items() if value is None]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _distinct(names: Sequence[str]) -> list[str]:
    """The names of a read of several, each once, in their first order."""
    if isinstance(names, str):
        raise ValueError("names must be a list of names, not a single string")
    return list(dict.fromkeys(names))


def _required(domain: str | None) -> str:
    """The required-domain argument of get.lua and get_all.lua: "" for any domain."""
    return "" if domain is None else encode_component(domain, what="domain")


class AppConfigFragmentCacheSource:
    """Merged configs in Valkey, written and invalidated by atomic Lua scripts.

    A ``user_id`` is a ``uuid.UUID`` or its string form (8-4-4-4-12 hex digits, either
    case), as everywhere in this package; anything else raises ValueError before any I/O.
    Its own calls raise glide's errors (``GlideError``) and ``CacheError`` when Valkey
    fails; the repositories guard every call they make.
    """

    def __init__(
        self,
        client: ValkeyClient,
        registry: ScriptRegistry,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        keys: KeySchema | None = None,
        max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
        breaker: CircuitBreaker | None = None,
        replica_ack_timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS,
        wait_for_replicas: bool = True,
        local_cache: LocalCache | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self._client = client
        self._registry = registry
        self.ttl_seconds = ttl_seconds
        cluster = isinstance(client, GlideClusterClient)
        self.keys = keys or KeySchema(CLUSTER_DEFAULT_PREFIX if cluster else DEFAULT_PREFIX)
        if cluster and not has_hash_tag(self.keys.prefix):
            raise ValueError(
                f"key prefix {self.keys.prefix!r} has no hash tag: on a cluster every key a"
                " script touches must hash to one slot; use e.g. '{app_config}' or"
                " 'tenant:{app_config}'"
            )
        if local_cache is not None and (
            local_cache.keys.prefix != self.keys.prefix or local_cache.cluster != cluster
        ):
            raise ValueError(
                f"the local cache listens to prefix {local_cache.keys.prefix!r}"
                f"{' on a cluster' if local_cache.cluster else ''}, this source writes"
                f" {self.keys.prefix!r}{' on a cluster' if cluster else ''}: it would never"
                " hear of this source's invalidations"
            )
        self._local = local_cache
        # Every invalidation is announced, whether or not this process keeps a local
        # cache: another process may, and it can hear of the change no other way.
        self._announce = announce_command(cluster)
        # On a cluster or under Sentinel an invalidation waits until the replicas have it:
        # a read on a replica, or a replica promoted by a failover, must not see what it
        # covered. (wait_for_replicas=False gives that up: only for deployments that
        # accept stale reads after a failover.) A plain standalone server has no failover.
        self._replicas: ReplicaBarrier | None = None
        if wait_for_replicas and isinstance(client, GlideClusterClient):
            self._replicas = ReplicaBarrier.of_shard(
                client, self.keys.seq, timeout_ms=replica_ack_timeout_ms
            )
        elif wait_for_replicas and isinstance(client, SentinelClient):
            self._replicas = ReplicaBarrier(
                client.custom_command, client.replicas, timeout_ms=replica_ack_timeout_ms
            )
        # Run when the Sentinels named another primary, before calls go there (the
        # repositories replay their outbox: see ``_primary_changed``).
        self.failover_hooks: list[Callable[[], Awaitable[None]]] = []
        if isinstance(client, SentinelClient):
            client.on_failover(self._primary_changed)
        # The highest invalidation sequence a primary returned to this source: it only
        # moves forward, so a lower one means a failover lost acknowledged writes.
        self._highest_sequence = 0
        self.max_entry_bytes = max_entry_bytes
        # Used by the repositories, not here: the breaker they apply to this cache (its
        # thresholds are the caller's to set) and the counters they, and this, bump.
        self.breaker = breaker or CircuitBreaker()
        self.metrics = CacheMetrics()
        if local_cache is not None:
            self.metrics.local = local_cache.counters
        self._log_throttle = LogThrottle()
        self._reclaimer: asyncio.Task[None] | None = None  # held, so it is not collected
        # The script the next clean-up step calls: the job at the head of the queue says.
        self._next_step = "reclaim"

    @property
    def local_cache(self) -> LocalCache | None:
        """The in-process cache reads are answered from first, if one was given."""
        return self._local

    @property
    def script_reloads(self) -> int:
        """How often the script registry reloaded a lost script cache."""
        return self._registry.reloads

    # -- reads ---------------------------------------------------------------------------

    async def get_merged_config(self, user_id: uuid.UUID | str, name: str) -> AppConfigData | None:
        """The cached merged config of (user, name), or None on a miss: ``lookup``
        without the fill token, for a reader that will not fill."""
        if self._local is not None:  # a local hit returns here, with no further coroutine
            held = self._local.get(user_id, name)
            if held is not None:
                return held
        return (await self._get(user_id, name))[0]

    async def lookup(
        self, user_id: uuid.UUID | str, name: str, *, domain: str | None = None
    ) -> CacheLookup:
        """The cached value, or a miss with the fill token to pass to set_merged_config.

        With ``domain``, an entry filled under another domain is a miss (its token lets
        the next fill overwrite it); None serves an entry of any domain."""
        if self._local is not None:
            held = self._local.get(user_id, name, domain=domain)
            if held is not None:
                return CacheLookup(value=held)
        value, token = await self._get(user_id, name, domain)
        return CacheLookup(value=value) if value is not None else CacheLookup(fill_token=token)

    async def _get(
        self, user_id: uuid.UUID | str, name: str, domain: str | None = None
    ) -> tuple[AppConfigData | None, str]:
        """One entry from Valkey (one get.lua call), after the local cache missed; copied
        into the local cache when nothing may have overtaken it."""
        local = self._local
        ticket, began = (local.ticket(), local.now()) if local is not None else (None, 0.0)
        user = user_component(user_id)
        reply = await self._registry.call(
            self._client,
            "get",
            [self.keys.seq],
            [self.keys.prefix, user, _required(domain), encode_component(name, what="name")],
        )
        if not isinstance(reply, list) or len(reply) not in (2, 3):
            raise CacheError(f"get.lua answered an unexpected shape: {reply!r:.200}")
        token, raw = reply[0], reply[1]
        if raw is None:
            return None, _text(token)
        value = self._decode(raw, user, name)
        if value is None:
            await self._remove_corrupt([self.keys.entry(user, name)])
        elif local is not None and len(reply) == 3 and isinstance(raw, bytes | str):
            pttl = reply[2]
            local.store(ticket, began, value, raw, pttl if isinstance(pttl, int) else 0)
        return value, _text(token)

    async def ping(self) -> str:
        """One read-only script call that reads only the sequence: the breaker's probe.
        It fails as a real read would (LOADING, BUSY, a lost script reloaded...)."""
        reply = await self._read("-", "", "names", [])
        if len(reply) != 3 or reply[1] != [] or reply[2] != []:
            raise CacheError(f"get_all.lua answered {reply!r:.200}")
        return _text(reply[0])

    async def _read(self, user: str, domain: str, mode: str, names: Sequence[str]) -> list[object]:
        """One get_all.lua call (its header states the modes and replies)."""
        keeps = "1" if self._local is not None else "0"
        reply = await self._registry.call(
            self._client,
            "get_all",
            [self.keys.seq, self.keys.catalogue],
            [self.keys.prefix, user, domain, mode, keeps, *names],
        )
        if not isinstance(reply, list) or len(reply) not in (1, 3, 6):
            raise CacheError(f"get_all.lua answered an unexpected shape: {reply!r:.200}")
        for part in reply[1:4]:
            if not isinstance(part, list) or len(part) != len(reply[1]):
                raise CacheError(f"get_all.lua answered an unexpected shape: {reply!r:.200}")
        return reply

    def _ticket(self) -> tuple[int | None, float]:
        """What a read that may store locally takes before it goes out."""
        local = self._local
        return (local.ticket(), local.now()) if local is not None else (None, 0.0)

    async def lookup_many(
        self, user_id: uuid.UUID | str, names: Sequence[str], *, domain: str | None = None
    ) -> dict[str, CacheLookup]:
        """Look up several names of one user in one round trip; one fill token for all.

        With ``domain``, an entry filled under another domain is a miss (its token lets
        the next fill overwrite it); None serves an entry of any domain."""
        names = _distinct(names)
        if not names:
            return {}
        if self._local is not None:
            held = self._local.get_many(user_id, names, domain=domain)
            if held is not None:
                return {value.name: CacheLookup(value=value) for value in held}
        reply, values = await self._read_names(user_id, names, domain, "names")
        token = _text(reply[0])
        return {
            name: CacheLookup(value=value) if value is not None else CacheLookup(fill_token=token)
            for name, value in values.items()
        }

    async def lookup_registered(
        self, user_id: uuid.UUID | str, names: Sequence[str], *, domain: str | None = None
    ) -> RegisteredLookup:
        """As ``lookup_many``, and which names the cached catalogue holds: a name it does
        not hold is not looked up (``unregistered``). Without a cached catalogue,
        ``unregistered`` is None and every name is looked up. One round trip; none when
        the local cache holds the catalogue and every registered name."""
        names = _distinct(names)
        if not names:
            return RegisteredLookup(fill_token="", values={}, unregistered=set())
        local = self._local
        if local is not None:
            catalogue = local.catalogue_set()
            if catalogue is not None:
                wanted = [name for name in names if name in catalogue]
                held = local.get_many(user_id, wanted, domain=domain) if wanted else []
                if held is not None:
                    return RegisteredLookup(
                        fill_token="",
                        values={value.name: value for value in held},
                        unregistered={name for name in names if name not in catalogue},
                    )
        reply, values = await self._read_names(user_id, names, domain, "registered")
        if len(reply) == 3:
            return RegisteredLookup(fill_token=_text(reply[0]), values=values, unregistered=None)
        flags = reply[3]
        assert isinstance(flags, list)  # _read checked the shape
        unregistered = {name for name, flag in zip(names, flags, strict=True) if flag != 1}
        return RegisteredLookup(
            fill_token=_text(reply[0]),
            values={name: value for name, value in values.items() if name not in unregistered},
            unregistered=unregistered,
        )

    async def lookup_all(self, user_id: uuid.UUID | str) -> AllLookup:
        """Every cached config of a user, with the catalogue of names, in one round trip.

        ``names`` is None when the catalogue itself is not cached.
        """
        local = self._local
        if local is not None:
            # Only the whole answer is served locally: a name absent here may be absent
            # in Valkey too, which is not known here, so any gap goes to Valkey for all.
            catalogue = local.catalogue()
            held = local.get_many(user_id, catalogue) if catalogue is not None else None
            if held is not None:
                local_values: dict[str, AppConfigData | None] = {
                    value.name: value for value in sorted(held, key=lambda v: v.name)
                }
                return AllLookup(fill_token="", names=list(local_values), values=local_values)
        ticket, began = self._ticket()
        user = user_component(user_id)
        reply = await self._read(user, "", "catalogue", [])
        token = _text(reply[0])
        if len(reply) == 1:
            return AllLookup(fill_token=token, names=None, values={})
        encoded_names = reply[5] if len(reply) == 6 else None
        if not isinstance(encoded_names, list):
            raise CacheError(f"get_all.lua answered an unexpected shape: {reply!r:.200}")
        names = [decode_component(_text(encoded)) for encoded in encoded_names]
        values = await self._served(user, names, reply, ticket, began)
        ordered = dict(sorted(values.items()))
        return AllLookup(fill_token=token, names=list(ordered), values=ordered)

    async def _read_names(
        self, user_id: uuid.UUID | str, names: list[str], domain: str | None, mode: str
    ) -> tuple[list[object], dict[str, AppConfigData | None]]:
        """One get_all.lua call for ``names`` (distinct) in ``mode`` ("names" or
        "registered"): the reply and its values by name, what was served copied locally."""
        ticket, began = self._ticket()
        user = user_component(user_id)
        encoded = [encode_component(name, what="name") for name in names]
        reply = await self._read(user, _required(domain), mode, encoded)
        return reply, await self._served(user, names, reply, ticket, began)

    async def _served(
        self,
        user: str,
        names: Sequence[str],
        reply: list[object],
        ticket: int | None,
        began: float,
    ) -> dict[str, AppConfigData | None]:
        """The values of a get_all.lua reply by name (None for a miss), undecodable ones
        removed; what was served is copied into the local cache, each for at most its
        PTTL, and so is the catalogue when the reply carries it."""
        raws, pttls = reply[1], reply[2]
        if not isinstance(raws, list) or not isinstance(pttls, list) or len(raws) != len(names):
            raise CacheError(f"get_all.lua answered an unexpected shape: {reply!r:.200}")
        values = await self._decoded(user, names, raws)
        local = self._local
        if local is not None and ticket is not None:
            for value, raw, pttl in zip(values.values(), raws, pttls, strict=True):
                if value is not None and isinstance(raw, bytes | str):
                    local.store(ticket, began, value, raw, pttl if isinstance(pttl, int) else 0)
            self._keep_catalogue(ticket, began, reply)
        return values

    def _keep_catalogue(self, ticket: int | None, began: float, reply: list[object]) -> None:
        """Copy the catalogue a get_all.lua reply carries into the local cache."""
        local = self._local
        if local is None or len(reply) != 6 or not isinstance(reply[5], list) or not reply[5]:
            return
        # set.lua gives the catalogue the entries' TTL. One without expiry (written by
        # other means) lives until an announced invalidation drops it, which drops the
        # copy too; the copy is still kept no longer than an entry would be.
        names_pttl = reply[4]
        life_ms = names_pttl if isinstance(names_pttl, int) and names_pttl > 0 else 0
        if names_pttl == -1:
            life_ms = self.ttl_seconds * 1000
        names = [decode_component(_text(encoded)) for encoded in reply[5]]
        local.store_catalogue(ticket, began, names, life_ms)

    async def _decoded(
        self, user: str, names: Sequence[str], raws: Sequence[object]
    ) -> dict[str, AppConfigData | None]:
        """Each name's decoded value (None for a miss); undecodable entries are removed."""
        values: dict[str, AppConfigData | None] = {}
        corrupt: list[str] = []
        for name, raw in zip(names, raws, strict=True):
            value = None if raw is None else self._decode(raw, user, name)
            if raw is not None and value is None:
                corrupt.append(self.keys.entry(user, name))
            values[name] = value
        await self._remove_corrupt(corrupt)
        return values

    async def _remove_corrupt(self, keys: list[str]) -> None:
        """Delete entries that failed to decode. They are misses either way, so a node
        that cannot delete them (read-only after a failover) does not fail the lookup."""
        if not keys:
            return
        try:
            removed = await self._client.custom_command(["UNLINK", *keys])
        except CACHE_ERRORS as error:
            if self._log_throttle.due("corrupt") is not None:
                log.warning("could not remove undecodable cache entries %s: %s", keys, error)
            return
        removed = removed if isinstance(removed, int) else 0
        self.metrics.corrupt_entries_removed += removed
        log.warning("removed %d undecodable cache entries: %s", removed, keys)

    def _decode(self, raw: object, user: str, name: str) -> AppConfigData | None:
        if not isinstance(raw, bytes | str):
            return None  # undecodable, or another type under the key (get.lua answers 0)
        try:
            value = AppConfigData.model_validate_json(raw)
        except ValidationError:
            return None
        # An entry must describe the key it sits under; anything else is corruption.
        if str(value.user_id) != user or value.name != name:
            return None
        return value

    # -- writes --------------------------------------------------------------------------

    async def set_merged_config(
        self,
        user_id: uuid.UUID | str,
        name: str,
        merged: AppConfigData,
        fill_token: str | None = None,
    ) -> bool:
        """Store one merged config, with the ``fill_token`` of the lookup that missed it.
        False when an invalidation since that lookup covers it, or it is over
        ``max_entry_bytes``. ValueError when ``merged`` is of another user or name."""
        if merged.name != name:
            raise ValueError(f"merged config is for {merged.name!r}, not {name!r}")
        return await self.set_many(user_id, [merged], fill_token=fill_token)

    async def set_many(
        self,
        user_id: uuid.UUID | str,
        merged: Sequence[AppConfigData],
        fill_token: str | None = None,
        *,
        catalogue: Iterable[str] | None = None,
    ) -> bool:
        """Store several merged configs of one user in one atomic step (all or none).

        With ``fill_token`` (from a lookup) the write is refused, and False returned, if
        an invalidation that covers any of them (or the catalogue, when given) ran since
        that lookup. ``catalogue``, when given, replaces the cached list of every config
        name (what ``lookup_all`` needs to answer alone, and ``lookup_registered`` to
        answer an unregistered name); with no ``merged``, it alone is written.
        """
        if not merged and catalogue is None:
            return True
        user = user_component(user_id)
        domains = {item.domain_name for item in merged}
        if len(domains) > 1:
            raise ValueError(f"merged configs of one user name several domains: {sorted(domains)}")
        for item in merged:
            if str(item.user_id) != user:
                raise ValueError(f"merged config of user {item.user_id} passed for user {user}")
        args: list[ScriptArg] = [
            self.keys.prefix,
            self.ttl_seconds * 1000,
            user,
            # The domain of the entries (none when the catalogue alone is written).
            encode_component(merged[0].domain_name if merged else "-", what="domain"),
            fill_token or "",
            FILL_TOKEN_MAX_AGE_MS,
            self._announce,
        ]
        if catalogue is None:
            args.append(-1)
        else:
            names = list(dict.fromkeys(catalogue))
            args += [len(names), *(encode_component(n, what="name") for n in names)]
        payloads: list[str] = []
        for item in merged:
            payload = item.model_dump_json()
            payloads.append(payload)
            if len(payload) > self.max_entry_bytes:
                log.warning(
                    "not caching %s for user %s: %d bytes exceeds max_entry_bytes=%d",
                    item.name,
                    user,
                    len(payload),
                    self.max_entry_bytes,
                )
                return False
            args += [encode_component(item.name, what="name"), payload]
        local = self._local
        # Only a fill whose token no covering invalidation overtook (set.lua checks) may
        # be copied locally; one written without a token proves nothing.
        ticket = local.ticket() if local is not None and fill_token else None
        began = local.now() if local is not None else 0.0
        reply = await self._registry.call(
            self._client, "set", [self.keys.seq, self.keys.catalogue], args
        )
        if reply == 1 and local is not None and ticket is not None:
            for payload in payloads:
                # What a read from Valkey would return: the JSON form, not the caller's
                # object (which it may go on changing).
                stored = AppConfigData.model_validate_json(payload)
                local.store(ticket, began, stored, payload, self.ttl_seconds * 1000)
            if catalogue is not None:
                # The token covered the catalogue too (set.lua refuses it otherwise), and
                # set.lua gave it the entries' TTL.
                local.store_catalogue(ticket, began, names, self.ttl_seconds * 1000)
        return reply == 1

    # -- invalidation --------------------------------------------------------------------

    async def invalidate_for_scope(
        self, scope_type: ScopeType | str, scope_id: str, names: Iterable[str] | None = None
    ) -> int:
        """Make every entry of the scope (only ``names`` if given) unservable; returns
        how many entries this call deleted (a large scope is deleted by later steps).

        ``scope_id``: ``"public"``, the domain name, or for USER the user id's string
        form, ``str(user_id)`` (``InvalidationTarget.of`` checks it: ValueError before
        any I/O for anything else)."""
        return await self.invalidate_many([InvalidationTarget.of(scope_type, scope_id, names)])

    async def invalidate_for_policy(self, config_name: str, *, drop_catalogue: bool = True) -> int:
        """Invalidate one config name for every user, and (by default) the cached list of
        config names, since a created or deleted policy changes it."""
        return await self.invalidate_many(
            [InvalidationTarget.of(ScopeType.PUBLIC, PUBLIC_SCOPE_ID, [config_name])],
            drop_catalogue=drop_catalogue,
        )

    async def reset_index(self) -> int:
        """Start a new life of the index, in one round trip (``reset.lua``): every entry
        and fill token of the old one is refused, and a sweep, run in the background,
        removes what is left, keys of the wrong type under the prefix included. What a
        corrupt index (a key of the wrong type) calls for. Returns the entries this call
        deleted: none, the sweep deletes them."""
        try:
            sequence = await self._new_life()
            self._highest_sequence = max(self._highest_sequence, sequence)
            if self._replicas is not None:
                await self._replicas.wait()
            self._start_reclaiming()
            return 0
        finally:
            if self._local is not None:
                # Once Valkey (and its replicas) have it, or the call failed.
                self._local.flush("new_life")

    async def invalidate_many(
        self,
        targets: Iterable[
            InvalidationTarget
            | tuple[ScopeType | str, str]
            | tuple[ScopeType | str, str, Iterable[str] | None]
        ],
        *,
        drop_catalogue: bool = False,
    ) -> int:
        """Invalidate several slices in one atomic round trip; returns entries deleted.

        Each target is an InvalidationTarget or a ``(scope_type, scope_id[, names])`` tuple.
        ``drop_catalogue`` also forgets the cached list of config names (a policy was
        created or deleted). When the call returns, no reader is served an entry it
        covers; deleting them from memory may go on in the background (``reclaim``).
        """
        checked = [
            target if isinstance(target, InvalidationTarget) else InvalidationTarget.of(*target)
            for target in targets
        ]
        live = [target for target in checked if target.names is None or target.names]
        if not live and not drop_catalogue:
            return 0
        return await self._invalidate([target.script_args() for target in live], drop_catalogue)

    async def _invalidate(self, targets: list[list[ScriptArg]], drop_catalogue: bool) -> int:
        """One invalidate.lua call, or several for a large invalidation (``pack_calls``):
        each call is atomic and makes what it covers unservable when it lands, and this
        returns only after the last one landed, so when it returns every target is
        covered. Meanwhile, each target is either still servable as before the change (not
        yet reached) or refused for good: a fill whose token predates the call that
        stamped it is refused, and a token taken after it belongs to a read that began
        after the change committed. If a call fails, the error goes to the caller, which
        replays every target (the ones that landed too: an extra miss, never a stale read).
        """
        args: list[ScriptArg] = []
        for target in targets:
            args += target
        try:
            deleted, queued = 0, False
            for i, call in enumerate(pack_calls(targets) or [[]]):
                deleted_now, queued_now = await self._invalidate_in_valkey(
                    call, drop_catalogue and i == 0
                )
                deleted, queued = deleted + deleted_now, queued or queued_now
            if self._replicas is not None:
                await self._replicas.wait()
            if queued:
                self._start_reclaiming()
            return deleted
        finally:
            if self._local is not None:
                # Once Valkey (and its replicas) have it, or the call failed: nothing it
                # covers is served here any more, and no read that went out before lands
                # here later (the drop moves the local cache's generation).
                self._local.drop(args, catalogue=drop_catalogue)

    async def _invalidate_in_valkey(
        self, args: list[ScriptArg], drop_catalogue: bool
    ) -> tuple[int, bool]:
        """One invalidate.lua call: (entries deleted, whether clean-up work is queued)."""
        # What the server had reached before this call was sent: the call must move it
        # past that. (Concurrent calls of this source may land in any order: each is
        # compared with what was known when it left, not with its siblings' replies.)
        reached = self._highest_sequence
        deleted, queued, sequence = await self._call_invalidate(
            INVALIDATE_CLEANUP_BUDGET, drop_catalogue, args
        )
        if sequence <= reached:
            await self._writes_were_lost(reached, sequence)
            queued = True
        else:
            self._highest_sequence = max(self._highest_sequence, sequence)
        return deleted, bool(queued)

    async def _writes_were_lost(
        self, reached: int, sequence: int, client: ValkeyClient | None = None
    ) -> None:
        """The primary's sequence went back: a failover promoted a replica that lacked
        invalidations acknowledged before it (or the server's data was replaced). Its
        stamps may be missing, so nothing of the index can be trusted: start a new life,
        which refuses every older entry and fill token."""
        log.error(
            "the cache's invalidation sequence went back from %d to %d under prefix %r:"
            " writes were lost (failover?); starting a new life of the index",
            reached,
            sequence,
            self.keys.prefix,
        )
        self.metrics.index_resets += 1
        if self._local is not None:
            self._local.flush("went_back")
        # The sweep it queues is run by the caller's reclaimer.
        self._highest_sequence = await self._new_life(client)

    async def _primary_changed(self, client: GlideClient) -> None:
        """Run by a ``SentinelClient`` before calls go to a newly named primary: load the
        scripts there, and if its invalidation sequence is behind the highest this
        process knows (its own invalidations', or what its local cache heard), the
        failover lost acknowledged invalidations: start a new life of the index there,
        before any read reaches it. Then the breaker closes (its failures were the old
        primary's) and the ``failover_hooks`` of its holders run (their calls through
        this source go to the new node too). Raises if the node cannot be reached: the
        switch is tried again."""
        await self._registry.load(client, required=True)
        known = max(self._highest_sequence, self._local.sequence if self._local else 0)
        reply = await client.custom_command(["HGET", self.keys.seq, "n"])
        server = int(_text(reply)) if reply is not None else 0
        if server < known:
            await self._writes_were_lost(known, server, client)
        self._highest_sequence = max(server, self._highest_sequence)
        if self._replicas is not None:
            self._replicas.forget()
        # Before the hooks: their invalidations must not be refused as if the old primary's
        # failures were the new one's.
        self.breaker.reset("a new primary answered")
        for hook in list(self.failover_hooks):
            await hook()

    async def _call_invalidate(
        self, budget: int, drop_catalogue: bool, targets: list[ScriptArg]
    ) -> tuple[int, int, int]:
        """One invalidate.lua call: (entries deleted, clean-up jobs queued, the sequence
        now). If a key of another type blocked it, a new life of the index (reset.lua)
        follows, and the sequence is the new life's."""
        reply = await self._registry.call(
            self._client,
            "invalidate",
            [self.keys.seq, self.keys.catalogue, self.keys.cleanup_queue],
            [
                self.keys.prefix,
                self.ttl_seconds * 1000 + FILL_TOKEN_MAX_AGE_MS,
                FILL_TOKEN_MAX_AGE_MS,
                budget,
                f"{int(drop_catalogue)} {self._announce}",
                *targets,
            ],
        )
        if (
            not isinstance(reply, list)
            or len(reply) != 4
            or not all(isinstance(part, int) for part in reply)
        ):
            raise CacheError(f"invalidate.lua answered {reply!r:.200}")
        deleted, queued, sequence, blocked = reply
        if blocked:
            self._index_blocked("an invalidation")
            sequence, queued = await self._new_life(), queued + 1
        return deleted, queued, sequence

    def _index_blocked(self, what: str) -> None:
        """A script met a key of another type in the index, or the server refused one of
        its commands inside ``pcall`` (a missing ACL grant reads the same): a new life of
        the index follows. Safe either way, but said and counted: a missing grant would
        otherwise empty the cache at every invalidation without a word."""
        self.metrics.index_resets += 1
        if self._log_throttle.due("blocked") is not None:
            log.warning(
                "%s under prefix %r met a key of another type in the cache's index, or a"
                " command the server refused (an ACL without a grant the scripts need?):"
                " starting a new life of the index",
                what,
                self.keys.prefix,
            )

    async def _new_life(self, client: ValkeyClient | None = None) -> int:
        """One reset.lua call, on ``client`` (by default the source's): a new life of the
        index, and its sweep queued; returns the new life's sequence."""
        reply = await self._registry.call(
            client or self._client,
            "reset",
            [self.keys.seq, self.keys.catalogue, self.keys.cleanup_queue],
            [
                self.keys.prefix,
                self._announce,
                self.ttl_seconds * 1000 + FILL_TOKEN_MAX_AGE_MS,
            ],
        )
        if not isinstance(reply, int):
            raise CacheError(f"reset.lua answered {reply!r:.200}")
        return reply

    # -- clean-up ------------------------------------------------------------------------

    async def cleanup_step(self) -> tuple[int, int]:
        """One bounded clean-up step: (entries deleted, jobs still queued). The job at the
        head of the queue says which script runs it (each step's reply names the next):
        reclaim.lua an invalidation's, sweep.lua the sweep after a new life of the index.
        A step that meets a key of another type in the index starts a new life instead
        (reset.lua), which leaves its sweep queued."""
        reply = await self._registry.call(
            self._client,
            self._next_step,
            [self.keys.cleanup_queue],
            [self.keys.prefix, STEP_CLEANUP_BUDGET],
        )
        if not (
            isinstance(reply, list)
            and len(reply) == 3
            and isinstance(reply[0], int)
            and isinstance(reply[1], int)
            and isinstance(reply[2], str | bytes)
        ):
            raise CacheError(f"{self._next_step}.lua answered {reply!r:.200}")
        deleted, queued, head = reply[0], reply[1], _text(reply[2])
        if head == "reset":
            self._index_blocked(f"a clean-up step ({self._next_step}.lua)")
            sequence = await self._new_life()
            self._highest_sequence = max(self._highest_sequence, sequence)
            queued, head = 1, "sweep"
        self._next_step = "sweep" if head == "sweep" else "reclaim"
        return deleted, queued

    async def reclaim(self) -> int:
        """Run clean-up steps until the queue is empty; returns entries deleted. Any
        process may run it: steps of the same queue serialise on the server."""
        total = 0
        while True:
            deleted, queued = await self.cleanup_step()
            total += deleted
            self.metrics.entries_reclaimed += deleted
            if not queued:
                return total

    def _start_reclaiming(self) -> None:
        if self._reclaimer is None or self._reclaimer.done():
            self._reclaimer = asyncio.create_task(self._reclaim_in_background())

    async def _reclaim_in_background(self) -> None:
        try:
            await self.reclaim()
        except CACHE_ERRORS as error:
            # The queue stays on the server: the next invalidation, here or in any other
            # process, resumes it; meanwhile the entries are unservable and expire anyway.
            if self._log_throttle.due("reclaim") is not None:
                log.warning("cache clean-up paused, to resume with the next call: %s", error)

    async def reclaiming(self) -> None:
        """Wait for the background clean-up this source started, if any (tests, shutdown);
        never raises: a clean-up that failed or was cancelled stays queued on the server."""
        if self._reclaimer is not None:
            await asyncio.wait({self._reclaimer})
