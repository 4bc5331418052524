"""The layout shows the architecture: shared/'s packages import only downwards, nothing deployed imports tools/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / "shared"
# Each package may import itself and the packages after it in this list, never the ones before it.
LAYERS = ("api", "bulk", "reset", "platform")
# api and bulk are side by side: callers' ways in, neither imports the other.
SIBLINGS = {frozenset({"api", "bulk"})}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function (lazy imports count too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "shared" and parts[1] in LAYERS else None


def _allowed(importer: str, imported: str) -> bool:
    if importer == imported:
        return True
    if frozenset({importer, imported}) in SIBLINGS:
        return False
    return LAYERS.index(imported) > LAYERS.index(importer)


def test_shared_holds_exactly_the_four_capability_packages() -> None:
    """A newcomer opening shared/ sees four packages, each saying in its docstring what it owns."""
    packages = sorted(p.name for p in SHARED.iterdir() if (p / "__init__.py").exists())
    modules = sorted(p.name for p in SHARED.glob("*.py") if p.name != "__init__.py")
    assert packages == sorted(LAYERS) and modules == []
    for name in LAYERS:
        docstring = ast.get_docstring(ast.parse((SHARED / name / "__init__.py").read_text(encoding="utf-8")))
        assert docstring and 1 <= len(docstring.splitlines()) <= 3, f"shared/{name}/__init__.py says what it owns"


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer: str) -> None:
    """The core imports neither the HTTP API nor bulk; the platform imports nothing of the app."""
    wrong = []
    for path in sorted((SHARED / layer).rglob("*.py")):
        for module in sorted(_imports(path)):
            target = _package_of(module)
            if target is not None and not _allowed(layer, target):
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert wrong == []


def test_nothing_deployed_imports_tools_or_tests() -> None:
    """function_app.py and shared/ are what Azure runs; tools/ (the CLI included) and tests/ stay behind."""
    deployed = [REPO / "function_app.py", *sorted(SHARED.rglob("*.py"))]
    wrong = [
        f"{path.relative_to(REPO)} imports {module}"
        for path in deployed
        for module in sorted(_imports(path))
        if module.split(".")[0] in {"tools", "tests"}
    ]
    assert wrong == []
    assert "azure.functions" not in {m for path in deployed[1:] for m in _imports(path)}


def test_funcignore_keeps_the_command_line_and_caches_out_of_the_package() -> None:
    ignored = set((REPO / ".funcignore").read_text(encoding="utf-8").split())
    assert {"tools", "tests", ".mypy_cache", ".ruff_cache"} <= ignored


def test_the_direction_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a core module importing the HTTP API is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from shared.api.models import ResetStatus\n", encoding="utf-8")
    modules = _imports(bad)
    assert "shared.api.models" in modules and not _allowed("reset", _package_of("shared.api.models") or "")
    assert not _allowed("api", "bulk") and _allowed("bulk", "reset") and not _allowed("platform", "reset")


def test_every_app_error_type_lives_in_the_errors_module() -> None:
    """Error types are declared once, in shared/platform/errors.py, each with its stable code."""
    # The in-memory table's filter parser raises what the SDK's own parser would: a ValueError.
    allowed = {("shared/platform/storage_stub.py", "FilterError")}
    found = set()
    for path in sorted([*SHARED.rglob("*.py"), *(REPO / "tools" / "cli").rglob("*.py")]):
        relative = str(path.relative_to(REPO))
        if relative == "shared/platform/errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ClassDef):
                continue
            names = [node.name] + [base.id for base in node.bases if isinstance(base, ast.Name)]
            if any(name.endswith(("Error", "Exception")) for name in names):
                found.add((relative, node.name))
    assert found == allowed
