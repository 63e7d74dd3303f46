"""The thin part of the doctor that asks live servers, read-only (INFO, CONFIG GET,
COMMAND LIST, SCRIPT EXISTS, CLUSTER INFO|NODES; for the user's permissions ACL DRYRUN,
or else one read-only probe script, see permissions.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeAlias

from glide import ByAddressRoute, GlideClusterClient, GlideError, RandomNode, RequestError

from ...cache.scripts import ScriptRegistry, ValkeyClient
from ...keys import CLUSTER_DEFAULT_PREFIX, DEFAULT_PREFIX
from ...resilience.errors import UNWELL_CAUSES, cause_of
from .checks import (
    CLUSTER_REQUIRED_COMMANDS,
    CONFIG_PARAMETERS,
    REQUIRED_COMMANDS,
    Check,
    ServerFacts,
    parse_info,
    run_checks,
)
from .cluster import (
    ClusterFacts,
    ListedNode,
    NodeFacts,
    in_display_order,
    parse_cluster_nodes,
    run_cluster_checks,
)
from .permissions import gather_permissions

# -- asking live servers -----------------------------------------------------------------

# Sends one command to one server (or one node of a cluster).
Send: TypeAlias = Callable[[list[str]], Awaitable[object]]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _sender(client: ValkeyClient, address: tuple[str, int] | None = None) -> Send:
    """Send to ``client``'s server; on a cluster to the node at ``address`` (a random one
    without it)."""

    async def send(command: list[str]) -> object:
        if isinstance(client, GlideClusterClient):
            route = ByAddressRoute(*address) if address is not None else RandomNode()
            return await client.custom_command([*command], route)
        return await client.custom_command([*command])

    return send


async def _known_commands(
    send: Send, required: Sequence[str] = REQUIRED_COMMANDS
) -> frozenset[str] | None:
    # COMMAND INFO would tell the same per command, but glide 2.6 cannot decode its reply
    # on Redis 7+ / Valkey (key specs: SystemError in parse_response); COMMAND LIST (7.0+)
    # is a plain array of names.
    try:
        reply = await send(["COMMAND", "LIST"])
    except RequestError:
        reply = None
    if isinstance(reply, list):
        return frozenset(_text(name).lower() for name in reply)
    # Servers before 7.0 have no COMMAND LIST; their COMMAND INFO replies carry no key
    # specs and decode fine.
    found: set[str] = set()
    for command in required:
        try:
            info = await send(["COMMAND", "INFO", command])
        except (GlideError, SystemError):
            return None
        if isinstance(info, list) and info and info[0] is not None:
            found.add(command.lower())
    return frozenset(found)


async def _config(send: Send) -> dict[str, str]:
    # One parameter per call: CONFIG GET of several needs Redis 7.0, and a managed service
    # may refuse some (or all) of them.
    answers: dict[str, str] = {}
    for parameter in CONFIG_PARAMETERS:
        try:
            reply = await send(["CONFIG", "GET", parameter])
        except RequestError:
            continue
        if isinstance(reply, dict):
            pairs = [(_text(key), _text(value)) for key, value in reply.items()]
        elif isinstance(reply, list):  # RESP2 shape: [name, value, ...]
            pairs = [(_text(reply[i]), _text(reply[i + 1])) for i in range(0, len(reply) - 1, 2)]
        else:
            pairs = []
        answers.update(pairs)
    return answers


async def gather_facts(
    client: ValkeyClient,
    registry: ScriptRegistry,
    *,
    prefix: str = DEFAULT_PREFIX,
    user: str | None = None,
) -> ServerFacts:
    """Ask the server what the checks need; read-only but for the permission probe (see
    permissions.py). ``prefix``: the cache's, whose keys and channel the connected user
    (``user``, when the caller knows it) must reach. Connection errors propagate."""
    send = _sender(client)
    info = parse_info(_text(await send(["INFO"])))
    try:
        loaded: dict[str, bool] | None = await registry.loaded(client)
    except RequestError:
        loaded = None
    return ServerFacts(
        info=info,
        config=await _config(send),
        commands=await _known_commands(send),
        scripts_loaded=loaded,
        permissions=await gather_permissions(send, prefix, user=user),
    )


async def diagnose(
    client: ValkeyClient,
    registry: ScriptRegistry | None = None,
    *,
    prefix: str | None = None,
    user: str | None = None,
) -> list[Check]:
    """Gather the facts from a live server and run every check."""
    facts = await gather_facts(
        client, registry or ScriptRegistry(), prefix=prefix or DEFAULT_PREFIX, user=user
    )
    return run_checks(facts, prefix=prefix)


async def _scripts_on(
    send: Send, registry: ScriptRegistry
) -> tuple[dict[str, bool] | None, str | None]:
    """(SCRIPT EXISTS by script name, None), or (None, the error a node answered with),
    or (None, None) when the node could not answer."""
    try:
        reply = await send(["SCRIPT", "EXISTS", *(s.sha1 for s in registry.scripts.values())])
    except RequestError as error:
        if cause_of(error) in UNWELL_CAUSES:
            return None, None
        return None, _one_line(error)
    flags = reply if isinstance(reply, list) else []
    return {
        name: bool(flags[i]) if i < len(flags) else False for i, name in enumerate(registry.scripts)
    }, None


async def gather_node_facts(
    client: GlideClusterClient, node: ListedNode, registry: ScriptRegistry
) -> NodeFacts:
    """What one listed node answers; a node that does not answer is a fact, not an error."""
    if node.failed:
        # Asking costs a full request timeout and tells nothing the flags do not.
        return NodeFacts(node, problem="marked failed by the cluster; not asked")
    send = _sender(client, node.host_port)
    try:
        info = parse_info(_text(await send(["INFO"])))
    except GlideError as error:
        return NodeFacts(node, problem=f"did not answer: {_one_line(error)}")
    try:
        cluster_info: dict[str, str] | None = parse_info(_text(await send(["CLUSTER", "INFO"])))
    except RequestError:
        cluster_info = None
    loaded, scripts_error = await _scripts_on(send, registry)
    primary = node.role == "primary"
    server = ServerFacts(
        info=info,
        config=await _config(send) if primary else {},
        commands=await _known_commands(send, CLUSTER_REQUIRED_COMMANDS) if primary else None,
        scripts_loaded=loaded,
    )
    return NodeFacts(node, server, cluster_info, scripts_error)


async def _cluster_listing(
    client: GlideClusterClient, seed: tuple[str, int] | None
) -> list[ListedNode]:
    """``CLUSTER NODES`` from the seed node, else from any node that answers."""
    if seed is not None:
        try:
            listing = parse_cluster_nodes(_text(await _sender(client, seed)(["CLUSTER", "NODES"])))
        except GlideError:
            pass  # the seed is down, or known to the cluster by another address
        else:
            # A node no other node has met yet (a one-node cluster) does not know its own
            # address: it lists itself as ":port". That is the seed, which answered.
            return [
                replace(node, address=f"{seed[0]}{node.address}")
                if node.address.startswith(":") and "myself" in node.flags
                else node
                for node in listing
            ]
    return parse_cluster_nodes(_text(await _sender(client)(["CLUSTER", "NODES"])))


async def gather_cluster_facts(
    client: GlideClusterClient,
    registry: ScriptRegistry,
    prefix: str = CLUSTER_DEFAULT_PREFIX,
    *,
    seed: tuple[str, int] | None = None,
) -> ClusterFacts:
    """Ask every node the cluster lists (side by side, so one that does not answer costs
    one request timeout) what the checks need; read-only. A node that does not answer is
    a fact; only a cluster where no node lists the others raises."""
    nodes = await _cluster_listing(client, seed)
    gathered = await asyncio.gather(*(gather_node_facts(client, node, registry) for node in nodes))
    return ClusterFacts(prefix=prefix, nodes=in_display_order(gathered))


async def diagnose_cluster(
    client: GlideClusterClient,
    registry: ScriptRegistry | None = None,
    prefix: str = CLUSTER_DEFAULT_PREFIX,
    *,
    seed: tuple[str, int] | None = None,
) -> tuple[ClusterFacts, list[Check]]:
    """Gather the facts from a live cluster and run every check."""
    facts = await gather_cluster_facts(client, registry or ScriptRegistry(), prefix, seed=seed)
    return facts, run_cluster_checks(facts)
