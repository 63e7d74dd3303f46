"""LocalCache: merged configs in process memory, in front of Valkey, kept correct by the
invalidations Valkey announces.

Every invalidation (``invalidate.lua``) publishes, from inside the same script, the new
sequence number and its targets on ``p:invalidations`` (sharded pub/sub on a cluster);
so does the write (``set.lua``) that begins a new life of the index, with no target.
A local cache subscribes with a client of its own, drops what each message covers, and
tracks the last number it has seen. It serves an entry only while it is sure that it has
seen every invalidation the server has run:

- a message whose number is not the next one (a gap), or that starts a new life of the
  index, empties it;
- a watcher checks often (``poll_s``) that the subscription is live, and empties the
  cache and stops serving while it is not (glide resubscribes after a reconnect, but
  messages published meanwhile are lost). It asks glide, and then the server which
  connection carries the subscription (``CLIENT INFO``): a connection other than the
  one it last synced on means glide reconnected between two checks, so it empties the
  cache and syncs again, even when glide already resubscribed (2.3 does so at once,
  before any check could see the subscription gone: see ``glide_compat``);
- every ``check_interval_s`` the watcher reads the server's sequence: behind what was
  announced means the server went back (restart, failover); ahead, and still ahead after
  a grace period, means a message was lost. Either empties the cache;
- nothing is served unless such a check succeeded within ``2 * check_interval_s`` (a
  lease): if the server cannot be reached, so that no announcement could reach us
  either, local entries stop being served after that long.

A value is copied in only if no invalidation reached this process between the start of
the read (or write) that produced it and the copy: every message, drop and flush moves a
generation number, and a store carries the generation its read started under
(``ticket``). Only values Valkey served, or that ``set.lua`` accepted with a fill token,
are stored; none outlives the Valkey entry it copies (``get.lua`` returns its PTTL).

For reads of several names (``get_all.lua``), the catalogue of config names is held too,
under the same rules: stored (as read, or as a fill with a token wrote it) only under an
unmoved generation, never beyond the catalogue key's PTTL, and dropped by every
invalidation that drops the catalogue (a policy was created or deleted), announced or
made in this process, and by every flush.

Every hit hands out a copy of its own, which the caller may change without changing
anyone else's: see ``ValueCopier`` for how, and bench scenario k for what each way costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import msgspec
from glide import (
    GlideClient,
    GlideClientConfiguration,
    GlideClusterClient,
    GlideClusterClientConfiguration,
    PubSubMsg,
    SlotKeyRoute,
    SlotType,
)
from pydantic import BaseModel

from ..keys import (
    CLUSTER_DEFAULT_PREFIX,
    DEFAULT_PREFIX,
    KeySchema,
    decode_component,
    has_hash_tag,
    user_component,
)
from ..metrics import LocalCacheCounters
from ..models import AppConfigData, AppConfigFragment
from ..resilience.logs import LogThrottle
from .client import (
    DEFAULT_CONNECT_TIMEOUT_MS,
    DEFAULT_REQUEST_TIMEOUT_MS,
    ValkeyURL,
    sentinel_client,
    tls_config,
)
from .scripts import ValkeyClient

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CHECK_INTERVAL_S = 1.0
# How often the watcher checks that the subscription is live and on the same connection
# (glide's own state, then one CLIENT INFO on the subscriber's connection).
DEFAULT_POLL_S = 0.1

# (user, name), the user as its 128-bit number: an int hashes and compares in C, where a
# UUID's __hash__ and __eq__ are Python calls, twice per hit.
Key = tuple[int, str]
T = TypeVar("T")
_new = object.__new__
_set_dict = object.__setattr__
# The setters of a pydantic model's three slots, called directly: about 0.1 µs less per
# model than going through object.__setattr__ and the lookup of each name.
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__
# What a caller may change is kept as MessagePack and decoded afresh for each copy:
# measured (bench scenario k) 2.8 µs for a 1.5 KB WebUI config, against 3.5 for marshal,
# 3.7 for pickle and 6.5 for json.
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


def invalidation_channel(keys: KeySchema) -> str:
    """The channel ``invalidate.lua`` announces on: in the prefix's slot on a cluster."""
    return f"{keys.prefix}:invalidations"


