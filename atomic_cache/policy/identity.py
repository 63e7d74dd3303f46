"""Domains and users: the identities BEP-1052 fragments belong to.

A service normally owns the ``domains`` and ``users`` tables and writes them itself. These
helpers add a row when it is missing, for a service that keeps its identities elsewhere,
for examples and for tests. They never change a row that exists: a user who moves to
another domain is an UPDATE of ``users.domain_name`` that the service makes, followed by
an invalidation of that user's cache entries (an entry remembers the domain it was filled
under, so invalidations of the new domain would not reach it):
``await cache.invalidate_for_scope(ScopeType.USER, str(user_id))``.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..ids import as_uuid
from .schema import domains, users

MAX_DOMAIN_NAME_LENGTH = 64  # domains.name is VARCHAR(64)


class UnknownDomainError(LookupError):
    """The domain does not exist: create it first (``ensure_domain``)."""


class UserDomainMismatchError(ValueError):
    """The user exists already, in another domain; ``ensure_user`` never moves a user."""


def _checked_domain(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_DOMAIN_NAME_LENGTH:
        raise ValueError(f"a domain name must have 1-{MAX_DOMAIN_NAME_LENGTH} characters")
    return name


async def ensure_domain(engine: AsyncEngine, name: str) -> bool:
    """Add the domain unless it exists; True if this call added it. Idempotent.

    Raises ValueError, before any I/O, for a name that is not a str of 1-64 characters.
    """
    statement = (
        insert(domains)
        .values(name=_checked_domain(name))
        .on_conflict_do_nothing(index_elements=[domains.c.name])
        .returning(domains.c.name)
    )
    async with engine.begin() as conn:
        return (await conn.execute(statement)).first() is not None


async def ensure_user(engine: AsyncEngine, user_id: uuid.UUID | str, domain_name: str) -> bool:
    """Add the user to the domain unless the user exists; True if this call added it.

    ``user_id`` is a ``uuid.UUID`` or its string form (8-4-4-4-12 hex digits, either
    case), as everywhere in this package. Idempotent for the same domain. Raises
    ``UserDomainMismatchError`` if the user is in another domain (moving a user is the
    service's UPDATE plus a cache invalidation, see the module's docstring), and
    ``UnknownDomainError`` if the domain does not exist; ValueError, before any I/O, for a
    user id in any other form or a bad domain name.
    """
    user_id = as_uuid(user_id, "user_id")
    _checked_domain(domain_name)
    async with engine.begin() as conn:
        while True:
            if await _insert_user(conn, user_id, domain_name):
                return True
            current = await conn.scalar(select(users.c.domain_name).where(users.c.uuid == user_id))
            if current is None:
                continue  # deleted between the two statements: the insert may now land
            if current != domain_name:
                raise UserDomainMismatchError(
                    f"user {user_id} is in domain {current!r}, not {domain_name!r};"
                    " moving a user is an UPDATE of users.domain_name followed by an"
                    " invalidation of the user's cache entries"
                )
            return False


async def _insert_user(conn: AsyncConnection, user_id: uuid.UUID, domain_name: str) -> bool:
    statement = (
        insert(users)
        .values(uuid=user_id, domain_name=domain_name)
        .on_conflict_do_nothing(index_elements=[users.c.uuid])
        .returning(users.c.uuid)
    )
    try:
        return (await conn.execute(statement)).first() is not None
    except IntegrityError:
        # The only constraint ON CONFLICT DO NOTHING leaves to fail: the domain's key.
        raise UnknownDomainError(
            f"no domain {domain_name!r}: add it first (ensure_domain)"
        ) from None
