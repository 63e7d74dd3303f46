"""Every public name is documented: each name of ``atomic_cache.__all__``,
``atomic_cache.policy.__all__`` and ``atomic_cache.ranked.__all__``, and every public
method and property (no leading underscore) that this package defines on those classes,
has a docstring of its own. The API reference is generated from them (mkdocstrings).

A class or function carries ``__doc__``; a constant, a table or a tuple cannot, so it is
documented as mkdocstrings reads it: a string right after its assignment in the module
that defines it."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest

PACKAGES = ("atomic_cache", "atomic_cache.policy", "atomic_cache.ranked")


def exported() -> list[tuple[str, str, object]]:
    """(package, name, value) of every name the packages export."""
    found = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        found += [(package, name, getattr(module, name)) for name in module.__all__]
    return found


EXPORTED = exported()
CLASSES = {
    f"{value.__module__}.{value.__qualname__}": value
    for *_, value in EXPORTED
    if inspect.isclass(value)
}


def own_docstring(value: object) -> str:
    """The docstring ``value`` itself carries: not a base class's, not the signature a
    dataclass writes into ``__doc__`` when its class has none."""
    if not inspect.isclass(value):
        return (getattr(value, "__doc__", None) or "").strip()
    doc = (vars(value).get("__doc__") or "").strip()
    if dataclasses.is_dataclass(value) and doc.startswith(f"{value.__name__}("):
        return ""
    return doc


def _assigned(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.Assign):
        return {target.id for target in node.targets if isinstance(target, ast.Name)}
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return {node.target.id}
    return set()


def attribute_docstring(module_name: str, name: str) -> str:
    """The string after ``name``'s assignment in the module that defines it, following
    the ``from ... import`` chain of the packages that re-export it."""
    module = importlib.import_module(module_name)
    assert module.__file__ is not None
    path = Path(module.__file__)
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    body = ast.parse(path.read_text()).body
    for index, node in enumerate(body):
        if name in _assigned(node):
            following = body[index + 1] if index + 1 < len(body) else None
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                return str(following.value.value).strip()
            return ""
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    source = importlib.util.resolve_name(
                        "." * node.level + (node.module or ""), package
                    )
                    return attribute_docstring(source, alias.name)
    raise AssertionError(f"{name} is neither assigned nor imported in {module_name}")


@pytest.mark.parametrize(
    ("package", "name", "value"), EXPORTED, ids=[f"{p}.{n}" for p, n, _ in EXPORTED]
)
def test_every_exported_name_has_a_docstring(package: str, name: str, value: object) -> None:
    if inspect.isclass(value) or inspect.isfunction(value):
        doc = own_docstring(value)
    else:
        doc = attribute_docstring(package, name)
    assert doc, f"{package}.{name} has no docstring"


def public_members(cls: type) -> dict[str, object]:
    """The public methods and properties this package defines on ``cls`` or on its bases
    (its own and the package's, not pydantic's, an Enum's or object's), by name."""
    members: dict[str, object] = {}
    for klass in reversed(inspect.getmro(cls)):
        if not klass.__module__.startswith("atomic_cache"):
            continue
        for name, member in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if inspect.isfunction(member) or isinstance(member, property):
                members[name] = member  # a subclass's own definition wins
    return members


@pytest.mark.parametrize("cls", CLASSES.values(), ids=list(CLASSES))
def test_every_public_method_and_property_has_a_docstring(cls: type) -> None:
    undocumented = [
        name for name, member in public_members(cls).items() if not own_docstring(member)
    ]
    assert undocumented == [], f"{cls.__qualname__}: no docstring on {undocumented}"


def test_the_walk_sees_what_it_checks() -> None:
    """The walk finds the methods and properties it must (a walk that found none would
    pass for nothing), and leaves pydantic's and object's out."""
    from atomic_cache import AppConfigFragmentRepository, CacheLookup, LocalCache

    assert {"app_config", "bulk_create_my", "start", "stats"} <= set(
        public_members(AppConfigFragmentRepository)
    )
    assert set(public_members(CacheLookup)) == {"hit"}
    assert {"get", "size_bytes", "serving", "create"} <= set(public_members(LocalCache))
    assert len(EXPORTED) >= 60
    assert not own_docstring(dataclasses.make_dataclass("Bare", [("x", int)]))


def test_bulk_failure_names_every_failure_code() -> None:
    from atomic_cache import BulkFailure
    from atomic_cache.policy.validation import FAILURE_CODES

    doc = own_docstring(BulkFailure)
    assert [code for code in sorted(FAILURE_CODES) if f"``{code}``" not in doc] == []
