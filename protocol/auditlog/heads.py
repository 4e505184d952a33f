"""Signed tree heads of the audit log, for the aggregator, the auditor and the sites.

A site keeps the last signed tree head the aggregator gave it (with a task or a receipt) and,
when it is later shown a newer one (on re-join, or with the next task), checks that the
newer tree *extends* the kept one: an RFC 9162 consistency proof from the kept size to the
new size. A log that was rolled back, rewritten or forked after the site saw a head fails
this check. This module is all a site needs for it and imports nothing of the aggregator:
the standard library, ``cbor2`` and ``cryptography`` (and :mod:`.merkle`, standard library
only)::

    kept = TreeHead.from_bytes(saved_bytes)          # HeadInvalid if malformed or badly signed
    new = TreeHead.from_bytes(head_bytes_from_aggregator)
    verify_consistency(kept, new, proof, key=attested_ed25519)   # HeadInconsistent: rollback or fork
    saved_bytes = new.to_bytes()

The wire and disk form of a head (``heads.log`` records, :meth:`TreeHead.to_bytes`) is the
canonical CBOR (RFC 8949 §4.2.1) of ``{"tree_size", "root_hash", "timestamp", "key",
"signature"}``; the Ed25519 signature covers :func:`head_message`: ``HEAD_LABEL || u64
tree_size || u64 timestamp (unix ms) || root_hash || key``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attestation.errors import AttestflError
from protocol.auditlog import merkle

HEAD_LABEL = b"attestfl/v1/audit-tree-head\x00"
MAX_U64 = (1 << 64) - 1
MAX_HEAD_BYTES = 1024  # a head's CBOR is about 180 bytes
HEAD_FIELDS = frozenset({"tree_size", "root_hash", "timestamp", "key", "signature"})
_U64X2 = struct.Struct(">QQ")


class HeadError(AttestflError, ValueError):
    """A tree head cannot be used (base class; the message is one line)."""


class HeadInvalid(HeadError):
    """A tree head is malformed, out of range, or its signature does not verify."""


class HeadInconsistent(HeadError):
    """A newer tree head does not extend the kept one: the log was rolled back, rewritten or forked."""


def head_message(tree_size: int, root_hash: bytes, timestamp: int, key: bytes) -> bytes:
    """The bytes a tree head's signature covers (HeadInvalid if a number does not fit in 64 bits)."""
    if not (0 <= tree_size <= MAX_U64 and 0 <= timestamp <= MAX_U64):
        raise HeadInvalid(f"tree head tree_size {tree_size} or timestamp {timestamp} is not an unsigned 64-bit integer")
    return HEAD_LABEL + _U64X2.pack(tree_size, timestamp) + root_hash + key


def ed25519_verify(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes(key)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


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
        try:
            message = self.message()
        except HeadInvalid:
            return False
        return ed25519_verify(self.key, self.signature, message)

    def verify(self, key: bytes | None = None) -> TreeHead:
        """This head, if its signature verifies (and, with ``key``, it is signed by that key); else HeadInvalid."""
        if key is not None and self.key != key:
            raise HeadInvalid(
                f"the tree head (size {self.tree_size}) is signed by {self.key.hex()}, not by {bytes(key).hex()}"
            )
        if not self.signature_valid():
            raise HeadInvalid(f"the tree head (size {self.tree_size}) has a signature that does not verify")
        return self

    def to_cbor_map(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "timestamp": self.timestamp,
            "key": self.key,
            "signature": self.signature,
        }

    def to_bytes(self) -> bytes:
        """The canonical CBOR form (as in ``heads.log``, and on the wire to sites)."""
        return cbor2.dumps(self.to_cbor_map(), canonical=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "timestamp": self.timestamp,
            "key": self.key.hex(),
            "signature": self.signature.hex(),
        }

    @classmethod
    def from_map(cls, data: Any) -> TreeHead:
        """From the CBOR map (bytes values) or the JSON form (hex strings); HeadInvalid if malformed.

        The signature is not checked here (:meth:`verify`)."""
        if not isinstance(data, dict) or set(data) != HEAD_FIELDS:
            raise HeadInvalid("a tree head has exactly tree_size, root_hash, timestamp, key and signature")

        def raw(name: str, size: int) -> bytes:
            value = data[name]
            if isinstance(value, str):
                try:
                    value = bytes.fromhex(value)
                except ValueError:
                    raise HeadInvalid(f"tree head {name}: not hex") from None
            if not isinstance(value, bytes) or len(value) != size:
                raise HeadInvalid(f"tree head {name}: expected {size} bytes")
            return value

        size, timestamp = data["tree_size"], data["timestamp"]
        if (
            type(size) is not int
            or type(timestamp) is not int
            or not 0 <= size <= MAX_U64
            or not 0 <= timestamp <= MAX_U64
        ):
            raise HeadInvalid("tree head tree_size and timestamp must be unsigned 64-bit integers")
        return cls(size, raw("root_hash", merkle.HASH_SIZE), timestamp, raw("key", 32), raw("signature", 64))

    @classmethod
    def from_bytes(cls, data: bytes, *, key: bytes | None = None) -> TreeHead:
        """Parse the canonical CBOR form and verify the signature (and the signer, with ``key``)."""
        if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) > MAX_HEAD_BYTES:
            raise HeadInvalid(f"a tree head is at most {MAX_HEAD_BYTES} bytes of CBOR")
        try:
            decoded = cbor2.loads(bytes(data))
        except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on garbage
            raise HeadInvalid(f"the tree head is not CBOR: {type(exc).__name__}") from None
        return cls.from_map(decoded).verify(key)


def verify_consistency(old: TreeHead, new: TreeHead, proof: Sequence[bytes], *, key: bytes | None = None) -> None:
    """Raise unless ``new`` extends ``old`` (both validly signed; ``new`` by ``key`` when given).

    HeadInvalid: a head's signature fails, or ``new`` is not signed by ``key``.
    HeadInconsistent: ``new`` is smaller or older than ``old``, or ``proof`` does not show the
    tree of ``old.tree_size`` entries to be a prefix of the new tree: the log was rolled
    back, rewritten or forked after ``old`` was signed.
    """
    old.verify()
    new.verify(key)
    if new.tree_size < old.tree_size:
        raise HeadInconsistent(
            f"the new tree head covers {new.tree_size} entries, fewer than the {old.tree_size} of the kept one: "
            "the log was rolled back"
        )
    if new.timestamp < old.timestamp:
        raise HeadInconsistent(
            f"the new tree head (time {new.timestamp}) is older than the kept one (time {old.timestamp}): "
            "the log was rolled back"
        )
    if (
        not isinstance(proof, (list, tuple))
        or len(proof) > 128
        or not all(isinstance(p, bytes) and len(p) == merkle.HASH_SIZE for p in proof)
    ):
        raise HeadInconsistent("the consistency proof is not a list of at most 128 SHA-256 hashes")
    if not merkle.verify_consistency(old.tree_size, new.tree_size, old.root_hash, new.root_hash, proof):
        raise HeadInconsistent(
            f"the tree of {new.tree_size} entries does not extend the kept tree of {old.tree_size} entries: "
            "the log was rewritten, rolled back or forked"
        )


__all__ = [
    "HEAD_LABEL",
    "HeadError",
    "HeadInconsistent",
    "HeadInvalid",
    "TreeHead",
    "head_message",
    "verify_consistency",
]
