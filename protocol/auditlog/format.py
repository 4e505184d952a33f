"""The audit log's formats, shared by the aggregator that writes it, the auditor who verifies
it and any tool that reads it: file names, record framing, entry encoding, the key-binding
nonce, and a bounded reader for its files. The store that appends (locks, fsync, recovery) is
the aggregator's (:mod:`aggregator.audit.log`); the verifier is the auditor's
(:mod:`auditor.verify`).

``entries.log`` and ``heads.log`` hold records ``u32 length (big-endian) || payload ||
SHA-256(length || payload)``; an entry's payload is the canonical CBOR of ``{"index", "kind",
"time", "fields"}``, a head's the canonical CBOR of a signed tree head
(:mod:`protocol.auditlog.heads`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from attestation.errors import AttestflError
from attestation.files import read_bounded

ENTRIES_FILE = "entries.log"
HEADS_FILE = "heads.log"
KEY_BINDING_LABEL = b"attestfl/v1/audit-log-key\x00"
MAX_RECORD_BYTES = 16 * 1024 * 1024
MAX_LOG_FILE_BYTES = 4 * 1024 * 1024 * 1024  # entries.log / heads.log are read whole: refuse more
_LEN = struct.Struct(">I")
CHECKSUM_SIZE = 32


class AuditLogError(AttestflError):
    """The audit log cannot be used (base class)."""


class AuditFileError(AuditLogError):
    """A file of the log (or one given to the audit tools) is missing, not a regular file,
    too large or unreadable; the message names it."""


def read_regular_file(path: str | Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a log file (or a file an audit command reads): a regular file of at most
    ``limit`` bytes, read without blocking (never a FIFO or a device). FileNotFoundError
    passes through (a log may not have that file yet); anything else is AuditFileError."""
    if not os.path.lexists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    return read_bounded(path, limit, what, AuditFileError)


def key_binding_nonce(tree_size: int, root_hash: bytes) -> bytes:
    """The nonce of the evidence an aggregator logs at start: it binds the enclave's log key
    to this log's history (the root of the entries before it)."""
    return hashlib.sha256(KEY_BINDING_LABEL + struct.pack(">Q", tree_size) + root_hash).digest()


def encode_entry(index: int, kind: str, time_ms: int, fields: dict[str, Any]) -> bytes:
    return cbor2.dumps({"index": index, "kind": kind, "time": time_ms, "fields": fields}, canonical=True)


def frame(payload: bytes) -> bytes:
    header = _LEN.pack(len(payload))
    return header + payload + hashlib.sha256(header + payload).digest()


@dataclass(frozen=True)
class Record:
    offset: int
    payload: bytes


@dataclass(frozen=True)
class Scan:
    records: list[Record]
    good_end: int  # offset after the last intact record
    torn: str | None  # why the tail after good_end is unusable (None: the file ends cleanly)
    torn_at_end: bool  # the unusable part is a torn last record (not damage in the middle)


def scan_records(data: bytes) -> Scan:
    """Split a file into records; stop at the first that does not check out."""
    records: list[Record] = []
    offset, size = 0, len(data)
    while offset < size:
        if size - offset < _LEN.size:
            return Scan(records, offset, f"{size - offset} stray bytes (a torn length)", True)
        (length,) = _LEN.unpack_from(data, offset)
        end = offset + _LEN.size + length + CHECKSUM_SIZE
        if length > MAX_RECORD_BYTES or end > size:
            return Scan(records, offset, f"a record of {length} bytes runs past the end of the file", end > size)
        payload = data[offset + _LEN.size : offset + _LEN.size + length]
        if hashlib.sha256(data[offset : offset + _LEN.size + length]).digest() != data[end - CHECKSUM_SIZE : end]:
            return Scan(records, offset, "a record fails its checksum", end == size)
        records.append(Record(offset, payload))
        offset = end
    return Scan(records, offset, None, False)
