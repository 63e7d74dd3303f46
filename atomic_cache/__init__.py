"""atomic_cache: a Valkey cache for BEP-1052 app configs, written and invalidated by
atomic Lua scripts.

The top level is the core (cache source, local cache, client, keys, counters) and the
policy model (``atomic_cache.policy``); the ranked model is ``atomic_cache.ranked``."""

from .cache.client import create_valkey_client, quiet_glide_logs
from .cache.local import LocalCache
from .cache.scripts import ScriptLoadError, ScriptRegistry
from .cache.source import AllLookup, AppConfigFragmentCacheSource
from .cache.valkey_target import ValkeyClientOptions, valkey_client_options
from .keys import KeySchema
from .metrics import CacheStats, register_prometheus
from .models import AppConfigData, AppConfigFragment, CacheLookup, ScopeType
from .policy import (
    AppConfigFragmentRepository,
    AppConfigPolicy,
    AppConfigPolicyRepository,
    BulkFailure,
    BulkResult,
    ConfigLimits,
    FragmentInput,
    FragmentKey,
    MyFragmentInput,
    PolicyExistsError,
    PolicyInUseError,
    UnknownDomainError,
    UnknownPolicyError,
    UnknownUserError,
    UserDomainMismatchError,
    create_schema,
    ensure_domain,
    ensure_user,
)
from .resilience.breaker import BreakerState, CircuitBreaker
from .resilience.errors import CACHE_ERRORS, CacheError
from .resilience.logs import suppress_with_log
from .targets import InvalidationTarget

__all__ = [
    "CACHE_ERRORS",
    "AllLookup",
    "AppConfigData",
    "AppConfigFragment",
    "AppConfigFragmentCacheSource",
    "AppConfigFragmentRepository",
    "AppConfigPolicy",
    "AppConfigPolicyRepository",
    "BreakerState",
    "BulkFailure",
    "BulkResult",
    "CacheError",
    "CacheLookup",
    "CacheStats",
    "CircuitBreaker",
    "ConfigLimits",
    "FragmentInput",
    "FragmentKey",
    "InvalidationTarget",
    "KeySchema",
    "LocalCache",
    "MyFragmentInput",
    "PolicyExistsError",
    "PolicyInUseError",
    "ScopeType",
    "ScriptLoadError",
    "ScriptRegistry",
    "UnknownDomainError",
    "UnknownPolicyError",
    "UnknownUserError",
    "UserDomainMismatchError",
    "ValkeyClientOptions",
    "create_schema",
    "create_valkey_client",
    "ensure_domain",
    "ensure_user",
    "quiet_glide_logs",
    "register_prometheus",
    "suppress_with_log",
    "valkey_client_options",
]
