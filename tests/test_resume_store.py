"""The aggregator's store of parked uploads stays bounded per session and in all, and forgets an
upload when its retention passes; download headers are resumed only for their session and round."""

from __future__ import annotations

import os
import time

import pytest

from aggregator.resume import DOWNLOADS_PER_SESSION, PartialUpload, Resumes
from aggregator.spool import UpdateSpool
from protocol.formulas import ProtocolError
from protocol.resume import MAX_RESUMES, check_resume_token, reseal_from, resume_token
from protocol.streams import StreamError, StreamHeader, StreamOpener, derive_session_keys, seal_chunks
from protocol.tensors import ModelSpec, TensorSpec

SESSION, KEY = os.urandom(16), os.urandom(32)
HEADER = StreamHeader(SESSION, os.urandom(16), "update", b"c").encode()


def _spool(size: int) -> UpdateSpool:
    """A spool holding ``size`` bytes received (what the store's budget counts)."""
    spool = UpdateSpool(1 << 20)
    spool.append_plaintext(bytes(size))
    return spool


def partial(session: bytes, size: int, stream: bytes | None = None, resumes: int = 0) -> PartialUpload:
    spec = ModelSpec((TensorSpec("w", "F32", (1,)),))
    opener = StreamOpener(KEY, HEADER, session_id=SESSION, purpose="update", context=b"c", max_bytes=1)
    return PartialUpload(
        session,
        stream or os.urandom(16),
        1,
        1,
        1,
        spec,
        opener,
        _spool(size),
        0.0,
        time.monotonic() + 3600,
        resumes,
    )


def test_one_parked_upload_per_session_and_bounded_in_all() -> None:
    store = Resumes(retention=60, max_parked=3, max_parked_bytes=1000)
    a1, a2 = partial(b"a" * 16, 100), partial(b"a" * 16, 100)
    assert store.park(a1) and store.park(a2)
    assert store.find(b"a" * 16, a1.stream_id) is None and store.find(b"a" * 16, a2.stream_id) is a2
    for name in b"bcd":
        assert store.park(partial(bytes([name]) * 16, 100))
    assert store.find(b"a" * 16, a2.stream_id) is None  # the oldest went first: at most 3
    assert store.park(partial(b"e" * 16, 900))  # bytes: the others are dropped to make room
    assert store.parked_bytes <= 1000
    assert not store.park(partial(b"f" * 16, 1001))  # larger than the whole budget: not kept
    assert not store.park(partial(b"g" * 16, 10, resumes=MAX_RESUMES))


def test_a_parked_upload_is_forgotten_after_its_retention() -> None:
    store = Resumes(retention=0.1, max_parked=3, max_parked_bytes=1000)
    p = partial(b"a" * 16, 10)
    store.park(p)
    assert store.find(b"a" * 16, p.stream_id) is p
    time.sleep(0.15)
    assert store.find(b"a" * 16, p.stream_id) is None and store.take(b"a" * 16, p.stream_id) is None


def test_download_headers_resume_only_for_their_session_and_round() -> None:
    store = Resumes(retention=1, max_parked=1, max_parked_bytes=1)
    headers = [StreamHeader(b"s" * 16, os.urandom(16), "model", b"model;round=1").encode() for _ in range(6)]
    for header in headers:
        store.issued(b"s" * 16, header, 1, 100)
    assert store.download_header(b"s" * 16, headers[-1], 1, 100) == headers[-1]
    with pytest.raises(StreamError):
        store.download_header(b"s" * 16, headers[-1], 2, 100)  # another round
    with pytest.raises(StreamError):
        store.download_header(b"t" * 16, headers[-1], 1, 100)  # another session
    with pytest.raises(StreamError):
        store.download_header(b"s" * 16, headers[-1 - DOWNLOADS_PER_SESSION], 1, 100)  # forgotten (4 per session)
    with pytest.raises(StreamError):
        store.download_header(b"s" * 16, headers[-1], 1, 101)  # the round's model is not the one sent


def test_resealing_from_chunk_k_gives_the_same_ciphertexts_and_tokens_bind_call_and_stream() -> None:
    keys = derive_session_keys(os.urandom(32), session_id=os.urandom(16), transcript=b"t")
    data = os.urandom(5 * 1000 + 17)
    sealed = list(
        seal_chunks(
            keys.site_to_aggregator, data, session_id=keys.session_id, purpose="update", context=b"c", chunk_bytes=1000
        )
    )
    header = sealed[0][0]
    again = list(reseal_from(keys.site_to_aggregator, header, [data[:2500], data[2500:]], 3, chunk_bytes=1000))
    assert [(i, f, c) for _h, i, f, c in sealed[3:]] == again
    opener = StreamOpener(
        keys.site_to_aggregator, header, session_id=keys.session_id, purpose="update", context=b"c", max_bytes=10**6
    )
    out = b"".join(opener.open(i, c, final=f) for _h, i, f, c in sealed[:3])
    out += b"".join(opener.open(i, c, final=f) for i, f, c in again)
    opener.finish()
    assert out == data
    with pytest.raises(StreamError):
        list(reseal_from(keys.site_to_aggregator, header, data, 6, chunk_bytes=1000))
    stream = StreamHeader.decode(header).stream_id
    token = resume_token(keys, call=7, stream_id=stream, query=False)
    check_resume_token(keys, call=7, stream_id=stream, query=False, token=token)
    for call, stream_id, query in ((8, stream, False), (7, os.urandom(16), False), (7, stream, True)):
        with pytest.raises(ProtocolError):
            check_resume_token(keys, call=call, stream_id=stream_id, query=query, token=token)


def test_audit_verify_refuses_a_resume_of_a_stream_never_parked_or_moved() -> None:
    from pathlib import Path

    from auditor import verify

    state, keys = verify._RunState(), verify._Keys()
    state.admitted["site-a"] = 1
    stream = "ab" * 16
    parked = {"site": "site-a", "round": 1, "attempt": 1, "stream": stream, "call": 5, "index": 3, "bytes": 3 << 20}

    def check(kind: str, **fields: object) -> list[str]:
        result = verify.Verification(Path("."))
        handler = verify._HANDLERS[kind]
        handler(result, verify.Entry(9, kind, 0, {**parked, **fields}), state, keys)
        return [p.check for p in result.problems]

    assert kind_checked("upload_parked") and kind_checked("upload_resumed")
    assert check("upload_resumed", resume_call=6) == ["resume.parked"]  # never parked
    assert check("upload_parked") == []
    assert check("upload_resumed", resume_call=6, index=2) == ["resume.stream"]  # another chunk than parked
    assert check("upload_parked") == []
    assert check("upload_resumed", resume_call=5) == ["resume.call"]  # not a later call
    assert check("upload_parked", site="site-z") == ["resume.site"]


def kind_checked(kind: str) -> bool:
    from auditor import verify

    return kind in verify.CHECKED_KINDS and kind in verify._HANDLERS
