"""The doctor's checks of one server: pure functions of its replies (``ServerFacts``)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...keys import CLUSTER_DEFAULT_PREFIX, has_hash_tag

if TYPE_CHECKING:  # permissions.py imports this module
    from .permissions import PermissionFacts

# What the Lua scripts call (redis.call / redis.pcall in lua/*.lua; a test reads the
# sources, so this list cannot drift from them). invalidate.lua, reset.lua and set.lua
# announce with PUBLISH, or with SPUBLISH on a cluster (below).
SCRIPT_COMMANDS: tuple[str, ...] = (
    "DEL",
    "EXISTS",
    "GET",
    "HGET",
    "HGETALL",
    "HINCRBY",
    "HMGET",
    "HSET",
    "LINDEX",
    "LLEN",
    "LPOP",
    "LPUSH",
    "LSET",
    "PEXPIRE",
    "PTTL",
    "PUBLISH",
    "SADD",
    "SCAN",
    "SET",
    "SMEMBERS",
    "SMISMEMBER",
    "TIME",
    "TYPE",
    "UNLINK",
    "ZADD",
    "ZCARD",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZREM",
    "ZSCAN",
)
# Every command the scripts, the cache source and the local cache send, directly or from
# inside a script: the script calls themselves, SCRIPT LOAD|EXISTS, the clean-up's UNLINK
# (in the list), and CLIENT INFO, with which the local cache checks its subscriber's
# connection (a local cache without it never serves).
REQUIRED_COMMANDS: tuple[str, ...] = (
    "EVALSHA",
    "EVALSHA_RO",
    "SCRIPT",
    "CLIENT",
    *SCRIPT_COMMANDS,
)
# On a cluster also: WAIT for the replicas after an invalidation, CLUSTER NODES (the nodes to
# load scripts on, the replicas to wait for), EVAL / EVAL_RO, which the registry sends when
# one node lost a script, and SPUBLISH, the announcement within the prefix's slot.
CLUSTER_REQUIRED_COMMANDS: tuple[str, ...] = (
    *REQUIRED_COMMANDS,
    "WAIT",
    "CLUSTER",
    "EVAL",
    "EVAL_RO",
    "SPUBLISH",
)
# EVALSHA_RO and `#!lua flags=...` arrived in Redis 7.0; every Valkey has them.
MIN_REDIS_VERSION = (7, 0)
CONFIG_PARAMETERS: tuple[str, ...] = ("maxmemory-policy", "save", "appendonly", "appendfsync")


class Status(enum.StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What the checks look at: the server's replies, decoded.

    ``info``: the fields of ``INFO`` (default sections), see :func:`parse_info`.
    ``config``: ``CONFIG GET`` answers by parameter; a parameter the server would not
    disclose (CONFIG disabled or renamed, as on some managed services) is absent.
    ``commands``: lower-case names of the commands the server knows, None if unknown.
    ``scripts_loaded``: SCRIPT EXISTS of each packaged script, None if unknown.
    ``permissions``: what ACL allows the connected user, None if not asked.
    """

    info: Mapping[str, str]
    config: Mapping[str, str] = field(default_factory=dict)
    commands: frozenset[str] | None = None
    scripts_loaded: Mapping[str, bool] | None = None
    permissions: PermissionFacts | None = None


def parse_info(text: str | bytes) -> dict[str, str]:
    """``INFO`` text (``field:value`` lines, ``# Section`` headers) as a dict."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key] = value
    return fields


def parse_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0, 15)``; anything unparsable -> ``()``."""
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def server_identity(info: Mapping[str, str]) -> tuple[str, str]:
    """(server name, version) as the server reports itself: Valkey sends ``server_name``
    and ``valkey_version``; Redis only ``redis_version``."""
    name = info.get("server_name", "redis")
    version = info.get(f"{name}_version") or info.get("redis_version", "unknown")
    return name, version


