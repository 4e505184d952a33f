"""Shared test fixtures: the real hardware vectors copied into tests/vectors/ (see its README
for provenance and licence). Nothing outside the clone is read."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).resolve().parent / "vectors"


@pytest.fixture(scope="session")
def vectors() -> Path:
    assert VECTORS.is_dir(), f"the real evidence vectors are part of the repository: {VECTORS} is missing"
    return VECTORS
