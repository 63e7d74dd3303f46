"""ChangeListener: one LISTEN connection per engine and process, which wakes the outbox
replayers the moment a write that the triggers recorded commits.

PostgreSQL delivers a NOTIFY when the notifying transaction commits, to every session
listening on the channel; the triggers (``fan_out.sql``) notify
``app_config_invalidations`` with every outbox row they record. The listener holds its own
asyncpg connection (not one of the engine's pool), checks it (a closed socket at once, a
silent one by a ``SELECT 1`` every ``probe_every_s``), and reconnects with back-off when
it is lost; after a reconnect it wakes every replayer, since notifications sent meanwhile
were lost. The replayers poll as well, so a lost notification delays a replay by at most
one poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from ..resilience.logs import LogThrottle

log = logging.getLogger("atomic_cache")

CHANNEL = "app_config_invalidations"
PROBE_EVERY_S = 5.0
RECONNECT_AFTER_S = (0.05, 0.2, 1.0, 2.0)  # then every 2 s

_LISTENERS: weakref.WeakKeyDictionary[AsyncEngine, ChangeListener] = weakref.WeakKeyDictionary()


def asyncpg_dsn(url: URL) -> str:
    """The engine's URL as asyncpg takes it (``postgresql://``, query kept)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    """Calls every subscriber's ``wake`` on each notification, and after a reconnect."""

    def __init__(self, dsn: str, *, probe_every_s: float = PROBE_EVERY_S) -> None:
        self._dsn = dsn
        self.probe_every_s = probe_every_s
        self._subscribers: set[Callable[[], None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._log_throttle = LogThrottle()
        self.connects = 0  # successful (re)connections, for tests and metrics
        self.notifications = 0

    @classmethod
    def of(cls, engine: AsyncEngine) -> ChangeListener:
        """The listener of an engine in this process (one LISTEN connection per engine)."""
        listener = _LISTENERS.get(engine)
        if listener is None:
            listener = _LISTENERS[engine] = cls(asyncpg_dsn(engine.url))
        return listener

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection, while connected."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return None
        return int(connection.get_server_pid())

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._subscribers.add(wake)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    def unsubscribe(self, wake: Callable[[], None]) -> None:
        self._subscribers.discard(wake)
        if not self._subscribers and self._task is not None:
            self._task.cancel()
            self._task = None

    def _wake_all(self) -> None:
        for wake in list(self._subscribers):
            wake()

    def _notified(self, *args: object) -> None:
        self.notifications += 1
        self._wake_all()

    def _terminated(self, *args: object) -> None:
        self._lost.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database is down or the connection broke
                if self._log_throttle.due(type(error).__name__) is not None:
                    log.warning("the change listener lost PostgreSQL, reconnecting: %s", error)
            finally:
                await self._close()
            self._wake_all()  # notifications sent while it was away are lost: poll now
            await asyncio.sleep(RECONNECT_AFTER_S[min(failures, len(RECONNECT_AFTER_S) - 1)])
            failures += 1

    async def _listen(self) -> None:
        """Connect, LISTEN, and return once the connection is lost."""
        self._lost.clear()
        connection = await asyncpg.connect(self._dsn, timeout=5)
        self._connection = connection
        connection.add_termination_listener(self._terminated)
        await connection.add_listener(CHANNEL, self._notified)
        self.connects += 1
        self._wake_all()  # anything committed before the LISTEN is picked up by a poll now
        while not connection.is_closed():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.probe_every_s)
            if self._lost.is_set() or connection.is_closed():
                return
            await connection.fetchval("SELECT 1", timeout=self.probe_every_s)

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await connection.close(timeout=1)
