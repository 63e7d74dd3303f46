"""Pydantic models at the package's edges: scopes, fragments, policies, merged configs."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

PUBLIC_SCOPE_ID = "public"

T = TypeVar("T")


class ScopeType(StrEnum):
    """Where a fragment applies. Values match the strings stored in PostgreSQL."""

    PUBLIC = "public"
    DOMAIN = "domain"
    DOMAIN_USER_DEFAULTS = "domain_user_defaults"
    USER = "user"


# The scopes whose scope_id is a domain name: they apply to that domain's members.
DOMAIN_SCOPES = frozenset({ScopeType.DOMAIN, ScopeType.DOMAIN_USER_DEFAULTS})


class AppConfigFragment(BaseModel):
    """One stored fragment of configuration for one scope and name."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID | None = None
    scope_type: ScopeType
    scope_id: str
    name: str
    extra_config: dict[str, Any]
    created_at: datetime | None = None
    updated_at: datetime | None = None


class AppConfigPolicy(BaseModel):
    """Which scopes may hold fragments for a name; the order is the merge order."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID | None = None
    config_name: str
    scope_sources: list[ScopeType]


class AppConfigData(BaseModel):
    """The merged configuration of one user for one name: what the cache stores."""

    model_config = ConfigDict(frozen=True)

    user_id: uuid.UUID
    domain_name: str
    name: str
    fragments: list[AppConfigFragment] = Field(default_factory=list)
    config: dict[str, Any] | None = None


class CacheLookup(BaseModel):
    """A cache read: the value on a hit, or a fill token on a miss.

    Pass ``fill_token`` back to ``set_merged_config``: the write is refused if an
    invalidation ran in between, so a fill never brings back a value older than it.
    """

    model_config = ConfigDict(frozen=True)

    value: AppConfigData | None = None
    fill_token: str | None = None

    @property
    def hit(self) -> bool:
        return self.value is not None


# -- bulk write inputs and results --------------------------------------------------------


class MyFragmentInput(BaseModel):
    """A USER fragment of the caller, for ``bulk_create_my`` / ``bulk_update_my``.

    ``extra_config`` is validated per item by the repository (a failure, not an exception).
    """

    name: str
    extra_config: Any


class FragmentKey(BaseModel):
    """Addresses one fragment: scope, scope id and name."""

    model_config = ConfigDict(frozen=True)

    scope_type: ScopeType
    scope_id: str
    name: str


class FragmentInput(FragmentKey):
    """A fragment of any scope, for the admin create and update paths."""

    extra_config: Any


class BulkFailure(BaseModel):
    """Why one item of a bulk call was not applied."""

    model_config = ConfigDict(frozen=True)

    index: int
    code: str
    message: str


class BulkResult(BaseModel, Generic[T]):
    """Per-item outcome of a bulk call: what was applied and what was not."""

    successes: list[T] = Field(default_factory=list)
    failures: list[BulkFailure] = Field(default_factory=list)
