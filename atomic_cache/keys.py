"""The key schema: every Valkey key this package touches, built in one place.

Pure code, no I/O. Names, domains and ids are percent-encoded before they become part of
a key, so no value (``a:b``, ``*``, ``{tag}``, spaces, ``%``) can address another entry or
index, stamp or sequence: the encoding is injective and its output holds only ``[A-Za-z0-9._~%-]``.
The Lua scripts build the same keys from the same prefix and the encoded set members;
``tests/test_cache_source.py`` checks that both sides agree.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from .ids import as_uuid

DEFAULT_PREFIX = "app_config"
# On a Valkey Cluster every key a script touches must hash to one slot: the prefix carries
# a hash tag, and no other component can hold a brace (they are percent-encoded).
CLUSTER_DEFAULT_PREFIX = "{app_config}"
MAX_COMPONENT_LENGTH = 256
_PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9_.\-{}]+(:[A-Za-z0-9_.\-{}]+)*$")


def encode_component(value: str, *, what: str = "value") -> str:
    """Encode one key component (name or domain); raise ValueError on unusable input."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > MAX_COMPONENT_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_COMPONENT_LENGTH} characters")
    return _quote(value)


@lru_cache(maxsize=4096)
def _quote(value: str) -> str:
    # Names and domains are few and read on every hit: encode each once.
    return quote(value, safe="")


def decode_component(encoded: str) -> str:
    """Inverse of :func:`encode_component`."""
    return unquote(encoded)


def user_component(user_id: uuid.UUID | str, what: str = "user_id") -> str:
    """The key form of a user id: lower-case hyphenated. Takes a ``uuid.UUID`` or its
    string form (the rule of ``ids.py``); ValueError naming ``what`` otherwise."""
    if isinstance(user_id, uuid.UUID):
        return str(user_id)
    return str(as_uuid(user_id, what))


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Key names under one prefix (DESIGN §2).

    On a cluster the prefix needs a hash tag (``{app_config}``, ``has_hash_tag``) so that
    every key a script touches hashes to one slot; the cache source checks it.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(
                f"key prefix {self.prefix!r} must be non-empty words of [A-Za-z0-9_.-{{}}]"
                " joined by ':'"
            )

    def entry(self, user_id: uuid.UUID | str, name: str) -> str:
        """``p:merged:{user}:{name}``: header (fill token, domain) + JSON of one config."""
        return (
            f"{self.prefix}:merged:{user_component(user_id)}:{encode_component(name, what='name')}"
        )

    @property
    def seq(self) -> str:
        """``p:seq``: hash of the invalidation sequence ``n`` and ``ttl``, the longest
        entry TTL written (ms)."""
        return f"{self.prefix}:seq"

    @property
    def public_stamps(self) -> str:
        """``p:stamp:public``: field ``*`` or a name -> seq of its last invalidation."""
        return f"{self.prefix}:stamp:public"

    def domain_stamps(self, domain_name: str) -> str:
        """``p:stamp:domain:{domain}``: as ``public_stamps``, for one domain."""
        return f"{self.prefix}:stamp:domain:{encode_component(domain_name, what='domain')}"

    def user_stamps(self, user_id: uuid.UUID | str) -> str:
        """``p:stamp:user:{user}``: as ``public_stamps``, for one user."""
        return f"{self.prefix}:stamp:user:{user_component(user_id)}"

    def user_index(self, user_id: uuid.UUID | str) -> str:
        """``p:idx:user:{user}``: sorted set of the user's cached names, scored by expiry."""
        return f"{self.prefix}:idx:user:{user_component(user_id)}"

    def domain_index(self, domain_name: str) -> str:
        """``p:idx:domain:{domain}``: users with entries filled under the domain, scored
        by their latest entry's expiry (ms)."""
        return f"{self.prefix}:idx:domain:{encode_component(domain_name, what='domain')}"

    @property
    def users_index(self) -> str:
        """``p:idx:users``: every user with an entry, scored by latest expiry (ms)."""
        return f"{self.prefix}:idx:users"

    @property
    def catalogue(self) -> str:
        """``p:names``: every config name that has a policy (encoded)."""
        return f"{self.prefix}:names"

    @property
    def cleanup_queue(self) -> str:
        """``p:gc``: list of clean-up jobs (covered entries still to delete)."""
        return f"{self.prefix}:gc"


def has_hash_tag(prefix: str) -> bool:
    """Whether every key under ``prefix`` hashes to one cluster slot: the prefix holds the
    key's first ``{`` and, after it, a ``}`` with something between (``{}`` hashes the
    whole key)."""
    start = prefix.find("{")
    return start >= 0 and prefix.find("}", start + 1) > start + 1


def token_sequence(fill_token: str) -> str:
    """The sequence part of a fill token ``"{seq}:{ms}"``: readers whose lookups saw the
    same sequence saw the same invalidations, whatever the millisecond."""
    return fill_token.partition(":")[0]
