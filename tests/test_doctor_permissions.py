"""The doctor's permission check: what ACL allows the user it is connected as, asked by
ACL DRYRUN (an administrator), by the read-only probe script (a least-privilege user), or
by harmless probes only (a user who may run no script). First on canned verdicts, then
on the real server with ACL users made from ``atomic-cache acl``'s line and changed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from glide import GlideClient

from atomic_cache import KeySchema, ScriptRegistry, create_valkey_client
from atomic_cache.cache.client import ValkeyURL
from atomic_cache.tools.acl import acl_commands, acl_setuser
from atomic_cache.tools.doctor import (
    Check,
    PermissionFacts,
    Status,
    Verdict,
    check_permissions,
    gather_facts,
    gather_permissions,
    run_checks,
)
from atomic_cache.tools.doctor.permissions import BY_DRYRUN, BY_PROBES, BY_SCRIPT, refusal

from .test_cli import invoke, status_of

COMMANDS = acl_commands()
# The commands whose probe names the prefix's key (all but the channel's and key-less ones).
KEYED = {
    "del", "evalsha", "evalsha_ro", "exists", "get", "hget", "hgetall", "hincrby", "hmget",
    "hset", "lindex", "llen", "lpop", "lpush", "lset", "pexpire", "pttl", "sadd", "set",
    "smembers", "smismember", "type", "unlink", "zadd", "zcard", "zrange", "zrangebyscore", "zrem",
    "zscan",
}  # fmt: skip
# Of those, the ones that write (what a read-only key pattern, %R~, refuses).
WRITING = {
    "del", "evalsha", "hincrby", "hset", "lpop", "lpush", "lset", "pexpire", "sadd", "set",
    "unlink", "zadd", "zrem",
}  # fmt: skip


def verdicts(**changed: Verdict) -> dict[str, Verdict]:
    """Every command allowed but those named (``script_load`` for ``script|load``)."""
    found = dict.fromkeys(COMMANDS, Verdict.ALLOWED)
    for name, verdict in changed.items():
        command = name.replace("_", "|") if name.startswith(("script_", "client_")) else name
        assert command in found
        found[command] = verdict
    return found


def facts(found: dict[str, Verdict], method: str = BY_SCRIPT) -> PermissionFacts:
    return PermissionFacts("app_config", found, method, user="cache")


FIX = (
    "Fix: `atomic-cache acl --prefix app_config --user cache` prints the ACL SETUSER line to"
    " run as an administrator"
)


# -- on canned verdicts --------------------------------------------------------------------


def test_every_command_allowed_is_ok() -> None:
    assert check_permissions(facts(verdicts(), BY_DRYRUN)) == Check(
        "permissions",
        Status.OK,
        f"user 'cache' may run all {len(COMMANDS)} commands the cache sends, on"
        " ~app_config:* and &app_config:invalidations (asked by ACL DRYRUN)",
    )


def test_missing_commands_are_named_with_the_fix() -> None:
    found = verdicts(evalsha=Verdict.NO_COMMAND, subscribe=Verdict.NO_COMMAND)
    assert check_permissions(facts(found)) == Check(
        "permissions",
        Status.FAIL,
        "user 'cache' lacks commands evalsha, subscribe (asked by a read-only probe script"
        f" (redis.acl_check_cmd)). {FIX}",
    )


def test_keys_and_channel_refused_name_the_patterns() -> None:
    found = dict(verdicts(publish=Verdict.NO_CHANNEL, subscribe=Verdict.NO_CHANNEL))
    found.update(dict.fromkeys(KEYED, Verdict.NO_KEY))
    assert check_permissions(facts(found)).detail == (
        f"user 'cache' lacks keys ~app_config:* (refused for all {len(KEYED)} commands naming"
        " one); &app_config:invalidations (refused for all 2 commands naming one) (asked by a"
        f" read-only probe script (redis.acl_check_cmd)). {FIX}"
    )
    only_writes = dict(verdicts())
    only_writes.update(dict.fromkeys(WRITING, Verdict.NO_KEY))
    check = check_permissions(facts(only_writes))
    assert check.status is Status.FAIL
    assert check.detail.startswith(
        "user 'cache' lacks keys ~app_config:* for del, evalsha, hincrby, hset, lpop, lpush,"
        " lset, pexpire, sadd, set, unlink, zadd, zrem (asked by"
    )


def test_unchecked_commands_warn_or_join_a_failure() -> None:
    unchecked = verdicts(info=Verdict.UNCHECKED, scan=Verdict.UNCHECKED)
    assert check_permissions(facts(unchecked, BY_PROBES)) == Check(
        "permissions",
        Status.WARN,
        "user 'cache': could not check info, scan (asked by harmless probes only (the user"
        " may run no script)); the others are allowed",
    )
    both = dict(unchecked, evalsha=Verdict.NO_COMMAND, subscribe=Verdict.REFUSED)
    assert check_permissions(facts(both, BY_PROBES)).detail == (
        "user 'cache' lacks commands evalsha; subscribe (the command, its key or its channel);"
        " not checked: info, scan (asked by harmless probes only (the user may run no"
        f" script)). {FIX}"
    )


def test_an_unknown_user_and_a_cluster_prefix_in_the_fix() -> None:
    found = (
        verdicts(wait=Verdict.NO_COMMAND)
        if "wait" in COMMANDS
        else verdicts(ping=Verdict.NO_COMMAND)
    )
    check = check_permissions(PermissionFacts("{app_config}", found, BY_SCRIPT, cluster=True))
    assert check.detail.startswith("this connection's user lacks commands ")
    assert check.detail.endswith(
        "Fix: `atomic-cache acl --prefix '{app_config}' --user USER --cluster` prints the ACL"
        " SETUSER line to run as an administrator"
    )


@pytest.mark.parametrize(
    ("text", "command", "verdict"),
    [
        # ACL DRYRUN: Valkey 9, then Redis 7.0
        ("User u has no permissions to access the 'q:x' key", "get", Verdict.NO_KEY),
        ("User u has no permissions to run the 'hget' command", "hget", Verdict.NO_COMMAND),
        ("User u has no permissions to access the 'q:c' channel", "publish", Verdict.NO_CHANNEL),
        ("This user has no permissions to access the 'q:x' key", "get", Verdict.NO_KEY),
        ("This user has no permissions to run the 'hget' command", "hget", Verdict.NO_COMMAND),
        ("This user has no permissions to access the 'c' channel", "publish", Verdict.NO_CHANNEL),
        # NOPERM as glide reports it: Valkey 9, then Redis 7.0
        ("- PermissionDenied: No permissions to access a key", "get", Verdict.NO_KEY),
        ("- PermissionDenied: No permissions to access a channel", "publish", Verdict.NO_CHANNEL),
        (
            "- PermissionDenied: this user has no permissions to access one of the keys used as"
            " arguments",
            "get",
            Verdict.NO_KEY,
        ),
        (
            "- PermissionDenied: this user has no permissions to access one of the channels"
            " used as arguments",
            "publish",
            Verdict.NO_CHANNEL,
        ),
        # A refused call in a script: Valkey 9, then Redis 7.0
        ("ERR ACL failure in script: No permissions to access a key", "set", Verdict.NO_KEY),
        (
            "ERR The user executing the script can't access at least one of the keys mentioned"
            " in the command arguments",
            "set",
            Verdict.NO_KEY,
        ),
        (
            "ERR The user executing the script can't publish to the channel mentioned in the"
            " command",
            "publish",
            Verdict.NO_CHANNEL,
        ),
        (
            "ERR The user executing the script can't run this command or subcommand",
            "hget",
            Verdict.NO_COMMAND,
        ),
        # Says nothing of why: the command itself when its probe names no key or channel.
        ("ERR This Valkey command is not allowed from script", "subscribe", Verdict.REFUSED),
        ("ERR This Valkey command is not allowed from script", "wait", Verdict.NO_COMMAND),
        # A user name with a tell-tale word in it changes nothing.
        ("User monkey has no permissions to run the 'get' command", "get", Verdict.NO_COMMAND),
    ],
)
def test_refusals_are_read_in_every_wording(text: str, command: str, verdict: Verdict) -> None:
    assert refusal(text, command) is verdict


# -- on the real server --------------------------------------------------------------------


@asynccontextmanager
async def acl_user(valkey: GlideClient, valkey_url: str, line: str) -> AsyncIterator[GlideClient]:
    """A client authenticated as the user ``line`` (an ACL SETUSER) makes; deleted after."""
    words = line.split()
    user, password = words[2], next(w[1:] for w in words if w.startswith(">"))
    assert await valkey.custom_command(words) == "OK"
    parsed = ValkeyURL.parse(valkey_url)
    url = f"valkey://{user}:{password}@{parsed.host}:{parsed.port}/{parsed.database}"
    client = await create_valkey_client(url, request_timeout_ms=5000)
    try:
        yield client
    finally:
        await client.close()
        await valkey.custom_command(["ACL", "DELUSER", user])


def a_user() -> tuple[str, str]:
    return f"perm-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex


async def permissions_of(
    client: GlideClient, keys: KeySchema, user: str | None = None
) -> PermissionFacts:
    """The permissions of ``client``'s user; its name as the CLI passes it (the URL's), or
    None: ACL WHOAMI's, when the user may ask."""

    async def send(command: list[str]) -> object:
        return await client.custom_command(command)

    return await gather_permissions(send, keys.prefix, user=user)


