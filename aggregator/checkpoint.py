"""Sealed checkpoints: what must survive an aggregator restart (the global model, the next round,
the DP rounds spent), on the host's disk, encrypted and authenticated with a sealing key that
only the same measured code can derive (:mod:`enclave.sealing`).

File ``state_dir/checkpoint.sealed``: ``AFCK1`` || 12-byte nonce || AES-256-GCM ciphertext of
canonical CBOR ``{version, round, dp_rounds, model, created, intelligence}`` (``model``:
safetensors bytes), with the magic as associated data. Written to a temporary file, fsynced,
then renamed. ``version`` 2 adds ``intelligence`` (a map or null: the drift surveillance and
contributor-value state and the sites' latest dataset cards, aggregator/surveillance.py and
aggregator/cards.py ``state()``); a version 1 checkpoint (no ``intelligence``) is still read
(that state then starts afresh).

Version 3 (written since issue 19; versions 1 and 2 are still read) streams the model instead of
holding it twice: ``AFCK3`` || 8-byte nonce prefix || 4-byte length || the sealed CBOR of
``{version, round, dp_rounds, created, intelligence, model_bytes, model_sha256, chunk}`` (nonce:
prefix || 0xFFFFFFFF), then the model in sealed chunks of ``chunk`` bytes (nonce: prefix || index;
associated data: the magic, the index and whether it is the last), so that neither writing nor
reading holds more than the model and one chunk; a chunk moved, dropped or cut off fails.

What the host can still do: delete the file (training restarts from the initial model) or put
back an *older* sealed checkpoint (rollback). Both show in the audit log: each restart logs the
round it resumed from and the checkpoint's digest, so a round number that goes backwards, or a
resumed model digest that differs from the last logged round's, is visible to an auditor.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.errors import AttestflError
from enclave.sealing import SealingKeySource

MAGIC = b"AFCK1"
MAGIC_STREAMED = b"AFCK3"
#: Model bytes per sealed chunk of a version 3 checkpoint.
CHUNK_BYTES = 16 * 1024 * 1024
_HEADER_INDEX = 0xFFFFFFFF
#: The largest model a checkpoint holds (the model itself is bounded by the task's spec).
MAX_MODEL_BYTES = 64 * 1024**3
FILE_NAME = "checkpoint.sealed"
PURPOSE = b"checkpoint"
MAX_CHECKPOINT_BYTES = 2 * 1024**3
VERSION = 3


class CheckpointError(AttestflError):
    """A sealed checkpoint exists but cannot be opened (other code, other platform, or tampered)."""


@dataclass(frozen=True)
class Checkpoint:
    round: int
    dp_rounds: int
    model: bytes | bytearray
    created: str
    #: Version 2: what federation intelligence needs to go on after a restart (None: start afresh).
    intelligence: dict[str, Any] | None = None
    #: The model's SHA-256 when it is known or being computed elsewhere: the round driver hashes
    #: the model for its ``round`` entry on a helper thread while the checkpoint is written (asked
    #: for once the chunks are), and a load has checked it. The model is not hashed a second time.
    sha256_of_model: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def model_sha256(self) -> str:
        return self.digest().hex()

    def digest(self) -> bytes:
        """The model's SHA-256."""
        if self.sha256_of_model is not None:
            return self.sha256_of_model()
        return hashlib.sha256(self.model).digest()


