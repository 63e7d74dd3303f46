"""The policy model (BEP-1052's first draft): policies with ``scope_sources``, domains by
name, a users table; its schema, SQL, identity helpers and repositories, beside the core.

The package's top level re-exports what a service uses (``atomic_cache.create_schema``,
``AppConfigFragmentRepository``...); this package is where each lives.
"""

from .db_source import UnknownPolicyError, UnknownUserError
from .identity import UnknownDomainError, UserDomainMismatchError, ensure_domain, ensure_user
from .models import (
    AppConfigPolicy,
    BulkFailure,
    BulkResult,
    FragmentInput,
    FragmentKey,
    MyFragmentInput,
)
from .repository import (
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    PolicyExistsError,
    PolicyInUseError,
)
from .schema import app_config_fragments, app_config_policies, create_schema, domains, users
from .validation import ConfigLimits

__all__ = [
    "AppConfigFragmentRepository",
    "AppConfigPolicy",
    "AppConfigPolicyRepository",
    "BulkFailure",
    "BulkResult",
    "ConfigLimits",
    "FragmentInput",
    "FragmentKey",
    "MyFragmentInput",
    "PolicyExistsError",
    "PolicyInUseError",
    "UnknownDomainError",
    "UnknownPolicyError",
    "UnknownUserError",
    "UserDomainMismatchError",
    "app_config_fragments",
    "app_config_policies",
    "create_schema",
    "domains",
    "ensure_domain",
    "ensure_user",
    "users",
]
