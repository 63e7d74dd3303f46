"""SingleFlight: concurrent misses of one key share one database query."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    """Concurrent callers with the same key share one in-flight computation. The caller
    that started it gets its result; every other caller gets a deep copy, so no caller's
    edit of a mutable result (a config dict) shows up in another's."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def run(self, key: Hashable, compute: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = asyncio.ensure_future(compute())
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        # shield: one caller giving up must not cancel the others' shared work.
        result: T = await asyncio.shield(flight)
        return copy.deepcopy(result) if joined else result

    def _landed(self, key: Hashable, flight: asyncio.Future[Any]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # retrieved here, so an unawaited failure is never reported
