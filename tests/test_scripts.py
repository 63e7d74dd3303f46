"""ScriptRegistry: packaged scripts, load once, errors, reload after a flush."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
from glide import GlideClient

from atomic_cache import AppConfigFragmentCacheSource, ScriptLoadError, ScriptRegistry
from atomic_cache.cache.scripts import packaged_scripts_dir

from .valkey_tools import monitor

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"get", "get_all", "set", "invalidate", "reclaim", "reset", "sweep"}
LEGACY = {"get", "get_all", "set", "invalidate"}  # the bench's one-script design
# One job per script, each short enough to read in a minute.
MAX_SCRIPT_LINES = 150


def test_registry_reads_every_packaged_script() -> None:
    registry = ScriptRegistry()
    assert set(registry.scripts) == EXPECTED
    assert {p.stem for p in (ROOT / "lua").glob("*.lua")} == EXPECTED
    assert {name for name, script in registry.scripts.items() if script.read_only} == {
        "get",
        "get_all",
    }


def test_the_library_scripts_are_short_and_none_is_legacy() -> None:
    root = Path(str(packaged_scripts_dir()))
    assert not (root / "legacy").exists()
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.lua")) == sorted(
        f"{name}.lua" for name in EXPECTED
    )
    lengths = {p.name: len(p.read_text().splitlines()) for p in root.glob("*.lua")}
    assert max(lengths.values()) <= MAX_SCRIPT_LINES, lengths


def test_the_bench_keeps_its_own_copy_of_the_legacy_scripts() -> None:
    from atomic_cache.tools.bench.legacy import legacy_scripts

    legacy = legacy_scripts()
    assert set(legacy.scripts) == LEGACY
    library = ScriptRegistry()
    assert not {s.sha1 for s in legacy.scripts.values()} & {
        s.sha1 for s in library.scripts.values()
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_script_header_states_keys_argv_and_reply(name: str) -> None:
    source = (Path(str(packaged_scripts_dir())) / f"{name}.lua").read_text()
    header = "\n".join(line for line in source.splitlines() if line.startswith("--"))
    for word in ("KEYS[1]", "ARGV", "Reply"):
        assert word in header, f"{name}.lua header lacks {word}"


def test_unknown_script_name() -> None:
    with pytest.raises(KeyError, match="nope"):
        ScriptRegistry()["nope"]


def test_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ScriptLoadError, match=r"no \.lua scripts"):
        ScriptRegistry(tmp_path)


async def test_rejected_script_fails_load_with_file_and_reason(
    tmp_path: Path, valkey: GlideClient
) -> None:
    (tmp_path / "fine.lua").write_text("return 1\n")
    (tmp_path / "broken.lua").write_text("return (\n")
    with pytest.raises(
        ScriptLoadError, match=r"broken\.lua was rejected by the server: .*Error compiling"
    ):
        await ScriptRegistry(tmp_path).load(valkey)


async def test_load_puts_every_script_on_the_server(valkey: GlideClient) -> None:
    registry = ScriptRegistry()
    await valkey.custom_command(["SCRIPT", "FLUSH"])
    assert await registry.loaded(valkey) == dict.fromkeys(sorted(EXPECTED), False)
    await registry.load(valkey)
    assert await registry.loaded(valkey) == dict.fromkeys(sorted(EXPECTED), True)


async def test_calls_go_by_sha_and_survive_a_flush(
    cache: AppConfigFragmentCacheSource,
    registry: ScriptRegistry,
    valkey: GlideClient,
    valkey_url: str,
) -> None:
    user = uuid.uuid4()
    async with monitor(valkey_url, valkey) as sent:
        await cache.lookup(user, "webui")
    assert sent.commands[0].startswith(f'"EVALSHA_RO" "{registry["get"].sha1}"')

    await valkey.custom_command(["SCRIPT", "FLUSH"])
    before = registry.reloads
    async with monitor(valkey_url, valkey) as sent:
        found = await cache.lookup(user, "webui")
    assert found.fill_token is not None
    assert registry.reloads == before + 1
    # The failed call, one SCRIPT LOAD per script, the retried call; never the source per call.
    assert sent.names == ["EVALSHA_RO", *["SCRIPT"] * len(EXPECTED), "EVALSHA_RO"]
    assert await registry.loaded(valkey) == dict.fromkeys(sorted(EXPECTED), True)


async def test_integer_arguments_are_converted(
    registry: ScriptRegistry, valkey: GlideClient
) -> None:
    key = f"t{uuid.uuid4().hex}"
    reply = await registry.call(
        valkey,
        "invalidate",
        [f"{key}:seq", f"{key}:names", f"{key}:gc"],
        [key, 60_000, 60_000, 100, False, "public", "public", -1],
    )
    # Nothing deleted, nothing queued, the sequence of the life this call began, no reset.
    sequence = await valkey.hget(f"{key}:seq", "n")
    assert sequence is not None and reply == [0, 0, int(sequence), 0]


def test_wheel_carries_the_lua_scripts(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("atomic_cache-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        library = {
            name: len(archive.read(name).decode().splitlines())
            for name in names
            if name.startswith("atomic_cache/lua/") and name.endswith(".lua")
        }
    # The library's scripts, and no other: the legacy ones ship with the bench alone.
    assert set(library) == {f"atomic_cache/lua/{name}.lua" for name in EXPECTED}
    assert max(library.values()) <= MAX_SCRIPT_LINES, library
    bench = {n for n in names if n.endswith(".lua") and not n.startswith("atomic_cache/lua/")}
    assert bench == {f"atomic_cache/tools/bench/legacy_lua/{name}.lua" for name in LEGACY}
    assert "atomic_cache/py.typed" in names