async def test_the_default_user_passes_by_dryrun(valkey: GlideClient, keys: KeySchema) -> None:
    found = await permissions_of(valkey, keys)
    assert (found.method, found.user) == (BY_DRYRUN, "default")
    assert found.verdicts == verdicts()
    assert check_permissions(found).status is Status.OK

    # On a cluster's list too: each probe has its command's arity (DRYRUN checks it).
    async def send(command: list[str]) -> object:
        return await valkey.custom_command(command)

    clustered = await gather_permissions(send, keys.prefix, cluster=True)
    assert clustered.verdicts == dict.fromkeys(acl_commands(cluster=True), Verdict.ALLOWED)


async def test_a_user_from_the_printed_line_passes(
    valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    user, password = a_user()
    line = acl_setuser(user, keys.prefix, password=password)
    # The key every probe names, holding a value of the wrong type for most of them.
    assert await valkey.set(keys.seq, "witness") in ("OK", b"OK")  # bytes on glide 2.3
    async with acl_user(valkey, valkey_url, line) as client:
        gathered = await gather_facts(client, ScriptRegistry(), prefix=keys.prefix, user=user)
        assert gathered.permissions is not None
        assert gathered.permissions.method == BY_SCRIPT
        assert gathered.permissions.verdicts == verdicts()
        check = next(c for c in run_checks(gathered) if c.name == "permissions")
        assert check == Check(
            "permissions",
            Status.OK,
            f"user {user!r} may run all {len(COMMANDS)} commands the cache sends, on"
            f" ~{keys.prefix}:* and &{keys.prefix}:invalidations (asked by a read-only probe"
            " script (redis.acl_check_cmd))",
        )
    # The probes ran nothing on the cache's keys.
    assert await valkey.get(keys.seq) == b"witness"
    assert await valkey.custom_command(["PTTL", keys.seq]) == -1
    await valkey.delete([keys.seq])


@pytest.mark.parametrize("dryrun", [False, True], ids=["probe script", "ACL DRYRUN"])
async def test_a_user_lacking_evalsha_and_subscribe_gets_exactly_those(
    valkey: GlideClient, valkey_url: str, keys: KeySchema, dryrun: bool
) -> None:
    user, password = a_user()
    line = acl_setuser(user, keys.prefix, password=password) + " -evalsha -subscribe"
    if dryrun:  # a user who may ask ACL DRYRUN (and who it is: not told here)
        line += " +acl|dryrun +acl|whoami"
    async with acl_user(valkey, valkey_url, line) as client:
        found = await permissions_of(client, keys, None if dryrun else user)
    assert found.method == (BY_DRYRUN if dryrun else BY_SCRIPT)
    assert found.verdicts == verdicts(evalsha=Verdict.NO_COMMAND, subscribe=Verdict.NO_COMMAND)
    check = check_permissions(found)
    assert check.status is Status.FAIL
    assert check.detail == (
        f"user {user!r} lacks commands evalsha, subscribe (asked by {found.method}). Fix:"
        f" `atomic-cache acl --prefix {keys.prefix} --user {user}` prints the ACL SETUSER"
        " line to run as an administrator"
    )


@pytest.mark.parametrize("dryrun", [False, True], ids=["probe script", "ACL DRYRUN"])
async def test_a_user_without_the_prefix_keys_or_channel_gets_their_patterns(
    valkey: GlideClient, valkey_url: str, keys: KeySchema, dryrun: bool
) -> None:
    user, password = a_user()
    line = acl_setuser(user, keys.prefix, password=password)
    line = line.replace(f"~{keys.prefix}:*", "~elsewhere:*")
    line = line.replace(f"&{keys.prefix}:invalidations", "&elsewhere")
    if dryrun:
        line += " +acl|dryrun +acl|whoami"
    async with acl_user(valkey, valkey_url, line) as client:
        found = await permissions_of(client, keys, user)
    assert found.method == (BY_DRYRUN if dryrun else BY_SCRIPT)
    expected = verdicts(publish=Verdict.NO_CHANNEL, subscribe=Verdict.NO_CHANNEL)
    expected.update(dict.fromkeys(KEYED, Verdict.NO_KEY))
    assert found.verdicts == expected
    assert check_permissions(found).detail.startswith(
        f"user {user!r} lacks keys ~{keys.prefix}:* (refused for all {len(KEYED)} commands"
        f" naming one); &{keys.prefix}:invalidations (refused for all 2 commands naming one)"
    )


async def test_a_read_only_key_pattern_refuses_the_commands_that_write(
    valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    user, password = a_user()
    line = acl_setuser(user, keys.prefix, password=password)
    line = line.replace(f"~{keys.prefix}:*", f"%R~{keys.prefix}:*")
    assert await valkey.set(keys.seq, "witness") in ("OK", b"OK")  # bytes on glide 2.3
    async with acl_user(valkey, valkey_url, line) as client:
        found = await permissions_of(client, keys, user)
    expected = verdicts()
    expected.update(dict.fromkeys(WRITING, Verdict.NO_KEY))
    assert found.verdicts == expected
    assert await valkey.get(keys.seq) == b"witness"
    await valkey.delete([keys.seq])


@pytest.mark.parametrize(
    ("removed", "refused", "allowed"),
    [
        ("-evalsha -evalsha_ro", ["evalsha", "evalsha_ro"], ["ping", "script|exists"]),
        # EVALSHA allowed but nothing to run with it: an unknown SHA answers NOSCRIPT.
        (
            "-script|load -evalsha_ro",
            ["evalsha_ro", "script|load"],
            ["evalsha", "ping", "script|exists"],
        ),
    ],
)
async def test_a_user_who_may_run_no_script_gets_what_harmless_probes_tell(
    valkey: GlideClient,
    valkey_url: str,
    keys: KeySchema,
    removed: str,
    refused: list[str],
    allowed: list[str],
) -> None:
    user, password = a_user()
    line = f"{acl_setuser(user, keys.prefix, password=password)} {removed}"
    async with acl_user(valkey, valkey_url, line) as client:
        found = await permissions_of(client, keys, user)
    assert found.method == BY_PROBES
    expected = dict.fromkeys(COMMANDS, Verdict.UNCHECKED)
    expected |= dict.fromkeys(refused, Verdict.NO_COMMAND)
    expected |= dict.fromkeys(allowed, Verdict.ALLOWED)
    assert found.verdicts == expected
    check = check_permissions(found)
    assert check.status is Status.FAIL
    assert check.detail.startswith(
        f"user {user!r} lacks commands {', '.join(refused)};"
        " not checked: client|info, client|setname, del,"
    )


async def test_the_cli_reports_the_permissions_of_the_url_user(
    valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    parsed = ValkeyURL.parse(valkey_url)
    for extra, status, exit_code in (("", "OK", 0), (" -evalsha -subscribe", "FAIL", 1)):
        user, password = a_user()
        line = acl_setuser(user, keys.prefix, password=password) + extra
        async with acl_user(valkey, valkey_url, line):
            url = f"valkey://{user}:{password}@{parsed.host}:{parsed.port}/{parsed.database}"
            result = await invoke("doctor", "--prefix", keys.prefix, "--valkey-url", url)
        assert result.exit_code == exit_code, result.output
        assert status_of(result.output, "permissions") == status
        if status == "FAIL":
            assert "lacks commands evalsha, subscribe" in " ".join(result.output.split())
