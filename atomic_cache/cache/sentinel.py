"""SentinelClient: a glide client that follows the primary the Sentinels name.

glide has no Sentinel support, so this does what Backend.AI does for its own clients:
ask the Sentinels for the primary (``SENTINEL GET-MASTER-ADDR-BY-NAME``), check that the
node named is one (``ROLE``), talk to it through a plain ``GlideClient``, and swap that
client for a new one when the Sentinels promote another node.

A failover needs no call from the application. After the primary dies, glide's calls to
it fail or time out and the repositories' breaker stops calling, so errors alone would
find the new primary late or never: a task listens for the Sentinels' ``+switch-master``
(one connection, to the first Sentinel that answers) and asks them anyway every
``poll_s``, and a call answered ``READONLY`` (a demoted node) asks at once.

Before the new client is used, the hooks of whoever holds this client run against it
(``on_failover``; the calls a hook makes through this client go to the new node): the
cache source loads its scripts there and compares the node's invalidation sequence with
the highest it knows (lower: the failover lost acknowledged invalidations, and it starts
a new life of the index before any read reaches the node); the repositories replay
every invalidation their outbox holds (writes whose invalidation failed while there was
no primary); a local cache empties itself and resynchronises on the new node. Only then
does the swap
happen; the old client is closed, and a call that was waiting on it goes once to the new
primary instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any

from glide import ConnectionError as GlideConnectionError
from glide import GlideClient, GlideError

from ..resilience.errors import cause_of
from ..resilience.logs import LogThrottle
from .replicas import replicas_in_role
from .resp import RespConnection, RespError, RespReply

log = logging.getLogger(__name__)

DEFAULT_SENTINEL_PORT = 26379
DEFAULT_POLL_S = 1.0
# After a discovery or a switch that failed (no Sentinel answered, the named node not yet
# a primary, a hook that could not reach it), the next try comes this soon.
RETRY_S = 0.1
Address = tuple[str, int]
FailoverHook = Callable[[GlideClient], Awaitable[None]]
# While the hooks run, the new primary's client: their calls through the SentinelClient
# go there (the swap has not happened yet for anyone else).
_switching_to: ContextVar[GlideClient | None] = ContextVar("switching_to", default=None)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _promotable(replica: object) -> bool:
    """Whether one entry of ``SENTINEL REPLICAS`` (a flat list of names and values) is a
    replica the Sentinels may promote."""
    if not isinstance(replica, list):
        return False
    fields = {_text(k): _text(v) for k, v in zip(replica[::2], replica[1::2], strict=False)}
    flags = set(fields.get("flags", "").split(","))
    return not flags & {"s_down", "o_down", "disconnected"} and fields.get("slave-priority") != "0"


class Sentinels:
    """The Sentinels of one service: where its primary is, and when it moves."""

    def __init__(
        self,
        addresses: Sequence[Address],
        service: str,
        *,
        password: str | None = None,
        username: str | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        if not addresses:
            raise ValueError("no Sentinel address given")
        if not service:
            raise ValueError("sentinel_service must name the monitored primary")
        self.addresses = list(addresses)
        self.service = service
        self._password = password
        self._username = username
        self.timeout_s = timeout_s

    async def _connect(self, address: Address) -> RespConnection:
        connection = await RespConnection.open(*address, self.timeout_s)
        if self._password is not None:
            auth = ["AUTH", self._password]
            if self._username:
                auth.insert(1, self._username)
            try:
                await asyncio.wait_for(connection.command(*auth), self.timeout_s)
            except RespError as error:
                # The data node's password was passed on to Sentinels that have none.
                if "without any password configured" not in str(error):
                    await connection.close()
                    raise
            except BaseException:
                await connection.close()
                raise
        return connection

    async def _ask(self, what: str, *command: str) -> tuple[Address, RespReply]:
        """``command`` to the Sentinels in order; the first answer (and who gave it).
        ``ConnectionError`` naming each Sentinel's failure if none answers."""
        failures = []
        for address in list(self.addresses):
            try:
                connection = await self._connect(address)
                try:
                    reply = await asyncio.wait_for(connection.command(*command), self.timeout_s)
                finally:
                    await connection.close()
            except (OSError, TimeoutError, RespError, ConnectionError) as error:
                failures.append(f"{address[0]}:{address[1]}: {error or type(error).__name__}")
                continue
            if reply is None:  # this Sentinel does not monitor the service
                failures.append(f"{address[0]}:{address[1]}: does not monitor {self.service!r}")
                continue
            return address, reply
        raise ConnectionError(f"no Sentinel {what} of {self.service!r}: " + "; ".join(failures))

    async def primary(self) -> Address:
        """The primary's address, from the first Sentinel that knows it (which is asked
        first next time). ``ConnectionError`` naming each Sentinel's answer if none does."""
        address, reply = await self._ask(
            "named the primary", "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service
        )
        if not isinstance(reply, list) or len(reply) != 2:
            raise ConnectionError(f"{address[0]}:{address[1]} answered {reply!r:.80}")
        self.addresses.remove(address)
        self.addresses.insert(0, address)
        return _text(reply[0]), int(_text(reply[1]))

    async def promotable_replicas(self) -> int:
        """How many replicas the first Sentinel that answers could promote: those it
        sees up (not ``s_down``, ``o_down`` or ``disconnected``) with a priority other
        than 0. A replica cut off from the primary counts: it may still be promoted."""
        _, reply = await self._ask("listed the replicas", "SENTINEL", "REPLICAS", self.service)
        replicas = reply if isinstance(reply, list) else []
        return sum(1 for replica in replicas if _promotable(replica))

    async def listen(self, on_switch: Callable[[], None]) -> None:
        """Call ``on_switch`` whenever a Sentinel announces that this service's primary
        moved, and each time a subscription (re)starts (a move may have been missed
        meanwhile). Runs until cancelled; a lost Sentinel is replaced by the next."""
        while True:
            for address in list(self.addresses):
                try:
                    connection = await self._connect(address)
                except (OSError, TimeoutError, RespError, ConnectionError):
                    continue
                try:
                    await asyncio.wait_for(
                        connection.command("SUBSCRIBE", "+switch-master"), self.timeout_s
                    )
                    on_switch()
                    while True:
                        message = await connection.read()
                        if (
                            isinstance(message, list)
                            and len(message) == 3
                            and _text(message[2]).split(" ", 1)[0] == self.service
                        ):
                            on_switch()
                except (OSError, TimeoutError, RespError, ConnectionError, ValueError):
                    pass  # that Sentinel is gone: listen to the next
                finally:
                    await connection.close()
            await asyncio.sleep(DEFAULT_POLL_S)


