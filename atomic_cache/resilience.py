"""suppress_with_log and the error types that mean "the cache is unavailable"."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from glide import ClosingError, GlideError

log = logging.getLogger("atomic_cache")


class CacheError(Exception):
    """The cache source could not serve a call (bad reply shape, oversized value...)."""


# Everything a cache call can raise when Valkey is down, slow, full or confused. glide's
# ConnectionError and TimeoutError derive from its RequestError, itself a GlideError.
CACHE_ERRORS: tuple[type[BaseException], ...] = (GlideError, ClosingError, CacheError)


@contextmanager
def suppress_with_log(
    exceptions: type[BaseException] | tuple[type[BaseException], ...],
    message: str | None = None,
    log_level: int = logging.WARNING,
) -> Iterator[None]:
    """Swallow only ``exceptions``, logging ``"{message}: {exc}"``; anything else propagates."""
    try:
        yield
    except exceptions as exc:
        log.log(log_level, "%s: %s", message or type(exc).__name__, exc)
