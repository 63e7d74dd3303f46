"""Helpers for tests that look at the server directly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from glide import GlideClient

from atomic_cache.cache.client import ValkeyURL


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def smembers(client: GlideClient, key: str) -> set[str]:
    return {text(member) for member in await client.smembers(key)}


async def keys_under(client: GlideClient, prefix: str) -> set[str]:
    found: set[str] = set()
    cursor: object = "0"
    while True:
        reply = await client.custom_command(
            ["SCAN", text(cursor), "MATCH", f"{prefix}:*", "COUNT", "1000"]
        )
        assert isinstance(reply, list)
        cursor, batch = reply
        found.update(text(key) for key in batch)
        if text(cursor) == "0":
            return found


@dataclass
class CommandLog:
    """The commands one client sent, as MONITOR saw them (in-script commands excluded)."""

    commands: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [command.split(" ", 1)[0].strip('"').upper() for command in self.commands]


@asynccontextmanager
async def monitor(url: str, client: GlideClient) -> AsyncIterator[CommandLog]:
    """Record what ``client`` sends inside the block, through a raw MONITOR connection.

    MONITOR tags a command a script runs with ``lua]``; the client's own commands carry its
    address. A sentinel ECHO from the same client marks the end of the block.
    """
    info = text(await client.custom_command(["CLIENT", "INFO"]))
    address = next(part[5:] for part in info.split() if part.startswith("addr="))
    parsed = ValkeyURL.parse(url)
    reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
    if parsed.password is not None:
        user = parsed.username or "default"
        writer.write(f"AUTH {user} {parsed.password}\r\n".encode())
        await reader.readline()
    writer.write(b"MONITOR\r\n")
    assert (await reader.readline()).startswith(b"+OK")
    log = CommandLog()
    try:
        yield log
        sentinel = "monitor-sentinel"
        await client.custom_command(["ECHO", sentinel])
        while True:
            line = (await asyncio.wait_for(reader.readline(), 10)).decode(errors="replace")
            if f"{address}]" not in line:
                continue
            command = line.split("] ", 1)[1].strip()
            if command == f'"ECHO" "{sentinel}"':
                break
            log.commands.append(command)
    finally:
        writer.close()
        await writer.wait_closed()


def _resp(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def raw_command(port: int, *args: str) -> bytes:
    """One command on a fresh plain connection; the first reply line (enough for checks)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_resp(*args))
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@asynccontextmanager
async def busy_script(port: int) -> AsyncIterator[None]:
    """Keep the server inside an endless read-only script until the block ends, then
    SCRIPT KILL it: other clients get BUSY meanwhile."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_resp("EVAL", "while true do end", "0"))
    await writer.drain()
    try:
        await asyncio.sleep(0.2)  # past busy-reply-threshold
        yield
    finally:
        for _ in range(50):
            if (await raw_command(port, "SCRIPT", "KILL")).startswith(b"+OK"):
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(reader.readline(), 10)  # the killed script's error reply
        writer.close()


async def write_filler(port: int, count: int, prefix: str = "filler") -> None:
    """``count`` small keys, pipelined on one raw connection: a data set that takes a
    while to load back (with ``--key-load-delay``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(_resp("SET", f"{prefix}:{i}", "x") for i in range(count)))
        await writer.drain()
        for _ in range(count):
            assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"+OK")
    finally:
        writer.close()


async def is_loading(port: int) -> bool:
    """Whether the server still answers LOADING (restoring its data set)."""
    return (await raw_command(port, "GET", "probe")).startswith(b"-LOADING")
