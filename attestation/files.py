"""Reading input files without unbounded work: refuse anything over a limit before reading it whole."""
from __future__ import annotations

from pathlib import Path

from .errors import AttestationError, EvidenceTooLargeError


def read_bounded(path: str | Path, limit: int, what: str, error: type[Exception] = AttestationError,
                 too_large: type[Exception] | None = None) -> bytes:
    """The bytes of ``path``; ``error`` when it cannot be read, ``too_large`` (default ``error``;
    :class:`EvidenceTooLargeError` for evidence) when it is over ``limit`` bytes."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise (too_large or error)(f"{what} {path} is larger than {limit} bytes; refused before parsing")
    return data


__all__ = ["EvidenceTooLargeError", "read_bounded"]
