"""Shared test fixtures: paths to the real hardware vectors in ../shared/vectors/."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT.parent / "shared" / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    assert VECTORS.is_dir(), f"real evidence vectors are expected at {VECTORS}"
    return VECTORS
