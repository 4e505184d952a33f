"""``SealedChunk``, the message of every model download and update upload, encoded and decoded
without protobuf's copies.

A chunk carries up to 1 MiB of ciphertext. Through the protobuf runtime each one is copied
twice more than it must be on each end: into the message and out to the wire when it is sent,
into the message and out of it (each read of a bytes field is a copy) when it arrives. That is
four 1 MiB copies per chunk, on the aggregator's event loop for every chunk of every site.
Here a chunk is sent as its canonical protobuf encoding joined in one copy, and read as
views of the bytes gRPC received, no copy at all.

The encoding is byte for byte what ``pb.SealedChunk(...).SerializeToString()`` gives, so peers
that use the generated classes interoperate (tested against them). :func:`decode` reads only
the form an encoder writes (known fields, each at most once, in field order, single-byte tags,
varints of at most 9 bytes); anything else is handed to protobuf's own parser, so every message
means exactly what protobuf says it means. Written by hand because no protobuf runtime for
Python hands out views of a received message's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attestation.errors import AttestflError
from protocol.wire import federation_pb2 as pb

_VARINT, _LEN = 0, 2
#: Field numbers of SealedChunk (protocol/wire/federation.proto) and their wire types.
_FIELDS = {1: _LEN, 2: _VARINT, 3: _VARINT, 4: _LEN, 5: _LEN, 6: _LEN, 7: _VARINT}
#: The one-byte tag of each field: (field number << 3) | wire type.
_TAGS = {(number << 3) | kind: number for number, kind in _FIELDS.items()}
#: A varint of more than this many bytes goes to protobuf's parser (values of 63 bits and less
#: take at most 9 bytes; protobuf's own rules decide the rest).
_MAX_FAST_VARINT = 9


class ChunkDecodeError(AttestflError):
    """The bytes are not a SealedChunk (protobuf's parser refused them)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One SealedChunk. ``ciphertext`` may be a view of the received message's bytes."""

    header: bytes = b""
    index: int = 0
    final: bool = False
    ciphertext: bytes | memoryview = field(default=b"", repr=False)
    resume_stream: bytes = b""
    resume_seal: bytes = b""
    resume_query: bool = False

    def encode(self) -> bytes:
        """The canonical protobuf encoding (what the generated class serializes), one copy of
        the ciphertext."""
        parts: list[bytes | memoryview] = []
        if self.header:
            parts += (b"\x0a", _varint(len(self.header)), self.header)
        if self.index:
            parts += (b"\x10", _varint(self.index))
        if self.final:
            parts.append(b"\x18\x01")
        if len(self.ciphertext):
            parts += (b"\x22", _varint(len(self.ciphertext)), self.ciphertext)
        if self.resume_stream:
            parts += (b"\x2a", _varint(len(self.resume_stream)), self.resume_stream)
        if self.resume_seal:
            parts += (b"\x32", _varint(len(self.resume_seal)), self.resume_seal)
        if self.resume_query:
            parts.append(b"\x38\x01")
        return b"".join(parts)


#: The two methods whose messages are chunks (protocol/wire/federation.proto).
DOWNLOAD_METHOD = "/attestfl.v1.Federation/DownloadModel"
UPLOAD_METHOD = "/attestfl.v1.Federation/UploadUpdate"


def encode(message: Any) -> bytes:
    """gRPC's serializer where chunks travel: a :class:`Chunk` by hand, any generated message (a
    SealedChunk included) as protobuf encodes it."""
    return message.encode() if isinstance(message, Chunk) else message.SerializeToString()


def decode(data: bytes) -> Chunk:
    """gRPC's deserializer for a SealedChunk: views of ``data`` when it is in the form an encoder
    writes, else protobuf's parse. :class:`ChunkDecodeError` when it is not a SealedChunk."""
    fields = _fast_fields(data)
    if fields is None:
        return _parsed(data)
    header, index, final, ciphertext, stream, seal, query = fields
    return Chunk(
        bytes(header) if header else b"",
        index,
        final != 0,
        ciphertext,
        bytes(stream) if stream else b"",
        bytes(seal) if seal else b"",
        query != 0,
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _fast_fields(data: bytes) -> list[Any] | None:
    """[header, index, final, ciphertext, resume_stream, resume_seal, resume_query], or None when
    the message is not in the encoder's form (protobuf then decides)."""
    view = memoryview(data)
    size = len(view)
    values: list[Any] = [b"", 0, 0, b"", b"", b"", 0]
    position, last = 0, 0
    while position < size:
        number = _TAGS.get(view[position])
        if number is None or number <= last:
            return None
        last = number
        position += 1
        value, shift, start = 0, 0, position
        while True:
            if position >= size or position - start >= _MAX_FAST_VARINT:
                return None
            byte = view[position]
            position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if _FIELDS[number] == _LEN:
            end = position + value
            if end > size:
                return None
            values[number - 1] = view[position:end]
            position = end
        else:
            values[number - 1] = value
    return values


def _parsed(data: bytes) -> Chunk:
    try:
        message = pb.SealedChunk.FromString(bytes(data))
    except Exception as exc:
        raise ChunkDecodeError("the message is not a SealedChunk") from exc
    return Chunk(
        message.header,
        message.index,
        message.final,
        message.ciphertext,
        message.resume_stream,
        message.resume_seal,
        message.resume_query,
    )