def announce_command(cluster: bool) -> str:
    """What ``invalidate.lua`` publishes with: sharded pub/sub on a cluster, where a
    plain PUBLISH would travel to every node."""
    return "SPUBLISH" if cluster else "PUBLISH"


def subscribed_connection(client_info: object) -> str | None:
    """Which connection a ``CLIENT INFO`` reply describes (its id and both ends'
    addresses: ids start again at a server's restart and are counted per node, while a
    new connection has a new client port), if the server counts a subscription on it
    (``sub``, or ``ssub`` for sharded channels); else None."""
    if isinstance(client_info, bytes):
        client_info = client_info.decode()
    if not isinstance(client_info, str):
        raise ValueError(f"not a CLIENT INFO reply: {client_info!r}")
    fields = dict(part.split("=", 1) for part in client_info.split() if "=" in part)
    if "id" not in fields:
        raise ValueError(f"not a CLIENT INFO reply: {client_info[:100]!r}")
    if int(fields.get("sub", 0)) + int(fields.get("ssub", 0)) <= 0:
        return None
    return " ".join(f"{name}={fields[name]}" for name in ("id", "addr", "laddr") if name in fields)


def _user_key(user_id: uuid.UUID | str) -> int:
    if type(user_id) is uuid.UUID:
        return user_id.int
    return uuid.UUID(user_component(user_id)).int


def _unindex(index: dict[T, set[Key]], part: T, key: Key) -> None:
    members = index[part]
    members.discard(key)
    if not members:
        del index[part]


@dataclass(frozen=True, slots=True)
class ValueCopier:
    """Makes private copies of one value. What a caller could change, ``config`` and each
    fragment's ``extra_config`` (plain JSON data), is kept packed and decoded afresh for
    each copy; the rest (ids, names, scopes, times) is immutable and shared. The models
    themselves are frozen, and are rebuilt around the fresh data. Bench scenario k
    measures each way of copying a 1.5 KB WebUI config: this one is the cheapest that
    shares nothing a caller could change."""

    fields: dict[str, Any]
    fields_set: set[str]
    fragments: tuple[tuple[dict[str, Any], set[str]], ...]
    mutable: bytes

    @classmethod
    def of(cls, value: AppConfigData) -> ValueCopier:
        """ValueError for data that does not pack (an integer beyond 64 bits); a value
        decoded from JSON is otherwise always plain data."""
        try:
            mutable = _encode((value.config, [f.extra_config for f in value.fragments]))
        except (OverflowError, TypeError, msgspec.EncodeError) as error:
            raise ValueError(f"not plain JSON data: {error}") from error
        return cls(
            {**value.__dict__, "config": None, "fragments": None},
            value.__pydantic_fields_set__,
            tuple(
                ({**f.__dict__, "extra_config": None}, f.__pydantic_fields_set__)
                for f in value.fragments
            ),
            mutable,
        )

    def copy(self) -> AppConfigData:
        # Each model is built as pydantic's model_construct builds one, from values that
        # were validated already, without its pass over every field's default (which
        # made it slower than decoding the JSON again). Inlined: this is the hit path.
        config, extras = _decode(self.mutable)
        fragments = []
        # extras holds one extra_config per fragment, in order (see ``of``).
        for i, (fields, fields_set) in enumerate(self.fragments):
            values = fields.copy()
            values["extra_config"] = extras[i]
            fragment = _new(AppConfigFragment)
            _set_dict(fragment, "__dict__", values)
            _set_fields_set(fragment, fields_set)
            _set_extra(fragment, None)
            _set_private(fragment, None)
            fragments.append(fragment)
        values = self.fields.copy()
        values["config"] = config
        values["fragments"] = fragments
        value = _new(AppConfigData)
        _set_dict(value, "__dict__", values)
        _set_fields_set(value, self.fields_set)
        _set_extra(value, None)
        _set_private(value, None)
        return value


@dataclass(slots=True)
class _Entry:
    copier: ValueCopier
    size: int  # the value's JSON, in bytes: what the byte bound counts
    expires: float  # on the cache's clock; never after the Valkey entry's expiry
    domain: str  # the user's domain at fill time (DOMAIN targets cover it)


