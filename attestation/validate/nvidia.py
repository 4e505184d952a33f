"""Appraisal of nvidia-gpu evidence against a policy (placeholder until implemented)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import reject_unknown_keys

SECTION = "nvidia-gpu"


@dataclass(frozen=True)
class GpuPolicy:
    """The [nvidia-gpu] section of a policy."""

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> "GpuPolicy":
        reject_unknown_keys(table, (), SECTION)
        return cls()
