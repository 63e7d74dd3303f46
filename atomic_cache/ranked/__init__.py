"""The ranked model: BEP-1052 as Backend.AI's main branch runs it (definitions, an
allow-list with a rank per name and scope, fragments with UUID scope ids), on upstream's
own tables. Uses the core (merge, the outbox tables); the core never imports it."""

from .db_source import RankedDBSource
from .models import (
    AllowListEntry,
    AlreadyExistsError,
    AppConfig,
    Definition,
    DefinitionExistsError,
    DefinitionNotFoundError,
    DefinitionPurge,
    Fragment,
    FragmentUpsert,
    GrantExistsError,
    GrantNotFoundError,
    InvalidInputError,
    NotFoundError,
    RankedError,
    RankUpdate,
    Scope,
    WriteNotAllowedError,
)
from .schema import SchemaError, create_schema

__all__ = [
    "AllowListEntry",
    "AlreadyExistsError",
    "AppConfig",
    "Definition",
    "DefinitionExistsError",
    "DefinitionNotFoundError",
    "DefinitionPurge",
    "Fragment",
    "FragmentUpsert",
    "GrantExistsError",
    "GrantNotFoundError",
    "InvalidInputError",
    "NotFoundError",
    "RankUpdate",
    "RankedDBSource",
    "RankedError",
    "SchemaError",
    "Scope",
    "WriteNotAllowedError",
    "create_schema",
]
