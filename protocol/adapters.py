"""Adapters (issue 19): a task that federates only a declared subset of a model's tensors.

Fine-tuning a large model with adapters (LoRA, built with ``peft`` or by hand) changes only a
few small tensors; the base model stays frozen at every site. A task declares which tensors are
federated and pins the frozen base by the SHA-256 of its file::

    [task.adapters]
    tensors = ["*.lora_A.*", "*.lora_B.*"]   # exact names or shell-style globs (fnmatch)
    base_sha256 = "<64 hex digits>"         # SHA-256 of the frozen base model file

Only the selected tensors travel: the task's model (what sites download, the model spec they are
told, what they upload and what the aggregator aggregates) is the subset of ``initial_model``
whose names match a pattern. Every pattern must match at least one tensor (a typo selects
nothing and is refused). A site learns the pin from ``GetTask`` (``TaskResponse`` fields 41-42)
and refuses to train on any other base (:func:`check_base`), in one line.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from attestation.errors import EXIT_REFUSED, AttestflError

#: Sane bounds for ``[task.adapters] tensors``.
MAX_PATTERNS = 256
MAX_PATTERN_LENGTH = 512
_HEX64 = re.compile(r"[0-9a-f]{64}")

T = TypeVar("T")


class AdapterError(AttestflError, ValueError):
    """``[task.adapters]`` is unusable, or selects nothing of the model."""


class BaseModelMismatch(AttestflError):
    """The site's frozen base model is not the one the task pins: the site does not train."""

    exit_code = EXIT_REFUSED


@dataclass(frozen=True)
class AdapterSpec:
    """The federated tensors' patterns and the frozen base's SHA-256 (32 bytes)."""

    tensors: tuple[str, ...]
    base_sha256: bytes

    def __post_init__(self) -> None:
        if not self.tensors or len(self.tensors) > MAX_PATTERNS:
            raise AdapterError(f"[task.adapters] tensors: 1 to {MAX_PATTERNS} names or patterns expected")
        for pattern in self.tensors:
            if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_LENGTH:
                raise AdapterError(
                    f"[task.adapters] tensors: expected non-empty strings of at most {MAX_PATTERN_LENGTH} "
                    f"characters, got {pattern!r:.80}"
                )
        if not isinstance(self.base_sha256, bytes) or len(self.base_sha256) != 32:
            raise AdapterError("[task.adapters] base_sha256: expected a SHA-256 digest (32 bytes)")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> AdapterSpec:
        """``[task.adapters]`` as written: ``tensors`` (list of strings) and ``base_sha256`` (hex)."""
        unknown = sorted(set(table) - {"tensors", "base_sha256"})
        if unknown:
            raise AdapterError(f"[task.adapters]: unknown key(s) {', '.join(unknown)}; allowed: base_sha256, tensors")
        tensors = table.get("tensors")
        if not isinstance(tensors, list) or not all(isinstance(t, str) for t in tensors):
            raise AdapterError("[task.adapters] tensors: required: a list of tensor names or glob patterns")
        digest = table.get("base_sha256")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
            raise AdapterError(
                "[task.adapters] base_sha256: required: the SHA-256 of the frozen base model file (64 hex digits)"
            )
        return cls(tuple(tensors), bytes.fromhex(digest))

    def matches(self, name: str) -> bool:
        return any(pattern == name or fnmatch.fnmatchcase(name, pattern) for pattern in self.tensors)

    def select(self, tensors: Mapping[str, T]) -> dict[str, T]:
        """The federated subset of ``tensors``, in their order. Every pattern must match."""
        unmatched = [p for p in self.tensors if not any(p == n or fnmatch.fnmatchcase(n, p) for n in tensors)]
        if unmatched:
            raise AdapterError(
                f"[task.adapters] tensors: {', '.join(repr(p) for p in unmatched[:5])} "
                f"match{'es' if len(unmatched) == 1 else ''} no tensor of the initial model"
            )
        return {name: value for name, value in tensors.items() if self.matches(name)}


def file_sha256(path: str | Path) -> bytes:
    """SHA-256 of a file, read in 1 MiB blocks."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            hasher.update(block)
    return hasher.digest()


def check_base(pinned: bytes, base_sha256: bytes | None, *, where: str = "this site") -> None:
    """Refuse (:class:`BaseModelMismatch`, one line) unless the site's base digest is the pinned one."""
    if base_sha256 is None:
        raise BaseModelMismatch(
            f"the task federates adapters on a frozen base model (SHA-256 {pinned.hex()}) but {where} "
            "declares no base model: refusing to train"
        )
    if base_sha256 != pinned:
        raise BaseModelMismatch(
            f"{where}'s base model has SHA-256 {base_sha256.hex()}, the task pins {pinned.hex()}: refusing to train"
        )


__all__ = ["AdapterError", "AdapterSpec", "BaseModelMismatch", "check_base", "file_sha256"]
