"""The PostgreSQL side: BEP-1052 tables and the SQL of the merged view and bulk writes."""

from .identity import (
    UnknownDomainError,
    UserDomainMismatchError,
    ensure_domain,
    ensure_user,
)
from .schema import (
    app_config_fragments,
    app_config_policies,
    cache_prefixes,
    create_schema,
    domains,
    invalidation_outbox,
    metadata,
    users,
)

__all__ = [
    "UnknownDomainError",
    "UserDomainMismatchError",
    "app_config_fragments",
    "app_config_policies",
    "cache_prefixes",
    "create_schema",
    "domains",
    "ensure_domain",
    "ensure_user",
    "invalidation_outbox",
    "metadata",
    "users",
]
