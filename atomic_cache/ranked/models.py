"""The ranked model's values and errors (pure): scopes, fragment writes, merged configs,
the rows writes return.

BEP-1052 as Backend.AI's main branch runs it: ``app_config_definitions`` registers a name,
``app_config_allow_list`` grants a (name, scope) with a ``rank``, ``app_config_fragments``
holds one config per (name, scope, scope id). Ids are ``uuid.UUID``; a public fragment's
``scope_id`` is None, a domain's is the domain's UUID, a user's the user's UUID. Every id
an entry point takes (user, domain, fragment, scope id) is a ``uuid.UUID`` or its string
form (8-4-4-4-12 hex digits, either case), as everywhere in this package; anything else is
an ``InvalidInputError`` (a ``ValueError``) naming the argument, raised before any SQL.
"""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..ids import as_uuid

# The length of ``config_name`` in all three tables (VARCHAR(128)).
MAX_CONFIG_NAME_LENGTH = 128

# The range of ``rank`` (INTEGER).
MIN_RANK = -(2**31)
MAX_RANK = 2**31 - 1


class Scope(StrEnum):
    """Where a fragment applies; the values are what ``scope_type`` stores (VARCHAR(64))."""

    PUBLIC = "public"
    DOMAIN = "domain"
    USER = "user"

    def default_rank(self) -> int:
        """The rank a grant of this scope gets when none is given (upstream's defaults):
        public 100 < domain 200 < user 300, so by default the user's fragment wins."""
        return _DEFAULT_RANKS[self]

    @property
    def order(self) -> int:
        """The tie-break between grants of equal rank: public < domain < user."""
        return _SCOPE_ORDER[self]


_DEFAULT_RANKS = {Scope.PUBLIC: 100, Scope.DOMAIN: 200, Scope.USER: 300}
_SCOPE_ORDER = {Scope.PUBLIC: 0, Scope.DOMAIN: 1, Scope.USER: 2}


# -- errors -------------------------------------------------------------------------------


class RankedError(Exception):
    """The base of every error the ranked model raises on purpose."""


class InvalidInputError(RankedError, ValueError):
    """An argument the database would refuse or could never match (a name of 0 or more than
    128 characters, a scope that is not a ``Scope``, an id that is neither a ``uuid.UUID``
    nor its string form, a rank outside INTEGER): raised before any SQL runs, so nothing is
    written."""


class WriteNotAllowedError(RankedError):
    """A fragment names a (config_name, scope) that has no allow-list row (the name is not
    registered, or that scope is not granted). Raised by ``bulk_upsert`` before anything is
    written; ``pairs`` holds every such pair of the call, in input order."""

    def __init__(self, pairs: list[tuple[str, Scope]]) -> None:
        self.pairs = pairs
        listed = ", ".join(f"({name!r}, {scope.value})" for name, scope in pairs)
        super().__init__(f"no allow-list row for {listed}: nothing was written")


class NotFoundError(RankedError, LookupError):
    """What a call addresses does not exist."""


class DefinitionNotFoundError(NotFoundError):
    """No definition has that ``config_name`` (creating a grant for it, purging it)."""


class GrantNotFoundError(NotFoundError):
    """No allow-list row for that (config_name, scope) (a rank update, a grant purge)."""


class AlreadyExistsError(RankedError):
    """What a create call would add exists already."""


class DefinitionExistsError(AlreadyExistsError):
    """A definition with that ``config_name`` exists already."""


class GrantExistsError(AlreadyExistsError):
    """An allow-list row for that (config_name, scope) exists already."""


# -- validation helpers -------------------------------------------------------------------


