"""The tree and its rules (docs/architecture.md): dependencies point one way.

Packages: app -> symile_clinical, models, preprocessing; symile_clinical knows no MIMIC format;
preprocessing uses only symile_clinical's torch-free formats and errors; models only torch.
Sub-packages of symile_clinical: formats and objective import no other sub-package; evaluation,
search and the web app never import training; only app/workflows imports both preprocessing
and training. No package has an import cycle inside it, lazy (function-level) imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "symile_clinical", "preprocessing", "models")
FIRST_PARTY = set(PACKAGES)

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
    "symile_clinical.formats",
    "symile_clinical.formats.atomic",
    "symile_clinical.formats.dataset_dir",
    "symile_clinical.formats.folder",
}
# symile_clinical's sub-packages and the other sub-packages each may import.
LIBRARY_RULES = {
    "formats": set(),
    "objective": set(),
    "training": {"formats", "objective", "evaluation"},
    "evaluation": {"formats", "objective"},
    "search": {"formats", "objective", "evaluation"},
    "experiments": {"formats", "objective", "training", "evaluation"},
    "commands": {"formats", "objective", "training", "evaluation", "search", "experiments"},
}
# Top-level modules of symile_clinical that every sub-package may use.
LIBRARY_SHARED = {"errors", "cli"}
# Where the trainer may not be imported: what serves or measures a trained model.
NOT_THE_TRAINER = ["symile_clinical/evaluation", "symile_clinical/search", "app/web"]
# models/ holds the encoders only: torch and torchvision, nothing else third-party.
MODELS_THIRD_PARTY = {"torch", "torchvision", "__future__", "math", "dataclasses", "typing"}
MODELS_THIRD_PARTY |= {"collections", "pathlib", "logging", "functools", "enum", "pickle"}


def module_name(path: Path) -> str:
    """Dotted module name of a file under REPO (a package's __init__ is the package)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Full dotted names a file imports, anywhere (lazily or not); `from pkg import mod` counts
    as importing pkg.mod when pkg/mod is a module of the project."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            for alias in node.names:
                sub = REPO / node.module.replace(".", "/") / alias.name
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    modules.add(f"{node.module}.{alias.name}")
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
        if not path.is_file():
            path = REPO / module.replace(".", "/") / "__init__.py"
        top_level = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                top_level |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top_level |= {node.module, node.module.split(".")[0]}
        assert "torch" not in top_level, f"{module} imports torch at module level"
        outside = {m for m in top_level if m.startswith("symile_clinical.")}
        assert outside <= PREPROCESSING_MAY_USE, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("sub", sorted(LIBRARY_RULES))
def test_library_sub_packages_import_by_role(sub: str) -> None:
    allowed = LIBRARY_RULES[sub] | {sub} | LIBRARY_SHARED
    for path in _files(f"symile_clinical/{sub}"):
        used = {
            m.split(".")[1]
            for m in imported_modules(path)
            if m.startswith("symile_clinical.") and m.count(".") >= 1
        }
        assert used <= allowed, f"{path.relative_to(REPO)} imports {sorted(used - allowed)}"


@pytest.mark.parametrize("where", NOT_THE_TRAINER)
def test_serving_and_measuring_never_import_training(where: str) -> None:
    for path in _files(where):
        wrong = {m for m in imported_modules(path) if m.startswith("symile_clinical.training")}
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_only_workflows_tie_preprocessing_to_training() -> None:
    for path in _files("app"):
        used = imported_modules(path)
        both = any(m.startswith("preprocessing") for m in used) and any(
            m.startswith("symile_clinical.training") for m in used
        )
        if both:
            assert path.relative_to(REPO).parts[:2] == ("app", "workflows"), path


def test_models_import_only_torch() -> None:
    for path in _files("models"):
        extra = imported_roots(path) - MODELS_THIRD_PARTY - {"models"}
        assert extra == set(), f"{path.relative_to(REPO)} imports {sorted(extra)}"


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (a package import names its
    __init__, which is a module of its own)."""
    files = {module_name(path): path for path in _files(package)}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_modules(path):
            # `import a.b.c` needs a, a.b and a.b.c; the deepest that is a module counts.
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of a graph as a path [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    graph = _import_graph(package)
    # A package's __init__ re-exporting its modules is not a cycle of the modules themselves.
    for name in graph:
        if (REPO / name.replace(".", "/") / "__init__.py").is_file():
            graph[name] = set()
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_public_api_resolves_without_loading_torch_for_errors() -> None:
    import subprocess
    import sys

    import symile_clinical

    for name in symile_clinical.__all__:
        assert getattr(symile_clinical, name) is not None, name
    # preprocessing imports symile_clinical.errors: the package's __init__ must not pull torch.
    code = "import sys, symile_clinical.errors; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_only_the_generator_knows_the_answer_key() -> None:
    """The product path reads only what a real hospital has: outside preprocessing/synth no
    module names synth_truth, imports TRUTH_FILE or the oracle labels; and the generator
    shares only MIMIC's formats (preprocessing.layout) with the label readers, not their code."""
    for package in PACKAGES:
        for path in _files(package):
            if path.is_relative_to(REPO / "preprocessing" / "synth"):
                used = imported_modules(path)
                assert not any(m.startswith("preprocessing.label_sources") for m in used), path
                continue
            text = path.read_text()
            assert "synth_truth" not in text and "TRUTH_FILE" not in text, path
            assert not any("oracle_labels" in m for m in imported_modules(path)), path
