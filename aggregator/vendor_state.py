"""Vendor evaluation jobs that survive an aggregator restart, sealed to the aggregator's code.

Per job, in ``state_dir/vendor-jobs/``:

* ``<job>.artefact``: the re-sealed model as the sites receive it: ``AFVA1`` || canonical CBOR
  ``{header, chunks}``, the secretstream ciphertext under the job's content key (never the
  plaintext; the content key is not in this file);
* ``<job>.sealed``: ``AFVJ1`` || 12-byte nonce || AES-256-GCM (the sealing key for purpose
  ``vendor-jobs``, :mod:`enclave.sealing`; the magic and job id as associated data) of canonical
  CBOR ``{version, manifest, key, artefact_sha256, submitted, dispatched, results, missing}``.

Both are written to a temporary file, fsynced and renamed. Only the same measured code on the
same platform derives the sealing key, so the host can delete a job (the restart logs which jobs
came back) or put back an older state (an earlier set of results), never read or alter one.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.errors import AttestflError
from attestation.files import write_atomically
from enclave.sealing import SealingKeySource

STATE_MAGIC = b"AFVJ1"
ARTEFACT_MAGIC = b"AFVA1"
PURPOSE = b"vendor-jobs"
MAX_STATE_BYTES = 64 << 20
_JOB = re.compile(r"^[0-9a-f]{32}$")


class VendorStateError(AttestflError):
    """A sealed vendor job exists but cannot be opened (other code, other platform, or tampered)."""


@dataclass
class StoredJob:
    """What a job carries across a restart."""

    job_id: str
    manifest: bytes
    key: bytes = field(repr=False)
    header: bytes
    chunks: tuple[bytes, ...]
    submitted: str
    dispatched: list[str]
    results: dict[str, dict[str, Any]]
    missing: list[str] | None = None  # the report deadline closed the job: the sites that did not report


def _write(path: Path, data: bytes) -> None:
    write_atomically(path, data)


def _digest(header: bytes, chunks: tuple[bytes, ...]) -> bytes:
    hasher = hashlib.sha256(header)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


class VendorStore:
    """The sealed vendor jobs of one aggregator's ``state_dir``."""

    def __init__(self, directory: Path, sealing: SealingKeySource) -> None:
        self.directory = directory
        self._key = AESGCM(sealing.key(PURPOSE))

    def save_artefact(self, job_id: str, header: bytes, chunks: tuple[bytes, ...]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        body = cbor2.dumps({"header": header, "chunks": list(chunks)}, canonical=True)
        _write(self.directory / f"{job_id}.artefact", ARTEFACT_MAGIC + body)

    def save(self, job: StoredJob) -> None:
        """Seal the job's state (its artefact must already be saved)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        body = cbor2.dumps(
            {
                "version": 1,
                "manifest": job.manifest,
                "key": job.key,
                "artefact_sha256": _digest(job.header, job.chunks),
                "submitted": job.submitted,
                "dispatched": sorted(job.dispatched),
                "results": job.results,
                "missing": job.missing,
            },
            canonical=True,
        )
        nonce = os.urandom(12)
        sealed = STATE_MAGIC + nonce + self._key.encrypt(nonce, body, STATE_MAGIC + job.job_id.encode())
        _write(self.directory / f"{job.job_id}.sealed", sealed)

    def load(self) -> list[StoredJob]:
        """Every sealed job, oldest submission first; :class:`VendorStateError` names a job that
        does not unseal or whose artefact is missing or altered (never silently dropped)."""
        if not self.directory.is_dir():
            return []
        jobs = []
        for path in sorted(self.directory.glob("*.sealed")):
            job_id = path.stem
            if not _JOB.match(job_id):
                raise VendorStateError(f"{path}: not a vendor job file")
            jobs.append(self._load(job_id))
        return sorted(jobs, key=lambda job: job.submitted)

    def _load(self, job_id: str) -> StoredJob:
        from attestation.errors import AttestationError
        from attestation.files import read_bounded

        path = self.directory / f"{job_id}.sealed"
        try:
            data = read_bounded(path, MAX_STATE_BYTES, "sealed vendor job", VendorStateError)
            artefact = read_bounded(
                self.directory / f"{job_id}.artefact", 1 << 40, "vendor job artefact", VendorStateError
            )
        except (AttestationError, OSError) as exc:
            raise VendorStateError(f"vendor job {job_id}: {exc}") from None
        if not data.startswith(STATE_MAGIC) or len(data) < len(STATE_MAGIC) + 28:
            raise VendorStateError(f"{path} is not a sealed vendor job")
        nonce = data[len(STATE_MAGIC) : len(STATE_MAGIC) + 12]
        try:
            body = self._key.decrypt(nonce, data[len(STATE_MAGIC) + 12 :], STATE_MAGIC + job_id.encode())
        except InvalidTag:
            raise VendorStateError(
                f"{path} cannot be unsealed: sealed by other code or on another platform, or tampered with"
            ) from None
        try:
            fields = cbor2.loads(body)
            stored = cbor2.loads(artefact[len(ARTEFACT_MAGIC) :]) if artefact.startswith(ARTEFACT_MAGIC) else None
            if stored is None:
                raise ValueError("the artefact file is not an attestfl vendor artefact")
            header, chunks = bytes(stored["header"]), tuple(bytes(c) for c in stored["chunks"])
            if _digest(header, chunks) != fields["artefact_sha256"]:
                raise ValueError("the artefact is not the one the sealed state names (altered or swapped)")
            return StoredJob(
                job_id=job_id,
                manifest=bytes(fields["manifest"]),
                key=bytes(fields["key"]),
                header=header,
                chunks=chunks,
                submitted=str(fields["submitted"]),
                dispatched=[str(s) for s in fields["dispatched"]],
                results=dict(fields["results"]),
                missing=None if fields.get("missing") is None else [str(m) for m in fields["missing"]],
            )
        except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as exc:
            raise VendorStateError(f"vendor job {job_id}: {exc}") from None


__all__ = ["StoredJob", "VendorStateError", "VendorStore"]
