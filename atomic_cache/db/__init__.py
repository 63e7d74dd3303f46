"""What the database tells the cache, whichever model it holds: the package's own tables
(the outbox, the registry of caches that follow the database), the shared trigger
functions, and the delivery of recorded invalidations (``outbox``, ``listener``)."""

from .schema import cache_prefixes, create_own_tables, invalidation_outbox, metadata

__all__ = ["cache_prefixes", "create_own_tables", "invalidation_outbox", "metadata"]
