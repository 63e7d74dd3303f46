"""User ids (and the ranked model's other ids): one rule at every public entry point.

An id is accepted as a ``uuid.UUID`` or as its string form, the 36 characters
``str(uuid)`` gives (8-4-4-4-12 hex digits, in either case), and normalised to the
``uuid.UUID`` at once; keys, SQL and cached values only ever see that. Anything else (an
int, bytes, a string in another form such as braces, ``urn:uuid:`` or 32 bare hex digits,
a string that is no UUID) raises ``ValueError`` naming the argument, before any I/O.

Pure code, no I/O.
"""

from __future__ import annotations

import re
import uuid

# str(uuid.UUID(...)), in either case: nothing else (uuid.UUID() itself also takes braces,
# "urn:uuid:", hyphens anywhere, and whatever int(text, 16) takes: "+", "_", "0x").
_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_uuid_text(value: str) -> bool:
    """Whether ``value`` is the string form of a UUID, as the rule accepts it."""
    return _UUID_TEXT.fullmatch(value) is not None


def as_uuid(
    value: object, what: str = "user_id", *, error: type[ValueError] = ValueError
) -> uuid.UUID:
    """``value`` as a ``uuid.UUID``: a ``uuid.UUID`` as it is, its string form parsed.

    Raises ``error`` (a ``ValueError``) naming ``what`` for anything else.
    """
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and _UUID_TEXT.fullmatch(value):
        return uuid.UUID(value)
    raise error(
        f"{what} must be a uuid.UUID or its string form (8-4-4-4-12 hex digits), not {value!r:.80}"
    )