# -- the checks ---------------------------------------------------------------------------


def check_server(info: Mapping[str, str]) -> Check:
    name, version = server_identity(info)
    # Valkey reports the Redis version it is compatible with (7.2.4) as redis_version.
    compatible = parse_version(info.get("redis_version", ""))
    label = f"{name} {version}"
    if not compatible:
        return Check("server", Status.WARN, f"{label}: could not read redis_version from INFO")
    if compatible < MIN_REDIS_VERSION:
        return Check(
            "server",
            Status.FAIL,
            f"{label}: Redis >= 7.0 (or any Valkey) is required for EVALSHA_RO and"
            " `#!lua flags=` script flags",
        )
    mode = info.get("server_mode") or info.get("redis_mode") or "standalone"
    return Check("server", Status.OK, f"{label} ({mode})")


def check_commands(
    commands: frozenset[str] | None, required: Sequence[str] = REQUIRED_COMMANDS
) -> Check:
    if commands is None:
        return Check(
            "commands",
            Status.WARN,
            "could not list the server's commands (COMMAND LIST needs Redis 7.0+ and the"
            " permission to run it)",
        )
    missing = [command for command in required if command.lower() not in commands]
    if missing:
        return Check(
            "commands",
            Status.FAIL,
            f"missing: {', '.join(missing)} (renamed or disabled, or the server is too old)",
        )
    return Check("commands", Status.OK, f"all {len(required)} required commands present")


def check_scripts(loaded: Mapping[str, bool] | None) -> Check:
    if loaded is None:
        return Check("scripts", Status.WARN, "could not ask SCRIPT EXISTS")
    absent = sorted(name for name, present in loaded.items() if not present)
    if not absent:
        return Check("scripts", Status.OK, f"all {len(loaded)} scripts loaded")
    return Check(
        "scripts",
        Status.WARN,
        f"{len(loaded) - len(absent)}/{len(loaded)} loaded; not loaded: {', '.join(absent)}."
        " The registry loads them at start-up and again on the first NOSCRIPT;"
        " `atomic-cache scripts load` preloads them",
    )


def check_eviction(info: Mapping[str, str], config: Mapping[str, str]) -> Check:
    policy = config.get("maxmemory-policy") or info.get("maxmemory_policy")
    if not policy:
        return Check("maxmemory-policy", Status.WARN, "could not read the eviction policy")
    limit = info.get("maxmemory", "")
    unlimited = limit == "0"
    limit_note = (
        " (maxmemory is 0, so nothing is evicted until a limit is set)" if unlimited else ""
    )
    if policy == "noeviction":
        return Check(
            "maxmemory-policy",
            Status.OK,
            "noeviction: a full server refuses cache writes (the repository then serves from"
            " SQL) while invalidate.lua (allow-oom) still runs",
        )
    if policy.startswith("allkeys-"):
        return Check(
            "maxmemory-policy",
            Status.WARN,
            f"{policy}: an invalidation stamp can be evicted before the entries it covers,"
            " which then become servable again (stale reads until their TTL). Use noeviction,"
            f" or a volatile-* policy on a server shared with TTL-less data{limit_note}",
        )
    if policy.startswith("volatile-"):
        return Check(
            "maxmemory-policy",
            Status.WARN,
            f"{policy}: spares keys without a TTL, but entries, stamps and the index all"
            " carry one, so a stamp can still be evicted before the entries it covers, which"
            f" are then served again. noeviction keeps every invariant{limit_note}",
        )
    return Check("maxmemory-policy", Status.WARN, f"unknown policy {policy!r}{limit_note}")


