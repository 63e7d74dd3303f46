"""InvalidationTarget: one slice of the cache to invalidate (pure: no I/O).

A scope, its id and optionally some names; validated before any I/O, and turned into the
arguments ``invalidate.lua`` reads. The cache source, the missed-invalidation queue and
the PostgreSQL outbox all speak of these.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeAlias

from .keys import encode_component, user_component
from .models import PUBLIC_SCOPE_ID, ScopeType

# An argument of a script call (the registry turns numbers and booleans into strings).
ScriptArg: TypeAlias = str | bytes | int | float

# The scope words invalidate.lua understands; both domain scopes use the domain's users.
_SCRIPT_SCOPE = {
    ScopeType.USER: "user",
    ScopeType.DOMAIN: "domain",
    ScopeType.DOMAIN_USER_DEFAULTS: "domain",
    ScopeType.PUBLIC: "public",
}


@dataclass(frozen=True, slots=True)
class InvalidationTarget:
    """One slice to invalidate: a scope, its id, and optionally only some names.

    ``names=None`` means every name of the scope; an empty list means nothing.
    """

    scope_type: ScopeType
    scope_id: str
    names: tuple[str, ...] | None = None

    @classmethod
    def of(
        cls,
        scope_type: ScopeType | str,
        scope_id: str | uuid.UUID,
        names: Iterable[str] | None = None,
    ) -> InvalidationTarget:
        """Validate and normalise; raises ValueError before any I/O.

        ``scope_id`` is ``"public"`` for PUBLIC, the domain name for the domain scopes,
        and for USER the user id: a ``uuid.UUID`` or its string form, kept as the
        lower-case string (any other form raises ValueError)."""
        try:
            scope = ScopeType(scope_type)
        except ValueError:
            raise ValueError(f"unknown scope type {scope_type!r}") from None
        if scope is ScopeType.USER:
            scope_id = user_component(scope_id, "a USER scope id")
        elif not isinstance(scope_id, str) or not scope_id:
            raise ValueError(f"{scope.name} scope id must be a non-empty string")
        if scope is ScopeType.PUBLIC and scope_id != PUBLIC_SCOPE_ID:
            raise ValueError(f"PUBLIC scope id must be {PUBLIC_SCOPE_ID!r}, not {scope_id!r}")
        if isinstance(names, str | bytes):
            raise ValueError("names must be a list of names, not a single string")
        normalised = None
        if names is not None:
            normalised = tuple(dict.fromkeys(names))
            for name in normalised:
                encode_component(name, what="name")
        return cls(scope, scope_id, normalised)

    @property
    def script_scope(self) -> str:
        """The scope word of invalidate.lua (and of the announcements): user, domain (both
        domain scopes), public."""
        return _SCRIPT_SCOPE[self.scope_type]

    def script_args(self) -> list[ScriptArg]:
        """The target as ``invalidate.lua`` reads it: scope word, encoded id, the number
        of names (-1 for every name), the encoded names."""
        if self.scope_type is ScopeType.USER:
            script_id = self.scope_id
        elif self.scope_type is ScopeType.PUBLIC:
            script_id = PUBLIC_SCOPE_ID
        else:
            script_id = encode_component(self.scope_id, what="domain")
        if self.names is None:
            return [self.script_scope, script_id, -1]
        encoded = [encode_component(name, what="name") for name in self.names]
        return [self.script_scope, script_id, len(encoded), *encoded]


# The most targets, and argument values, one invalidate.lua call carries. Lua's stack
# holds about 8,000 values, and a call's server time grows with its targets (stamping
# costs a few commands per target): a larger invalidation is split into several calls,
# each atomic, which the caller sends one after another before it returns (see
# ``AppConfigFragmentCacheSource.invalidate_many``). Measured in bench scenario d.
MAX_TARGETS_PER_CALL = 250
MAX_VALUES_PER_CALL = 1_000


def pack_calls(
    targets: Iterable[list[ScriptArg]],
    max_targets: int = MAX_TARGETS_PER_CALL,
    max_values: int = MAX_VALUES_PER_CALL,
) -> list[list[ScriptArg]]:
    """Group targets (``script_args`` lists: scope, id, count, names...) into the argument
    lists of successive calls, none over ``max_targets`` targets or ``max_values`` values;
    a target with more names than fit in one call is split into targets of fewer names."""
    if max_targets < 1 or max_values < 4:
        raise ValueError("a call must carry at least one target of one name")
    calls: list[list[ScriptArg]] = []
    current: list[ScriptArg] = []
    count_in_current = 0

    def add(piece: list[ScriptArg]) -> None:
        nonlocal current, count_in_current
        if current and (count_in_current == max_targets or len(current) + len(piece) > max_values):
            calls.append(current)
            current, count_in_current = [], 0
        current += piece
        count_in_current += 1

    for args in targets:
        scope, scope_id, count = args[0], args[1], int(args[2])
        names = args[3:]
        malformed = count != len(names) if count >= 0 else bool(names)
        if malformed:
            raise ValueError(f"malformed invalidation target: {args[:4]!r}")
        if count < 0 or len(args) <= max_values:
            add(list(args))
            continue
        step = max_values - 3
        for first in range(0, count, step):
            part = names[first : first + step]
            add([scope, scope_id, len(part), *part])
    if current:
        calls.append(current)
    return calls
