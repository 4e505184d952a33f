"""The audit log on (untrusted) disk: entries, signed tree heads, append and crash recovery.

Files in the log directory:

``entries.log``
    one record per entry: ``u32 length (big-endian) || payload || SHA-256(length || payload)``.
    The payload is the canonical CBOR (RFC 8949 §4.2.1, ``cbor2`` ``canonical=True``) of
    ``{"index": n, "kind": str, "time": unix ms, "fields": {...}}``; the Merkle leaf of
    entry ``n`` is ``SHA-256(0x00 || payload)`` (RFC 9162).
``heads.log``
    signed tree heads, framed the same way; each payload is the canonical CBOR of
    ``{"tree_size", "root_hash", "timestamp", "key", "signature"}``. The signature is the
    enclave's Ed25519 signature over :func:`head_message` (label, sizes and hashes in a
    fixed binary layout), by the key the log's ``aggregator_start``/``handover`` entry binds.
``lock``
    an exclusive ``flock`` held by the one aggregator writing the log.

The per-record checksum is for crash recovery only (an attacker recomputes it); integrity
comes from the Merkle tree and the signed heads (:mod:`aggregator.audit.verify`).

Append (:meth:`LogStore.append`) writes the entry, fsyncs, signs the head of the new tree,
writes it, fsyncs, and only then returns: an entry is *acknowledged* when its head is on
disk. On open, a torn last record (shorter than its length, or failing its checksum while
ending exactly at the end of the file) is truncated away with a warning; complete entries
after the last head were never acknowledged and are truncated too; anything else that does
not add up (a bad record in the middle, a head covering entries that are missing, a head
whose root is not the root of the entries) is :class:`AuditLogCorrupt` and the aggregator
refuses to start.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cbor2

from enclave.keys import verify_enclave_signature

from . import merkle

LOG = logging.getLogger("attestfl.aggregator.audit")
ENTRIES_FILE = "entries.log"
HEADS_FILE = "heads.log"
LOCK_FILE = "lock"
HEAD_LABEL = b"attestfl/v1/audit-tree-head\x00"
KEY_BINDING_LABEL = b"attestfl/v1/audit-log-key\x00"
MAX_RECORD_BYTES = 16 * 1024 * 1024
_LEN = struct.Struct(">I")
CHECKSUM_SIZE = 32


class AuditLogError(Exception):
    """The audit log cannot be used (base class)."""


class AuditLogCorrupt(AuditLogError):
    """The log on disk is damaged beyond a torn tail: the aggregator must not continue it."""


class AuditLogBusy(AuditLogError):
    """Another process holds the log directory."""


@dataclass(frozen=True)
class TreeHead:
    """A signed tree head: the root of the first ``tree_size`` entries at ``timestamp`` (unix ms)."""

    tree_size: int
    root_hash: bytes
    timestamp: int
    key: bytes  # Ed25519 public key of the enclave that signed
    signature: bytes

    def message(self) -> bytes:
        return head_message(self.tree_size, self.root_hash, self.timestamp, self.key)

    def signature_valid(self) -> bool:
        return verify_enclave_signature(self.key, self.signature, self.message())

    def to_cbor_map(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash, "timestamp": self.timestamp,
                "key": self.key, "signature": self.signature}

    def to_json(self) -> dict[str, Any]:
        return {"tree_size": self.tree_size, "root_hash": self.root_hash.hex(), "timestamp": self.timestamp,
                "key": self.key.hex(), "signature": self.signature.hex()}

    @classmethod
    def from_map(cls, data: Any) -> "TreeHead":
        """From the CBOR map (bytes values) or the JSON form (hex strings); ValueError if malformed."""
        if not isinstance(data, dict) or set(data) != {"tree_size", "root_hash", "timestamp", "key", "signature"}:
            raise ValueError("a tree head has exactly tree_size, root_hash, timestamp, key and signature")

        def raw(name: str, size: int) -> bytes:
            value = data[name]
            if isinstance(value, str):
                value = bytes.fromhex(value)
            if not isinstance(value, bytes) or len(value) != size:
                raise ValueError(f"tree head {name}: expected {size} bytes")
            return value

        size, timestamp = data["tree_size"], data["timestamp"]
        if type(size) is not int or type(timestamp) is not int or size < 0 or timestamp < 0:
            raise ValueError("tree head tree_size and timestamp must be non-negative integers")
        return cls(size, raw("root_hash", 32), timestamp, raw("key", 32), raw("signature", 64))


def head_message(tree_size: int, root_hash: bytes, timestamp: int, key: bytes) -> bytes:
    """The bytes a tree head's signature covers."""
    return HEAD_LABEL + struct.pack(">QQ", tree_size, timestamp) + root_hash + key


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
        payload = data[offset + _LEN.size: offset + _LEN.size + length]
        if hashlib.sha256(data[offset: offset + _LEN.size + length]).digest() != data[end - CHECKSUM_SIZE: end]:
            return Scan(records, offset, "a record fails its checksum", end == size)
        records.append(Record(offset, payload))
        offset = end
    return Scan(records, offset, None, False)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogStore:
    """The append side of the log, owned by one aggregator process (``flock`` on ``lock``)."""

    def __init__(self, directory: str | Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self._fsync = fsync
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise AuditLogError(f"cannot open the audit log directory {self.directory}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditLogBusy(f"the audit log {self.directory} is in use by another process") from None
        try:
            self.leaves, self.last_head, self.recovered = self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self.frontier = merkle.Frontier()
        for leaf in self.leaves:
            self.frontier.append(leaf)
        self._entries = open(self.directory / ENTRIES_FILE, "ab")
        self._heads = open(self.directory / HEADS_FILE, "ab")
        if self._fsync:
            _fsync_dir(self.directory)

    @property
    def size(self) -> int:
        return len(self.leaves)

    def _read(self, name: str) -> bytes:
        path = self.directory / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise AuditLogError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _truncate(self, name: str, size: int, why: str) -> None:
        path = self.directory / name
        LOG.warning("audit log recovery", extra={"fields": {"file": str(path), "truncated_to": size, "why": why}})
        with open(path, "r+b") as handle:
            handle.truncate(size)
            handle.flush()
            if self._fsync:
                os.fsync(handle.fileno())

    def _recover(self) -> tuple[list[bytes], TreeHead | None, list[str]]:
        recovered: list[str] = []
        entries, heads = self._read(ENTRIES_FILE), self._read(HEADS_FILE)
        scan_e, scan_h = scan_records(entries), scan_records(heads)
        for name, scan in ((ENTRIES_FILE, scan_e), (HEADS_FILE, scan_h)):
            if scan.torn is None:
                continue
            if not scan.torn_at_end:
                raise AuditLogCorrupt(f"{self.directory / name}: {scan.torn} at byte {scan.good_end}, before the end: "
                                      "the log is damaged; restore it or start a new log directory")
            self._truncate(name, scan.good_end, f"torn last record: {scan.torn}")
            recovered.append(f"{name}: truncated a torn last record at byte {scan.good_end}")
        last_head = None
        if scan_h.records:
            try:
                last_head = TreeHead.from_map(cbor2.loads(scan_h.records[-1].payload))
            except (ValueError, cbor2.CBORDecodeError) as exc:
                raise AuditLogCorrupt(f"{self.directory / HEADS_FILE}: the last tree head is unreadable: {exc}") from exc
            if not last_head.signature_valid():
                raise AuditLogCorrupt(f"{self.directory / HEADS_FILE}: the last tree head's signature is invalid")
        acknowledged = last_head.tree_size if last_head else 0
        records = scan_e.records
        if len(records) < acknowledged:
            raise AuditLogCorrupt(f"{self.directory / ENTRIES_FILE}: the last signed tree head covers {acknowledged} entries, "
                                  f"but only {len(records)} are on disk: acknowledged entries are missing")
        if len(records) > acknowledged:
            cut = records[acknowledged].offset
            self._truncate(ENTRIES_FILE, cut, f"{len(records) - acknowledged} entries after the last signed tree head were never acknowledged")
            recovered.append(f"{ENTRIES_FILE}: dropped {len(records) - acknowledged} unacknowledged entries after the last tree head")
            records = records[:acknowledged]
        leaves = [merkle.leaf_hash(r.payload) for r in records]
        if last_head is not None and merkle.root(leaves) != last_head.root_hash:
            raise AuditLogCorrupt(f"{self.directory}: the entries do not add up to the last signed tree head's root")
        return leaves, last_head, recovered

    def append(self, kind: str, time_ms: int, fields: dict[str, Any], *, key: bytes,
               sign: Callable[[bytes], bytes]) -> tuple[int, TreeHead]:
        """Append one entry and its signed tree head; returns when both are on disk."""
        with self._lock:
            index = len(self.leaves)
            payload = encode_entry(index, kind, time_ms, fields)
            if len(payload) > MAX_RECORD_BYTES:
                raise AuditLogError(f"audit entry {kind!r} is {len(payload)} bytes, over {MAX_RECORD_BYTES}")
            self._write(self._entries, frame(payload))
            leaf = merkle.leaf_hash(payload)
            self.frontier.append(leaf)
            self.leaves.append(leaf)
            root = self.frontier.root()
            timestamp = max(time_ms, self.last_head.timestamp if self.last_head else 0)
            message = head_message(index + 1, root, timestamp, key)
            head = TreeHead(index + 1, root, timestamp, key, sign(message))
            self._write(self._heads, frame(cbor2.dumps(head.to_cbor_map(), canonical=True)))
            self.last_head = head
            return index, head

    def _write(self, handle: Any, data: bytes) -> None:
        handle.write(data)
        handle.flush()
        if self._fsync:
            os.fsync(handle.fileno())

    def close(self) -> None:
        with self._lock:
            for handle in (self._entries, self._heads):
                if not handle.closed:
                    handle.close()
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1


def read_records(directory: str | Path, name: str) -> Iterator[Record]:
    yield from scan_records((Path(directory) / name).read_bytes()).records