def check_persistence(info: Mapping[str, str], config: Mapping[str, str]) -> Check:
    aof = info.get("aof_enabled") == "1" or config.get("appendonly") == "yes"
    save = config.get("save")
    fsync = config.get("appendfsync")
    scripts_note = (
        "the script cache is never persisted: after a restart the registry reloads the"
        " scripts on the first call (NOSCRIPT)"
    )
    if aof:
        if fsync == "always":
            return Check(
                "persistence",
                Status.OK,
                f"AOF, appendfsync always: entries, stamps and the sequence survive a restart;"
                f" {scripts_note}",
            )
        return Check(
            "persistence",
            Status.WARN,
            f"AOF with appendfsync {fsync or 'unknown'}: a crash can lose the last second of"
            " writes, invalidations included, so entries they deleted can come back (until"
            f" their TTL); use appendfsync always or no persistence for the cache; {scripts_note}",
        )
    if save is None:
        return Check(
            "persistence",
            Status.WARN,
            f"AOF off; could not read the RDB `save` setting (CONFIG GET refused); {scripts_note}",
        )
    if save.strip():
        return Check(
            "persistence",
            Status.WARN,
            f"RDB snapshots (save {save!r}) without AOF: after a crash the server loads the"
            " last snapshot, bringing back entries invalidated since then (until their TTL)"
            " with the older stamps; prefer no persistence for a cache (an empty cache is"
            f" safe: a new life of the index refuses every older fill token); {scripts_note}",
        )
    return Check(
        "persistence",
        Status.OK,
        "none: a restart empties the cache and the sequence starts a new life above the"
        f" server clock, so no old fill token is accepted; {scripts_note}",
    )


def check_replication(info: Mapping[str, str]) -> Check:
    role = info.get("role", "")
    if role in ("slave", "replica"):
        primary = f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"
        return Check(
            "replication",
            Status.WARN,
            f"this server is a replica of {primary}: writes and invalidations fail here"
            " (READONLY); point the cache at the primary (reads by EVALSHA_RO may use replicas)",
        )
    if role != "master":
        return Check("replication", Status.WARN, f"could not read the replication role ({role!r})")
    replicas = int(info.get("connected_slaves", "0") or 0)
    if replicas == 0:
        return Check("replication", Status.OK, "primary without replicas")
    return Check(
        "replication",
        Status.OK,
        f"primary with {replicas} replica(s): replication is asynchronous, so an invalidation"
        " acknowledged just before a failover can be lost; the promoted replica has no"
        " script cache of its own and the registry reloads the scripts on the first call",
    )


def check_cluster(info: Mapping[str, str], prefix: str | None = None) -> Check | None:
    if info.get("cluster_enabled") != "1":
        return None
    untagged = (
        f" (prefix {prefix!r} has none)" if prefix is not None and not has_hash_tag(prefix) else ""
    )
    return Check(
        "cluster",
        Status.WARN,
        f"cluster mode: give the key prefix a hash tag ({CLUSTER_DEFAULT_PREFIX}){untagged} so"
        " every key a script touches is in one slot, and use GlideClusterClient; this command"
        " looked at one node: `atomic-cache doctor --cluster` checks every node, the slots"
        " and the replicas",
    )


def run_checks(facts: ServerFacts, *, prefix: str | None = None) -> list[Check]:
    """Every check of one server, in display order. ``prefix``: the cache's key prefix,
    named when the server turns out to be a cluster node."""
    checks = [check_server(facts.info), check_commands(facts.commands)]
    if facts.permissions is not None:
        from .permissions import check_permissions  # it imports this module

        checks.append(check_permissions(facts.permissions))
    checks += [
        check_scripts(facts.scripts_loaded),
        check_eviction(facts.info, facts.config),
        check_persistence(facts.info, facts.config),
        check_replication(facts.info),
    ]
    cluster = check_cluster(facts.info, prefix)
    if cluster is not None:
        checks.append(cluster)
    return checks


def exit_code(checks: Iterable[Check], *, strict: bool = False) -> int:
    """1 when any check failed (or, with ``strict``, warned); else 0."""
    statuses = {check.status for check in checks}
    if Status.FAIL in statuses or (strict and Status.WARN in statuses):
        return 1
    return 0
