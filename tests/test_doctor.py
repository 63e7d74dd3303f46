"""doctor: the checks on canned server replies (no server), then once on the real one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from glide import GlideClient

import atomic_cache.cache
from atomic_cache import ScriptRegistry
from atomic_cache.tools.acl import SENTINEL_COMMANDS
from atomic_cache.tools.doctor import (
    CLUSTER_REQUIRED_COMMANDS,
    REQUIRED_COMMANDS,
    SCRIPT_COMMANDS,
    Check,
    ServerFacts,
    Status,
    exit_code,
    gather_facts,
    parse_info,
    parse_version,
    run_checks,
    server_identity,
)

VALKEY_INFO = (
    "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\n"
    "server_mode:standalone\r\n\r\n# Memory\r\nused_memory:1142200\r\nmaxmemory:0\r\n"
    "maxmemory_policy:noeviction\r\n\r\n# Persistence\r\nloading:0\r\naof_enabled:0\r\n\r\n"
    "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n# Cluster\r\ncluster_enabled:0\r\n"
)
ALL_COMMANDS = frozenset(command.lower() for command in REQUIRED_COMMANDS) | {"ping", "del"}
NO_PERSISTENCE = {"save": "", "appendonly": "no", "appendfsync": "everysec"}
LOADED = dict.fromkeys(ScriptRegistry().scripts, True)


def facts(
    *,
    info: Mapping[str, str] | None = None,
    config: Mapping[str, str] | None = None,
    commands: frozenset[str] | None = ALL_COMMANDS,
    loaded: Mapping[str, bool] | None = None,
) -> ServerFacts:
    fields = parse_info(VALKEY_INFO)
    fields.update(info or {})
    settings = dict(NO_PERSISTENCE)
    settings.update(config or {})
    return ServerFacts(
        info=fields,
        config=settings,
        commands=commands,
        scripts_loaded=LOADED if loaded is None else loaded,
    )


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_parse_info_reads_fields_across_sections_and_bytes() -> None:
    fields = parse_info(VALKEY_INFO.encode())
    assert fields["valkey_version"] == "9.1.2"
    assert fields["maxmemory_policy"] == "noeviction"
    assert fields["role"] == "master"
    assert "# Server" not in fields
    # a value may itself contain ':'
    assert parse_info("master_host:::1\r\n") == {"master_host": "::1"}


def test_parse_version_and_identity() -> None:
    assert parse_version("7.0.15") == (7, 0, 15)
    assert parse_version("6.2.14") < (7, 0)
    assert parse_version("garbage") == ()
    assert server_identity(parse_info(VALKEY_INFO)) == ("valkey", "9.1.2")
    assert server_identity({"redis_version": "7.0.15"}) == ("redis", "7.0.15")


def test_healthy_valkey_passes_every_check() -> None:
    checks = run_checks(facts())
    assert [check.name for check in checks] == [
        "server",
        "commands",
        "scripts",
        "maxmemory-policy",
        "persistence",
        "replication",
    ]
    assert {check.status for check in checks} == {Status.OK}
    assert by_name(checks)["server"].detail.startswith("valkey 9.1.2")
    assert exit_code(checks) == 0
    assert exit_code(checks, strict=True) == 0


def test_redis_7_0_passes() -> None:
    info = parse_info("redis_version:7.0.15\r\nredis_mode:standalone\r\nrole:master\r\n")
    checks = by_name(
        run_checks(ServerFacts(info=info, config=NO_PERSISTENCE, commands=ALL_COMMANDS))
    )
    assert checks["server"].status is Status.OK
    assert checks["server"].detail == "redis 7.0.15 (standalone)"
    assert checks["commands"].status is Status.OK


def test_redis_6_2_fails_on_version_and_missing_evalsha_ro() -> None:
    info = parse_info("redis_version:6.2.14\r\nredis_mode:standalone\r\nrole:master\r\n")
    commands = ALL_COMMANDS - {"evalsha_ro"}
    checks = by_name(run_checks(ServerFacts(info=info, config=NO_PERSISTENCE, commands=commands)))
    assert checks["server"].status is Status.FAIL
    assert "EVALSHA_RO" in checks["server"].detail
    assert checks["commands"].status is Status.FAIL
    assert checks["commands"].detail.startswith("missing: EVALSHA_RO")
    assert exit_code(checks.values()) == 1


def test_every_missing_command_is_named() -> None:
    checks = by_name(run_checks(facts(commands=ALL_COMMANDS - {"unlink", "zscan"})))
    assert checks["commands"].status is Status.FAIL
    assert "UNLINK" in checks["commands"].detail and "ZSCAN" in checks["commands"].detail


# redis.call('X', ...), redis.pcall('X', ...) and pcall(redis.call, 'X', ...)
LUA_CALL = re.compile(
    r"""redis\.p?call\(\s*['"]([A-Za-z_]+)['"]|pcall\(\s*redis\.p?call\s*,\s*['"]([A-Za-z_]+)['"]"""
)
# The same with the command in a variable: redis.call(announce, ...).
LUA_COMPUTED_CALL = re.compile(
    r"redis\.p?call\(\s*([a-z_]\w*)\s*,|pcall\(\s*redis\.p?call\s*,\s*([a-z_]\w*)\s*,"
)
# What each such variable may hold (the script checks it against these very names).
COMPUTED = {"announce": {"PUBLISH", "SPUBLISH"}}
# ["WAIT", ...], "EVALSHA_RO" if ... else "EVALSHA": the commands the cache package sends.
SENT_COMMAND = re.compile(
    r'\[\s*"([A-Z][A-Z_]*)"|"([A-Z][A-Z_]*)"\s+if\b|\belse\s+"([A-Z][A-Z_]*)"'
)


def _names(pattern: re.Pattern[str], source: str) -> list[str]:
    return [name for groups in pattern.findall(source) for name in groups if name]


def test_required_commands_are_what_the_scripts_call() -> None:
    sources = [script.source for script in ScriptRegistry().scripts.values()]
    called = {name.upper() for source in sources for name in _names(LUA_CALL, source)}
    for source in sources:
        for variable in _names(LUA_COMPUTED_CALL, source):
            assert variable in COMPUTED, f"redis.call({variable}, ...): which commands?"
            for command in COMPUTED[variable]:
                assert f"'{command}'" in source  # the script names what it may send
                called.add(command)
    # The patterns saw every call.
    calls = sum(source.count("redis.call") + source.count("redis.pcall") for source in sources)
    seen = sum(len(_names(LUA_CALL, s)) + len(_names(LUA_COMPUTED_CALL, s)) for s in sources)
    assert seen == calls
    assert {"TIME", "ZSCAN", "HMGET"} <= called
    # SPUBLISH only on a cluster.
    assert sorted(SCRIPT_COMMANDS) == sorted(called - {"SPUBLISH"})
    assert set(REQUIRED_COMMANDS) == set(SCRIPT_COMMANDS) | {
        "EVALSHA",
        "EVALSHA_RO",
        "SCRIPT",
        "CLIENT",
    }
    assert len(REQUIRED_COMMANDS) == len(set(REQUIRED_COMMANDS))
    assert called <= set(CLUSTER_REQUIRED_COMMANDS)


def test_cluster_commands_add_what_the_cache_package_sends_on_a_cluster() -> None:
    sent: set[str] = set()
    for path in Path(atomic_cache.cache.__file__).parent.glob("*.py"):
        sent |= set(_names(SENT_COMMAND, path.read_text()))
    assert {"EVALSHA", "EVALSHA_RO", "EVAL", "EVAL_RO", "SCRIPT", "WAIT", "CLUSTER"} <= sent
    # Under Sentinel also ROLE (and WAIT) on the data nodes, and AUTH to the Sentinels.
    assert {"ROLE", "AUTH"} <= sent
    assert sent <= {*CLUSTER_REQUIRED_COMMANDS, *SENTINEL_COMMANDS, "AUTH"}
    extra = set(CLUSTER_REQUIRED_COMMANDS) - set(REQUIRED_COMMANDS)
    assert extra == {"WAIT", "CLUSTER", "EVAL", "EVAL_RO", "SPUBLISH"}


def test_unknown_commands_warn() -> None:
    checks = by_name(run_checks(facts(commands=None)))
    assert checks["commands"].status is Status.WARN


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policies_warn_about_missed_invalidations(policy: str) -> None:
    checks = run_checks(facts(config={"maxmemory-policy": policy}))
    check = by_name(checks)["maxmemory-policy"]
    assert check.status is Status.WARN
    assert policy in check.detail and "noeviction" in check.detail
    assert "invalidation" in check.detail
    assert exit_code(checks) == 0
    assert exit_code(checks, strict=True) == 1


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl"])
def test_volatile_policies_warn_too_since_every_cache_key_has_a_ttl(policy: str) -> None:
    check = by_name(run_checks(facts(config={"maxmemory-policy": policy})))["maxmemory-policy"]
    assert check.status is Status.WARN
    assert "TTL" in check.detail


def test_noeviction_is_ok() -> None:
    check = by_name(run_checks(facts(config={"maxmemory-policy": "noeviction"})))
    assert check["maxmemory-policy"].status is Status.OK


def test_policy_from_info_when_config_is_refused() -> None:
    # Managed services often disable CONFIG; INFO memory still names the policy.
    fields = facts(info={"maxmemory_policy": "allkeys-lru", "maxmemory": "1073741824"}).info
    checks = by_name(run_checks(ServerFacts(info=fields, config={}, commands=ALL_COMMANDS)))
    assert checks["maxmemory-policy"].status is Status.WARN
    assert checks["persistence"].status is Status.WARN  # `save` unknown
    assert checks["persistence"].detail.startswith("AOF off; could not read")


def test_scripts_not_loaded_warn_and_name_the_missing_ones() -> None:
    loaded = {**LOADED, "get_all": False, "set": False}
    check = by_name(run_checks(facts(loaded=loaded)))["scripts"]
    assert check.status is Status.WARN
    assert check.detail.startswith(
        f"{len(LOADED) - 2}/{len(LOADED)} loaded; not loaded: get_all, set."
    )


@pytest.mark.parametrize(
    ("config", "info", "status", "phrase"),
    [
        ({}, {}, Status.OK, "none: a restart empties the cache"),
        ({"save": "3600 1 300 100"}, {}, Status.WARN, "RDB snapshots"),
        ({"appendonly": "yes", "appendfsync": "always"}, {"aof_enabled": "1"}, Status.OK, "AOF"),
        ({"appendonly": "yes"}, {"aof_enabled": "1"}, Status.WARN, "appendfsync everysec"),
    ],
)
def test_persistence(
    config: dict[str, str], info: dict[str, str], status: Status, phrase: str
) -> None:
    check = by_name(run_checks(facts(config=config, info=info)))["persistence"]
    assert check.status is status
    assert phrase in check.detail
    assert "script cache is never persisted" in check.detail


def test_replication_facts() -> None:
    replica = {"role": "slave", "master_host": "10.0.0.5", "master_port": "6379"}
    check = by_name(run_checks(facts(info=replica)))["replication"]
    assert check.status is Status.WARN
    assert "replica of 10.0.0.5:6379" in check.detail
    primary = by_name(run_checks(facts(info={"connected_slaves": "2"})))["replication"]
    assert primary.status is Status.OK
    assert "2 replica(s)" in primary.detail and "reloads the scripts" in primary.detail


def test_cluster_mode_adds_a_warning() -> None:
    assert "cluster" not in by_name(run_checks(facts()))
    check = by_name(run_checks(facts(info={"cluster_enabled": "1"})))["cluster"]
    assert check.status is Status.WARN
    assert "hash tag" in check.detail
    assert "`atomic-cache doctor --cluster` checks every node" in check.detail
    assert "has none" not in check.detail
    untagged = by_name(run_checks(facts(info={"cluster_enabled": "1"}), prefix="app_config"))
    assert "(prefix 'app_config' has none)" in untagged["cluster"].detail
    tagged = by_name(run_checks(facts(info={"cluster_enabled": "1"}), prefix="{app_config}"))
    assert "has none" not in tagged["cluster"].detail


async def test_gather_facts_from_the_real_server(
    valkey: GlideClient, registry: ScriptRegistry
) -> None:
    await registry.load(valkey)
    gathered = await gather_facts(valkey, registry)
    assert gathered.commands is not None
    assert {command.lower() for command in REQUIRED_COMMANDS} <= gathered.commands
    assert gathered.scripts_loaded == dict.fromkeys(registry.scripts, True)
    assert "maxmemory-policy" in gathered.config
    checks = by_name(run_checks(gathered))
    assert checks["server"].status is Status.OK
    assert checks["commands"].status is Status.OK
    assert checks["scripts"].status is Status.OK
