"""Missed invalidations: what a post-commit invalidation could not reach, kept until a
replay lands (pure: no I/O).

The queue is bounded; past its bound it collapses into "drop every entry", which covers
whatever it held. ``PendingInvalidations.covers`` tells which cached values a pending
target would drop, so that they are not served meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..models import PUBLIC_SCOPE_ID, AppConfigData, ScopeType
from ..targets import InvalidationTarget

log = logging.getLogger("atomic_cache")


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


# Targets kept before the queue collapses: a bulk write of a few thousand users missed in
# an outage is replayed as it was, not as "drop everything". ``covers`` looks targets up
# by scope and id, so a long queue costs a read no more than a short one.
DEFAULT_MAX_PENDING = 10_000
_EVERYTHING = InvalidationTarget.of(ScopeType.PUBLIC, "public")


class PendingInvalidations:
    """Invalidations that failed after their commit, waiting to be replayed.

    An entry leaves the queue only once a replay that carried it has succeeded, so a
    reader never sees an empty queue while a replay is still in flight. Bounded: past
    ``max_targets`` the queue collapses into "drop every entry", which covers anything
    it held.
    """

    def __init__(self, max_targets: int = DEFAULT_MAX_PENDING) -> None:
        self.max_targets = max_targets
        self.targets: list[InvalidationTarget] = []
        self.drop_catalogue = False
        self._version = 0  # bumped on every change: a replay clears only what it sent
        # How many times a replay cleared what was pending: a read that was out meanwhile
        # may carry a value that was read before that replay landed (``GuardedCache.read``).
        self.clears = 0
        # The targets by what a value is matched on: (scope word, id) -> names (None: all).
        self._by_slice: dict[tuple[str, str], frozenset[str] | None] = {}

    def __bool__(self) -> bool:
        return bool(self.targets) or self.drop_catalogue

    def __len__(self) -> int:
        """Slices waiting: one per target, plus the catalogue of names."""
        return len(self.targets) + self.drop_catalogue

    def add(self, targets: Sequence[InvalidationTarget], drop_catalogue: bool) -> None:
        self._version += 1
        self.targets = merge_targets([*self.targets, *targets])
        self.drop_catalogue = self.drop_catalogue or drop_catalogue
        if len(self.targets) > self.max_targets:
            log.error(
                "more than %d invalidations pending: every cached entry will be dropped",
                self.max_targets,
            )
            self.targets = [_EVERYTHING]
            self.drop_catalogue = True
        self._index()

    def _index(self) -> None:
        self._by_slice = {}
        for target in self.targets:
            key = (target.script_scope, target.scope_id)
            names = None if target.names is None else frozenset(target.names)
            if key in self._by_slice:  # DOMAIN and DOMAIN_USER_DEFAULTS of one domain
                held = self._by_slice[key]
                names = None if held is None or names is None else held | names
            self._by_slice[key] = names

    def snapshot(self) -> tuple[list[InvalidationTarget], bool, int]:
        return list(self.targets), self.drop_catalogue, self._version

    def replayed(self, version: int) -> None:
        """A replay of the snapshot taken at ``version`` succeeded."""
        if version == self._version:
            self.targets, self.drop_catalogue = [], False
            self._version += 1
            self._by_slice = {}
            self.clears += 1

    def covers(self, value: AppConfigData) -> bool:
        """Whether a pending target would drop ``value``: its user's names, its domain's
        (the domain it was filled under), or everyone's."""
        if not self._by_slice:
            return False
        for key in (
            ("user", str(value.user_id)),
            ("domain", value.domain_name),
            ("public", PUBLIC_SCOPE_ID),
        ):
            if key in self._by_slice:
                names = self._by_slice[key]
                if names is None or value.name in names:
                    return True
        return False
