"""The ranked model: BEP-1052 as Backend.AI's main branch runs it (definitions, an
allow-list with a rank per name and scope, fragments with UUID scope ids), on upstream's
own tables. Uses the core (merge, the outbox, the cache and its guard); the core never
imports it."""

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
from .repository import (
    ANONYMOUS_DOMAIN,
    ANONYMOUS_USER,
    AllowListRepository,
    AppConfigRepository,
    DefinitionRepository,
)
from .schema import SchemaError, create_schema

__all__ = [
    "ANONYMOUS_DOMAIN",
    "ANONYMOUS_USER",
    "AllowListEntry",
    "AllowListRepository",
    "AlreadyExistsError",
    "AppConfig",
    "AppConfigRepository",
    "Definition",
    "DefinitionExistsError",
    "DefinitionNotFoundError",
    "DefinitionPurge",
    "DefinitionRepository",
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
