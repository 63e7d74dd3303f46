"""Pydantic models of the core: scopes, fragments and the merged configs the cache holds."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

PUBLIC_SCOPE_ID = "public"


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
        """Whether the lookup found a value (then there is no fill token)."""
        return self.value is not None
