"""Just enough RESP2 to ask a Sentinel where the primary is and hear of failovers.

glide has no Sentinel support, and the questions are few (``AUTH``,
``SENTINEL GET-MASTER-ADDR-BY-NAME``, ``SUBSCRIBE +switch-master``): a plain asyncio
connection speaking the protocol's five reply types does it with no other client library.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

RespReply = bytes | int | list["RespReply"] | None


class RespError(Exception):
    """The server answered with an error reply (``-ERR ...``)."""


def encode(*args: str) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader) -> RespReply:
    """One reply. An error reply raises ``RespError``; a closed connection raises
    ``ConnectionError``."""
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("the server closed the connection")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body
    if kind == b"-":
        raise RespError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = await reader.readexactly(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(body)
        if count < 0:
            return None
        return [await read_reply(reader) for _ in range(count)]
    raise ConnectionError(f"not a RESP2 reply: {line[:40]!r}")


@dataclass
class RespConnection:
    """One connection: a command at a time, or a subscription's stream of messages."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, host: str, port: int, timeout_s: float) -> RespConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        return cls(reader, writer)

    async def command(self, *args: str) -> RespReply:
        self.writer.write(encode(*args))
        await self.writer.drain()
        return await self.read()

    async def read(self) -> RespReply:
        """The next reply, or the next message of a subscription."""
        return await read_reply(self.reader)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):  # already gone
            await self.writer.wait_closed()
