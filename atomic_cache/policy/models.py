"""The policy model's pydantic models: policies, and the inputs and results of its bulk
writes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..ids import is_uuid_text
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
    """Addresses one fragment: scope, scope id and name.

    ``scope_id`` is ``"public"`` for PUBLIC, the domain name for DOMAIN and
    DOMAIN_USER_DEFAULTS, and for USER the user id: a ``uuid.UUID`` or its string form
    (8-4-4-4-12 hex digits, either case), kept as the lower-case string. Another string
    as a USER scope id is accepted here and reported by the repository as that item's
    ``invalid_scope_id`` failure; a USER scope id that is no string or UUID (bytes, an
    int...), or a ``uuid.UUID`` for another scope, is a validation error.
    """

    model_config = ConfigDict(frozen=True)

    scope_type: ScopeType
    scope_id: str
    name: str

    if TYPE_CHECKING:
        # What the constructor takes: a USER scope id may be a uuid.UUID (stored as str).
        def __init__(
            self, *, scope_type: ScopeType, scope_id: str | uuid.UUID, name: str
        ) -> None: ...

    @field_validator("scope_id", mode="before")
    @classmethod
    def _user_id_as_text(cls, value: Any, info: ValidationInfo) -> Any:
        if info.data.get("scope_type") is ScopeType.USER:
            if isinstance(value, uuid.UUID):
                return str(value)
            if isinstance(value, str):
                # Any other string is the repository's to refuse, as one item's failure.
                return value.lower() if is_uuid_text(value) else value
            raise ValueError(
                "a USER scope_id must be a uuid.UUID or its string form (8-4-4-4-12 hex"
                f" digits), not {type(value).__name__}"
            )
        if isinstance(value, uuid.UUID):
            raise ValueError(
                "scope_id may be a uuid.UUID only for USER scope; a domain scope's id is"
                " the domain name, PUBLIC's is 'public'"
            )
        return value


class FragmentInput(FragmentKey):
    """A fragment of any scope, for the admin create and update paths (``scope_id`` as
    in ``FragmentKey``). ``extra_config`` is validated per item by the repository."""

    extra_config: Any

    if TYPE_CHECKING:

        def __init__(
            self,
            *,
            scope_type: ScopeType,
            scope_id: str | uuid.UUID,
            name: str,
            extra_config: Any,
        ) -> None: ...


class BulkFailure(BaseModel):
    """Why one item of a bulk call was not applied: its ``index`` in the call's items, a
    stable ``code`` (``unknown_policy``, ``scope_not_allowed``, ``invalid_scope_id``,
    ``unknown_user``, ``unknown_domain``, ``invalid_config``, ``config_too_deep``,
    ``config_too_large``, ``already_exists``, ``not_found``, ``duplicate_item``) and a
    message for people."""

    model_config = ConfigDict(frozen=True)

    index: int
    code: str
    message: str


class BulkResult(BaseModel, Generic[T]):
    """Per-item outcome of a bulk call: what was applied and what was not."""

    successes: list[T] = Field(default_factory=list)
    failures: list[BulkFailure] = Field(default_factory=list)
