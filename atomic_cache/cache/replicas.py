"""ReplicaBarrier: an invalidation on a cluster, or on a primary that Sentinels watch,
returns only once the replicas have it.

Reads may be served by replicas (``read_from_replica=True``), and a failover promotes a
replica: an invalidation the primary applied but a replica had not received could be
read around on that replica, or lost when it is promoted. So after the invalidation
script, one ``WAIT`` on the same connection to the (slot's) primary waits, within a
bound, until every replica has the write. Fewer acknowledgements than replicas is a
failed invalidation (``ReplicasBehindError``): the guard queues it and replays it, and
the outbox does the same for every other process.

Which replicas count: on a cluster, those it lists for the slot's primary and has not
marked failed (``CLUSTER NODES``), since any of them may serve reads; under Sentinel,
those connected to the primary (``ROLE``), since any of them may be promoted. The count
is cached for a few seconds and checked again before a shortfall is reported, so a
replica that left does not fail every invalidation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from glide import GlideClusterClient, SlotKeyRoute, SlotType

from ..resilience.errors import ReplicasBehindError

DEFAULT_REPLICA_ACK_TIMEOUT_MS = 500
REPLICA_COUNT_TTL_S = 5.0


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def replicas_of_myself(cluster_nodes: str) -> int:
    """How many live replicas ``CLUSTER NODES`` (as the answering primary sees it) lists
    for the answering node. Each line: ``id addr flags master-id ...``."""
    lines = [line.split() for line in cluster_nodes.splitlines() if line.strip()]
    me = next((fields[0] for fields in lines if "myself" in fields[2].split(",")), None)
    return sum(
        1
        for fields in lines
        if len(fields) > 3
        and fields[3] == me
        and not {"fail", "fail?", "noaddr", "handshake"} & set(fields[2].split(","))
    )


def replicas_in_role(role: object) -> int:
    """How many replicas a primary's ``ROLE`` reply lists: ``[master, offset, [[ip,
    port, offset], ...]]``."""
    if not isinstance(role, list) or len(role) < 3 or not isinstance(role[2], list):
        raise ValueError(f"not a primary's ROLE reply: {role!r:.80}")
    return len(role[2])


Send = Callable[[list[str]], Awaitable[object]]


class ReplicaBarrier:
    """``WAIT`` for every replica of a primary: ``send`` sends a command to it on the
    connection the invalidations take; ``count`` tells how many replicas it has."""

    def __init__(
        self,
        send: Send,
        count: Callable[[], Awaitable[int]],
        *,
        timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError("the replica acknowledgement timeout must be positive")
        self._send = send
        self._count = count
        self.timeout_ms = timeout_ms
        self._clock = clock
        self._replicas: int | None = None
        self._counted_at = 0.0

    @classmethod
    def of_shard(
        cls,
        client: GlideClusterClient,
        key: str,
        *,
        timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS,
    ) -> ReplicaBarrier:
        """For the cluster shard that holds ``key``."""
        route = SlotKeyRoute(SlotType.PRIMARY, key)

        async def send(command: list[str]) -> object:
            return await client.custom_command(command, route)

        async def count() -> int:
            return replicas_of_myself(_text(await send(["CLUSTER", "NODES"])))

        return cls(send, count, timeout_ms=timeout_ms)

    def forget(self) -> None:
        """Count the replicas again before the next wait (another primary now)."""
        self._replicas = None

    async def replicas(self, *, fresh: bool = False) -> int:
        """The primary's live replicas (cached for ``REPLICA_COUNT_TTL_S``)."""
        now = self._clock()
        if fresh or self._replicas is None or now - self._counted_at > REPLICA_COUNT_TTL_S:
            self._replicas = await self._count()
            self._counted_at = now
        return self._replicas

    async def wait(self) -> int:
        """Return once every replica acknowledged the writes sent so far on the primary's
        connection; raise ``ReplicasBehindError`` if they did not within the timeout.
        Returns how many acknowledged."""
        expected = await self.replicas()
        if expected == 0:
            return 0
        acked = await self._wait(expected)
        if acked < expected:
            expected = await self.replicas(fresh=True)  # a replica may have left the shard
            if acked < expected:
                raise ReplicasBehindError(
                    f"{acked} of {expected} replicas acknowledged the invalidation within"
                    f" {self.timeout_ms} ms"
                )
        return acked

    async def _wait(self, replicas: int) -> int:
        reply = await self._send(["WAIT", str(replicas), str(self.timeout_ms)])
        return int(_text(reply))
