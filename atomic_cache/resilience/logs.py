"""Bounded logging for a busy service: ``suppress_with_log`` and ``LogThrottle``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

log = logging.getLogger("atomic_cache")


@contextmanager
def suppress_with_log(
    exceptions: type[BaseException] | Iterable[type[BaseException]],
    message: str | None = None,
    log_level: int = logging.WARNING,
) -> Iterator[None]:
    """Swallow only ``exceptions`` (one type, or any iterable of them: a tuple, a list as
    Backend.AI's callers pass, a set), logging ``"{message}: {exc}"``; anything else
    propagates. TypeError at once for anything that is not exception types."""
    kinds = (exceptions,) if isinstance(exceptions, type) else tuple(exceptions)
    if not kinds or not all(isinstance(k, type) and issubclass(k, BaseException) for k in kinds):
        raise TypeError(f"suppress_with_log takes exception types, not {exceptions!r}")
    try:
        yield
    except kinds as exc:
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
