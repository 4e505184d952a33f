"""The result types shared by every platform: reasons and the appraisal verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reason:
    """One failed check: ``check`` is a stable dotted identifier, ``message`` says why."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


@dataclass(frozen=True)
class Appraisal:
    """The verdict on one piece of evidence.

    ``accepted`` is true only when ``reasons`` is empty: every failed check, of
    authenticity and of policy alike, is listed there, never only the first.
    ``claims`` are reported whenever the evidence parsed, accepted or not.
    """

    platform: str
    claims: dict[str, Any]
    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "platform": self.platform,
            "claims": self.claims,
            "reasons": [str(r) for r in self.reasons],
            "warnings": list(self.warnings),
        }
