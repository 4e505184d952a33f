"""Session keys and chunked AEAD streams: what travels between a site and the enclave.

Session keys: X25519 between the two attested public keys, then HKDF-SHA256 with the session
id as salt and the handshake transcript hash in ``info``, giving two 32-byte keys per
direction (site -> aggregator, aggregator -> site): one for streams, one for the sealed
request and response messages of authenticated calls (:mod:`protocol.formulas`).

A stream (one model download, one update upload) is AES-256-GCM (``cryptography``):

* a header names the session, a fresh random 16-byte stream id, the purpose (``update`` or
  ``model``) and a context (round, site): the receiver checks all of them;
* the stream key is HKDF(direction key, info = header): each stream has its own key, so
  per-chunk nonces (a 96-bit counter) never repeat under a key;
* each chunk's associated data is SHA-256(header) || chunk index || final flag.

So a reordered, dropped, duplicated or replayed chunk fails (index), a truncated stream fails
(no final chunk), a chunk from another stream or session fails (key and header), and the
receiver knows the purpose and context were not swapped. attestfl does not use TLS: the
channel is plaintext gRPC and everything that matters is sealed end to end under keys bound
into both parties' attestation evidence; a proxy that terminates any TLS in front of it sees
only these ciphertexts.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from attestation.errors import AttestflError

SESSION_KEYS_LABEL = b"attestfl/v1/session-keys\x00"
TRANSCRIPT_LABEL = b"attestfl/v1/handshake-transcript\x00"
STREAM_KEY_LABEL = b"attestfl/v1/stream-key\x00"
HEADER_MAGIC = b"AFS1"
PURPOSES = ("update", "model")
#: Plaintext bytes per chunk a sender produces; receivers accept up to MAX_CHUNK_BYTES.
CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024
TAG_BYTES = 16
_HEADER = struct.Struct("<4s16s16s8sH")  # magic, session id, stream id, purpose, context length
MAX_CONTEXT_BYTES = 1024


class StreamError(AttestflError):
    """A sealed stream failed a check: the reason says which; no plaintext of it is used."""


@dataclass(frozen=True)
class SessionKeys:
    """The keys of one attested session. ``site_to_aggregator`` seals updates,
    ``aggregator_to_site`` seals models."""

    session_id: bytes
    site_to_aggregator: bytes
    aggregator_to_site: bytes
    #: Keys of single sealed messages (requests and responses of authenticated calls).
    site_to_aggregator_messages: bytes = b""
    aggregator_to_site_messages: bytes = b""

    def __repr__(self) -> str:
        return f"SessionKeys(session_id={self.session_id.hex()}, keys=<hidden>)"


def transcript_hash(
    *,
    site_id: str,
    challenge: bytes,
    aggregator_x25519: bytes,
    aggregator_ed25519: bytes,
    site_x25519: bytes,
    site_ed25519: bytes,
) -> bytes:
    """SHA-256 over everything both parties attested in the handshake, length-prefixed."""
    digest = hashlib.sha256(TRANSCRIPT_LABEL)
    for part in (site_id.encode(), challenge, aggregator_x25519, aggregator_ed25519, site_x25519, site_ed25519):
        digest.update(struct.pack("<I", len(part)) + part)
    return digest.digest()


def derive_session_keys(shared_secret: bytes, *, session_id: bytes, transcript: bytes) -> SessionKeys:
    if len(session_id) != 16:
        raise StreamError("session id must be 16 bytes")
    okm = HKDF(algorithm=hashes.SHA256(), length=128, salt=session_id, info=SESSION_KEYS_LABEL + transcript).derive(
        shared_secret
    )
    return SessionKeys(session_id, okm[:32], okm[32:64], okm[64:96], okm[96:])


@dataclass(frozen=True)
class StreamHeader:
    session_id: bytes
    stream_id: bytes
    purpose: str
    context: bytes

    def encode(self) -> bytes:
        return (
            _HEADER.pack(
                HEADER_MAGIC, self.session_id, self.stream_id, self.purpose.encode().ljust(8, b"\0"), len(self.context)
            )
            + self.context
        )

    @classmethod
    def decode(cls, data: bytes) -> StreamHeader:
        if len(data) < _HEADER.size or len(data) > _HEADER.size + MAX_CONTEXT_BYTES:
            raise StreamError("stream header has the wrong size")
        magic, session_id, stream_id, purpose, context_length = _HEADER.unpack_from(data, 0)
        if magic != HEADER_MAGIC:
            raise StreamError("not an attestfl sealed stream (bad header magic)")
        if len(data) != _HEADER.size + context_length:
            raise StreamError("stream header context length is inconsistent")
        name = purpose.rstrip(b"\0").decode("ascii", "replace")
        if name not in PURPOSES:
            raise StreamError(f"unknown stream purpose {name!r}")
        return cls(session_id, stream_id, name, data[_HEADER.size :])


def _stream_cipher(key: bytes, header: bytes) -> AESGCM:
    stream_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=STREAM_KEY_LABEL + header).derive(key)
    return AESGCM(stream_key)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + struct.pack("<QB", index, 1 if final else 0)


class StreamSealer:
    """Seal one stream: ``header`` first, then ``seal(chunk)`` for each chunk, the last one final."""

    def __init__(self, key: bytes, *, session_id: bytes, purpose: str, context: bytes) -> None:
        if purpose not in PURPOSES:
            raise StreamError(f"unknown stream purpose {purpose!r}")
        self.header = StreamHeader(session_id, os.urandom(16), purpose, context).encode()
        self._digest = hashlib.sha256(self.header).digest()
        self._cipher = _stream_cipher(key, self.header)
        self._index = 0
        self._closed = False

    def seal(self, chunk: bytes | memoryview, *, final: bool) -> tuple[int, bytes]:
        """(index, ciphertext) of the next chunk."""
        if self._closed:
            raise StreamError("the stream was already finished")
        if len(chunk) > MAX_CHUNK_BYTES:
            raise StreamError(f"chunk of {len(chunk)} bytes is over the {MAX_CHUNK_BYTES}-byte limit")
        index = self._index
        ciphertext = self._cipher.encrypt(_nonce(index), chunk, _aad(self._digest, index, final))
        self._index += 1
        self._closed = final
        return index, ciphertext


def _chunked(parts: list[memoryview], chunk_bytes: int) -> Iterator[memoryview]:
    """Slices of ``chunk_bytes`` over consecutive buffers, copying only where a chunk spans two."""
    pending: list[memoryview] = []
    pending_size = 0
    for part in parts:
        position = 0
        while position < len(part):
            take = min(chunk_bytes - pending_size, len(part) - position)
            piece = part[position : position + take]
            position += take
            if not pending and take == chunk_bytes:
                yield piece
                continue
            pending.append(piece)
            pending_size += take
            if pending_size == chunk_bytes:
                yield memoryview(b"".join(pending))
                pending, pending_size = [], 0
    if pending or not parts:
        yield memoryview(b"".join(pending))


def seal_chunks(
    key: bytes,
    data: bytes | bytearray | list[bytes | memoryview],
    *,
    session_id: bytes,
    purpose: str,
    context: bytes,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[bytes, int, bool, bytes]]:
    """Yield (header or b"", index, final, ciphertext) for ``data`` (bytes, or a list of
    buffers sent back to back, e.g. a safetensors header and the tensors' memory) in chunks."""
    sealer = StreamSealer(key, session_id=session_id, purpose=purpose, context=context)
    parts = [memoryview(p).cast("B") for p in (data if isinstance(data, list) else [data])]
    parts = [p for p in parts if len(p)]
    total = max(1, -(-sum(len(p) for p in parts) // chunk_bytes))
    for number, piece in enumerate(_chunked(parts, chunk_bytes)):
        final = number == total - 1
        index, ciphertext = sealer.seal(piece, final=final)
        yield (sealer.header if index == 0 else b""), index, final, ciphertext


class StreamOpener:
    """Open one stream, checking the header against what the receiver expects and every chunk's
    position. ``finish()`` raises unless the final chunk arrived."""

    def __init__(
        self, key: bytes, header: bytes, *, session_id: bytes, purpose: str, context: bytes, max_bytes: int
    ) -> None:
        parsed = StreamHeader.decode(header)
        if parsed.session_id != session_id:
            raise StreamError("the stream belongs to another session")
        if parsed.purpose != purpose:
            raise StreamError(f"expected a {purpose} stream, got a {parsed.purpose} stream")
        if parsed.context != context:
            raise StreamError("the stream was sealed for another round or site (context differs)")
        self.stream_id = parsed.stream_id
        self._digest = hashlib.sha256(header).digest()
        self._cipher = _stream_cipher(key, header)
        self._index = 0
        self._finished = False
        self._received = 0
        self._max_bytes = max_bytes

    def open(self, index: int, ciphertext: bytes | memoryview, *, final: bool) -> bytes:
        if self._finished:
            raise StreamError("a chunk arrived after the final chunk")
        if index != self._index:
            raise StreamError(
                f"chunk {index} arrived where chunk {self._index} was expected (reordered, dropped or replayed)"
            )
        if len(ciphertext) > MAX_CHUNK_BYTES + TAG_BYTES:
            raise StreamError("chunk is over the size limit")
        self._received += max(0, len(ciphertext) - TAG_BYTES)
        if self._received > self._max_bytes:
            raise StreamError(f"stream is larger than the {self._max_bytes} bytes allowed for it")
        try:
            plaintext = self._cipher.decrypt(_nonce(index), ciphertext, _aad(self._digest, index, final))
        except InvalidTag:
            raise StreamError(
                f"chunk {index} failed authentication (tampered, or sealed for another stream or session)"
            ) from None
        self._index += 1
        self._finished = final
        return plaintext

    def open_into(
        self, index: int, ciphertext: bytes | memoryview, *, final: bool, buffer: bytearray | memoryview, offset: int
    ) -> int:
        """Like :meth:`open`, writing the plaintext into ``buffer`` at ``offset``; returns its length."""
        if self._finished:
            raise StreamError("a chunk arrived after the final chunk")
        if index != self._index:
            raise StreamError(
                f"chunk {index} arrived where chunk {self._index} was expected (reordered, dropped or replayed)"
            )
        length = len(ciphertext) - TAG_BYTES
        if length < 0 or length > MAX_CHUNK_BYTES:
            raise StreamError("chunk has an impossible size")
        if offset + length > min(len(buffer), self._max_bytes):
            raise StreamError(f"stream is larger than the {self._max_bytes} bytes allowed for it")
        try:
            self._cipher.decrypt_into(
                _nonce(index),
                ciphertext,
                _aad(self._digest, index, final),
                memoryview(buffer)[offset : offset + length],
            )
        except InvalidTag:
            raise StreamError(
                f"chunk {index} failed authentication (tampered, or sealed for another stream or session)"
            ) from None
        self._index += 1
        self._finished = final
        self._received += length
        return length

    def finish(self) -> None:
        if not self._finished:
            raise StreamError(f"the stream ended after {self._index} chunk(s) without its final chunk (truncated)")

    @property
    def next_index(self) -> int:
        """The index of the next chunk this opener accepts (the chunks before it authenticated)."""
        return self._index

    @property
    def finished(self) -> bool:
        """Whether the final chunk arrived."""
        return self._finished
