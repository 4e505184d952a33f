"""Sealed streams: every reordering, truncation, replay, splice and swap is refused."""

from __future__ import annotations

import os

import pytest

from protocol.streams import (
    StreamError,
    StreamOpener,
    derive_session_keys,
    seal_chunks,
    transcript_hash,
)

SESSION = os.urandom(16)
KEY = os.urandom(32)
CONTEXT = b"round=3;site=site-a"
DATA = os.urandom(5 * 1000 + 17)


def sealed(
    data: bytes = DATA, key: bytes = KEY, session: bytes = SESSION, purpose: str = "update", context: bytes = CONTEXT
):
    return list(seal_chunks(key, data, session_id=session, purpose=purpose, context=context, chunk_bytes=1000))


def open_all(
    chunks, key: bytes = KEY, session: bytes = SESSION, purpose: str = "update", context: bytes = CONTEXT
) -> bytes:
    opener = StreamOpener(key, chunks[0][0], session_id=session, purpose=purpose, context=context, max_bytes=10**6)
    out = b"".join(opener.open(index, ciphertext, final=final) for _h, index, final, ciphertext in chunks)
    opener.finish()
    return out


def test_round_trip_and_chunking() -> None:
    chunks = sealed()
    assert len(chunks) == 6 and chunks[0][0] and not any(h for h, *_ in chunks[1:])
    assert [c[2] for c in chunks] == [False] * 5 + [True]
    assert open_all(chunks) == DATA
    assert open_all(sealed(b"")) == b""


def test_reordered_dropped_duplicated_chunks() -> None:
    chunks = sealed()
    with pytest.raises(StreamError, match="reordered"):
        open_all([chunks[0], chunks[2], chunks[1]] + chunks[3:])
    with pytest.raises(StreamError, match="reordered"):
        open_all(chunks[:2] + chunks[3:])
    with pytest.raises(StreamError, match="reordered"):
        open_all(chunks[:2] + [chunks[1]] + chunks[2:])


def test_relabelled_index_fails_authentication() -> None:
    chunks = sealed()
    header, _index, final, ciphertext = chunks[2]
    with pytest.raises(StreamError, match="failed authentication"):
        open_all(chunks[:1] + [(header, 1, final, ciphertext)])


def test_truncation_and_fake_final_flag() -> None:
    chunks = sealed()
    with pytest.raises(StreamError, match="truncated"):
        open_all(chunks[:-1])
    header, index, _final, ciphertext = chunks[3]
    with pytest.raises(StreamError, match="failed authentication"):
        open_all(chunks[:3] + [(header, index, True, ciphertext)])


def test_chunk_after_final() -> None:
    chunks = sealed()
    with pytest.raises(StreamError, match="after the final"):
        open_all(chunks + [chunks[-1]])


def test_splicing_another_stream_or_session() -> None:
    ours, theirs = sealed(), sealed()
    with pytest.raises(StreamError, match="failed authentication"):
        open_all(ours[:2] + theirs[2:])
    other_session = os.urandom(16)
    with pytest.raises(StreamError, match="another session"):
        open_all(sealed(session=other_session))
    with pytest.raises(StreamError, match="failed authentication"):
        open_all(sealed(key=os.urandom(32)))


def test_purpose_and_context_are_checked() -> None:
    with pytest.raises(StreamError, match="expected a update stream, got a model stream"):
        open_all(sealed(purpose="model"))
    with pytest.raises(StreamError, match="another round or site"):
        open_all(sealed(context=b"round=2;site=site-a"))


def test_tampered_ciphertext_and_header() -> None:
    chunks = sealed()
    header, index, final, ciphertext = chunks[1]
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(StreamError, match="failed authentication"):
        open_all([chunks[0], (header, index, final, flipped)] + chunks[2:])
    first_header = bytearray(chunks[0][0])
    first_header[30] ^= 1  # inside the stream id
    with pytest.raises(StreamError, match="failed authentication"):
        open_all([(bytes(first_header),) + chunks[0][1:]] + chunks[1:])
    with pytest.raises(StreamError, match="magic"):
        open_all([(b"XXXX" + chunks[0][0][4:],) + chunks[0][1:]] + chunks[1:])


def test_size_bound() -> None:
    chunks = sealed()
    opener = StreamOpener(KEY, chunks[0][0], session_id=SESSION, purpose="update", context=CONTEXT, max_bytes=2500)
    with pytest.raises(StreamError, match="larger than"):
        for _h, index, final, ciphertext in chunks:
            opener.open(index, ciphertext, final=final)


def test_session_keys_depend_on_everything_in_the_transcript() -> None:
    base = dict(
        site_id="site-a",
        challenge=b"c" * 32,
        aggregator_x25519=b"1" * 32,
        aggregator_ed25519=b"2" * 32,
        site_x25519=b"3" * 32,
        site_ed25519=b"4" * 32,
    )
    reference = transcript_hash(**base)
    for key in base:
        changed = dict(base, **{key: "site-b" if key == "site_id" else b"9" * 32})
        assert transcript_hash(**changed) != reference, key
    keys = derive_session_keys(b"s" * 32, session_id=SESSION, transcript=reference)
    assert keys.site_to_aggregator != keys.aggregator_to_site
    assert derive_session_keys(b"s" * 32, session_id=os.urandom(16), transcript=reference) != keys
    assert "hidden" in repr(keys) and keys.site_to_aggregator.hex() not in repr(keys)


def test_buffers_sent_back_to_back_are_one_stream() -> None:
    import numpy as np

    parts = [b"head", np.arange(700, dtype=np.float32), b"", np.ones(250, np.float32)]
    joined = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    chunks = sealed(data=parts)  # type: ignore[arg-type]
    assert [len(c[3]) - 16 for c in chunks] == [1000, 1000, 1000, 804]
    assert open_all(chunks) == joined


def test_open_into_a_buffer() -> None:
    chunks = sealed()
    opener = StreamOpener(KEY, chunks[0][0], session_id=SESSION, purpose="update", context=CONTEXT, max_bytes=10**6)
    buffer = bytearray(len(DATA))
    size = 0
    for _h, index, final, ciphertext in chunks:
        size += opener.open_into(index, ciphertext, final=final, buffer=buffer, offset=size)
    opener.finish()
    assert bytes(buffer[:size]) == DATA
    small = StreamOpener(KEY, chunks[0][0], session_id=SESSION, purpose="update", context=CONTEXT, max_bytes=1500)
    with pytest.raises(StreamError, match="larger than"):
        for _h, index, final, ciphertext in chunks:
            small.open_into(index, ciphertext, final=final, buffer=buffer, offset=index * 1000)
