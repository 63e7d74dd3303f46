"""Bounded logging for a busy service: ``suppress_with_log`` and ``LogThrottle``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger("atomic_cache")


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


class LogThrottle:
    """Lets a repeated message through at most once per ``interval_s`` per key."""

    def __init__(
        self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """None: stay quiet. Otherwise log now; the number is how many were held back."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)
