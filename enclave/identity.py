"""A site's long-lived identity key: Ed25519, created once by ``attestfl site enroll`` and
kept sealed by the site's TEE.

Attestation says *what* runs (code measurement, TCB, debug off); every honest site runs the
same code, so evidence alone cannot say *which* site it is. The identity key does: the
operator pins its public key in the site's admission rule, and at every admission the site
signs the handshake transcript with it (:func:`protocol.formulas.identity_transcript`).

The private key never leaves this object (no export, no pickling, no copies; ``repr`` shows
the public key only) and rests on disk only sealed:

* SEV-SNP hardware: the firmware's derived key (``SNP_GET_DERIVED_KEY``, bound to the chip,
  the launch measurement and the guest policy): other code or another machine cannot open it;
* simulated TEE: the simulated sealing root bound to the simulated launch measurement (it
  exercises the same code; it protects against nothing a host can do to that directory);
* TDX has no local sealing key: enrol there with a key broker (docs/threat-model.md).

Sealed file: ``AFID1`` || 12-byte nonce || AES-256-GCM(sealing key for ``site-identity``,
canonical CBOR ``{version, site_id, ed25519_private, created}``), with the magic and the
site id as associated data, so a sealed identity cannot be presented as another site's.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attestation.errors import AttestflError

from .sealing import SealingError, SealingKeySource

MAGIC = b"AFID1"
PURPOSE = b"site-identity"
FILE_NAME = "identity.sealed"
MAX_SEALED_BYTES = 4096
_RAW = serialization.Encoding.Raw


class IdentityError(AttestflError):
    """The site identity cannot be created, opened or used; the message says which file and why."""


def fingerprint(public_key: bytes) -> str:
    """How people compare identity keys: SHA-256 of the raw public key, hex, in groups of four."""
    digest = hashlib.sha256(bytes(public_key)).hexdigest()
    return ":".join(digest[i : i + 4] for i in range(0, 32, 4))


class SiteIdentity:
    """An Ed25519 identity key. Create with :func:`enroll`, open with :func:`load_identity`."""

    __slots__ = ("_key", "_public", "created", "site_id")

    def __init__(self, key: Ed25519PrivateKey, site_id: str, created: str) -> None:
        self._key = key
        self._public = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
        self.site_id = site_id
        self.created = created

    @classmethod
    def generate(cls, site_id: str) -> SiteIdentity:
        """A new identity key in memory only (tests, in-process federations); :func:`enroll`
        creates one and seals it."""
        return cls(Ed25519PrivateKey.generate(), site_id, datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def public(self) -> bytes:
        """The raw 32-byte Ed25519 public key (what an admission rule pins)."""
        return self._public

    @property
    def fingerprint(self) -> str:
        return fingerprint(self._public)

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(bytes(message))

    def _seal(self, sealing: SealingKeySource) -> bytes:
        private = self._key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        body = cbor2.dumps(
            {"version": 1, "site_id": self.site_id, "ed25519_private": private, "created": self.created}, canonical=True
        )
        nonce = os.urandom(12)
        return MAGIC + nonce + AESGCM(sealing.key(PURPOSE)).encrypt(nonce, body, MAGIC + self.site_id.encode())

    def __repr__(self) -> str:
        return f"SiteIdentity(site_id={self.site_id!r}, public={self._public.hex()})"

    def __reduce__(self):  # noqa: ANN204 - refuse pickling and copying
        raise IdentityError("a site identity key never leaves the process: it cannot be pickled or copied")

    def __copy__(self):  # noqa: ANN204
        raise IdentityError("a site identity key never leaves the process: it cannot be copied")

    def __deepcopy__(self, memo):  # noqa: ANN001, ANN204
        raise IdentityError("a site identity key never leaves the process: it cannot be copied")


def enroll(path: str | Path, sealing: SealingKeySource, site_id: str, *, replace: bool = False) -> SiteIdentity:
    """Create a new identity key for ``site_id`` and write it sealed to ``path`` (atomically).

    Refuses to overwrite an existing identity unless ``replace``: a new key means the operator
    must change the admission rule, which is never what a re-run of a script should do."""
    path = Path(path)
    if path.exists() and not replace:
        raise IdentityError(
            f"{path}: an identity is already enrolled here; use --replace to make a new one "
            "(the operator must then pin the new public key)"
        )
    identity = SiteIdentity.generate(site_id)
    try:
        sealed = identity._seal(sealing)
    except SealingError as exc:
        raise IdentityError(f"cannot seal the identity key: {exc}") from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(sealed)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise IdentityError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return identity


def load_identity(path: str | Path, sealing: SealingKeySource, site_id: str) -> SiteIdentity:
    """Open the sealed identity of ``site_id``; :class:`IdentityError` says why it cannot be."""
    from attestation.errors import AttestationError
    from attestation.files import read_bounded

    path = Path(path)
    try:
        data = read_bounded(path, MAX_SEALED_BYTES, "sealed site identity")
    except AttestationError as exc:
        hint = " (run `attestfl site enroll --config site.toml` first)" if not path.exists() else ""
        raise IdentityError(f"{exc}{hint}") from None
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 12 + 16:
        raise IdentityError(f"{path} is not a sealed attestfl site identity")
    nonce = data[len(MAGIC) : len(MAGIC) + 12]
    try:
        body = AESGCM(sealing.key(PURPOSE)).decrypt(nonce, data[len(MAGIC) + 12 :], MAGIC + site_id.encode())
    except InvalidTag:
        raise IdentityError(
            f"{path} cannot be unsealed: it was sealed for another site id, by other code (a different measurement), "
            "on another machine, or it was tampered with. Enrol again and give the operator the new public key."
        ) from None
    except SealingError as exc:
        raise IdentityError(f"cannot derive the sealing key for {path}: {exc}") from exc
    try:
        fields = cbor2.loads(body)
        key = Ed25519PrivateKey.from_private_bytes(bytes(fields["ed25519_private"]))
        if fields["site_id"] != site_id:
            raise ValueError("site id differs")
        return SiteIdentity(key, site_id, str(fields["created"]))
    except (KeyError, TypeError, ValueError, cbor2.CBORDecodeError) as exc:
        raise IdentityError(f"{path}: malformed sealed identity: {exc}") from None
