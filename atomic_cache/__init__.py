"""atomic_cache: a Valkey cache for BEP-1052 app configs, written and invalidated by
atomic Lua scripts."""

from .cache.client import create_valkey_client
from .cache.local import LocalCache
from .cache.scripts import ScriptLoadError, ScriptRegistry
from .cache.source import AllLookup, AppConfigFragmentCacheSource
from .cache.valkey_target import ValkeyClientOptions, valkey_client_options
from .db.source import UnknownPolicyError, UnknownUserError
from .keys import KeySchema
from .metrics import CacheStats, register_prometheus
from .models import (
    AppConfigData,
    AppConfigFragment,
    AppConfigPolicy,
    BulkFailure,
    BulkResult,
    CacheLookup,
    FragmentInput,
    FragmentKey,
    MyFragmentInput,
    ScopeType,
)
from .repository import (
    AppConfigFragmentRepository,
    AppConfigPolicyRepository,
    PolicyExistsError,
    PolicyInUseError,
)
from .resilience.breaker import BreakerState, CircuitBreaker
from .resilience.errors import CACHE_ERRORS, CacheError
from .resilience.logs import suppress_with_log
from .targets import InvalidationTarget
from .validation import ConfigLimits

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
    "UnknownPolicyError",
    "UnknownUserError",
    "ValkeyClientOptions",
    "create_valkey_client",
    "register_prometheus",
    "suppress_with_log",
    "valkey_client_options",
]
