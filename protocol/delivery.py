"""Model delivery: the trained model sealed to its recipients, and how a recipient keeps it.

Admitted sites receive a model over their attested session (``DownloadModel``: a sealed
stream under the session keys). A *model owner* named in ``[task.release] owner_keys`` is not
a site and has no session: the aggregator seals the model to the owner's X25519 public key in a
file (:func:`seal_to_owner`), which only that key opens (:func:`open_owner_model`). The file is
the only form in which the model touches the aggregator's disk: nobody else, the operator
included, can read it.

Owner file (``.afm``)::

    magic "AFM1" | recipient X25519 (32) | ephemeral X25519 (32) | round (u64 LE) | model SHA-256 (32)
    | stream header length (u16 LE) | stream header
    | chunks: final flag (u8) | ciphertext length (u32 LE) | ciphertext   (protocol.streams)

The stream key is derived from X25519(ephemeral, recipient) with HKDF-SHA256 (salt: the two
public keys, info: the fixed header), the stream's context is the fixed header: a file moved to
another recipient, round or digest fails to open. The plaintext is the safetensors bytes the
audit log's digest names.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attestation.errors import AttestflError
from attestation.files import write_atomically
from protocol.streams import StreamError, StreamOpener, seal_chunks
from protocol.tensors import MAX_MODEL_BYTES

MAGIC = b"AFM1"
_FIXED = struct.Struct("<4s32s32sQ32s")
OWNER_LABEL = b"attestfl/v1/owner-model\x00"
#: The file name a site writes the final model to (in its state directory), and the digest beside it.
FINAL_MODEL = "final-model.safetensors"
DELIVER_CHOICES = ("final", "every-round")
SITES = "admitted-sites"


class DeliveryError(AttestflError):
    """A sealed model file is unusable or not for this key (the message says which)."""


def round_model_name(round_number: int) -> str:
    """The file a site keeps the model of a round in (``deliver = "every-round"``)."""
    return f"model-round-{round_number}.safetensors"


def _key(shared: bytes, recipient: bytes, ephemeral: bytes, fixed: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=recipient + ephemeral, info=OWNER_LABEL + fixed).derive(shared)


def _session(recipient: bytes, ephemeral: bytes) -> bytes:
    return hashlib.sha256(OWNER_LABEL + recipient + ephemeral).digest()[:16]


def seal_to_owner(model: bytes, recipient: bytes, round_number: int) -> bytes:
    """``model`` (safetensors bytes) sealed to the owner's X25519 public key ``recipient``."""
    if len(recipient) != 32:
        raise DeliveryError("an owner key is a 32-byte X25519 public key")
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    fixed = _FIXED.pack(MAGIC, recipient, ephemeral_public, round_number, hashlib.sha256(model).digest())
    key = _key(ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient)), recipient, ephemeral_public, fixed)
    out = bytearray(fixed)
    for header, _index, final, ciphertext in seal_chunks(
        key, model, session_id=_session(recipient, ephemeral_public), purpose="model", context=fixed
    ):
        if header:
            out += struct.pack("<H", len(header)) + header
        out += struct.pack("<BI", int(final), len(ciphertext)) + ciphertext
    return bytes(out)


@dataclass(frozen=True)
class OwnerModel:
    round: int
    model: bytes
    sha256: str


def sealed_recipient(data: bytes) -> bytes:
    """The X25519 public key a sealed model file is for."""
    if len(data) < _FIXED.size or data[:4] != MAGIC:
        raise DeliveryError("not an attestfl sealed model file (AFM1)")
    return data[4:36]


def open_owner_model(data: bytes, private_key: X25519PrivateKey) -> OwnerModel:
    """Open a sealed model file with the owner's private key; raises unless it is for this key
    and every chunk authenticates and the plaintext has the digest the file names."""
    recipient = sealed_recipient(data)
    own = private_key.public_key().public_bytes_raw()
    if recipient != own:
        raise DeliveryError(
            f"this model was sealed to owner key {recipient.hex()[:16]}..., not to this key ({own.hex()[:16]}...)"
        )
    _magic, _recipient, ephemeral, round_number, digest = _FIXED.unpack_from(data)
    fixed = data[: _FIXED.size]
    key = _key(private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral)), recipient, ephemeral, fixed)
    offset = _FIXED.size
    try:
        (length,) = struct.unpack_from("<H", data, offset)
        header = data[offset + 2 : offset + 2 + length]
        offset += 2 + length
        opener = StreamOpener(
            key,
            header,
            session_id=_session(recipient, ephemeral),
            purpose="model",
            context=fixed,
            max_bytes=MAX_MODEL_BYTES,
        )
        model = bytearray()
        index = 0
        while offset < len(data):
            final, size = struct.unpack_from("<BI", data, offset)
            offset += 5
            model += opener.open(index, data[offset : offset + size], final=bool(final))
            offset += size
            index += 1
        opener.finish()
    except (struct.error, StreamError) as exc:
        raise DeliveryError(f"the sealed model does not open: {exc}") from None
    if hashlib.sha256(model).digest() != digest:
        raise DeliveryError("the opened model is not the one whose digest the file names")
    return OwnerModel(round_number, bytes(model), digest.hex())


def generate_owner_key() -> tuple[bytes, bytes]:
    """A new owner key: (private key PEM, X25519 public key)."""
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, key.public_key().public_bytes_raw()


def load_owner_key(pem: bytes) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise DeliveryError(f"not an owner key (PEM X25519 private key): {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise DeliveryError("not an owner key: an X25519 private key is expected")
    return key


def write_model(directory: Path, name: str, model: bytes | bytearray | memoryview) -> tuple[Path, str]:
    """Write ``model`` to ``directory/name`` (atomically) and its SHA-256 to ``name + ".sha256"``
    (``sha256sum`` format); returns the path and the digest (hex)."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(model).hexdigest()
    path = directory / name
    write_atomically(path, model)
    write_atomically(directory / f"{name}.sha256", f"{digest}  {name}\n")
    return path, digest
