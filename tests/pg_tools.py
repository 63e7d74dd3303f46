"""A PostgreSQL database of a test module's own, on the suite's server."""

from atomic_cache.tools.databases import ranked_database

__all__ = ["ranked_database"]
