"""The servers a command runs against (given, or embedded and stopped on exit), its
clients, and the event loop that turns their failures into one ``Error:`` line."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from types import FrameType
from typing import Any

import click
from glide import GlideClient, GlideClusterClient, Logger, LogLevel

from ...cache.client import create_valkey_client, redact_url
from ...cache.scripts import ScriptLoadError, ValkeyClient
from ...resilience.errors import cause_of
from ..embedded import EmbeddedValkey, postgres_url
from ..embedded_cluster import EmbeddedCluster
from .options import (
    CLI_CONNECT_TIMEOUT_MS,
    CLI_REQUEST_TIMEOUT_MS,
    CLUSTER_ENV,
    CONNECTION_ERRORS,
    DATABASE_ERRORS,
    EMBEDDED_VALKEY,
    ServerOptions,
    T,
    _one_line,
    database_failure,
    err_console,
    require_extras,
)

# -- servers and the event loop -----------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return redact_url(url)


def valkey_failure(error: BaseException, url: str | None) -> str:
    """One line for a Valkey call that failed."""
    where = f" at {redact_url(url)}" if url else ""
    if cause_of(error) in ("connection", "timeout"):
        return f"cannot reach Valkey{where}: {_one_line(error)}"
    return f"Valkey{where}: {type(error).__name__}: {_one_line(error)}"


def quiet_glide_logs() -> None:
    """Keep glide's own log lines (coloured, e.g. a WARN on each failed connect) out of
    the command's output: every failure reaches the user as the command's one line."""
    Logger.set_logger_config(LogLevel.OFF)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Let cleanup finish even if Ctrl-C is pressed again meanwhile."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to defer
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def valkey_server(
    url: str | None, *, extra_args: Sequence[str] = (), cluster: bool = False
) -> Iterator[str]:
    """``url`` if given; else an embedded ``valkey-server`` (with ``cluster``: an embedded
    Valkey Cluster, and its seed node's URL), stopped and its temp dir removed on exit
    (Ctrl-C included: it runs in its own session, so the terminal's SIGINT reaches only
    this process, which then stops it). Without the ``embedded`` extra that is one line
    naming it."""
    if url:
        yield url
        return
    require_extras(EMBEDDED_VALKEY)
    if cluster:
        with _embedded_cluster(extra_args) as seed_url:
            yield seed_url
        return
    server = EmbeddedValkey(extra_args=extra_args)
    try:
        server.start()
        err_console.print(
            f"[dim]embedded valkey-server on 127.0.0.1:{server.port}, stopped on exit[/]"
        )
        yield server.url
    finally:
        with _sigint_deferred():
            server.cleanup()


@contextlib.contextmanager
def _embedded_cluster(extra_args: Sequence[str]) -> Iterator[str]:
    embedded = EmbeddedCluster(extra_args=extra_args)
    try:
        try:
            embedded.start()  # cleans up after itself when it fails
        except (OSError, RuntimeError, TimeoutError) as error:
            raise click.ClickException(
                f"the embedded Valkey Cluster did not start: {_one_line(error)}"
            ) from error
        ports = ", ".join(str(node.port) for node in embedded.nodes)
        err_console.print(
            f"[dim]embedded Valkey Cluster ({embedded.primaries} primaries,"
            f" {embedded.primaries * embedded.replicas_per_primary} replicas) on 127.0.0.1"
            f" ports {ports}, stopped on exit[/]"
        )
        yield embedded.seed_url
    finally:
        with _sigint_deferred():
            embedded.cleanup()


@contextlib.contextmanager
def database_server(url: str | None) -> Iterator[str]:
    """``url`` (as an asyncpg URL) if given; else an embedded PostgreSQL, removed on exit
    and announced on stderr, as the embedded Valkey is."""
    with postgres_url(url, announce=lambda line: err_console.print(line, style="dim")) as db:
        yield db


@contextlib.asynccontextmanager
async def connected(
    url: str, *, request_timeout_ms: int = CLI_REQUEST_TIMEOUT_MS
) -> AsyncIterator[GlideClient]:
    client = await create_valkey_client(
        url,
        request_timeout_ms=request_timeout_ms,
        connect_timeout_ms=CLI_CONNECT_TIMEOUT_MS,
        client_name="atomic_cache-cli",
    )
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def cluster_connected(
    url: str, *, request_timeout_ms: int = CLI_REQUEST_TIMEOUT_MS
) -> AsyncIterator[GlideClusterClient]:
    """A cluster client; ``url`` names any node (a seed)."""
    client = await create_valkey_client(
        url,
        cluster=True,
        request_timeout_ms=request_timeout_ms,
        connect_timeout_ms=CLI_CONNECT_TIMEOUT_MS,
        client_name="atomic_cache-cli",
    )
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def connected_to(
    url: str, *, cluster: bool, request_timeout_ms: int = CLI_REQUEST_TIMEOUT_MS
) -> AsyncIterator[ValkeyClient]:
    """:func:`connected`, or with ``cluster`` :func:`cluster_connected`."""
    opened: contextlib.AbstractAsyncContextManager[ValkeyClient] = (
        cluster_connected(url, request_timeout_ms=request_timeout_ms)
        if cluster
        else connected(url, request_timeout_ms=request_timeout_ms)
    )
    async with opened as client:
        yield client


def _given_database_url() -> str | None:
    ctx = click.get_current_context(silent=True)
    options = ctx.find_object(ServerOptions) if ctx is not None else None
    return options.database_url if options is not None else None


def run(coroutine: Coroutine[Any, Any, T], *, url: str | None = None) -> T:
    """Run a command's async body; an unreachable server, a rejected script or a failed
    database call becomes a clean error (exit 1 with one line)."""
    try:
        return asyncio.run(coroutine)
    except ScriptLoadError as error:
        raise click.ClickException(str(error)) from error
    except CONNECTION_ERRORS as error:
        raise click.ClickException(valkey_failure(error, url)) from error
    except DATABASE_ERRORS as error:
        raise click.ClickException(database_failure(error, _given_database_url())) from error


def run_valkey(coroutine: Coroutine[Any, Any, T], *, url: str, cluster: bool) -> T:
    """:func:`run`, and with ``cluster`` a hint when the server is not a cluster node
    (glide then finds no topology)."""
    try:
        return run(coroutine, url=url)
    except click.ClickException as error:
        if not (cluster and "topology" in error.message):
            raise
        raise click.ClickException(
            f"{error.message} (with --cluster the URL must name a node of a Valkey Cluster;"
            f" drop --cluster and unset {CLUSTER_ENV} for a single server)"
        ) from error


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM takes the Ctrl-C path (every finally runs, servers are stopped): it does
    what SIGINT does now. Inside ``asyncio.run`` that cancels the main task alone, whose
    clean-up then runs while everything else still does. A KeyboardInterrupt raised there
    instead leaves the loop, and ``asyncio.run`` cancels every task at once: a glide 2.3
    client's reader task among them (or it is the task the interrupt ended), so the
    clean-up's calls to Valkey never get their replies and the process hangs."""
    del signum
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # asyncio's (cancels the main task) or Python's (raises)
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt  # SIGINT ignored or left to the OS: interrupt here


def _handle_sigterm(ctx: click.Context) -> None:
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        return
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))
