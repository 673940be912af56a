"""Dependencies point one way (DESIGN.md): app -> symile_clinical, models, preprocessing.

preprocessing may use exactly four torch-free homes of symile_clinical (the error base, the
atomic writes, the dataset directory it writes and its folder base); evaluation, the index
and the app never import the trainer.
"""

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
    "preprocessing": {"preprocessing", "symile_clinical"},
    "app": FIRST_PARTY,
}
# The symile_clinical modules preprocessing may import: none of them imports torch.
PREPROCESSING_MAY_USE = {
    "symile_clinical.errors",
    "symile_clinical.atomic",
    "symile_clinical.dataset_dir",
    "symile_clinical.format_dir",
}
# Modules that must not import symile_clinical.train (its training loop and optimiser):
# evaluation, the index and the served app. app/demo.py orchestrates the demo's training
# runs and is the one module of app/ that drives the trainer.
NOT_THE_TRAINER = ["symile_clinical/evaluate.py", "symile_clinical/index.py", "app"]
TRAINER_DRIVERS = {"app/demo.py"}
# models/ holds the encoders only: torch and torchvision, nothing else third-party.
MODELS_THIRD_PARTY = {"torch", "torchvision", "__future__", "math", "dataclasses", "typing"}
MODELS_THIRD_PARTY |= {"collections", "pathlib", "logging", "functools", "enum", "pickle"}


def imported_modules(path: Path) -> set[str]:
    """Full dotted names of the modules a file imports (anywhere, lazily or not)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


def imported_roots(path: Path) -> set[str]:
    """Top-level module names imported anywhere in a file."""
    return {name.split(".")[0] for name in imported_modules(path)}


def _files(where: str) -> list[Path]:
    target = REPO / where
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_first_party_imports_point_one_way(package: str) -> None:
    for path in _files(package):
        wrong = (imported_roots(path) & FIRST_PARTY) - ALLOWED[package]
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_preprocessing_uses_only_the_torch_free_homes() -> None:
    for path in _files("preprocessing"):
        used = {m for m in imported_modules(path) if m.split(".")[0] == "symile_clinical"}
        assert used <= PREPROCESSING_MAY_USE, f"{path.relative_to(REPO)} imports {sorted(used)}"
    for module in PREPROCESSING_MAY_USE:
        path = REPO / (module.replace(".", "/") + ".py")
        top_level = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top_level |= {node.module, node.module.split(".")[0]}
        assert "torch" not in top_level, f"{module} imports torch at module level"
        assert not {m for m in top_level if m.startswith("symile_clinical.")} - {
            *PREPROCESSING_MAY_USE
        }, f"{module} imports a symile_clinical module outside the torch-free homes"


@pytest.mark.parametrize("where", NOT_THE_TRAINER)
def test_evaluation_index_and_app_never_import_the_trainer(where: str) -> None:
    for path in _files(where):
        if str(path.relative_to(REPO)) in TRAINER_DRIVERS:
            continue
        assert "symile_clinical.train" not in imported_modules(path), path.relative_to(REPO)


def test_models_import_only_torch() -> None:
    for path in _files("models"):
        extra = imported_roots(path) - MODELS_THIRD_PARTY - {"models"}
        assert extra == set(), f"{path.relative_to(REPO)} imports {sorted(extra)}"
