"""The layout's rules, checked on the source: no import circle between modules (imports
inside functions count too), `cancerweb/` is configuration and imports no app code
outside urls.py, `diagnostics/ml/` imports no Django, and the squashed migrations keep
the audit trail append-only and the role groups complete."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
from django.db import connection

from accounts.roles import ROLE_PERMISSIONS
from tests.helpers import ROOT

PACKAGES = ("accounts", "core", "diagnostics", "cancerweb")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "migrations" in rel.parts:
                continue
            name = ".".join(rel.with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in _imports(path, module)}
        # A package's own __init__ is not an edge: importing a submodule runs it first.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    return graph


def test_no_import_circle_between_modules() -> None:
    graph = _graph()
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_cancerweb_is_configuration_and_imports_no_app_code() -> None:
    graph = _graph()
    offenders = {
        module: sorted(t for t in targets if t.split(".")[0] in ("accounts", "core", "diagnostics"))
        for module, targets in graph.items()
        if module.startswith("cancerweb") and module != "cancerweb.urls"
    }
    assert not {m: t for m, t in offenders.items() if t}


def test_the_ml_core_imports_no_django() -> None:
    modules = _modules()
    for module, path in modules.items():
        if module.startswith("diagnostics.ml"):
            django = sorted(n for n in _imports(path, module) if n.split(".")[0] in ("django", "rest_framework"))
            assert not django, f"{module} imports {django}"
            apps = sorted(n for n in _imports(path, module) if n.split(".")[0] in ("accounts", "core", "cancerweb"))
            assert not apps, f"{module} imports {apps}"


def test_the_interop_formats_import_no_django() -> None:
    """The DICOMweb, SR and FHIR builders are plain functions of their inputs."""
    for module, path in _modules().items():
        if module.startswith("diagnostics.interop"):
            banned = sorted(
                n
                for n in _imports(path, module)
                if n.split(".")[0] in ("django", "rest_framework", "accounts", "cancerweb")
            )
            assert not banned, f"{module} imports {banned}"
            assert not any(
                n.startswith("diagnostics.") and not n.startswith("diagnostics.interop") for n in _imports(path, module)
            )


@pytest.mark.django_db
def test_migrations_make_the_audit_trail_append_only_and_create_the_roles() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'accounts_auditevent'::regclass AND NOT tgisinternal"
        )
        assert [row[0] for row in cursor.fetchall()] == ["accounts_auditevent_append_only"]
    # The migration's frozen copy of the roles is what a new installation gets: it must
    # still say what accounts.roles says.
    frozen = {r: list(p) for r, p in importlib.import_module("accounts.migrations.0002_roles").ROLE_PERMISSIONS.items()}
    # Later migrations that grant a role a new permission keep their own frozen addition.
    for later in ("diagnostics.migrations.0005_reader_studies",):
        for role, perms in importlib.import_module(later).ADDED_ROLE_PERMISSIONS.items():
            frozen[role] += perms
    assert {role: sorted(perms) for role, perms in frozen.items()} == {
        role.value: sorted(perms) for role, perms in ROLE_PERMISSIONS.items()
    }