def prepare_checkpoint(state_dir: Path, sealing: SealingKeySource, checkpoint: Checkpoint) -> Callable[[], Path]:
    """Seal ``checkpoint`` into a temporary file beside the current one (fsynced) and return the
    function that puts it in place (an atomic rename, then the directory fsync). Between the two
    the caller logs what the checkpoint commits; if that fails the old checkpoint stays."""
    state_dir.mkdir(parents=True, exist_ok=True)
    model = memoryview(checkpoint.model).cast("B")
    aead = AESGCM(sealing.key(PURPOSE))
    prefix = os.urandom(8)

    def header(model_sha256: bytes) -> bytes:
        fields = {
            "version": VERSION,
            "round": checkpoint.round,
            "dp_rounds": checkpoint.dp_rounds,
            "created": checkpoint.created,
            "intelligence": checkpoint.intelligence,
            "model_bytes": len(model),
            "model_sha256": model_sha256,
            "chunk": CHUNK_BYTES,
        }
        return aead.encrypt(
            prefix + _HEADER_INDEX.to_bytes(4, "big"), cbor2.dumps(fields, canonical=True), MAGIC_STREAMED
        )

    # The chunks are written first, after room for the header: its length does not depend on the
    # digest (32 bytes), which the caller may still be computing meanwhile; then the header.
    start = len(MAGIC_STREAMED) + len(prefix) + 4 + len(header(bytes(32)))
    path = state_dir / FILE_NAME
    temporary = state_dir / (FILE_NAME + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.seek(start)
            chunks = max(1, -(-len(model) // CHUNK_BYTES))
            for index in range(chunks):
                piece = model[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]  # a view (``model`` is one)
                nonce = prefix + index.to_bytes(4, "big")
                written = handle.tell()
                handle.write(aead.encrypt(nonce, piece, _chunk_aad(index, index == chunks - 1)))
                if hasattr(os, "posix_fadvise"):
                    # Start writing the chunk to disk now (Linux starts writeback of the dirty range),
                    # while the next one is sealed: the fsync below then waits for less. The pages are
                    # not needed in the cache; a restart reads the file once.
                    handle.flush()
                    os.posix_fadvise(handle.fileno(), written, handle.tell() - written, os.POSIX_FADV_DONTNEED)
            sealed_header = header(checkpoint.digest())
            handle.seek(0)
            handle.write(MAGIC_STREAMED + prefix + len(sealed_header).to_bytes(4, "big") + sealed_header)
            if handle.tell() != start:
                raise CheckpointError("the checkpoint header changed size while it was written")
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

    def commit() -> Path:
        os.replace(temporary, path)
        directory = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        return path

    return commit


def save_checkpoint(state_dir: Path, sealing: SealingKeySource, checkpoint: Checkpoint) -> Path:
    return prepare_checkpoint(state_dir, sealing, checkpoint)()


def load_checkpoint(state_dir: Path, sealing: SealingKeySource) -> Checkpoint | None:
    """The checkpoint, ``None`` when there is none; :class:`CheckpointError` when it cannot be
    unsealed (it is never silently ignored: the operator must move it away deliberately)."""
    path = state_dir / FILE_NAME
    if not path.exists():
        return None
    from attestation.errors import AttestationError
    from attestation.files import read_bounded

    with open(path, "rb") as handle:
        streamed = handle.read(len(MAGIC_STREAMED)) == MAGIC_STREAMED
    if streamed:
        return _load_streamed(path, sealing)
    try:
        data = read_bounded(path, MAX_CHECKPOINT_BYTES, "sealed checkpoint", CheckpointError)
    except AttestationError as exc:
        raise CheckpointError(str(exc)) from None
    if len(data) > MAX_CHECKPOINT_BYTES or not data.startswith(MAGIC) or len(data) < len(MAGIC) + 12 + 16:
        raise CheckpointError(f"{path} is not a sealed attestfl checkpoint")
    nonce = data[len(MAGIC) : len(MAGIC) + 12]
    try:
        body = AESGCM(sealing.key(PURPOSE)).decrypt(nonce, data[len(MAGIC) + 12 :], MAGIC)
    except InvalidTag:
        raise _unsealable(path) from None
    try:
        fields = cbor2.loads(body)
        version = fields.get("version", 1)
        if version not in (1, 2):
            raise CheckpointError(
                f"{path}: checkpoint version {str(version)[:20]} is not one this code reads (1, 2, 3)"
            )
        intelligence = fields.get("intelligence") if version >= 2 else None
        if intelligence is not None and not isinstance(intelligence, dict):
            raise TypeError("intelligence is not a map")
        return Checkpoint(
            int(fields["round"]),
            int(fields["dp_rounds"]),
            bytes(fields["model"]),
            str(fields["created"]),
            intelligence,
        )
    except (KeyError, TypeError, ValueError, AttributeError, cbor2.CBORDecodeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint contents: {exc}") from exc


def _chunk_aad(index: int, last: bool) -> bytes:
    return MAGIC_STREAMED + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _unsealable(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path} cannot be unsealed: it was sealed by other code or on another platform, or it was tampered with. "
        "Move it away to start training afresh."
    )


def _load_streamed(path: Path, sealing: SealingKeySource) -> Checkpoint:
    """A version 3 checkpoint, read chunk by chunk into one buffer of the model's size."""
    aead = AESGCM(sealing.key(PURPOSE))
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.read(len(MAGIC_STREAMED) + 12)
        prefix, length = start[len(MAGIC_STREAMED) : len(MAGIC_STREAMED) + 8], int.from_bytes(start[-4:], "big")
        if len(start) < len(MAGIC_STREAMED) + 12 or length > 1024 * 1024:
            raise CheckpointError(f"{path} is not a sealed attestfl checkpoint")
        try:
            header = aead.decrypt(prefix + _HEADER_INDEX.to_bytes(4, "big"), handle.read(length), MAGIC_STREAMED)
        except InvalidTag:
            raise _unsealable(path) from None
        try:
            fields = cbor2.loads(header)
            model_bytes, chunk = int(fields["model_bytes"]), int(fields["chunk"])
            if not 0 < model_bytes <= MAX_MODEL_BYTES or not 0 < chunk <= 1 << 30:
                raise ValueError("model or chunk size out of range")
            chunks = -(-model_bytes // chunk)
            if size != len(start) + length + model_bytes + 16 * chunks:
                raise ValueError(f"the file has {size} bytes, its header describes another size (cut off or padded)")
            model = bytearray(model_bytes)
            for index in range(chunks):
                piece = handle.read(min(chunk, model_bytes - index * chunk) + 16)
                nonce = prefix + index.to_bytes(4, "big")
                try:
                    aead.decrypt_into(
                        nonce,
                        piece,
                        _chunk_aad(index, index == chunks - 1),
                        memoryview(model)[index * chunk : index * chunk + len(piece) - 16],
                    )
                except InvalidTag:
                    raise _unsealable(path) from None
            digest = hashlib.sha256(model).digest()
            if digest != fields["model_sha256"]:
                raise ValueError("the model's digest differs from the header's")
            intelligence = fields.get("intelligence")
            if intelligence is not None and not isinstance(intelligence, dict):
                raise TypeError("intelligence is not a map")
            return Checkpoint(  # the digest just checked: not hashed again (the restart logs it)
                int(fields["round"]),
                int(fields["dp_rounds"]),
                model,
                str(fields["created"]),
                intelligence,
                lambda: digest,
            )
        except (KeyError, TypeError, ValueError, AttributeError, cbor2.CBORDecodeError) as exc:
            raise CheckpointError(f"{path}: malformed checkpoint contents: {exc}") from exc


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