def check_config_name(name: object) -> str:
    """``name`` if it is a str of 1..128 characters, else InvalidInputError."""
    if not isinstance(name, str):
        raise InvalidInputError(f"config_name must be a str, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_CONFIG_NAME_LENGTH:
        raise InvalidInputError(
            f"config_name must have 1 to {MAX_CONFIG_NAME_LENGTH} characters, not {len(name)}"
        )
    return name


def check_scope(scope: object) -> Scope:
    """``scope`` as a Scope (its value string is accepted too), else InvalidInputError."""
    try:
        return Scope(scope)  # type: ignore[arg-type]
    except ValueError:
        allowed = ", ".join(s.value for s in Scope)
        raise InvalidInputError(f"scope must be one of {allowed}, not {scope!r}") from None


def check_rank(rank: object) -> int:
    """``rank`` if it is an int that fits INTEGER, else InvalidInputError."""
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise InvalidInputError(f"rank must be an int, not {type(rank).__name__}")
    if not MIN_RANK <= rank <= MAX_RANK:
        raise InvalidInputError(f"rank must fit a 32-bit INTEGER, not {rank}")
    return rank


def check_uuid(value: object, what: str) -> uuid.UUID:
    """``value`` as a ``uuid.UUID``: one as it is, or its string form (8-4-4-4-12 hex
    digits, either case) parsed; else InvalidInputError naming ``what``."""
    return as_uuid(value, what, error=InvalidInputError)


def _has_nul(value: Any) -> bool:
    """A NUL character anywhere in a key or string: jsonb refuses it."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


# -- inputs and results -------------------------------------------------------------------


class FragmentUpsert(BaseModel):
    """One fragment to write: the config of ``config_name`` at one scope.

    A public fragment has ``scope_id=None``; a domain or user fragment the domain's or
    user's UUID, as a ``uuid.UUID`` or its string form (8-4-4-4-12 hex digits, either
    case; any other form is a validation error). ``config`` is a JSON object that jsonb
    accepts (no NaN or Infinity, no NUL character); it replaces the stored config whole.
    """

    model_config = ConfigDict(frozen=True)

    scope_type: Scope
    scope_id: uuid.UUID | None
    config_name: str = Field(min_length=1, max_length=MAX_CONFIG_NAME_LENGTH)
    config: dict[str, Any]

    if TYPE_CHECKING:
        # What the constructor takes: the scope id may be a UUID's string form.
        def __init__(
            self,
            *,
            scope_type: Scope,
            scope_id: uuid.UUID | str | None,
            config_name: str,
            config: dict[str, Any],
        ) -> None: ...

    @field_validator("scope_id", mode="before")
    @classmethod
    def _uuid_or_its_text(cls, value: Any) -> Any:
        # pydantic alone would also take braces, "urn:uuid:", 32 bare hex digits, bytes.
        return value if value is None else as_uuid(value, "scope_id")

    @field_validator("config")
    @classmethod
    def _json_object(cls, config: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(config, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as error:
            raise ValueError(f"config is not a JSON object jsonb accepts: {error}") from None
        if _has_nul(config):
            raise ValueError("config holds a NUL character, which jsonb refuses")
        return config

    @model_validator(mode="after")
    def _scope_id_matches_scope_type(self) -> FragmentUpsert:
        if self.scope_type is Scope.PUBLIC and self.scope_id is not None:
            raise ValueError("a public fragment has scope_id None")
        if self.scope_type is not Scope.PUBLIC and self.scope_id is None:
            raise ValueError(f"a {self.scope_type.value} fragment needs a scope_id (a UUID)")
        return self


class AppConfig(BaseModel):
    """One name's merged configuration, as a read returns it."""

    model_config = ConfigDict(frozen=True)

    config_name: str
    config: dict[str, Any]


class Fragment(BaseModel):
    """An ``app_config_fragments`` row, as a write wrote or deleted it. Its ``scope_type``,
    ``scope_id`` and ``config_name`` say which cached merges it touches."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    config_name: str
    scope_type: Scope
    scope_id: uuid.UUID | None
    config: dict[str, Any]


class AllowListEntry(BaseModel):
    """An ``app_config_allow_list`` row: a grant of one scope of one name, and its rank."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    config_name: str
    scope_type: Scope
    rank: int


class Definition(BaseModel):
    """An ``app_config_definitions`` row: a registered name."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    config_name: str


class RankUpdate(BaseModel):
    """What a rank update did: the grant as it is now, and the rank it had before."""

    model_config = ConfigDict(frozen=True)

    entry: AllowListEntry
    old_rank: int

    @property
    def changed(self) -> bool:
        """False when the rank was the one asked for already (then nothing was written)."""
        return self.entry.rank != self.old_rank


class DefinitionPurge(BaseModel):
    """What purging a definition removed: the definition, and what the cascade took with it
    (its grants, and their fragments)."""

    model_config = ConfigDict(frozen=True)

    definition: Definition
    grants: list[AllowListEntry]
    fragments: list[Fragment]
