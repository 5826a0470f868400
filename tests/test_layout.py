"""The folder layout is the architecture: Ray only in the orchestration packages, each layer importing only the
layers below it, files and functions small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers import REPO

PACKAGE = REPO / "minigpt_ray"
# A module may import from its own package and from packages of a lower rank, never from a higher or equal one.
RANKS = {
    "config": 0, "logs": 0, "outputs": 0, "faults": 0, "web": 0, "__init__": 0,
    "modeling": 1, "data": 1,
    "compress": 2, "cluster": 2,
    "export": 3,
    "training": 4, "sweep": 4, "serving": 4,
    "pipeline": 5,
    "cli": 6,
}  # fmt: skip
RAY_ALLOWED = {"training", "sweep", "serving", "pipeline", "cluster"}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _unit(path: Path) -> str:
    """The layer a module belongs to: its subpackage, or its own name for a top-level module."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every imported module name (also inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            if node.module == "minigpt_ray":
                found += [(f"minigpt_ray.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_every_module_belongs_to_a_known_layer():
    assert {_unit(p) for p in MODULES} <= set(RANKS)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_ray_is_imported_only_in_orchestration_packages(path):
    if _unit(path) in RAY_ALLOWED:
        return
    ray_imports = [(name, line) for name, line in _imports(path) if name == "ray" or name.startswith("ray.")]
    assert not ray_imports, f"{path.relative_to(REPO)} imports Ray: {ray_imports}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_layers_import_only_downwards(path):
    unit = _unit(path)
    for name, line in _imports(path):
        if not name.startswith("minigpt_ray."):
            continue
        target = name.split(".")[1]
        if target != unit:
            assert RANKS[target] < RANKS[unit], f"{path.relative_to(REPO)}:{line} ({unit}) imports {name}"


def test_files_and_functions_stay_readable():
    for path in [*MODULES, *sorted((REPO / "bench").glob("*.py")), *sorted((REPO / "tests").rglob("*.py"))]:
        source = path.read_text(encoding="utf-8")
        assert source.count("\n") <= 400, f"{path.relative_to(REPO)} has {source.count(chr(10))} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.relative_to(REPO)}:{node.lineno} {node.name} is {length} lines"


def test_jobs_are_thin_wrappers_over_the_minigpt_command():
    for job in sorted((REPO / "jobs").glob("*.py")):
        code = [line for line in job.read_text().splitlines()[1:] if line.strip()]
        assert code == [
            "import sys",
            "from minigpt_ray.cli import main",
            f'sys.exit(main(["{job.stem}", *sys.argv[1:]]))',
        ]
