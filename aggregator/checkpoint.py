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

What the host can still do: delete the file (training restarts from the initial model) or put
back an *older* sealed checkpoint (rollback). Both show in the audit log: each restart logs the
round it resumed from and the checkpoint's digest, so a round number that goes backwards, or a
resumed model digest that differs from the last logged round's, is visible to an auditor.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.errors import AttestflError
from enclave.sealing import SealingKeySource

MAGIC = b"AFCK1"
FILE_NAME = "checkpoint.sealed"
PURPOSE = b"checkpoint"
MAX_CHECKPOINT_BYTES = 2 * 1024**3
VERSION = 2


class CheckpointError(AttestflError):
    """A sealed checkpoint exists but cannot be opened (other code, other platform, or tampered)."""


@dataclass(frozen=True)
class Checkpoint:
    round: int
    dp_rounds: int
    model: bytes
    created: str
    #: Version 2: what federation intelligence needs to go on after a restart (None: start afresh).
    intelligence: dict[str, Any] | None = None

    @property
    def model_sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()


def prepare_checkpoint(state_dir: Path, sealing: SealingKeySource, checkpoint: Checkpoint) -> Callable[[], Path]:
    """Seal ``checkpoint`` into a temporary file beside the current one (fsynced) and return the
    function that puts it in place (an atomic rename, then the directory fsync). Between the two
    the caller logs what the checkpoint commits; if that fails the old checkpoint stays."""
    state_dir.mkdir(parents=True, exist_ok=True)
    body = cbor2.dumps(
        {
            "version": VERSION,
            "round": checkpoint.round,
            "dp_rounds": checkpoint.dp_rounds,
            "model": checkpoint.model,
            "created": checkpoint.created,
            "intelligence": checkpoint.intelligence,
        },
        canonical=True,
    )
    nonce = os.urandom(12)
    sealed = MAGIC + nonce + AESGCM(sealing.key(PURPOSE)).encrypt(nonce, body, MAGIC)
    path = state_dir / FILE_NAME
    temporary = state_dir / (FILE_NAME + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(sealed)
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
        raise CheckpointError(
            f"{path} cannot be unsealed: it was sealed by other code or on another platform, or it was tampered with. "
            "Move it away to start training afresh."
        ) from None
    try:
        fields = cbor2.loads(body)
        version = fields.get("version", 1)
        if version not in (1, VERSION):
            raise CheckpointError(f"{path}: checkpoint version {str(version)[:20]} is not one this code reads (1, 2)")
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


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
