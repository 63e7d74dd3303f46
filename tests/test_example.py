"""examples/quickstart.py runs as written, twice in a row, and is what the policy model's
guide (docs/policy.md) shows; the README's own examples compile and import what exists."""

from __future__ import annotations

import ast
import asyncio
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from .test_migrations import fresh_database

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quickstart.py"
RANKED_EXAMPLE = ROOT / "examples" / "ranked_quickstart.py"
RANKED_GUIDE = ROOT / "docs" / "ranked.md"
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "policy.md"

EXPECTED_OUTPUT = [
    "app_config: {'theme': 'dark'}",
    "my_app_configs: ['webui']",
    "cached after invalidate_for_scope: False",
    "read_through: {'theme': 'dark'}",
    "cached after read_through: True",
]

_REGION = re.compile(
    r"^# --- readme: (?P<name>[a-z]+) \(begin\)\n(?P<code>.*?)^# --- readme: (?P=name) \(end\)$",
    re.MULTILINE | re.DOTALL,
)
_PYTHON_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
_TEXT_BLOCK = re.compile(r"^```text\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


RANKED_EXPECTED_OUTPUT = [
    "refused: no allow-list row for ('theme', user): nothing was written",
    "resolve: [('theme', {'font': 'serif', 'color': 'red'}), ('menu', {})]",
    "resolve_public: {'font': 'serif', 'color': 'blue'}",
    "stats: 1 hits",
]


async def run_example(
    valkey_url: str, database_url: str, example: Path = EXAMPLE
) -> tuple[int, str, str]:
    env = {**os.environ, "VALKEY_URL": valkey_url, "DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        # Shows connections or sockets the program forgets to close (on stderr).
        "-W",
        "always::ResourceWarning",
        str(example),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_quickstart_runs_twice_on_the_same_servers(
    valkey_url: str, postgres_server_url: str
) -> None:
    async with fresh_database(postgres_server_url) as database_url:
        # The first run gets the plain URL a user has, the second the asyncpg one.
        plain = make_url(database_url).set(drivername="postgresql")
        for url in (plain.render_as_string(hide_password=False), database_url):
            code, out, err = await run_example(valkey_url, url)
            assert (code, out.splitlines()) == (0, EXPECTED_OUTPUT), err
            assert err == ""


def readme_regions() -> dict[str, str]:
    return {
        match["name"]: match["code"].rstrip() for match in _REGION.finditer(EXAMPLE.read_text())
    }


def test_the_guide_shows_the_example_as_it_is() -> None:
    regions = readme_regions()
    assert sorted(regions) == ["application", "repositories"]
    blocks = [match["code"].rstrip() for match in _PYTHON_BLOCK.finditer(GUIDE.read_text())]
    for name, code in regions.items():
        assert code in blocks, f"the guide has no python block equal to the {name!r} region"
    # In the file's order, as the guide's sections come.
    assert blocks.index(regions["application"]) < blocks.index(regions["repositories"])


def test_the_guide_shows_what_the_example_prints() -> None:
    blocks = [match["code"] for match in _TEXT_BLOCK.finditer(GUIDE.read_text())]
    assert "\n".join(EXPECTED_OUTPUT) + "\n" in blocks


def test_the_readme_examples_compile_and_import_what_exists() -> None:
    """Each python block of the README compiles (top-level await allowed, as in a REPL)
    and every name it imports from atomic_cache exists."""
    blocks = [match["code"] for match in _PYTHON_BLOCK.finditer(README.read_text())]
    assert len(blocks) >= 2  # one example per model
    for block in blocks:
        tree = compile(
            block, "README.md", "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("atomic_cache"):
                module = importlib.import_module(node.module or "")
                missing = [
                    a.name
                    for a in node.names
                    if not hasattr(module, a.name)
                    and importlib.util.find_spec(f"{node.module}.{a.name}") is None
                ]
                assert missing == [], f"{node.module} has no {missing}"


async def test_the_ranked_quickstart_runs_twice_on_the_same_servers(
    valkey_url: str, postgres_server_url: str
) -> None:
    async with fresh_database(postgres_server_url) as database_url:
        for _ in range(2):
            code, out, err = await run_example(valkey_url, database_url, RANKED_EXAMPLE)
            assert (code, out.splitlines()) == (0, RANKED_EXPECTED_OUTPUT), err
            assert err == ""


def test_the_ranked_guide_shows_the_example_and_its_output() -> None:
    region = re.search(
        r"^# --- guide: ranked \(begin\)\n(?P<code>.*?)^# --- guide: ranked \(end\)$",
        RANKED_EXAMPLE.read_text(),
        re.MULTILINE | re.DOTALL,
    )
    assert region is not None
    guide = RANKED_GUIDE.read_text()
    blocks = [match["code"].rstrip() for match in _PYTHON_BLOCK.finditer(guide)]
    assert region["code"].rstrip() in blocks
    texts = [match["code"] for match in _TEXT_BLOCK.finditer(guide)]
    assert "\n".join(RANKED_EXPECTED_OUTPUT) + "\n" in texts