class SentinelClient:
    """Stands for the ``GlideClient`` of the service's current primary.

    ``custom_command`` (all the cache sends) goes to the current primary; any other
    ``GlideClient`` method is passed on to it as well. ``failovers`` counts the switches
    followed; ``primary`` is where the calls go now (None until one is known).
    """

    def __init__(
        self,
        sentinels: Sentinels,
        connect: Callable[[str, int], Awaitable[GlideClient]],
        *,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        if poll_s <= 0:
            raise ValueError("poll_s must be positive")
        self.sentinels = sentinels
        self._connect = connect
        self.poll_s = poll_s
        self._current: GlideClient | None = None
        self.primary: Address | None = None
        self.failovers = 0
        self._hooks: list[FailoverHook] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._log_throttle = LogThrottle()

    @classmethod
    async def create(
        cls,
        sentinels: Sentinels,
        connect: Callable[[str, int], Awaitable[GlideClient]],
        *,
        poll_s: float = DEFAULT_POLL_S,
    ) -> SentinelClient:
        """Ask the Sentinels once, then follow them. Returns even when none answers
        (calls fail as against a dead server until one does): a dead Sentinel must not
        block a service's start-up, as a dead Valkey does not."""
        client = cls(sentinels, connect, poll_s=poll_s)
        await client.follow_now()
        client._tasks = [
            asyncio.create_task(client._follow()),
            asyncio.create_task(sentinels.listen(client._wake.set)),
        ]
        return client

    def on_failover(self, hook: FailoverHook) -> None:
        """Run ``hook(new_client)`` before calls go to a newly named primary (and to the
        first one). If it raises, the switch waits and is tried again."""
        self._hooks.append(hook)

    @property
    def current(self) -> GlideClient:
        """The client of the primary the calls go to now."""
        switching_to = _switching_to.get()
        if switching_to is not None:
            return switching_to
        if self._current is None:
            # As against a server that cannot be reached: the repositories fall through.
            raise GlideConnectionError(
                f"no primary of {self.sentinels.service!r} known yet: no Sentinel answered"
            )
        return self._current

    async def custom_command(self, command_args: list[Any], *args: Any, **kwargs: Any) -> Any:
        client = self.current
        try:
            return await client.custom_command(command_args, *args, **kwargs)
        except GlideError as error:
            if client is not self._current and _switching_to.get() is None:
                # The node it went to was replaced meanwhile: the call is no verdict on
                # the new primary, so it goes there once. (The cache's commands are safe
                # to repeat: reads, fills whose token the new node must hold, and
                # invalidations.)
                return await self.current.custom_command(command_args, *args, **kwargs)
            if cause_of(error) in ("readonly", "connection", "timeout"):
                self._wake.set()  # a demoted or dead node: ask the Sentinels now
            raise

    async def replicas(self) -> int:
        """The replicas an invalidation waits for: those the Sentinels could promote;
        if no Sentinel answers, those connected to the primary (``ROLE``)."""
        try:
            return await self.sentinels.promotable_replicas()
        except ConnectionError:
            return replicas_in_role(await self.custom_command(["ROLE"]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.current, name)

    async def follow_now(self) -> bool:
        """Ask the Sentinels, and switch if they name another primary; whether the calls
        now go where they say. Never raises."""
        try:
            address = await self.sentinels.primary()
            if address != self.primary:
                await self._switch(address)
            return True
        except Exception as error:
            if self._log_throttle.due(type(error).__name__) is not None:
                log.warning(
                    "could not follow the Sentinels of %r: %s", self.sentinels.service, error
                )
            return False

    async def _follow(self) -> None:
        while not self._closed:
            self._wake.clear()
            wait_s = self.poll_s if await self.follow_now() else RETRY_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _switch(self, address: Address) -> None:
        client = await self._connect(*address)
        try:
            role = await client.custom_command(["ROLE"])
            if not isinstance(role, list) or _text(role[0]) != "master":
                raise ConnectionError(
                    f"{address[0]}:{address[1]} is not a primary yet (ROLE: {role!r:.60})"
                )
            token = _switching_to.set(client)
            try:
                for hook in self._hooks:
                    await hook(client)
            finally:
                _switching_to.reset(token)
        except BaseException:
            await client.close()
            raise
        # No await between the last hook and the swap: nothing runs on the old node after
        # the hooks ran on the new one.
        old, self._current, self.primary = self._current, client, address
        if old is not None:
            self.failovers += 1
            log.warning(
                "the Sentinels of %r named a new primary: %s:%d (failover %d)",
                self.sentinels.service,
                *address,
                self.failovers,
            )
            # Calls still waiting on the old node fail now, and go to the new one,
            # instead of waiting out their timeout against a dead or demoted node.
            await old.close("the Sentinels named another primary")

    async def close(self, err_message: str | None = None) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._current is not None:
            await self._current.close(err_message)
