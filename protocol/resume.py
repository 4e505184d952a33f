"""Resumable transfers: continue a sealed stream at chunk k after a dropped connection.

A stream (:mod:`protocol.streams`) is keyed by its header and each chunk's nonce and
associated data are its index and final flag, so chunk k authenticates on its own and a
receiver holding the opener of chunks 0..k-1 continues at k with no new key and no new
counter. Resuming never re-keys and never moves a chunk: the resumed chunks are the same
ciphertexts the first call would have carried (same key, nonce and plaintext), so nothing is
sealed twice under one nonce with different plaintext.

* **Upload.** The site asks where to resume (an ``UploadUpdate`` call whose single message has
  ``resume_query``) and continues (another ``UploadUpdate`` call whose first message carries
  ``resume_stream`` and chunk k). Each of those calls has its own call counter, bound to the
  stream by :func:`resume_token` (sealed under the session's message keys with that counter),
  so a copied resume call is refused as a replayed counter, and a resume token works for one
  stream only. The aggregator checks chunk k with the opener it parked: a replayed, reordered
  or foreign chunk fails the index or the key, a stream without its final chunk fails as
  truncated.
* **Download.** The site names the stream header it received and the first chunk it lacks; the
  aggregator re-seals its model of that round under that header from that chunk (only a header
  it issued to this session, for that round), and the site continues with its own opener.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator

from protocol.formulas import ProtocolError, open_message, seal_message
from protocol.streams import CHUNK_BYTES, SessionKeys, StreamError, _aad, _nonce, _stream_cipher

RESUME_LABEL = b"attestfl/v1/upload-resume\x00"
#: How many times one upload may be resumed (each resume may log one entry).
MAX_RESUMES = 8


def resume_token(keys: SessionKeys, *, call: int, stream_id: bytes, query: bool) -> bytes:
    """The site's proof that call ``call`` continues (or asks about) stream ``stream_id``."""
    return seal_message(keys, method="UploadUpdate", call=call, response=False, plaintext=_token_body(stream_id, query))


def check_resume_token(keys: SessionKeys, *, call: int, stream_id: bytes, query: bool, token: bytes) -> None:
    """Raise :class:`ProtocolError` unless ``token`` is :func:`resume_token` of exactly these values."""
    plaintext = open_message(keys, method="UploadUpdate", call=call, response=False, ciphertext=token)
    if plaintext != _token_body(stream_id, query):
        raise ProtocolError("the resume token names another stream or another kind of resume call")


def _token_body(stream_id: bytes, query: bool) -> bytes:
    if len(stream_id) != 16:
        raise ProtocolError("a stream id is 16 bytes")
    return RESUME_LABEL + stream_id + struct.pack("<B", 1 if query else 0)


def reseal_from(
    key: bytes,
    header: bytes,
    parts: list[bytes | memoryview] | bytes | bytearray,
    start: int,
    *,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[tuple[int, bool, bytes]]:
    """(index, final, ciphertext) of chunks ``start``.. of the stream ``header`` over ``parts`` (the
    same bytes, in the same chunks, as the stream's first sealing: the same ciphertexts)."""
    views = [memoryview(p).cast("B") for p in (parts if isinstance(parts, list) else [parts])]
    total_bytes = sum(len(v) for v in views)
    total = max(1, -(-total_bytes // chunk_bytes))
    if not 0 <= start < total:
        raise StreamError(f"chunk {start} is not in this stream of {total} chunk(s)")
    digest = _header_digest(header)
    cipher = _stream_cipher(key, header)
    data = _slicer(views)
    for index in range(start, total):
        final = index == total - 1
        piece = data(index * chunk_bytes, min(total_bytes, (index + 1) * chunk_bytes))
        yield index, final, cipher.encrypt(_nonce(index), piece, _aad(digest, index, final))


def _header_digest(header: bytes) -> bytes:
    return hashlib.sha256(header).digest()


def _slicer(views: list[memoryview]) -> Callable[[int, int], bytes | memoryview]:
    """A function (start, end) -> the bytes at [start, end) of the concatenated views."""

    def take(start: int, end: int) -> bytes | memoryview:
        out: list[memoryview] = []
        position = 0
        for view in views:
            lo, hi = position, position + len(view)
            position = hi
            if hi <= start or lo >= end:
                continue
            out.append(view[max(start, lo) - lo : min(end, hi) - lo])
        return out[0] if len(out) == 1 else b"".join(out)

    return take
