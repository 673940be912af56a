"""Dependencies point one way (DESIGN.md): app -> symile_clinical, models, preprocessing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"app", "symile_clinical", "preprocessing", "models"}

# What each package may import from the project.
ALLOWED = {
    "symile_clinical": {"symile_clinical", "models"},
    "models": {"models"},
    "preprocessing": {"preprocessing"},
    "app": FIRST_PARTY,
}
# models/ holds the encoders only: torch and torchvision, nothing else third-party.
MODELS_THIRD_PARTY = {"torch", "torchvision", "__future__", "math", "dataclasses", "typing"}
MODELS_THIRD_PARTY |= {"collections", "pathlib", "logging", "functools", "enum"}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names imported anywhere in a file."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_first_party_imports_point_one_way(package: str) -> None:
    for path in sorted((REPO / package).rglob("*.py")):
        wrong = (imported_roots(path) & FIRST_PARTY) - ALLOWED[package]
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_models_import_only_torch() -> None:
    for path in sorted((REPO / "models").rglob("*.py")):
        extra = imported_roots(path) - MODELS_THIRD_PARTY - {"models"}
        assert not extra, f"{path.relative_to(REPO)} imports {sorted(extra)}"