@dataclass(frozen=True, slots=True)
class Announcement:
    """One message of ``invalidate.lua``: the sequence after it, whether it started a new
    life of the index, its targets (``scope id count names...``, as sent), and whether it
    dropped the catalogue of names."""

    sequence: int
    new_life: bool
    targets: tuple[str, ...]
    catalogue: bool = False

    @classmethod
    def parse(cls, message: bytes | str) -> Announcement:
        """ValueError for anything that is not an announcement."""
        text = message.decode() if isinstance(message, bytes) else message
        parts = text.split(" ")
        if len(parts) < 3 or parts[1] not in ("0", "1") or parts[2] not in ("0", "1"):
            raise ValueError(f"not an invalidation announcement: {text[:100]!r}")
        return cls(int(parts[0]), parts[1] == "1", tuple(parts[3:]), catalogue=parts[2] == "1")


class LocalCache:
    """An LRU of merged configs in process memory, emptied whenever it cannot be sure
    that it has heard of every invalidation (see the module's docstring).

    Create it with :meth:`create` (it opens its own subscriber connection) and pass it
    to ``AppConfigFragmentCacheSource(..., local_cache=...)``; ``close()`` stops it.
    """

    def __init__(
        self,
        keys: KeySchema | None = None,
        *,
        cluster: bool = False,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        poll_s: float = DEFAULT_POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries <= 0 or max_bytes <= 0:
            raise ValueError("max_entries and max_bytes must be positive")
        if check_interval_s <= 0 or poll_s <= 0:
            raise ValueError("check_interval_s and poll_s must be positive")
        self.keys = keys or KeySchema(CLUSTER_DEFAULT_PREFIX if cluster else DEFAULT_PREFIX)
        if cluster and not has_hash_tag(self.keys.prefix):
            raise ValueError(
                f"key prefix {self.keys.prefix!r} has no hash tag: on a cluster the"
                " announcements travel in the prefix's slot; use e.g. '{app_config}'"
            )
        self.cluster = cluster
        self.channel = invalidation_channel(self.keys)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.check_interval_s = check_interval_s
        self.poll_s = min(poll_s, check_interval_s)
        self.counters = LocalCacheCounters()
        self._clock = clock
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._bytes = 0
        self._by_user: dict[int, set[Key]] = {}
        self._by_domain: dict[str, set[Key]] = {}
        self._by_name: dict[str, set[Key]] = {}
        # The catalogue of config names (sorted, as lookup_all answers it) and its expiry.
        self._catalogue: tuple[str, ...] | None = None
        self._catalogue_set: frozenset[str] = frozenset()
        self._catalogue_expires = 0.0
        # Moves on every announcement, drop and flush: a store whose read started under
        # another generation may have raced an invalidation, and is refused.
        self._generation = 0
        self._last = 0  # the last sequence number announced (or read at a resync)
        self._synced = False  # subscribed, and ``_last`` is known to be complete
        # The connection the subscription was on at the last sync (``subscribed_connection``):
        # a subscription on another connection may have missed announcements in between.
        self._connection: str | None = None
        self._valid_until = 0.0  # the lease: nothing is served at or after it
        self._next_check = 0.0  # when the watcher reads the server's sequence next
        self._advanced = asyncio.Event()  # set whenever ``_last`` moves
        self._checked = asyncio.Event()  # set by each check that renewed the lease
        self._request_timeout_ms = DEFAULT_REQUEST_TIMEOUT_MS
        self._client: ValkeyClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False
        self._log_throttle = LogThrottle()

    @classmethod
    async def create(
        cls,
        url: str,
        *,
        keys: KeySchema | None = None,
        cluster: bool = False,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        check_interval_s: float = DEFAULT_CHECK_INTERVAL_S,
        poll_s: float = DEFAULT_POLL_S,
        request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS,
        connect_timeout_ms: int = DEFAULT_CONNECT_TIMEOUT_MS,
        client_name: str | None = "atomic_cache_local",
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_insecure: bool = False,
        sentinel_service: str | None = None,
        sentinel_password: str | None = None,
    ) -> Self:
        """A local cache subscribed to the announcements of ``keys``' prefix (by default
        the cache source's default for the client kind). Returns at once, even with the
        server down: it serves nothing until it has subscribed and read the server's
        sequence (``ready()`` waits for that).

        The connection options are ``create_valkey_client``'s. Under Sentinel
        (``sentinel_service``) it subscribes on the primary the Sentinels name; when they
        name another, it empties itself and serves again once subscribed there and in
        step with that node's sequence."""
        cache = cls(
            keys,
            cluster=cluster,
            max_entries=max_entries,
            max_bytes=max_bytes,
            check_interval_s=check_interval_s,
            poll_s=poll_s,
        )
        client: ValkeyClient
        if sentinel_service is not None:
            if cluster:
                raise ValueError("sentinel_service is for a primary with replicas, not a cluster")
            client = await sentinel_client(
                url,
                sentinel_service,
                sentinel_password,
                lambda node, node_tls: cache._subscribing(
                    node.configuration(
                        request_timeout_ms=request_timeout_ms,
                        connect_timeout_ms=connect_timeout_ms,
                        client_name=client_name,
                        tls=node_tls,
                    )
                ),
                connect_timeout_ms=connect_timeout_ms,
                tls_ca_file=tls_ca_file,
                tls_insecure=tls_insecure,
            )
            client.on_failover(cache._primary_changed)
        elif cluster:
            parsed = ValkeyURL.parse(url)
            cluster_config = parsed.cluster_configuration(
                request_timeout_ms=request_timeout_ms,
                connect_timeout_ms=connect_timeout_ms,
                client_name=client_name,
                tls=tls_config(parsed, tls_ca_file, tls_insecure),
            )
            modes = GlideClusterClientConfiguration.PubSubChannelModes
            cluster_config.pubsub_subscriptions = (
                GlideClusterClientConfiguration.PubSubSubscriptions(
                    channels_and_patterns={modes.Sharded: {cache.channel}},
                    callback=cache._on_message,
                    context=None,
                )
            )
            client = await GlideClusterClient.create(cluster_config)
        else:
            parsed = ValkeyURL.parse(url)
            config = parsed.configuration(
                request_timeout_ms=request_timeout_ms,
                connect_timeout_ms=connect_timeout_ms,
                client_name=client_name,
                tls=tls_config(parsed, tls_ca_file, tls_insecure),
            )
            client = await GlideClient.create(cache._subscribing(config))
        cache._client = client
        cache._request_timeout_ms = request_timeout_ms
        cache._watcher = asyncio.create_task(cache._watch())
        return cache

    def _subscribing(self, config: GlideClientConfiguration) -> GlideClientConfiguration:
        """``config`` with this cache's subscription (standalone: exact channel)."""
        config.pubsub_subscriptions = GlideClientConfiguration.PubSubSubscriptions(
            channels_and_patterns={
                GlideClientConfiguration.PubSubChannelModes.Exact: {self.channel}
            },
            callback=self._on_message,
            context=None,
        )
        return config

    async def _primary_changed(self, client: GlideClient) -> None:
        """Run by a ``SentinelClient`` before it swaps to a new primary: serve nothing
        and store nothing until subscribed there and in step with its sequence (the
        watcher's next check). No await here: nothing can resync on the old node between
        this and the swap."""
        del client
        if self._synced:
            self._synced = False
            self._valid_until = 0.0
            self.flush("failover")

    async def ready(self, timeout_s: float = 5.0) -> bool:
        """Wait until it serves (at most ``timeout_s``); whether it does."""
        deadline = self._clock() + timeout_s
        while not self.serving and not self._closed:
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            self._checked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._checked.wait(), remaining)
        return self.serving

    async def close(self) -> None:
        """Stop the watcher, close the subscriber connection, and serve nothing more."""
        self._closed = True
        self._synced = False
        self._valid_until = 0.0
        self._clear()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.wait({self._watcher})
            self._watcher = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    # -- what the cache source calls -------------------------------------------------------

    @property
    def serving(self) -> bool:
        """Whether entries are served now (subscribed, in step, and the lease is fresh)."""
        return self._synced and self._clock() < self._valid_until

    @property
    def sequence(self) -> int:
        """The last invalidation number announced (or read from the server at a resync)."""
        return self._last

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The bytes of the values' JSON held now (what ``max_bytes`` bounds)."""
        return self._bytes

    def get(
        self, user_id: uuid.UUID | str, name: str, *, domain: str | None = None
    ) -> AppConfigData | None:
        """A private copy of the held value, or None (absent, expired, or unsure; with
        ``domain``, also when it was filled under another domain). ``user_id`` is a
        ``uuid.UUID`` or its string form; ValueError for anything else."""
        now = self._clock()
        key = (user_id.int if type(user_id) is uuid.UUID else _user_key(user_id), name)
        entry = self._entries.get(key) if now < self._valid_until else None
        if entry is None or entry.expires <= now:
            if entry is not None:
                self._remove(key)
            self.counters.misses += 1
            return None
        if domain is not None and entry.domain != domain:
            self.counters.misses += 1
            return None
        self._entries.move_to_end(key)
        self.counters.hits += 1
        return entry.copier.copy()

    def get_many(
        self, user_id: uuid.UUID | str, names: Sequence[str], *, domain: str | None = None
    ) -> list[AppConfigData] | None:
        """A private copy of each name's value, in order, if every one is held (with
        ``domain``, filled under that domain); one local miss otherwise: the caller asks
        Valkey for all of them. ``user_id`` as in ``get``."""
        now = self._clock()
        user = user_id.int if type(user_id) is uuid.UUID else _user_key(user_id)
        if now >= self._valid_until:
            self.counters.misses += 1
            return None
        entries: list[_Entry] = []
        for name in names:
            key = (user, name)
            entry = self._entries.get(key)
            if entry is None or entry.expires <= now:
                if entry is not None:
                    self._remove(key)
                self.counters.misses += 1
                return None
            if domain is not None and entry.domain != domain:
                self.counters.misses += 1
                return None
            entries.append(entry)
        for name in names:
            self._entries.move_to_end((user, name))
        self.counters.hits += len(entries)
        return [entry.copier.copy() for entry in entries]

    def catalogue(self) -> list[str] | None:
        """A list of its own of the held catalogue of config names, or None (not held,
        expired, or unsure)."""
        held = self._held_catalogue()
        return None if held is None else list(held)

    def catalogue_set(self) -> frozenset[str] | None:
        """The held catalogue of config names as a set (immutable, shared), or None."""
        return None if self._held_catalogue() is None else self._catalogue_set

    def _held_catalogue(self) -> tuple[str, ...] | None:
        now = self._clock()
        if self._catalogue is None or now >= self._valid_until:
            return None
        if self._catalogue_expires <= now:
            self._catalogue = None
            return None
        return self._catalogue

    def store_catalogue(
        self, ticket: int | None, began: float, names: Sequence[str], ttl_ms: int
    ) -> bool:
        """Keep the catalogue ``names`` (as read from Valkey, or as a fill with a token
        wrote it), sorted, under the rules of :meth:`store`: refused if an invalidation
        reached this process since ``ticket``; never kept beyond ``began`` plus
        ``ttl_ms``."""
        if ticket is None:
            return False
        if ticket != self._generation or not self._synced:
            self.counters.refused_stores += 1
            return False
        expires = began + ttl_ms / 1000
        if ttl_ms <= 0 or expires <= self._clock():
            return False
        self._catalogue = tuple(sorted(names))  # as lookup_all answers it, in any order
        self._catalogue_set = frozenset(self._catalogue)
        self._catalogue_expires = expires
        return True

    def ticket(self) -> int | None:
        """What a read or write that may store its value takes before it starts; None
        when nothing may be stored now."""
        return self._generation if self._synced else None

    def now(self) -> float:
        """This cache's clock (monotonic seconds): what a read notes when it goes out, so
        that what it stores expires no later than Valkey's entry."""
        return self._clock()

    def store(
        self,
        ticket: int | None,
        began: float,
        value: AppConfigData,
        raw: bytes | str,
        ttl_ms: int,
    ) -> bool:
        """Copy ``value`` (decoded from ``raw``, its JSON) in, if no invalidation reached
        this process since ``ticket`` was taken. ``began`` (``now()`` before the read or
        write went out) plus ``ttl_ms`` (the Valkey entry's remaining life then, or less)
        is no later than the Valkey entry's expiry. ``value`` may be handed to a caller
        afterwards: what is kept is a copy."""
        if ticket is None:
            return False
        if ticket != self._generation or not self._synced:
            self.counters.refused_stores += 1
            return False
        size = len(raw)
        expires = began + ttl_ms / 1000
        if size > self.max_bytes or ttl_ms <= 0 or expires <= self._clock():
            return False
        try:
            copier = ValueCopier.of(value)
        except ValueError:  # not plain JSON data: never what a decoded entry holds
            return False
        key = (value.user_id.int, value.name)
        if key in self._entries:
            self._remove(key)
        self._entries[key] = _Entry(copier, size, expires, value.domain_name)
        self._bytes += size
        self._by_user.setdefault(key[0], set()).add(key)
        self._by_domain.setdefault(value.domain_name, set()).add(key)
        self._by_name.setdefault(key[1], set()).add(key)
        self.counters.stores += 1
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.counters.evictions += 1
        self.counters.entries = len(self._entries)
        return True

    def drop(self, targets: Sequence[str | bytes | int | float], *, catalogue: bool = True) -> int:
        """Drop what invalidation targets cover (``invalidate.lua``'s arguments: scope,
        id, count, then count encoded names; count -1 for every name), and the catalogue
        of names if the invalidation dropped it (``catalogue``). Moves the generation, so
        that no read that started before lands. Returns entries dropped."""
        self._generation += 1
        if catalogue:
            self._catalogue = None
        words = [arg.decode() if isinstance(arg, bytes) else str(arg) for arg in targets]
        dropped = 0
        i = 0
        while i + 2 < len(words):
            scope, scope_id, count = words[i], words[i + 1], int(words[i + 2])
            names = (
                None if count < 0 else {decode_component(n) for n in words[i + 3 : i + 3 + count]}
            )
            i += 3 + max(count, 0)
            dropped += self._drop_target(scope, scope_id, names)
        self.counters.drops += dropped
        self.counters.entries = len(self._entries)
        return dropped

    def flush(self, reason: str) -> None:
        """Empty the cache, counting why (``LOCAL_FLUSH_REASONS``)."""
        self.counters.flushes[reason] += 1
        self._clear()

    # -- internals -----------------------------------------------------------------------

    def _drop_target(self, scope: str, scope_id: str, names: set[str] | None) -> int:
        candidates: Iterable[Key]
        if scope == "user":
            candidates = self._by_user.get(uuid.UUID(scope_id).int, ())
        elif scope == "domain":
            candidates = self._by_domain.get(decode_component(scope_id), ())
        elif names is None:  # public, every name: everything
            candidates = self._entries
        else:
            candidates = [key for name in names for key in self._by_name.get(name, ())]
        covered = [key for key in candidates if names is None or key[1] in names]
        for key in covered:
            self._remove(key)
        return len(covered)

    def _remove(self, key: Key) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size
        _unindex(self._by_user, key[0], key)
        _unindex(self._by_domain, entry.domain, key)
        _unindex(self._by_name, key[1], key)
        self.counters.entries = len(self._entries)

    def _clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_user.clear()
        self._by_domain.clear()
        self._by_name.clear()
        self._catalogue = None
        self._bytes = 0
        self.counters.entries = 0

    def _on_message(self, message: PubSubMsg, context: object) -> None:
        """glide's callback, on the event loop's thread, in the order the server sent."""
        del context
        try:
            self._heard(Announcement.parse(message.message))
        except ValueError as error:  # not ours, or another version's: whatever it said
            self.flush("unreadable")
            if self._log_throttle.due("unreadable") is not None:
                log.warning("local cache emptied: %s", error)
        self._advanced.set()

    def _heard(self, announced: Announcement) -> None:
        n = announced.sequence
        if announced.new_life:
            self.flush("new_life")
            self._last = n
        elif n == self._last + 1:
            self._last = n
            self._apply(announced)
        elif n > self._last + 1:
            # Announcements between were lost: whatever they covered may be held.
            self.flush("gap")
            self._last = n
        else:
            # Already accounted for (read at a resync while this was in flight).
            self._apply(announced)

    def _apply(self, announced: Announcement) -> None:
        """Drop what an announcement covers; the catalogue only if it says so."""
        self.drop(announced.targets, catalogue=announced.catalogue)

    # -- the watcher ---------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await self._watch_once()
            await asyncio.sleep(self.poll_s)

    async def _watch_once(self) -> None:
        """Check the subscription, and (when due) the server's sequence. Never raises:
        whatever went wrong, the lease runs out by itself and nothing is served."""
        client = self._client
        if client is None:
            return
        try:
            connection = await self._subscribed_connection(client)
            if connection is None:
                self._lose_track()
                await self._resubscribe(client)
                return
            if connection != self._connection:
                # Subscribed on a connection it has not synced on: glide reconnected (and
                # subscribed again) since the last check, and what was announced while the
                # old connection was gone is lost. Empty, and sync on this one.
                self._lose_track()
                self._connection = connection
            if not self._synced or self._clock() >= self._next_check:
                await self._check_sequence(client)
        except Exception as error:
            if self._log_throttle.due("check") is not None:
                log.warning("local cache could not check the server's sequence: %s", error)

    def _lose_track(self) -> None:
        """The subscription was lost (or may have been): stop serving, empty the cache,
        and serve again only after the next sync."""
        self._connection = None
        if self._synced:
            self._synced = False
            self._valid_until = 0.0
            self.flush("subscription_lost")

    async def _subscribed_connection(self, client: ValkeyClient) -> str | None:
        """The connection that carries the subscription, as the server describes it
        (``subscribed_connection``), or None when glide has no subscription or the server
        counts none on that connection."""
        state = await client.get_subscriptions()  # glide's own state: no server call
        if not any(self.channel in channels for channels in state.actual_subscriptions.values()):
            return None
        if isinstance(client, GlideClusterClient):
            # Sharded: glide subscribes on the primary of the channel's slot.
            route = SlotKeyRoute(SlotType.PRIMARY, self.channel)
            reply = await client.custom_command(["CLIENT", "INFO"], route)
        else:
            reply = await client.custom_command(["CLIENT", "INFO"])
        return subscribed_connection(reply)

    async def _resubscribe(self, client: ValkeyClient) -> None:
        """Ask glide to subscribe again now, rather than at its next periodic sync."""
        timeout_ms = self._request_timeout_ms
        if isinstance(client, GlideClusterClient):
            await client.ssubscribe({self.channel}, timeout_ms=timeout_ms)
        else:
            await client.subscribe({self.channel}, timeout_ms=timeout_ms)

    async def _read_sequence(self, client: ValkeyClient) -> int:
        reply = await client.hget(self.keys.seq, "n")
        return int(reply) if reply is not None else 0

    async def _check_sequence(self, client: ValkeyClient) -> None:
        began = self._clock()
        self._next_check = began + self.check_interval_s
        known = self._last  # every announcement up to it ran before the read below
        server = await self._read_sequence(client)
        if not self._synced:
            # First sync, or the subscription is back: announcements before the read
            # may have been missed, those after it will arrive. Empty, then start there.
            self._clear()
            self._last = server
            self._synced = True
        elif server < known:
            self.flush("went_back")  # restart without persistence, failover, FLUSHALL
            self._last = server
        elif server > self._last and not await self._caught_up(server, began):
            self.flush("missed")
            self._last = server
        self._valid_until = began + 2 * self.check_interval_s
        self._checked.set()

    async def _caught_up(self, server: int, began: float) -> bool:
        """Wait (at most half a check interval) for the announcements up to ``server``,
        which may still be on their way."""
        deadline = began + self.check_interval_s / 2
        while self._last < server:
            remaining = deadline - self._clock()
            if remaining <= 0:
                return False
            self._advanced.clear()
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                return self._last >= server
        return True
