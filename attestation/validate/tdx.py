"""Appraisal of tdx evidence against a policy (placeholder until implemented)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import reject_unknown_keys

SECTION = "tdx"


@dataclass(frozen=True)
class TdxPolicy:
    """The [tdx] section of a policy."""

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> "TdxPolicy":
        reject_unknown_keys(table, (), SECTION)
        return cls()
