"""What the bench reads from the server itself: ``INFO`` sections, ``INFO
commandstats``, the slow log, ``MEMORY USAGE`` footprints, and key scans (DESIGN §6)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from glide import Batch, GlideClient

from ..doctor import parse_info


def as_text(value: object) -> str:
    """A reply as text (glide answers bytes)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def command(client: GlideClient, *args: str) -> object:
    return await client.custom_command(list(args))


async def info_fields(client: GlideClient, section: str | None = None) -> dict[str, str]:
    reply = await command(client, "INFO", *([section] if section else []))
    return parse_info(as_text(reply))


async def used_memory(client: GlideClient) -> int:
    return int((await info_fields(client, "memory"))["used_memory"])


async def config_get(client: GlideClient, parameter: str) -> str:
    reply = await command(client, "CONFIG", "GET", parameter)
    if isinstance(reply, dict):
        for key, value in reply.items():
            if as_text(key) == parameter:
                return as_text(value)
    if isinstance(reply, list) and len(reply) >= 2:
        return as_text(reply[1])
    raise RuntimeError(f"CONFIG GET {parameter} answered {reply!r}")


@dataclass(frozen=True, slots=True)
class CommandStat:
    calls: int
    usec: int


async def command_stats(client: GlideClient) -> dict[str, CommandStat]:
    """``INFO commandstats`` by lower-case command name (``config|set`` for subcommands).
    In-script commands are counted too, under their own names."""
    stats: dict[str, CommandStat] = {}
    for key, value in (await info_fields(client, "commandstats")).items():
        if not key.startswith("cmdstat_"):
            continue
        fields = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
        stats[key[len("cmdstat_") :]] = CommandStat(int(fields["calls"]), int(fields["usec"]))
    return stats


_HOUSEKEEPING = ("info", "config", "slowlog", "ping", "hello", "client", "select", "scan")


def is_housekeeping(name: str) -> bool:
    """A command the bench itself sends (INFO, CONFIG, SLOWLOG...), not a measured one."""
    return name.split("|", 1)[0] in _HOUSEKEEPING


async def scan_keys(client: GlideClient, pattern: str) -> AsyncIterator[list[str]]:
    """The keys matching ``pattern``, a SCAN page at a time (never blocks the server long)."""
    cursor = "0"
    while True:
        reply = await command(client, "SCAN", cursor, "MATCH", pattern, "COUNT", "2000")
        if not isinstance(reply, list) or len(reply) != 2:
            raise RuntimeError(f"SCAN answered {reply!r:.200}")
        cursor = as_text(reply[0])
        page = [as_text(key) for key in reply[1]]
        if page:
            yield page
        if cursor == "0":
            return


async def drop_prefix(client: GlideClient, prefix: str) -> int:
    """UNLINK every key under ``prefix:``."""
    dropped = 0
    async for page in scan_keys(client, f"{prefix}:*"):
        dropped += int(as_text(await command(client, "UNLINK", *page)))
    return dropped


async def count_keys(client: GlideClient, pattern: str) -> int:
    return sum([len(page) async for page in scan_keys(client, pattern)])


@dataclass(frozen=True, slots=True)
class Footprint:
    keys: int
    bytes: int


async def memory_usage(client: GlideClient, key: str) -> int:
    """``MEMORY USAGE`` of one key (exact: SAMPLES 0); 0 for a missing key."""
    reply = await command(client, "MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(as_text(reply)) if reply is not None else 0


async def footprint(client: GlideClient, pattern: str) -> Footprint:
    """How many keys match ``pattern`` and the sum of their ``MEMORY USAGE`` (exact:
    SAMPLES 0), one pipelined batch per SCAN page. A key that expired meanwhile counts 0."""
    keys = size = 0
    async for page in scan_keys(client, pattern):
        batch = Batch(is_atomic=False)
        for key in page:
            batch.custom_command(["MEMORY", "USAGE", key, "SAMPLES", "0"])
        replies = await client.exec(batch, True) or []
        keys += sum(1 for reply in replies if reply is not None)
        size += sum(int(as_text(reply)) for reply in replies if reply is not None)
    return Footprint(keys, size)


# Room for every script call of the largest clean-up (a few thousand steps), so that
# the call that started it is still in the log when it is read.
SLOWLOG_MAX_LEN = 50_000


@asynccontextmanager
async def slowlog_slower_than(client: GlideClient, threshold_us: int) -> AsyncIterator[None]:
    """Log every command that runs ``threshold_us`` or longer in the slow log inside the
    block (emptied first); the settings are restored."""
    saved = {
        name: await config_get(client, name)
        for name in ("slowlog-log-slower-than", "slowlog-max-len")
    }
    await command(client, "CONFIG", "SET", "slowlog-log-slower-than", str(threshold_us))
    await command(client, "CONFIG", "SET", "slowlog-max-len", str(SLOWLOG_MAX_LEN))
    await command(client, "SLOWLOG", "RESET")
    try:
        yield
    finally:
        for name, value in saved.items():
            await command(client, "CONFIG", "SET", name, value)


@dataclass(frozen=True, slots=True)
class ScriptRun:
    """One slow-log entry of a script call: its duration and its arguments after the SHA."""

    duration_us: int
    args: tuple[str, ...]


async def script_runs(client: GlideClient, sha1: str) -> list[ScriptRun]:
    """The slow-log entries of EVALSHA / EVALSHA_RO calls of ``sha1``. Valkey 9 logs the
    commands a script runs too, under their own names: those are left out, so a script's
    duration is the one logged for its call, its commands included."""
    reply = await command(client, "SLOWLOG", "GET", str(SLOWLOG_MAX_LEN))
    runs = []
    for entry in reply if isinstance(reply, list) else []:
        if not isinstance(entry, list) or len(entry) < 4 or not isinstance(entry[3], list):
            continue
        args = [as_text(arg) for arg in entry[3]]
        if len(args) >= 2 and args[0].upper() in ("EVALSHA", "EVALSHA_RO") and args[1] == sha1:
            runs.append(ScriptRun(int(as_text(entry[2])), tuple(args[2:])))
    return runs


def longest_us(runs: Iterable[ScriptRun]) -> int | None:
    return max((run.duration_us for run in runs), default=None)
