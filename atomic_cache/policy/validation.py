"""Per-item validation of bulk writes (pure): each problem is a stable failure code."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..ids import is_uuid_text
from ..models import PUBLIC_SCOPE_ID, ScopeType
from .models import AppConfigPolicy, FragmentKey

# Stable failure codes of BulkResult.failures.
UNKNOWN_POLICY = "unknown_policy"
SCOPE_NOT_ALLOWED = "scope_not_allowed"
INVALID_SCOPE_ID = "invalid_scope_id"
UNKNOWN_USER = "unknown_user"
UNKNOWN_DOMAIN = "unknown_domain"
INVALID_CONFIG = "invalid_config"
CONFIG_TOO_DEEP = "config_too_deep"
CONFIG_TOO_LARGE = "config_too_large"
ALREADY_EXISTS = "already_exists"
NOT_FOUND = "not_found"
DUPLICATE_ITEM = "duplicate_item"

FAILURE_CODES = frozenset(
    {
        UNKNOWN_POLICY, SCOPE_NOT_ALLOWED, INVALID_SCOPE_ID, UNKNOWN_USER, UNKNOWN_DOMAIN,
        INVALID_CONFIG, CONFIG_TOO_DEEP, CONFIG_TOO_LARGE, ALREADY_EXISTS, NOT_FOUND,
        DUPLICATE_ITEM,
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ConfigLimits:
    """Bounds on one fragment's ``extra_config``.

    64 KiB of JSON and 20 levels are far beyond any real UI configuration, and keep one
    merged entry (several fragments) well under the cache's ``max_entry_bytes``.
    """

    max_bytes: int = 64 * 1024
    max_depth: int = 20


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    message: str


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_extra_config(value: Any, limits: ConfigLimits) -> Problem | None:
    """A JSON object within the limits, or the problem with it."""
    if not isinstance(value, dict):
        return Problem(
            INVALID_CONFIG, f"extra_config must be a JSON object, not {type(value).__name__}"
        )
    try:
        # Deep structures would exhaust the recursion of the encoder: check depth first.
        depth = _depth(value)
    except RecursionError:
        depth = math.inf  # type: ignore[assignment]
    if depth > limits.max_depth:
        return Problem(CONFIG_TOO_DEEP, f"extra_config nests deeper than {limits.max_depth} levels")
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        return Problem(INVALID_CONFIG, f"extra_config is not JSON: {error}")
    size = len(encoded.encode())
    if size > limits.max_bytes:
        return Problem(
            CONFIG_TOO_LARGE,
            f"extra_config is {size} bytes of JSON; the limit is {limits.max_bytes}",
        )
    return None


def canonical_scope_id(scope_type: ScopeType, scope_id: str) -> str | Problem:
    """The stored form of a scope id: 'public', the domain name, or for USER the user id
    as a lower-case UUID string (a UUID's string form, in either case: ``ids.py``)."""
    if scope_type is ScopeType.PUBLIC:
        if scope_id != PUBLIC_SCOPE_ID:
            return Problem(
                INVALID_SCOPE_ID, f"a PUBLIC fragment's scope_id must be 'public', not {scope_id!r}"
            )
        return scope_id
    if scope_type is ScopeType.USER:
        if not is_uuid_text(scope_id):
            return Problem(
                INVALID_SCOPE_ID,
                "a USER fragment's scope_id must be a uuid.UUID or its string form"
                f" (8-4-4-4-12 hex digits), not {scope_id!r:.80}",
            )
        return scope_id.lower()
    if not scope_id or len(scope_id) > 64:
        return Problem(
            INVALID_SCOPE_ID, "a domain scope_id must be a domain name of 1-64 characters"
        )
    return scope_id


def check_policy(key: FragmentKey, policies: dict[str, AppConfigPolicy]) -> Problem | None:
    """The name has a policy and the policy allows the scope."""
    policy = policies.get(key.name)
    if policy is None:
        return Problem(UNKNOWN_POLICY, f"no app-config policy named {key.name!r}")
    if key.scope_type not in policy.scope_sources:
        allowed = ", ".join(scope.name for scope in policy.scope_sources) or "none"
        return Problem(
            SCOPE_NOT_ALLOWED,
            f"policy {key.name!r} does not allow {key.scope_type.name} fragments"
            f" (allowed: {allowed})",
        )
    return None
