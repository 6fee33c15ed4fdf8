"""The shape of the code, checked: the layers of docs/architecture.md hold in the imports
(import-linter, contracts in pyproject.toml) with no import of vmplane inside a function to
get round them, and ruff and mypy pass with the settings pyproject.toml gives them. Each tool
runs as a subprocess of this interpreter, so the versions pinned in the `test` extra are the
ones that judge, over this checkout's `src/`."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAZY_ALLOWED = {"vmplane/cli/main.py"}
"""modules that may import vmplane inside a function: the CLI's commands import the process
they run, so that `vmplane --help` starts in 0.11 s rather than 1.6 s (see cli/main.py)"""


def run(argv: list[str], timeout: float = 240) -> None:
    """Run a checker from the repository's root; fail with everything it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # this checkout's vmplane, not an installed one
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv[:3])} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}", pytrace=False)


def test_imports_follow_the_layers() -> None:
    lint_imports = BIN / "lint-imports"  # import-linter has no `python -m` entry point
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: install the test extra (pip install -e '.[test]')")
    run([str(lint_imports), "--no-cache"])


def test_no_vmplane_import_inside_a_function() -> None:
    """An import inside a function hides an edge of the import graph from a reader (and once
    hid cycles between layers); outside LAZY_ALLOWED, vmplane's modules import each other at
    the top. (Third-party imports inside functions, for import time, are not this test's
    business.)"""
    src = ROOT / "src"
    found = []
    for path in sorted((src / "vmplane").rglob("*.py")):
        rel = path.relative_to(src).as_posix()
        if rel in LAZY_ALLOWED or "/migrations/" in rel:
            continue
        tree = ast.parse(path.read_text(), rel)
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").split(".")[0] == "vmplane"):
                    found.append(f"{rel}:{node.lineno}: from {'.' * node.level}{node.module or ''} import ...")
                elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "vmplane" for a in node.names):
                    found.append(f"{rel}:{node.lineno}: import {', '.join(a.name for a in node.names)}")
    assert not found, "imports of vmplane inside functions (import at the top, or fix the layer that needs it):\n" + "\n".join(sorted(set(found)))


def test_ruff() -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "bench"])


def test_mypy() -> None:
    # the settings (files, strict modules) are pyproject.toml's; no cache, so a run never
    # trusts what another checkout left behind
    run([sys.executable, "-m", "mypy", "--cache-dir", os.devnull])
