"""The least-privilege ACL of a cache: exactly the commands the Lua scripts and the
Python send, on the keys under one prefix and its announcement channel.

Valkey checks every command a script runs against the calling user, so the commands
inside the scripts are listed as well as the script calls themselves. glide's connection
set-up needs INFO and CLIENT SETNAME, and SELECT for a database other than 0 (CLIENT
SETINFO, when denied, only costs a log line at connect; Redis 7.0 does not know it).
"""

from __future__ import annotations

import re

from .doctor.checks import SCRIPT_COMMANDS

# What the package sends itself (beside the scripts' own commands): the script calls and
# the registry's loading; the removal of an undecodable entry (UNLINK, in SCRIPT_COMMANDS);
# the local cache's subscription, the check of the connection it is on, and its sequence
# check.
CLIENT_COMMANDS: tuple[str, ...] = (
    "EVALSHA",
    "EVALSHA_RO",
    "SCRIPT|LOAD",
    "SCRIPT|EXISTS",
    "SUBSCRIBE",
    "CLIENT|INFO",
    "HGET",
)
# glide's connection set-up. Not CLIENT SETINFO: Redis 7.0 does not know it (an ACL that
# names it is refused there), and glide only logs a line when it is denied.
CONNECTION_COMMANDS: tuple[str, ...] = ("INFO", "CLIENT|SETNAME", "PING", "SELECT")
# On a cluster also: the replica wait, the topology, reads on replicas, the scripts'
# source when a node lost them, and sharded pub/sub.
CLUSTER_COMMANDS: tuple[str, ...] = (
    "WAIT",
    "CLUSTER|NODES",
    "CLUSTER|SLOTS",
    "CLUSTER|SHARDS",
    "READONLY",
    "EVAL",
    "EVAL_RO",
    "SPUBLISH",
    "SSUBSCRIBE",
)


# Under Sentinel also: the check that a node named by the Sentinels is a primary, and the
# wait for the replicas they could promote. (The Sentinels themselves are asked with their
# own password, as the default user: they need no ACL of this package.)
SENTINEL_COMMANDS: tuple[str, ...] = ("ROLE", "WAIT")


def acl_commands(*, cluster: bool = False, sentinel: bool = False) -> list[str]:
    """Every command a cache and its local cache send, sorted, in ACL's spelling."""
    if cluster and sentinel:
        raise ValueError("a cluster has no Sentinels: cluster or sentinel, not both")
    commands = {*SCRIPT_COMMANDS, *CLIENT_COMMANDS, *CONNECTION_COMMANDS}
    if cluster:
        commands |= set(CLUSTER_COMMANDS)
    if sentinel:
        commands |= set(SENTINEL_COMMANDS)
    return sorted(command.lower() for command in commands)


def _glob(text: str) -> str:
    """``text`` as a literal in an ACL key or channel pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def acl_setuser(
    user: str,
    prefix: str,
    *,
    cluster: bool = False,
    sentinel: bool = False,
    password: str | None = None,
) -> str:
    """``ACL SETUSER`` for a user that can do everything the cache does under ``prefix``
    and nothing else (``-@all`` first). Without ``password``, add ``>secret`` yourself."""
    if not user or any(c.isspace() for c in user):
        raise ValueError(f"an ACL user name has no spaces and is not empty: {user!r}")
    if not prefix or any(c.isspace() for c in prefix):
        raise ValueError(f"a key prefix has no spaces and is not empty: {prefix!r}")
    parts = ["ACL", "SETUSER", user, "on"]
    if password is not None:
        if not password or any(c.isspace() for c in password):
            raise ValueError("a password for the ACL line has no spaces and is not empty")
        parts.append(f">{password}")
    parts += [f"~{_glob(prefix)}:*", f"&{_glob(prefix)}:invalidations", "-@all"]
    parts += [f"+{command}" for command in acl_commands(cluster=cluster, sentinel=sentinel)]
    return " ".join(parts)
