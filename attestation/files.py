"""Reading input files without unbounded work: one bounded reader for every file attestfl's
verifier reads (policies, RIMs, collateral, certificates, evidence, model files); and one way to
replace a file all at once (:func:`write_atomically`).

:func:`read_bounded` (bytes) and :func:`read_bounded_buffer` (a bytearray, for large files:
no copy) open the file with ``O_NONBLOCK`` and check it with ``fstat`` before reading a byte:

* only a regular file is read; a FIFO, socket, device (``/dev/zero``, ``/dev/stdin``), or
  directory is refused at once, never waited on (opening a FIFO without ``O_NONBLOCK``
  blocks until a writer appears);
* a file larger than the limit is refused before it is read;
* the buffer is the file's real size (never the limit), and a file that grows while it is
  read is cut off at the limit and refused.

Every error names the file and what it was for.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from io import FileIO
from pathlib import Path

from .errors import AttestationError, EvidenceTooLargeError

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
#: What is read at once beyond the size ``fstat`` reported (a growing file).
_TAIL_CHUNK = 64 * 1024


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@contextmanager
def open_bounded(
    path: str | Path,
    limit: int,
    what: str,
    error: type[Exception] = AttestationError,
    too_large: type[Exception] | None = None,
) -> Iterator[tuple[FileIO, int]]:
    """``(file, size)`` of a regular file no larger than ``limit``, for readers that stream
    (hashing). Refuses anything else without blocking; see the module docstring."""
    try:
        fd = os.open(os.fspath(path), _OPEN_FLAGS)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise error(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is {_kind(info.st_mode)}, not a regular file; refused unread")
        if info.st_size > limit:
            raise (too_large or error)(
                f"{what} {path} is {info.st_size} bytes, larger than {limit} bytes, the limit for this file; "
                "refused before parsing"
            )
        handle = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle, info.st_size


def read_bounded_buffer(
    path: str | Path,
    limit: int,
    what: str,
    error: type[Exception] = AttestationError,
    too_large: type[Exception] | None = None,
) -> bytearray:
    """The bytes of the regular file ``path`` in a bytearray of the file's size (no copy);
    ``error`` when it cannot be read or is not a regular file, ``too_large`` (default
    ``error``) when it is over ``limit`` bytes."""
    with open_bounded(path, limit, what, error, too_large) as (handle, size):
        buffer = bytearray(size)
        view = memoryview(buffer)
        filled = 0
        try:
            while filled < size:
                with view[filled:] as rest:
                    count = handle.readinto(rest)
                if not count:  # the file shrank while it was read
                    break
                filled += count
            view.release()
            del buffer[filled:]
            while True:  # the file may have grown since fstat
                tail = handle.read(min(_TAIL_CHUNK, limit + 1 - len(buffer)))
                if not tail:
                    break
                buffer += tail
                if len(buffer) > limit:
                    raise (too_large or error)(
                        f"{what} {path} grew past the {limit}-byte limit while it was read; refused"
                    )
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    return buffer


def read_bounded(
    path: str | Path,
    limit: int,
    what: str,
    error: type[Exception] = AttestationError,
    too_large: type[Exception] | None = None,
) -> bytes:
    """The bytes of ``path``; ``error`` when it cannot be read or is not a regular file,
    ``too_large`` (default ``error``; :class:`EvidenceTooLargeError` for evidence) when it is
    over ``limit`` bytes."""
    return bytes(read_bounded_buffer(path, limit, what, error, too_large))


__all__ = ["EvidenceTooLargeError", "open_bounded", "read_bounded", "read_bounded_buffer"]


def write_atomically(path: str | Path, data: bytes | bytearray | memoryview | str, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` all at once: a reader (or a crash) sees the old file or the
    new one, never a part. Written to a unique temporary file beside it (so concurrent writers do
    not share one), fsynced, renamed over ``path``, and the directory fsynced (``durable``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
