"""ScriptRegistry: read the packaged Lua scripts, load them once, call them by SHA.

Why EVALSHA and not one FUNCTION library: each ``lua/*.lua`` file stays a plain,
standalone script (no library wrapper generated around it), a script's identity is its
SHA-1, so two versions of this package can share a server during a rolling deploy without
replacing each other's code, and a server that lost its script cache (restart without
persistence, failover, SCRIPT FLUSH) costs one reload on the next call, which the
registry does by itself.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TypeAlias

from glide import ByAddressRoute, GlideClient, GlideClusterClient, RandomNode, RequestError

from ..resilience.errors import UNWELL_CAUSES, CacheError, cause_of
from ..targets import ScriptArg
from .sentinel import SentinelClient

log = logging.getLogger(__name__)

# A SentinelClient stands for the GlideClient of the current primary.
ValkeyClient: TypeAlias = GlideClient | GlideClusterClient | SentinelClient
# What a script can answer, as glide decodes it.
ScriptReply: TypeAlias = object


class ScriptLoadError(CacheError, RuntimeError):
    """The server rejected a script: names the file and carries the server's message.
    (A cache error too, so a reload that fails this way at run time falls through.)"""


@dataclass(frozen=True, slots=True)
class Script:
    name: str  # file name without ".lua"
    source: str
    sha1: str
    read_only: bool  # declared "#!lua flags=no-writes": called with EVALSHA_RO

    @classmethod
    def from_source(cls, name: str, source: str) -> Script:
        first_line = source.split("\n", 1)[0]
        read_only = first_line.startswith("#!lua") and "no-writes" in first_line
        sha1 = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        return cls(name=name, source=source, sha1=sha1, read_only=read_only)


def packaged_scripts_dir() -> Traversable:
    """``atomic_cache/lua`` in an installed wheel; ``lua/`` beside the package in a checkout."""
    installed = resources.files("atomic_cache") / "lua"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "lua"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def cluster_nodes(client: GlideClusterClient) -> list[tuple[str, int, str]]:
    """Every node the cluster lists and has not marked failed: (host, port, role)."""
    reply = _text(await client.custom_command(["CLUSTER", "NODES"], RandomNode()))
    found = []
    for line in reply.splitlines():
        fields = line.split()
        if len(fields) < 3 or {"fail", "noaddr", "handshake"} & set(fields[2].split(",")):
            continue
        host, _, port = fields[1].split("@")[0].rpartition(":")
        role = "primary" if "master" in fields[2].split(",") else "replica"
        found.append((host, int(port), role))
    return sorted(found)


async def on_every_node(client: ValkeyClient, command: list[str]) -> dict[str, object]:
    """``command``'s reply from every node (a cluster's primaries and replicas: replicas
    serve the read-only scripts), by ``host:port (role)``; one entry on a standalone
    server. Node by node, since glide folds the replies of a multi-node route."""
    if not isinstance(client, GlideClusterClient):
        return {"server": await client.custom_command(command)}
    return {
        f"{host}:{port} ({role})": await client.custom_command(command, ByAddressRoute(host, port))
        for host, port, role in await cluster_nodes(client)
    }


def _as_arg(value: ScriptArg) -> str | bytes:
    # glide accepts only str and bytes; an int would raise TypeError deep in the client.
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


class ScriptRegistry:
    """The package's Lua scripts, loaded once per server and called by SHA."""

    def __init__(self, directory: Traversable | None = None) -> None:
        root = directory if directory is not None else packaged_scripts_dir()
        found = sorted(
            (entry for entry in root.iterdir() if entry.name.endswith(".lua")),
            key=lambda entry: entry.name,
        )
        if not found:
            raise ScriptLoadError(f"no .lua scripts found in {root}")
        self._scripts: dict[str, Script] = {
            entry.name[: -len(".lua")]: Script.from_source(
                entry.name[: -len(".lua")], entry.read_text(encoding="utf-8")
            )
            for entry in found
        }
        self.reloads = 0  # how many times a lost script cache was reloaded

    @property
    def scripts(self) -> Mapping[str, Script]:
        """Every script by name (its file name without ``.lua``), with its source and SHA."""
        return self._scripts

    def __getitem__(self, name: str) -> Script:
        try:
            return self._scripts[name]
        except KeyError:
            raise KeyError(f"no script named {name!r}; known: {sorted(self._scripts)}") from None

    async def load(self, client: ValkeyClient, *, required: bool = False) -> bool:
        """SCRIPT LOAD every script; True once all are loaded.

        A script the server rejects raises ScriptLoadError, naming its file. A server that
        cannot serve the call (unreachable, paused, loading, busy) rejected nothing: by
        default that is logged in one line and False returned, so a service starts with
        Valkey down, and the scripts load on the first call that reaches the server (the
        registry reloads on NOSCRIPT). ``required=True`` raises the error instead.
        """
        try:
            await self._load_all(client)
        except RequestError as error:
            if required or cause_of(error) not in UNWELL_CAUSES:
                raise
            log.warning(
                "could not load the cache's scripts now (%s); they load on the first call"
                " that reaches the server",
                str(error).strip(),
            )
            return False
        return True

    async def _load_all(self, client: ValkeyClient) -> None:
        for script in self._scripts.values():
            try:
                replies = await on_every_node(client, ["SCRIPT", "LOAD", script.source])
            except RequestError as error:
                if cause_of(error) in UNWELL_CAUSES:
                    raise  # timeout, BUSY, LOADING...: the server is unwell, not the script
                raise ScriptLoadError(
                    f"{script.name}.lua was rejected by the server: {error}"
                ) from error
            for node, sha in replies.items():
                if _text(sha) != script.sha1:
                    raise ScriptLoadError(
                        f"{script.name}.lua loaded as {_text(sha)} on {node},"
                        f" expected {script.sha1}"
                    )

    async def loaded(self, client: ValkeyClient) -> dict[str, bool]:
        """Which scripts the server holds now (SCRIPT EXISTS), by name; on a cluster, a
        script counts as loaded only if every node holds it."""
        per_node = await self.loaded_per_node(client)
        return {name: all(node[name] for node in per_node.values()) for name in self._scripts}

    async def loaded_per_node(self, client: ValkeyClient) -> dict[str, dict[str, bool]]:
        """Which scripts each node holds now, by node address, then by name."""
        replies = await on_every_node(
            client, ["SCRIPT", "EXISTS", *(s.sha1 for s in self._scripts.values())]
        )
        return {node: self._exists(reply) for node, reply in replies.items()}

    def _exists(self, reply: object) -> dict[str, bool]:
        flags = reply if isinstance(reply, list) else []
        return {
            name: bool(flags[i]) if i < len(flags) else False
            for i, name in enumerate(self._scripts)
        }

    async def call(
        self,
        client: ValkeyClient,
        name: str,
        keys: Sequence[str],
        args: Iterable[ScriptArg] = (),
    ) -> ScriptReply:
        """Run one script by SHA: one server command; reload and retry once if it was lost."""
        script = self[name]
        command = [
            "EVALSHA_RO" if script.read_only else "EVALSHA",
            script.sha1,
            str(len(keys)),
            *keys,
            *(_as_arg(arg) for arg in args),
        ]
        try:
            return await client.custom_command(command)
        except RequestError as error:
            if cause_of(error) != "noscript":
                raise
        self.reloads += 1
        if isinstance(client, GlideClusterClient):
            # The node that answered lost it (restarted, promoted, flushed); another node
            # may be unreachable right now. EVAL goes where EVALSHA went (same key, same
            # read-only flag), runs the script and caches it on that node.
            log.info("script %s lost on a cluster node; sending its source", name)
            command[:2] = ["EVAL_RO" if script.read_only else "EVAL", script.source]
            return await client.custom_command(command)
        log.info("script cache lost on the server; reloading %d scripts", len(self._scripts))
        await self.load(client, required=True)
        return await client.custom_command(command)
