"""The atomic-cache command on real servers: scripts, doctor, bench, and clean exits.

Each command runs its own event loop (asyncio.run), so CliRunner runs in a worker thread
while the test awaits it on the session loop. That is not a detail: glide 2.6 delivers
every client's replies through one process-wide pipe read by the first event loop that
created a client, until that loop is closed; a command run on the main thread while the
session loop (which owns the reader) is idle would wait forever, past its own timeouts.
With the session loop running, glide hands replies over to the command's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from glide import GlideClient

from atomic_cache import ScriptRegistry
from atomic_cache.glide_compat import HAS_CLIENT_CIRCUIT_BREAKER
from atomic_cache.tools import embedded
from atomic_cache.tools.bench import SCENARIOS, TINY, cluster, local
from atomic_cache.tools.bench.plot import png_size
from atomic_cache.tools.cli import main
from atomic_cache.tools.embedded import EmbeddedValkey, free_port

from .valkey_tools import keys_under

# Wide enough that no table row wraps: assertions can read one row per line.
WIDE = {"COLUMNS": "250"}


def _invoke(args: list[str], env: dict[str, str | None]) -> Result:
    return CliRunner().invoke(main, args, env={**WIDE, **env})


async def invoke(*args: str, env: dict[str, str | None] | None = None) -> Result:
    return await asyncio.to_thread(_invoke, list(args), env or {})


def status_of(output: str, check: str) -> str:
    match = re.search(rf"│ {re.escape(check)}\s+│ (OK|WARN|FAIL)\s+│", output)
    assert match, f"no {check} row in:\n{output}"
    return match.group(1)


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temp dirs of embedded servers started in this test land here, to be checked."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def assert_no_embedded_leftovers(directory: Path) -> None:
    assert not list(directory.glob("atomic-cache-valkey-*")), "temp dir left behind"
    assert processes_mentioning(str(directory)) == [], "valkey-server left running"


def assert_no_cluster_leftovers(directory: Path) -> None:
    assert not list(directory.glob("atomic-cache-cluster-*")), "cluster temp dir left behind"
    assert processes_mentioning(str(directory)) == [], "cluster node left running"


# -- scripts ------------------------------------------------------------------------------


async def test_scripts_load_then_list_shows_every_script_loaded(valkey_url: str) -> None:
    registry = ScriptRegistry()
    loaded = await invoke("scripts", "load", "--valkey-url", valkey_url)
    assert loaded.exit_code == 0, loaded.output
    for name, script in registry.scripts.items():
        assert re.search(rf"^loaded {name}\s+{script.sha1}$", loaded.output, re.MULTILINE)

    listed = await invoke(
        "--valkey-url", valkey_url, "scripts", "list"
    )  # the group option works too
    assert listed.exit_code == 0, listed.output
    for name, script in registry.scripts.items():
        read_only = r"yes \(EVALSHA_RO\)" if script.read_only else "no"
        row = rf"│ {name}\s+│ {script.sha1}\s+│ {read_only}\s+│ yes\s+│"
        assert re.search(row, listed.output), listed.output
    assert registry["get"].read_only and not registry["set"].read_only


async def test_scripts_list_on_the_embedded_server_shows_none_loaded_and_cleans_up(
    private_tmp: Path,
) -> None:
    listed = await invoke("scripts", "list", env={"VALKEY_URL": None})
    assert listed.exit_code == 0, listed.output
    for name in ScriptRegistry().scripts:
        assert re.search(rf"│ {name}\s+│ [0-9a-f]{{40}}\s+│ .+│ no\s+│", listed.output)
    assert_no_embedded_leftovers(private_tmp)


async def test_scripts_load_fails_naming_the_rejected_script() -> None:
    with EmbeddedValkey(extra_args=["--rename-command", "SCRIPT", ""]) as server:
        result = await invoke("scripts", "load", "--valkey-url", server.url)
    assert result.exit_code == 1
    assert "Error: get.lua was rejected by the server" in result.output
    assert "unknown command 'SCRIPT'" in result.output


async def test_the_command_url_wins_over_the_group_and_environment(valkey_url: str) -> None:
    dead = f"valkey://127.0.0.1:{free_port()}/0"
    result = await invoke(
        "--valkey-url", dead, "scripts", "list", "--valkey-url", valkey_url,
        env={"VALKEY_URL": dead},
    )  # fmt: skip
    assert result.exit_code == 0, result.output


# -- doctor -------------------------------------------------------------------------------


async def test_doctor_exits_0_on_a_healthy_server(valkey_url: str) -> None:
    assert (await invoke("scripts", "load", "--valkey-url", valkey_url)).exit_code == 0
    result = await invoke("doctor", "--valkey-url", valkey_url)
    assert result.exit_code == 0, result.output
    for check in ("server", "commands", "scripts", "maxmemory-policy"):
        assert status_of(result.output, check) == "OK"
    assert status_of(result.output, "replication") in ("OK", "WARN")
    assert re.search(r"(valkey|redis) \d+\.\d+", result.output)


async def test_doctor_warns_on_allkeys_lru_and_fails_only_with_strict(private_tmp: Path) -> None:
    with EmbeddedValkey(extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        result = await invoke("doctor", "--valkey-url", server.url)
        strict = await invoke("doctor", "--strict", "--valkey-url", server.url)
    assert result.exit_code == 0, result.output
    assert status_of(result.output, "maxmemory-policy") == "WARN"
    assert "allkeys-lru" in result.output
    assert status_of(result.output, "server") == "OK"
    assert strict.exit_code == 1
    assert_no_embedded_leftovers(private_tmp)


async def test_doctor_fails_on_a_missing_command() -> None:
    with EmbeddedValkey(extra_args=["--rename-command", "UNLINK", ""]) as server:
        result = await invoke("doctor", "--valkey-url", server.url)
    assert result.exit_code == 1
    assert status_of(result.output, "commands") == "FAIL"
    assert "missing: UNLINK" in result.output


async def test_doctor_fails_when_nothing_answers() -> None:
    port = free_port()
    result = await invoke("doctor", "--valkey-url", f"valkey://user:s3cret@127.0.0.1:{port}/0")
    assert result.exit_code == 1
    # No table of checks that could not run: the one line every command gives.
    assert result.output.startswith(
        f"Error: cannot reach Valkey at valkey://user:***@127.0.0.1:{port}/0: "
    )
    assert len(result.output.splitlines()) == 1
    assert "s3cret" not in result.output


async def test_doctor_on_the_embedded_server(private_tmp: Path) -> None:
    result = await invoke("doctor", env={"VALKEY_URL": None})
    assert result.exit_code == 0, result.output
    assert status_of(result.output, "server") == "OK"
    assert status_of(result.output, "scripts") == "WARN"  # a fresh server holds none
    assert_no_embedded_leftovers(private_tmp)


# -- bench --------------------------------------------------------------------------------


async def test_bench_writes_markdown_json_and_png(
    valkey_url: str, valkey: GlideClient, tmp_path: Path
) -> None:
    out = tmp_path / "results"
    result = await invoke("bench", "--tiny", "--out", str(out), "--valkey-url", valkey_url)
    assert result.exit_code == 0, result.output
    # A picture per scenario, each fit for a screen, and the page that shows them.
    pictures = [f"bench-{scenario.key}.png" for scenario in SCENARIOS]
    assert {path.name for path in out.iterdir()} == {
        "bench.md", "bench.json", "bench-plots.md", *pictures,
    }  # fmt: skip
    for name in pictures:
        width, height = png_size(out / name)
        assert width <= 1600 and height <= 1000, name
    assert result.output.splitlines()[-1] == (
        f"wrote {out / 'bench.md'}, {out / 'bench.json'}, {len(pictures)} plots;"
        f" {out / 'bench-plots.md'} shows them"
    )

    report = json.loads((out / "bench.json").read_text())
    rows = report["rows"]
    scenarios = {row["scenario"] for row in rows}
    for key in ("a", "c", "d", "e", "f", "h", "i", "j", "k", "l", "m", "n"):
        assert any(scenario.startswith(f"{key}. ") for scenario in scenarios), key
    # Scenario l: every plain-SQL write was timed until served, idle and under load.
    served = [row for row in rows if row["scenario"].startswith("l. plain-SQL COMMIT")]
    assert [(row["samples"], row["extra"]["reader_tasks"]) for row in served] == [
        (TINY.follow_writes, 0),
        (TINY.follow_writes, 50),
    ]
    assert {"a. cached read, 1 task", "a. cached read, 50 tasks"} <= scenarios
    assert report["skipped"] == []

    # Every comparison has its baseline and every timed row its percentiles.
    for scenario in scenarios:
        timed = [row for row in rows if row["scenario"] == scenario and row["p99_us"]]
        if scenario.startswith(("a.", "c. cache write")):
            assert sum(row["baseline"] for row in timed) == 1
            assert all(row["p50_us"] <= row["p99_us"] for row in timed)

    # The fill token never lets a stale fill land; each race shape ran at both concurrencies.
    races = [row for row in rows if row["scenario"] == "c. fill vs invalidation races"]
    assert len(races) == 6
    for row in races:
        if "with fill token" in row["variant"]:
            assert row["extra"]["stale_entries"] == 0
        assert row["samples"] == 20

    # Each invalidation, in each design, deleted exactly its users' entries; in the new
    # design none was served once the call returned, and the clean-up left no entry or
    # index key behind.
    fanout = [row["extra"] for row in rows if row["scenario"].startswith("d. ")]
    assert [(extra["users"], extra["scope"], extra["design"]) for extra in fanout] == [
        (users, scope, design)
        for users in (50, 200)
        for scope in ("DOMAIN", "PUBLIC", "USER")
        for design in ("legacy", "new")
        if (scope, design) != ("USER", "legacy")  # USER targets: the new design only
    ]
    assert [extra["deleted"] for extra in fanout] == [250] * 5 + [1000] * 5
    assert all(extra["longest_call_us"] > 0 for extra in fanout)
    # One call per user target, up to MAX_TARGETS_PER_CALL (250) users: 200 users, one.
    assert [extra["calls"] for extra in fanout if extra["design"] == "new"] == [1] * 6
    for extra in (extra for extra in fanout if extra["design"] == "new"):
        assert extra["sampled"] == 5 * min(extra["users"], 200)
        assert extra["served_after_call"] == 0
        assert extra["entries_left"] == 0 and extra["index_keys_left"] == 0

    memory = {row["variant"]: row["extra"] for row in rows if row["scenario"].startswith("e.")}
    assert memory["entry key, MEMORY USAGE"]["bytes_per_entry"] > 0
    assert memory["JSON payload alone"]["bytes_per_entry"] > 0

    costs = {row["variant"]: row["extra"] for row in rows if row["scenario"].startswith("f.")}
    assert "GET x1" in costs["get.lua (get_merged_config)"]["commands_per_call"]
    assert costs["legacy get.lua (1 name)"]["commands_per_call"] == "GET x2"
    assert all(extra["server_us_per_call"] > 0 for extra in costs.values())

    # Invalidations of other users and domains refuse the global epoch's fills only.
    refusals = [row for row in rows if row["scenario"].startswith("h.")]
    assert [row["baseline"] for row in refusals] == [True, False]
    legacy, new = (row["extra"]["refused_fills"] for row in refusals)
    assert new == 0 and legacy > 0
    assert all(row["samples"] == TINY.refusal_fills for row in refusals)

    # The index shrank back once the peak's entries expired.
    peak, final, stamps = (row["extra"] for row in rows if row["scenario"].startswith("i."))
    assert 0 < final["index_bytes"] < peak["index_bytes"]
    assert 0 < peak["live_users"] <= TINY.churn_users
    assert stamps["stamp_keys"] > 0

    # The local cache: every timed local read was a local hit, beside cashews' (the
    # baseline); each way of copying gave a private copy; the reader process dropped
    # every write's entry without a flush; only the announced invalidations PUBLISH.
    hit_rows = [row for row in rows if row["scenario"].startswith(local.HIT_TITLE)]
    assert [(row["variant"], row["baseline"]) for row in hit_rows[:2]] == [
        (local.CASHEWS_HIT, True),
        (local.LOCAL_HIT, False),
    ]
    assert len(hit_rows) == 8
    for row in (row for row in hit_rows if row["variant"] == local.LOCAL_HIT):
        assert row["extra"]["local_hits"] == row["samples"] > 0
        assert row["extra"]["local_misses"] == 0
    copies = [row for row in rows if row["scenario"] == local.COPY_SCENARIO]
    assert len(copies) == 11 and all(row["p50_us"] > 0 for row in copies)
    (window,) = (row for row in rows if row["scenario"] == local.WINDOW_SCENARIO)
    assert window["samples"] == TINY.local_window_writes
    assert (window["extra"]["never_dropped"], window["extra"]["reader_flushes"]) == (0, 0)
    costs_k = {
        row["variant"]: row["extra"] for row in rows if row["scenario"] == local.COST_SCENARIO
    }
    assert len(costs_k) == 6
    for variant, extra in costs_k.items():
        announced = "PUBLISH" in variant
        assert ("PUBLISH x1" in extra["commands_per_call"]) == announced, variant

    markdown = (out / "bench.md").read_text()
    assert "| scenario | variant | n | p50 µs | p99 µs | ops/s | p50 ratio | notes |" in markdown
    assert markdown.count("\n| ") == len(rows) + 1

    # The run left no keys and no changed settings behind.
    assert await keys_under(valkey, report["meta"]["key_prefix"] + "*") == set()
    threshold = await valkey.custom_command(["CONFIG", "GET", "slowlog-log-slower-than"])
    assert threshold != {b"slowlog-log-slower-than": b"0"}


async def test_bench_runs_selected_scenarios_only(valkey_url: str, tmp_path: Path) -> None:
    result = await invoke(
        "bench", "--tiny", "-s", "e", "--out", str(tmp_path), "--valkey-url", valkey_url
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {row["scenario"] for row in rows} == {"e. memory per cached entry"}
    assert [scenario.key for scenario in SCENARIOS] == [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
    ]  # fmt: skip


async def test_bench_cluster_scenario_compares_standalone_and_cluster(
    valkey_url: str, valkey: GlideClient, private_tmp: Path
) -> None:
    out = private_tmp / "results"
    result = await invoke(
        "bench", "--tiny", "-s", "j", "--out", str(out), "--valkey-url", valkey_url
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    assert report["skipped"] == []
    rows = report["rows"]
    hit, tasks, rounds = cluster.HIT_SCENARIO, TINY.tasks, TINY.rounds
    user, domain = cluster.USER_SCENARIO + ", 1 task", cluster.domain_scenario(150) + ", 1 task"
    memory = cluster.memory_scenario(TINY.cluster_users)
    reads = (cluster.STANDALONE, cluster.ON_PRIMARY, cluster.ON_REPLICA)
    invalidating = (cluster.STANDALONE, cluster.WAITING, cluster.NOT_WAITING)
    stored = (cluster.MEMORY_STANDALONE, cluster.MEMORY_PRIMARY, cluster.MEMORY_REPLICA)
    assert [(row["scenario"], row["variant"], row["baseline"]) for row in rows] == [
        *((f"{hit}, 1 task", variant, index == 0) for index, variant in enumerate(reads)),
        *((f"{hit}, {tasks} tasks", variant, index == 0) for index, variant in enumerate(reads)),
        *((user, variant, index == 0) for index, variant in enumerate(invalidating)),
        *((domain, variant, index == 0) for index, variant in enumerate(invalidating)),
        *((memory, variant, index == 0) for index, variant in enumerate(stored)),
    ]
    hits, many, users, domains, memories = (rows[i : i + 3] for i in range(0, 15, 3))
    # Hits: each read counted by the server the row names (the shard's primary, its
    # replica), none missed, the server's CPU per read; under load, what a core serves.
    for row in [*hits, *many]:
        assert row["samples"] == rounds * (TINY.ops_per_round if row in hits else tasks * 2)
        assert 0 < row["p50_us"] <= row["p99_us"] and row["ops_per_s"] > 0
        assert row["extra"]["server_reads"] == row["samples"]
        assert row["extra"]["misses"] == 0
        assert row["extra"]["server_cpu_us_per_read"] > 0
        assert ("one_core_reads_per_s" in row["extra"]) == (row in many)
    assert all(row["extra"]["one_core_reads_per_s"] > 0 for row in many)
    assert [("note" in row["extra"]) for row in [*hits, *many]] == [False] * 5 + [True]
    assert "no scale-out" in str(many[2]["extra"]["note"])
    # Invalidations: every call timed, every covered entry deleted (the DOMAIN's by its
    # background clean-up too: 150 users are past one call's budget), and a WAIT on the
    # shard's primary after each call of the default cluster side, none on the others.
    for row in users:
        calls = rounds * TINY.cluster_user_invalidations
        waits = calls if row["variant"] == cluster.WAITING else 0
        assert row["samples"] == calls
        assert row["extra"] == {"entries_deleted": calls * 5, "waits": waits}
    for row in domains:
        waits = rounds if row["variant"] == cluster.WAITING else 0
        assert row["samples"] == rounds
        assert row["extra"] == {"entries_deleted": rounds * 150 * 5, "waits": waits, "users": 150}
    for row in [*users, *domains]:
        assert 0 < row["p50_us"] <= row["p99_us"] and row["ops_per_s"] > 0
    # Memory: every entry held on each server, its bytes and what a GiB holds.
    for row in memories:
        assert row["samples"] == row["extra"]["entries"] == TINY.cluster_users * 5
        assert row["extra"]["bytes_per_entry"] > 0 and row["extra"]["entries_per_gib"] > 0
        assert row["p50_us"] is None and row["ops_per_s"] is None
    # The cluster is gone with its temp dir; the standalone server keeps no key of the run.
    assert_no_cluster_leftovers(private_tmp)
    assert await keys_under(valkey, report["meta"]["key_prefix"] + "*") == set()


async def test_bench_cluster_scenario_is_skipped_when_no_cluster_starts(
    valkey_url: str, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = private_tmp / "no-valkey-server"
    monkeypatch.setattr(embedded, "valkey_server_binary", lambda: missing)
    out = private_tmp / "results"
    result = await invoke(
        "bench", "--tiny", "-s", "j", "--out", str(out), "--valkey-url", valkey_url
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    assert report["rows"] == []
    (title,) = [scenario.title for scenario in SCENARIOS if scenario.key == "j"]
    why = f"[Errno 2] No such file or directory: '{missing}'"
    assert report["skipped"] == [f"j. {title}: no Valkey Cluster could be started here: {why}"]
    assert_no_cluster_leftovers(private_tmp)


async def test_bench_sql_scenario_compares_cache_and_sql(
    valkey_url: str, database_url: str, tmp_path: Path
) -> None:
    result = await invoke(
        "bench", "--tiny", "-s", "b", "--out", str(tmp_path),
        "--valkey-url", valkey_url, "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert {row["scenario"] for row in rows} == {
        "b. bulk_update_my (1 USER fragment), 1 task",
        f"b. bulk_update_my (1 USER fragment), {TINY.tasks} tasks",
        "b. app_config, 1 task",
        f"b. app_config, {TINY.tasks} tasks",
        "b. my_app_configs (5 names), 1 task",
        f"b. my_app_configs (5 names), {TINY.tasks} tasks",
    }
    assert {row["variant"] for row in rows} == {
        "no cache (SQL only)",
        "cached, invalidation without the outbox (durable=False)",
        "cached, with the outbox (default): + INSERT, + DELETE",
        "SQL merged view (no cache)", "cached app_config", "cached, warm",
    }  # fmt: skip
    assert all(row["samples"] > 0 and row["p50_us"] > 0 for row in rows)


async def test_bench_ranked_scenario_compares_sql_cache_and_local(
    valkey_url: str, database_url: str, tmp_path: Path
) -> None:
    result = await invoke(
        "bench", "--tiny", "-s", "n", "--out", str(tmp_path),
        "--valkey-url", valkey_url, "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["skipped"] == []
    rows = report["rows"]
    timed = [row for row in rows if row["scenario"] != "n. ranked: memory per cached entry"]
    variants = ("SQL (no cache)", "cached (Valkey)", "cached + local cache")
    floor = "one PING through glide (the floor of a Valkey read)"  # beside each resolve
    assert [(row["scenario"], row["variant"], row["baseline"]) for row in timed] == [
        (f"{scenario}, {tasks}", variant, index == 0)
        for scenario, tasks, compared in (
            ("n. ranked resolve (5 names)", "1 task", (*variants, floor)),
            ("n. ranked resolve (5 names)", f"{TINY.tasks} tasks", (*variants, floor)),
            ("n. ranked resolve_public (5 names, anonymous)", "1 task", variants),
        )
        for index, variant in enumerate(compared)
    ]
    assert all(row["samples"] > 0 and row["p50_us"] > 0 for row in timed)
    memory = [row for row in rows if row not in timed]
    assert [row["variant"] for row in memory] == [
        "INFO used_memory delta (value + header + key + index)",
        "entry key, MEMORY USAGE",
    ]
    assert all(row["samples"] == TINY.ranked_users * 5 for row in memory)
    assert all(row["extra"]["bytes_per_entry"] > 0 for row in memory)


async def test_bench_sentinel_scenario_times_a_failover_and_tls(
    valkey_url: str, database_url: str, tmp_path: Path
) -> None:
    result = await invoke(
        "bench", "--tiny", "-s", "m", "--out", str(tmp_path),
        "--valkey-url", valkey_url, "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    failover, plain, tls = rows
    assert failover["samples"] == TINY.failovers == 1
    extra = failover["extra"]
    # No caller failed; the database answered while there was no primary.
    assert extra["errors meanwhile"] == 0 and extra["served by PostgreSQL meanwhile"] > 0
    assert {"kill -> promotion p50 ms", "promotion -> first hit max ms"} <= set(extra)
    assert [(row["variant"], row["baseline"]) for row in (plain, tls)] == [
        ("plain TCP", True),
        ("TLS", False),
    ]
    assert all(row["samples"] > 0 and row["p50_us"] > 0 for row in (plain, tls))


async def test_bench_outage_scenario_compares_dead_and_paused_valkey_with_sql(
    valkey_url: str, database_url: str, private_tmp: Path
) -> None:
    out = private_tmp / "results"
    result = await invoke(
        "bench", "--tiny", "-s", "g", "--out", str(out),
        "--valkey-url", valkey_url, "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    assert report["skipped"] == []
    rows = {(row["scenario"], row["variant"]): row for row in report["rows"]}
    sql, dead, paused, glide = (
        "no cache (SQL merged view)",
        "cache, Valkey dead (breaker)",
        "cache, Valkey paused (breaker)",
        "cache, Valkey paused, glide's client breaker instead",
    )
    scenarios = [
        "g. app_config, Valkey dead or paused, 1 task",
        f"g. app_config, Valkey dead or paused, {TINY.tasks} tasks",
    ]
    # glide's own client-wide breaker exists from glide 2.6: older releases run without it.
    variants = (sql, dead, paused, glide) if HAS_CLIENT_CIRCUIT_BREAKER else (sql, dead, paused)
    assert set(rows) == {(scenario, v) for scenario in scenarios for v in variants}
    assert all(row["samples"] > 0 and row["p50_us"] > 0 for row in rows.values())
    for scenario in scenarios:
        assert rows[scenario, sql]["baseline"]
        assert "bypassed" not in rows[scenario, sql]["extra"]
        for variant in (dead, paused):
            assert not rows[scenario, variant]["baseline"]
            assert rows[scenario, variant]["extra"]["bypassed"] > 0
    # Sequential reads: the breaker opened after its failures, then bypassed the rest.
    for variant in (dead, paused):
        extra = rows[scenarios[0], variant]["extra"]
        assert extra["failed_calls"] >= 3 and extra["breaker_transitions"] >= 1
    # glide's breaker did the refusing there; ours, set never to trip, never moved.
    if HAS_CLIENT_CIRCUIT_BREAKER:
        extra = rows[scenarios[0], glide]["extra"]
        assert extra["failed_calls"] >= 3 and extra["bypassed"] > 0
        assert extra["breaker_transitions"] == 0
    # The servers it killed and paused are gone, with their temp dirs.
    assert_no_embedded_leftovers(private_tmp)


# -- clean exits --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupted_bench_stops_the_embedded_server(tmp_path: Path, how: str) -> None:
    env = {key: value for key, value in os.environ.items() if key != "VALKEY_URL"}
    env["TMPDIR"] = str(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomic_cache.tools.cli",
            "bench",
            "--quick",
            "--out",
            str(tmp_path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
        # A shell starts a foreground job with SIGINT at its default; a test run launched
        # in the background (nohup, &) would pass its ignored SIGINT down instead.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        seen = []
        while time.monotonic() < deadline:  # wait until the bench is under way
            line = process.stderr.readline()
            seen.append(line)
            if "scenario a" in line:
                break
        else:
            pytest.fail("the bench never started:\n" + "".join(seen))
        assert list(tmp_path.glob("atomic-cache-valkey-*")), "no embedded server started"
        # Keep draining stderr, as a terminal would: a full pipe would block the bench
        # on its next log line, and the test would wait on that instead of the exit.
        stderr = process.stderr
        threading.Thread(target=lambda: seen.extend(stderr), daemon=True).start()
        time.sleep(0.5)
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground group
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("the bench did not stop; its last lines:\n" + "".join(seen[-30:]))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert not (tmp_path / "bench.json").exists()
    assert_no_embedded_leftovers(tmp_path)
