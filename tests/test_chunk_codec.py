"""protocol.wire.chunks: a SealedChunk encoded by hand is the generated class's encoding byte for
byte, and decoding means exactly what protobuf's parser means, for the encoder's form (read as
views, no copy) and for any other bytes a hostile peer sends (handed to protobuf's parser)."""

from __future__ import annotations

import random

import pytest

from protocol.wire import federation_pb2 as pb
from protocol.wire.chunks import Chunk, ChunkDecodeError, decode

FIELDS = ("header", "index", "final", "ciphertext", "resume_stream", "resume_seal", "resume_query")


def _as_tuple(message: pb.SealedChunk | Chunk) -> tuple:
    return tuple(bytes(v) if isinstance(v, bytes | memoryview) else v for v in (getattr(message, f) for f in FIELDS))


def _random_chunk(rng: random.Random) -> Chunk:
    def blob() -> bytes:
        return rng.randbytes(rng.choice((0, 0, 1, 16, 127, 128, 300, 16383, 16384, 70000)))

    return Chunk(
        header=blob(),
        index=rng.choice((0, 1, 127, 128, 16384, 2**32, 2**62, 2**63 - 1, 2**64 - 1)),
        final=rng.random() < 0.5,
        ciphertext=blob(),
        resume_stream=blob() if rng.random() < 0.3 else b"",
        resume_seal=blob() if rng.random() < 0.3 else b"",
        resume_query=rng.random() < 0.3,
    )


def test_the_encoding_is_the_generated_class_s_byte_for_byte() -> None:
    rng = random.Random(19)
    for _ in range(400):
        chunk = _random_chunk(rng)
        expected = pb.SealedChunk(**{f: getattr(chunk, f) for f in FIELDS}).SerializeToString()
        assert chunk.encode() == expected
        assert _as_tuple(decode(expected)) == _as_tuple(chunk)
    big = Chunk(index=7, final=True, ciphertext=rng.randbytes((1 << 20) + 16))
    assert big.encode() == pb.SealedChunk(index=7, final=True, ciphertext=big.ciphertext).SerializeToString()


def test_a_chunk_in_the_encoder_s_form_is_read_as_a_view_of_the_message() -> None:
    data = Chunk(index=3, ciphertext=b"x" * 1000).encode()
    chunk = decode(data)
    assert isinstance(chunk.ciphertext, memoryview) and chunk.ciphertext.obj is data
    assert bytes(chunk.ciphertext) == b"x" * 1000 and chunk.index == 3 and not chunk.final


def _protobuf(data: bytes) -> tuple | None:
    try:
        return _as_tuple(pb.SealedChunk.FromString(data))
    except Exception:  # noqa: BLE001 - any parse failure
        return None


def _ours(data: bytes) -> tuple | None:
    try:
        return _as_tuple(decode(data))
    except ChunkDecodeError:
        return None


@pytest.mark.parametrize(
    "data",
    [
        b"\x22\x01a\x10\x05",  # fields out of order
        b"\x10\x05\x10\x06",  # a field twice: the last one wins
        b"\x22\x01a\x22\x01b",  # a bytes field twice
        b"\x10\x05\x48\x01",  # an unknown field (9)
        b"\x10" + b"\xff" * 9 + b"\x01",  # a 10-byte varint
        b"\x10" + b"\xff" * 10 + b"\x01",  # an 11-byte varint
        b"\x90\x00\x05",  # field 2 with a two-byte tag
        b"\x18\x02",  # a bool of 2
        b"\x12\x01a",  # field 2 as bytes (wrong wire type)
        b"\x22\x05ab",  # a length past the end
        b"\x22",  # a tag alone
        b"\x10\x80",  # a varint cut short
        b"\x00",  # field 0
        b"",
    ],
)
def test_any_other_form_means_what_protobuf_says(data: bytes) -> None:
    assert _ours(data) == _protobuf(data)


def test_mutated_and_random_bytes_mean_what_protobuf_says() -> None:
    rng = random.Random(1919)
    for _ in range(3000):
        data = bytearray(_random_chunk(rng).encode()[:400])
        for _ in range(rng.randint(1, 4)):
            what = rng.random()
            if what < 0.4 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif what < 0.6:
                data.insert(rng.randint(0, len(data)), rng.randrange(256))
            elif what < 0.8 and data:
                del data[rng.randint(0, len(data) - 1) :]
            else:
                data += rng.randbytes(rng.randint(1, 8))
        assert _ours(bytes(data)) == _protobuf(bytes(data)), bytes(data).hex()
    for _ in range(2000):
        data = rng.randbytes(rng.randint(0, 40))
        assert _ours(data) == _protobuf(data), data.hex()
