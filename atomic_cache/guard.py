"""GuardedCache: the cache as the repositories see it — every call may fall through.

A cache failure never reaches a repository's caller: reads return None (the caller goes
to the database) and a failed post-commit invalidation is logged with exactly the slices
it did not reach. One GuardedCache is shared by every repository of a cache source.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from .cache_source import AppConfigFragmentCacheSource, InvalidationTarget
from .resilience import CACHE_ERRORS

log = logging.getLogger("atomic_cache")

T = TypeVar("T")

_guards: weakref.WeakKeyDictionary[AppConfigFragmentCacheSource, GuardedCache] = (
    weakref.WeakKeyDictionary()
)


def describe(targets: Sequence[InvalidationTarget], drop_catalogue: bool = False) -> str:
    """A log-friendly list of slices: ``USER 1b4e…[webui], DOMAIN default[*]``."""
    parts = [
        f"{t.scope_type.name} {t.scope_id}[{','.join(t.names) if t.names is not None else '*'}]"
        for t in targets
    ]
    if drop_catalogue:
        parts.append("catalogue of names")
    return ", ".join(parts)


def merge_targets(targets: Sequence[InvalidationTarget]) -> list[InvalidationTarget]:
    """One target per (scope, id), with the union of names (None wins: every name)."""
    merged: dict[tuple[str, str], tuple[str, ...] | None] = {}
    for target in targets:
        key = (target.scope_type.value, target.scope_id)
        if key in merged and merged[key] is None:
            continue
        if target.names is None:
            merged[key] = None
        else:
            merged[key] = tuple(dict.fromkeys((*(merged.get(key) or ()), *target.names)))
    return [
        InvalidationTarget.of(scope, scope_id, names) for (scope, scope_id), names in merged.items()
    ]


class GuardedCache:
    """Wraps an optional cache source so that its failures become fall-throughs."""

    def __init__(self, source: AppConfigFragmentCacheSource | None) -> None:
        self.source = source

    @classmethod
    def of(cls, source: AppConfigFragmentCacheSource | None) -> GuardedCache:
        """The guard of a cache source (one per source, shared by its repositories)."""
        if source is None:
            return cls(None)
        guard = _guards.get(source)
        if guard is None:
            guard = _guards[source] = cls(source)
        return guard

    @property
    def enabled(self) -> bool:
        return self.source is not None

    async def call(
        self, what: str, operation: Callable[[AppConfigFragmentCacheSource], Awaitable[T]]
    ) -> T | None:
        """Run one cache operation; None when there is no cache or it failed."""
        if self.source is None:
            return None
        try:
            return await operation(self.source)
        except CACHE_ERRORS as error:
            log.warning("cache %s failed, falling through to the database: %s", what, error)
            return None

    async def invalidate(
        self, targets: Sequence[InvalidationTarget], *, drop_catalogue: bool = False
    ) -> int | None:
        """Invalidate after a commit: entries dropped, or None if it could not be done."""
        if self.source is None:
            return None
        merged = merge_targets(targets)
        if not merged and not drop_catalogue:
            return 0
        try:
            return await self.source.invalidate_many(merged, drop_catalogue=drop_catalogue)
        except CACHE_ERRORS as error:
            log.error(
                "cache invalidation failed after commit; not invalidated: %s (%s)",
                describe(merged, drop_catalogue),
                error,
            )
            return None
