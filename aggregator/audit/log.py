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
comes from the Merkle tree and the signed heads (:mod:`auditor.verify`).

Append (:meth:`LogStore.append`) writes the entry, fsyncs, signs the head of the new tree,
writes it, fsyncs, and only then returns: an entry is *acknowledged* when its head is on
disk. Writes go straight to the files' descriptors (``os.write``, looping on short
writes; nothing is buffered in the process), so bytes of a failed write never reach the
file later.

**Fail stop.** If any step of an append fails (ENOSPC, EFBIG, EIO, a signing error...),
the append truncates ``heads.log`` and then ``entries.log`` back to their sizes before it
(fsyncing each; ``entries.log`` only once the head's removal is durable, so a surviving head
never covers a missing entry), rolls back the in-memory tree, and raises
:class:`AuditLogUnavailable`; from then on every append is refused with
:class:`AuditLogUnavailable` until the log is reopened (a restart). If the truncation itself
fails, what remains is at worst a torn or unacknowledged tail, which the next open removes
(below); in that double fault an entry whose append raised can survive with its head, and
the log then shows an event the caller treated as not having happened (the restart that
follows is a ``handover`` whose ``recovered`` field and the rollback checks of
:mod:`.verify` make it visible). On open, a torn last record (shorter than its length, or failing its checksum while
ending exactly at the end of the file) is truncated away with a warning; complete entries
after the last head were never acknowledged and are truncated too; anything else that does
not add up (a bad record in the middle, a head covering entries that are missing, a head
whose root is not the root of the entries) is :class:`AuditLogCorrupt` and the aggregator
refuses to start.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from protocol.auditlog import merkle
from protocol.auditlog.format import (  # noqa: F401 - re-exported for the writer's users
    CHECKSUM_SIZE,
    ENTRIES_FILE,
    HEADS_FILE,
    KEY_BINDING_LABEL,
    MAX_LOG_FILE_BYTES,
    MAX_RECORD_BYTES,
    AuditFileError,
    AuditLogError,
    Record,
    Scan,
    encode_entry,
    frame,
    key_binding_nonce,
    read_regular_file,
    scan_records,
)
from protocol.auditlog.heads import HEAD_LABEL, HeadError, TreeHead, head_message

LOG = logging.getLogger("attestfl.aggregator.audit")
LOCK_FILE = "lock"

__all__ = ["HEAD_LABEL", "HeadError", "TreeHead", "head_message"]  # re-exported from .heads


class AuditLogCorrupt(AuditLogError):
    """The log on disk is damaged beyond a torn tail: the aggregator must not continue it."""


class AuditLogBusy(AuditLogError):
    """Another process holds the log directory."""


