"""The policy model's pydantic models: policies, and the inputs and results of its bulk
writes."""

from __future__ import annotations

import uuid
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..models import ScopeType

T = TypeVar("T")


class AppConfigPolicy(BaseModel):
    """Which scopes may hold fragments for a name; the order is the merge order."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID | None = None
    config_name: str
    scope_sources: list[ScopeType]


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
