"""The shape of the code, checked: the layers of docs/architecture.md hold in the imports
(import-linter, contracts in pyproject.toml), and ruff and mypy pass with the settings
pyproject.toml gives them. Each runs as a subprocess of this interpreter, so the versions
pinned in the `test` extra are the ones that judge, over this checkout's `src/`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


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


def test_ruff() -> None:
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests", "bench"])


def test_mypy() -> None:
    # the settings (files, strict modules) are pyproject.toml's; no cache, so a run never
    # trusts what another checkout left behind
    run([sys.executable, "-m", "mypy", "--cache-dir", os.devnull])
