"""The least-privilege ACL line (``atomic-cache acl``): a user made from it runs every
cache operation — script loading, reads, fills, invalidations of every scope, clean-up,
an index reset and its sweep, the local cache's subscription — with no fall-through, and
cannot touch a key outside its prefix."""

from __future__ import annotations

import logging
import re
import uuid
from pathlib import Path

import pytest
from glide import GlideClient, RequestError

from atomic_cache import (
    AppConfigData,
    AppConfigFragmentCacheSource,
    KeySchema,
    LocalCache,
    ScopeType,
    ScriptRegistry,
    create_valkey_client,
)
from atomic_cache.cache.client import ValkeyURL
from atomic_cache.tools.acl import acl_commands, acl_setuser
from atomic_cache.tools.doctor.checks import SCRIPT_COMMANDS

from .test_cli import invoke
from .test_local_cache import settled
from .valkey_tools import text

LUA = Path(__file__).resolve().parent.parent / "lua"


def value(user: uuid.UUID, name: str, domain: str = "d") -> AppConfigData:
    return AppConfigData(user_id=user, domain_name=domain, name=name, config={"n": name})


async def test_the_line_covers_every_command_the_scripts_call() -> None:
    # redis.call('X', ...), redis.pcall('X', ...) and pcall(redis.call, 'X', ...)
    called = {
        match.upper()
        for path in LUA.glob("*.lua")
        for match in re.findall(r"redis\.p?call(?:\(|, )'(\w+)'", path.read_text())
    }
    assert {"GET", "ZCARD", "ZSCAN", "LINDEX"} <= called  # both forms are read
    assert {command.upper() for command in called} <= {c.upper() for c in SCRIPT_COMMANDS}
    assert {c.lower() for c in SCRIPT_COMMANDS} <= set(acl_commands())
    assert {"spublish", "ssubscribe", "wait"} <= set(acl_commands(cluster=True))


async def test_the_cli_prints_one_line() -> None:
    result = await invoke("acl", "--prefix", "{app_config}", "--user", "cache", "--cluster")
    assert result.exit_code == 0, result.output
    assert result.output == acl_setuser("cache", "{app_config}", cluster=True) + "\n"
    assert result.output.startswith(
        "ACL SETUSER cache on ~{app_config}:* &{app_config}:invalidations -@all +"
    )
    bad = await invoke("acl", "--prefix", "a b", "--user", "cache")
    assert bad.exit_code == 2 and "no spaces" in bad.output


async def test_a_user_made_from_the_line_runs_everything_and_nothing_else(
    valkey: GlideClient, valkey_url: str, keys: KeySchema
) -> None:
    user_name, password = f"acl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    line = acl_setuser(user_name, keys.prefix, password=password)
    assert await valkey.custom_command(line.split()) == "OK"
    parsed = ValkeyURL.parse(valkey_url)
    url = f"valkey://{user_name}:{password}@{parsed.host}:{parsed.port}/{parsed.database}"
    client = await create_valkey_client(url, request_timeout_ms=5000)
    local = await LocalCache.create(url, keys=keys, check_interval_s=0.2, poll_s=0.02)
    try:
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        cache = AppConfigFragmentCacheSource(client, registry, keys=keys, local_cache=local)
        assert await local.ready(15.0)
        users = [uuid.uuid4() for _ in range(150)]
        await cache.invalidate_for_scope(ScopeType.USER, str(users[0]))  # a first life
        await settled(local, client, keys)
        first = int(text(await client.hget(keys.seq, "n")))
        for user in users:
            token = (await cache.lookup_many(user, ["a", "b"]))["a"].fill_token
            stored = await cache.set_many(user, [value(user, "a"), value(user, "b")], token,
                                          catalogue=["a", "b"])  # fmt: skip
            assert stored
        found = await cache.lookup_all(users[1])
        assert found.names == ["a", "b"] and all(found.values.values())
        assert (await cache.lookup(users[2], "a")).value is not None
        await cache.invalidate_for_scope(ScopeType.USER, str(users[1]))
        await cache.invalidate_for_scope(ScopeType.DOMAIN, "d", ["a"])
        await cache.invalidate_for_policy("b")
        # Each moved the sequence by one: none was refused a command, which a script's
        # pcall would take for a corrupt index and answer with a new life.
        assert int(text(await client.hget(keys.seq, "n"))) == first + 3
        await cache.reclaim()
        await cache.reset_index()  # a new life and its sweep (SCAN) of the prefix
        await cache.reclaim()
        await settled(local, client, keys)
        assert (await cache.lookup(users[3], "a")).value is None
        assert local.counters.flushes.get("subscription_lost", 0) == 0
        with pytest.raises(RequestError, match=r"PermissionDenied|NOPERM|[Nn]o permissions"):
            await client.custom_command(["GET", f"not-{keys.prefix}:x"])
        with pytest.raises(RequestError, match=r"PermissionDenied|NOPERM|[Nn]o permissions"):
            await client.custom_command(["FLUSHALL"])
    finally:
        await local.close()
        await client.close()
        await valkey.custom_command(["ACL", "DELUSER", user_name])


async def test_a_grant_missing_from_the_line_is_said_not_silent(
    valkey: GlideClient, valkey_url: str, keys: KeySchema, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-written ACL without ZCARD: the script's pcall takes the refusal for a corrupt
    index and answers with a new life of the index, which is safe (every older entry is
    refused) but would empty the cache at every such invalidation; it is counted and
    said, naming the ACL."""
    user_name, password = f"acl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    line = acl_setuser(user_name, keys.prefix, password=password) + " -zcard"
    assert await valkey.custom_command(line.split()) == "OK"
    parsed = ValkeyURL.parse(valkey_url)
    url = f"valkey://{user_name}:{password}@{parsed.host}:{parsed.port}/{parsed.database}"
    client = await create_valkey_client(url, request_timeout_ms=5000)
    try:
        registry = ScriptRegistry()
        await registry.load(client, required=True)
        cache = AppConfigFragmentCacheSource(client, registry, keys=keys)
        await cache.invalidate_for_scope(ScopeType.USER, str(uuid.uuid4()))  # no ZCARD
        assert cache.metrics.index_resets == 0
        with caplog.at_level(logging.WARNING, logger="atomic_cache"):
            await cache.invalidate_for_scope(ScopeType.DOMAIN, "d")  # ZCARD of its index
        assert cache.metrics.index_resets == 1
        assert [r.getMessage() for r in caplog.records if "new life" in r.getMessage()] == [
            f"an invalidation under prefix {keys.prefix!r} met a key of another type in the"
            " cache's index, or a command the server refused (an ACL without a grant the"
            " scripts need?): starting a new life of the index"
        ]
    finally:
        await client.close()
        await valkey.custom_command(["ACL", "DELUSER", user_name])
