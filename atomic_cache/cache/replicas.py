"""ReplicaBarrier: an invalidation on a cluster returns only once the replicas have it.

Reads may be served by replicas (``read_from_replica=True``), and a failover promotes a
replica: an invalidation the primary applied but a replica had not received could be
read around on that replica, or lost when it is promoted. So after the invalidation
script, one ``WAIT`` on the same connection to the slot's primary waits, within a bound,
until every replica of that shard has the write. Fewer acknowledgements than replicas is
a failed invalidation (``ReplicasBehindError``): the guard queues it and replays it, and
the outbox does the same for every other process.

Which replicas count: those the cluster lists for the slot's primary and has not marked
failed (``CLUSTER NODES``), since any of them may serve reads. The count is cached for a
few seconds and checked again before a shortfall is reported, so a replica that left the
shard does not fail every invalidation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

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


class ReplicaBarrier:
    """``WAIT`` for every replica of the shard that holds ``key``."""

    def __init__(
        self,
        client: GlideClusterClient,
        key: str,
        *,
        timeout_ms: int = DEFAULT_REPLICA_ACK_TIMEOUT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError("the replica acknowledgement timeout must be positive")
        self._client = client
        self._route = SlotKeyRoute(SlotType.PRIMARY, key)
        self.timeout_ms = timeout_ms
        self._clock = clock
        self._replicas: int | None = None
        self._counted_at = 0.0

    async def replicas(self, *, fresh: bool = False) -> int:
        """The live replicas of the slot's primary (cached for ``REPLICA_COUNT_TTL_S``)."""
        now = self._clock()
        if fresh or self._replicas is None or now - self._counted_at > REPLICA_COUNT_TTL_S:
            reply = await self._client.custom_command(["CLUSTER", "NODES"], self._route)
            self._replicas = replicas_of_myself(_text(reply))
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
        reply = await self._client.custom_command(
            ["WAIT", str(replicas), str(self.timeout_ms)], self._route
        )
        return int(_text(reply))
