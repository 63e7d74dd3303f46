"""quiet_glide_logs: glide's own log lines (written by its core to standard output, not
through ``logging``) are gone after it, and back at the level asked for.

Each case runs in a process of its own (glide's logger is one per process): it connects
to a port nothing listens on, where glide logs a WARN line naming the address."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import atomic_cache
from atomic_cache import quiet_glide_logs

SCRIPT = """
import asyncio, socket, sys
from glide import LogLevel
from atomic_cache import create_valkey_client, quiet_glide_logs

def dead_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

async def main(steps):
    for step in steps:
        if step != "untouched":
            quiet_glide_logs(LogLevel.OFF if step == "LogLevel.OFF" else step)
        port = dead_port()
        client = await create_valkey_client(
            f"valkey://127.0.0.1:{port}", request_timeout_ms=200, connect_timeout_ms=100
        )
        try:
            await client.ping()
        except Exception as error:
            print(f"step {step} port {port} failed: {type(error).__name__}", flush=True)
        finally:
            await client.close()

asyncio.run(main(sys.argv[1:]))
"""


def glide_lines_by_step(*steps: str) -> list[tuple[str, bool]]:
    """Run ``steps`` in one new process: for each, whether glide's line about its failed
    connection reached standard output. None may reach standard error."""
    root = str(Path(atomic_cache.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, *steps],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    )
    ports = [line.split()[1:4:2] for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [step for step, _ in ports] == list(steps), done.stdout  # each connection failed
    assert "Failed connecting" not in done.stderr
    return [(step, f"Failed connecting to 127.0.0.1:{port}" in done.stdout) for step, port in ports]


def test_glide_logs_each_failed_connection_unless_quieted() -> None:
    assert glide_lines_by_step("untouched", "off", "warn", "error", "LogLevel.OFF", "WARN") == [
        ("untouched", True),  # glide's default: WARN and above, on standard output
        ("off", False),
        ("warn", True),  # a level is a level: it can be lowered again
        ("error", False),  # a failed connection is a WARN
        ("LogLevel.OFF", False),
        ("WARN", True),
    ]


def test_quieting_before_the_first_client_silences_it_from_the_start() -> None:
    assert glide_lines_by_step("off", "untouched") == [("off", False), ("untouched", False)]
    assert glide_lines_by_step("error", "warn") == [("error", False), ("warn", True)]


@pytest.mark.parametrize("level", ["nope", "warning", "", 5, None])
def test_a_level_glide_does_not_have_is_refused(level: Any) -> None:
    with pytest.raises(
        ValueError,
        match=r"^unknown glide log level .*: one of error, warn, info, debug, trace, off$",
    ):
        quiet_glide_logs(level)