class AuditLogUnavailable(AuditLogError):
    """An append failed (the log was rolled back to its last acknowledged entry) or the log is
    closed: every append is refused until the log is reopened."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte (a short write is continued; an error raises OSError)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "the file accepted no bytes")
        view = view[written:]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, "")
        return f"{name + ': ' if name else ''}{exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class LogStore:
    """The append side of the log, owned by one aggregator process (``flock`` on ``lock``)."""

    def __init__(self, directory: str | Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._entries_fd = self._heads_fd = -1
        self._failure: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(
                self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644
            )
        except OSError as exc:
            raise AuditLogError(f"cannot open the audit log directory {self.directory}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise AuditLogBusy(f"the audit log {self.directory} is in use by another process") from None
        try:
            leaves, self.last_head, self.recovered = self._recover()
            self.tree = merkle.Tree(leaves)
            self._entries_fd, self._entries_end = self._open_append(ENTRIES_FILE)
            self._heads_fd, self._heads_end = self._open_append(HEADS_FILE)
            if self._fsync:
                _fsync_dir(self.directory)
        except BaseException:
            self._close_fds()
            raise

    # --- state ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self.tree.size

    @property
    def leaves(self) -> list[bytes]:
        """The leaf hashes of the acknowledged entries (read only)."""
        return self.tree.leaves

    @property
    def failed(self) -> str | None:
        """Why appends are refused (None while the log accepts them)."""
        return self._failure

    def root(self, size: int | None = None) -> bytes:
        with self._lock:
            return self.tree.root(size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[new_size]) (default: the current tree, that of
        :attr:`last_head`): O(log n) stored subtree hashes. ValueError if a size is out of range."""
        with self._lock:
            new_size = self.tree.size if new_size is None else new_size
            if not 0 <= old_size <= new_size <= self.tree.size:
                raise ValueError(
                    f"no consistency proof from size {old_size} to size {new_size} in a log of {self.tree.size} entries"
                )
            return self.tree.consistency_proof(old_size, new_size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 PATH(index, D[size]) (default: the current tree)."""
        with self._lock:
            return self.tree.inclusion_proof(index, size)

    # --- open and recovery ---------------------------------------------------------------------

    def _open_append(self, name: str) -> tuple[int, int]:
        path = self.directory / name
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644
            )
        except OSError as exc:
            raise AuditFileError(f"cannot open {path} for appending: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AuditFileError(f"{path} is not a regular file")
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        except BaseException:
            os.close(fd)
            raise
        return fd, info.st_size

    def _read(self, name: str) -> bytes:
        try:
            return read_regular_file(self.directory / name, MAX_LOG_FILE_BYTES, "audit log file")
        except FileNotFoundError:
            return b""

    def _truncate(self, name: str, size: int, why: str) -> None:
        path = self.directory / name
        LOG.warning("audit log recovery", extra={"fields": {"file": str(path), "truncated_to": size, "why": why}})
        try:
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.ftruncate(fd, size)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise AuditLogError(f"cannot truncate the torn tail of {path}: {exc.strerror or exc}") from None

    def _recover(self) -> tuple[list[bytes], TreeHead | None, list[str]]:
        recovered: list[str] = []
        entries, heads = self._read(ENTRIES_FILE), self._read(HEADS_FILE)
        scan_e, scan_h = scan_records(entries), scan_records(heads)
        for name, scan in ((ENTRIES_FILE, scan_e), (HEADS_FILE, scan_h)):
            if scan.torn is None:
                continue
            if not scan.torn_at_end:
                raise AuditLogCorrupt(
                    f"{self.directory / name}: {scan.torn} at byte {scan.good_end}, before the end: "
                    "the log is damaged; restore it or start a new log directory"
                )
            self._truncate(name, scan.good_end, f"torn last record: {scan.torn}")
            recovered.append(f"{name}: truncated a torn last record at byte {scan.good_end}")
        last_head = None
        if scan_h.records:
            try:
                last_head = TreeHead.from_map(cbor2.loads(scan_h.records[-1].payload))
            except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on garbage; HeadError otherwise
                raise AuditLogCorrupt(
                    f"{self.directory / HEADS_FILE}: the last tree head is unreadable: {exc}"
                ) from None
            if not last_head.signature_valid():
                raise AuditLogCorrupt(f"{self.directory / HEADS_FILE}: the last tree head's signature is invalid")
        acknowledged = last_head.tree_size if last_head else 0
        records = scan_e.records
        if len(records) < acknowledged:
            raise AuditLogCorrupt(
                f"{self.directory / ENTRIES_FILE}: the last signed tree head covers {acknowledged} entries, "
                f"but only {len(records)} are on disk: acknowledged entries are missing"
            )
        if len(records) > acknowledged:
            cut = records[acknowledged].offset
            self._truncate(
                ENTRIES_FILE,
                cut,
                f"{len(records) - acknowledged} entries after the last signed tree head were never acknowledged",
            )
            recovered.append(
                f"{ENTRIES_FILE}: dropped {len(records) - acknowledged} unacknowledged entries after the last tree head"
            )
            records = records[:acknowledged]
        leaves = [merkle.leaf_hash(r.payload) for r in records]
        if last_head is not None and merkle.root(leaves) != last_head.root_hash:
            raise AuditLogCorrupt(f"{self.directory}: the entries do not add up to the last signed tree head's root")
        return leaves, last_head, recovered

    # --- append ----------------------------------------------------------------------------------

    def append(
        self, kind: str, time_ms: int, fields: dict[str, Any], *, key: bytes, sign: Callable[[bytes], bytes]
    ) -> tuple[int, TreeHead]:
        """Append one entry and its signed tree head; returns only when both are on disk.

        Raises :class:`AuditLogUnavailable` if the log refused an earlier append or is closed,
        or if this append fails (the log is then rolled back to its previous entries and
        refuses every later append); :class:`AuditLogError` (nothing written, the log stays
        usable) if the entry cannot be encoded or is too large."""
        with self._lock:
            if self._failure is not None:
                raise AuditLogUnavailable(
                    f"the audit log {self.directory} refuses appends until it is reopened: {self._failure}"
                )
            if self._entries_fd < 0:
                raise AuditLogUnavailable(f"the audit log {self.directory} is closed")
            index = self.tree.size
            try:
                payload = encode_entry(index, kind, time_ms, fields)
            except Exception as exc:  # noqa: BLE001 - cbor2 raises several types for values it cannot encode
                raise AuditLogError(f"audit entry {kind!r} cannot be encoded: {_describe(exc)}") from None
            if len(payload) > MAX_RECORD_BYTES:
                raise AuditLogError(f"audit entry {kind!r} is {len(payload)} bytes, over {MAX_RECORD_BYTES}")
            entry_record = frame(payload)
            stage = "entry write"
            try:
                _write_all(self._entries_fd, entry_record)
                stage = "entry fsync"
                if self._fsync:
                    os.fsync(self._entries_fd)
                stage = "head signature"
                self.tree.append(merkle.leaf_hash(payload))
                root = self.tree.root()
                timestamp = max(time_ms, self.last_head.timestamp if self.last_head else 0)
                head = TreeHead(index + 1, root, timestamp, key, sign(head_message(index + 1, root, timestamp, key)))
                head_record = frame(head.to_bytes())
                stage = "head write"
                _write_all(self._heads_fd, head_record)
                stage = "head fsync"
                if self._fsync:
                    os.fsync(self._heads_fd)
            except BaseException as exc:
                self._roll_back(index, stage, exc)
                if isinstance(exc, Exception):
                    raise AuditLogUnavailable(
                        f"audit entry {index} ({kind!r}) was not logged: {self._failure}"
                    ) from exc
                raise
            self._entries_end += len(entry_record)
            self._heads_end += len(head_record)
            self.last_head = head
            return index, head

    def _roll_back(self, index: int, stage: str, exc: BaseException) -> None:
        """Undo a failed append: files back to their sizes before it, the tree too; fail stop."""
        self.tree.truncate(index)
        undone: list[str] = []
        heads_durable = True
        if stage in ("head write", "head fsync"):  # earlier, no byte of this append reached heads.log
            heads_durable = self._cut(self._heads_fd, self._heads_end, HEADS_FILE, undone)
        if heads_durable:  # only then may the entry go: a surviving head must not cover a missing entry
            self._cut(self._entries_fd, self._entries_end, ENTRIES_FILE, undone)
        else:
            undone.append(f"{ENTRIES_FILE} left as it was (the head's removal is not durable)")
        rollback = (
            "rolled back to the previous entry"
            if not undone
            else "rollback incomplete (" + "; ".join(undone) + "): reopening recovers the torn or unacknowledged tail"
        )
        self._failure = f"{stage} failed ({_describe(exc)}); {rollback}"
        LOG.error(
            "audit log append failed",
            extra={
                "fields": {
                    "log": str(self.directory),
                    "entry": index,
                    "stage": stage,
                    "error": _describe(exc),
                    "rollback": rollback,
                }
            },
        )

    def _cut(self, fd: int, size: int, name: str, undone: list[str]) -> bool:
        """Truncate to ``size`` and make it durable; False (and why, in ``undone``) if not."""
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
        except OSError as exc:
            undone.append(f"{name}: truncate: {_describe(exc)}")
            return False
        if not self._fsync:
            return True
        try:
            os.fsync(fd)
            return True
        except OSError as exc:
            first = _describe(exc)
        # Once more through a new open file of the same inode: some file systems (NFS, FUSE)
        # keep an error on the open file that failed, and the truncation may still be durable.
        try:
            fresh = os.open(self.directory / name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                same, info = os.fstat(fresh), os.fstat(fd)
                if (same.st_dev, same.st_ino) != (info.st_dev, info.st_ino):
                    raise OSError(errno.ESTALE, "the file was replaced")
                os.fsync(fresh)
            finally:
                os.close(fresh)
        except OSError as exc:
            undone.append(f"{name}: fsync: {first}, then {_describe(exc)}")
            return False
        return True

    def close(self) -> None:
        with self._lock:
            self._close_fds()

    def _close_fds(self) -> None:
        for name in ("_entries_fd", "_heads_fd", "_lock_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)
