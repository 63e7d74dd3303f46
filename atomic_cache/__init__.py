"""atomic_cache: a Valkey cache for BEP-1052 app configs, written and invalidated by
atomic Lua scripts."""

from .cache_source import AppConfigFragmentCacheSource, InvalidationTarget
from .client import create_valkey_client
from .keys import KeySchema
from .models import (
    AppConfigData,
    AppConfigFragment,
    AppConfigPolicy,
    CacheLookup,
    ScopeType,
)
from .resilience import CACHE_ERRORS, CacheError, suppress_with_log
from .scripts import ScriptLoadError, ScriptRegistry

__all__ = [
    "CACHE_ERRORS",
    "AppConfigData",
    "AppConfigFragment",
    "AppConfigFragmentCacheSource",
    "AppConfigPolicy",
    "CacheError",
    "CacheLookup",
    "InvalidationTarget",
    "KeySchema",
    "ScopeType",
    "ScriptLoadError",
    "ScriptRegistry",
    "create_valkey_client",
    "suppress_with_log",
]
