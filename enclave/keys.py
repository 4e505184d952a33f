"""The enclave's identity: keys created inside the TEE that never leave the process.

* X25519: parties encrypt to the enclave (key agreement with an ephemeral key of theirs);
* Ed25519: the enclave signs results and log heads.

Both public keys are bound into the hardware evidence (:mod:`attestation.binding`). The
private keys live only in this object: it has no method that returns or serialises them,
refuses to be pickled or copied, and its ``repr`` shows public keys only.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from attestation.binding import BoundKeys, report_data_for
from attestation.errors import AttestflError

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw


class EnclaveKeyError(AttestflError):
    """A key operation was refused (a bad peer key, an attempt to export private keys)."""


class EnclaveKeys:
    """A fresh X25519 + Ed25519 key pair, generated with ``cryptography`` on construction."""

    __slots__ = ("_ed25519", "_public", "_x25519")

    def __init__(self) -> None:
        self._x25519 = X25519PrivateKey.generate()
        self._ed25519 = Ed25519PrivateKey.generate()
        self._public = BoundKeys(
            x25519=self._x25519.public_key().public_bytes(_RAW, _RAW_PUBLIC),
            ed25519=self._ed25519.public_key().public_bytes(_RAW, _RAW_PUBLIC),
        )

    @property
    def public(self) -> BoundKeys:
        """The two public keys (raw 32-byte encodings) as the evidence binds them."""
        return self._public

    def report_data(self, nonce: bytes) -> bytes:
        """The 64-byte report_data binding these keys to the verifier's ``nonce``."""
        return report_data_for(self._public, nonce)

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature (64 bytes) over ``message``."""
        return self._ed25519.sign(bytes(message))

    def shared_secret(self, peer_x25519_public: bytes) -> bytes:
        """The X25519 shared secret with a peer's public key (feed it to a KDF, never use it raw)."""
        try:
            peer = X25519PublicKey.from_public_bytes(bytes(peer_x25519_public))
            return self._x25519.exchange(peer)
        except ValueError as exc:
            raise EnclaveKeyError(f"unusable X25519 peer key: {exc}") from exc

    def open_sealed_box(self, sealed: bytes) -> bytes:
        """Open a libsodium sealed box made for this X25519 key (vendor evaluation: a content key
        sealed to the enclave); the private key is used here and never returned."""
        from nacl.exceptions import CryptoError
        from nacl.public import PrivateKey, SealedBox

        raw = self._x25519.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        try:
            return bytes(SealedBox(PrivateKey(raw)).decrypt(bytes(sealed)))
        except (CryptoError, ValueError, TypeError) as exc:
            raise EnclaveKeyError("the sealed box does not open under this enclave key") from exc

    def __repr__(self) -> str:
        return f"EnclaveKeys(x25519={self._public.x25519.hex()}, ed25519={self._public.ed25519.hex()})"

    def __reduce__(self):  # noqa: ANN204 - refuse pickling and copying
        raise EnclaveKeyError("enclave private keys never leave the process: EnclaveKeys cannot be pickled or copied")

    def __copy__(self):  # noqa: ANN204
        raise EnclaveKeyError("enclave private keys never leave the process: EnclaveKeys cannot be copied")

    def __deepcopy__(self, memo):  # noqa: ANN001, ANN204
        raise EnclaveKeyError("enclave private keys never leave the process: EnclaveKeys cannot be copied")


def verify_enclave_signature(ed25519_public: bytes, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is the enclave's Ed25519 signature over ``message``."""
    from cryptography.exceptions import InvalidSignature

    try:
        Ed25519PublicKey.from_public_bytes(bytes(ed25519_public)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True
