"""The gates, run with the tests (so the README's test command runs them): ruff's lint, ruff's
formatting, mypy (strict on attestation/ and protocol/), and the import contracts (the layers,
native used by the aggregator alone, no aggregator-only dependency in another party, no import
cycles). Each is configured in pyproject.toml; a failure shows the tool's own output.

Run one by hand from the repository root: ``ruff check .``, ``ruff format --check .``,
``mypy``, ``lint-imports``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    """The tool installed beside this Python (the test extra pins it), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def _gate(*command: str) -> None:
    # This tree's packages, whatever else is installed: lint-imports analyses what it imports.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))))
    result = subprocess.run(
        [_tool(command[0]), *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"


def test_ruff_lint() -> None:
    _gate("ruff", "check", "--no-cache", ".")


def test_ruff_format() -> None:
    """Every file as ``ruff format`` writes it (expected to pass once ``ruff format .`` has been
    run on the merged tree; nothing is excluded but generated code, as for the lint)."""
    _gate("ruff", "format", "--check", "--no-cache", ".")


def test_mypy() -> None:
    _gate("mypy")


def test_import_contracts() -> None:
    _gate("lint-imports", "--no-cache")
