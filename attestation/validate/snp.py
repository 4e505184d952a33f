"""Appraisal of sev-snp evidence against a policy (placeholder until implemented)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .fields import reject_unknown_keys

SECTION = "sev-snp"


@dataclass(frozen=True)
class SnpPolicy:
    """The [sev-snp] section of a policy."""

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> "SnpPolicy":
        reject_unknown_keys(table, (), SECTION)
        return cls()
