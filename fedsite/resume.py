"""The site's side of resumable transfers (see :mod:`protocol.resume`).

An upload whose call fails with a dropped connection (``UNAVAILABLE``, ``CANCELLED``,
``DEADLINE_EXCEEDED``) after its first chunk was sent asks the aggregator where to resume
and sends the rest of the same stream from there; when the aggregator no longer holds the
upload (its retention passed, or it never received chunk 0) the upload starts over as a new
stream in a new call. A download that drops asks for the rest of the stream it was receiving
and checks it with the same opener.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from protocol.formulas import STOPPED_ON_FAULT
from protocol.resume import reseal_from, resume_token
from protocol.streams import StreamHeader
from protocol.wire import federation_pb2 as pb
from protocol.wire.chunks import Chunk

#: ``client`` below is a fedsite.client.SiteClient and ``session`` its JoinedSession (not imported:
#: the client imports this module).
SiteClient = Any
JoinedSession = Any
#: Status codes of a dropped connection (worth resuming), and of an upload still in flight there.
DROPPED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED)


def dropped(error: grpc.RpcError) -> bool:
    """The connection dropped (resume the transfer), as opposed to an answer: an aggregator that
    stopped on a fault says so (UNAVAILABLE, :data:`protocol.formulas.STOPPED_ON_FAULT`) and is
    not resumed into."""
    details = getattr(error, "details", None)  # an RpcError raised by an interceptor may carry none
    return error.code() in DROPPED and STOPPED_ON_FAULT not in ((details() if callable(details) else "") or "")


#: Resume attempts per transfer.
RESUME_ATTEMPTS = 6


class SentStream:
    """Wraps a stream of SealedChunk: remembers its header (the stream to resume)."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self.chunks = chunks
        self.header = b""
        self.sent = 0

    def __iter__(self) -> Iterator[Chunk]:
        for chunk in self.chunks:
            if chunk.header:
                self.header = bytes(chunk.header)
            self.sent += 1
            yield chunk


def resume_upload(
    client: SiteClient,
    session: JoinedSession,
    stream: SentStream,
    parts: list[bytes | memoryview],
    error: grpc.RpcError,
) -> tuple[Any, int] | None:
    """(the Sealed receipt, the call it answers) of the rest of ``stream``; None when the
    aggregator holds no part of it (the caller starts over); re-raises ``error`` when the
    failure was not a dropped connection."""
    if not dropped(error) or not stream.header:
        raise error
    stream_id = StreamHeader.decode(stream.header).stream_id
    last: grpc.RpcError = error
    for attempt in range(RESUME_ATTEMPTS):
        if attempt:
            time.sleep(min(2.0, 0.1 * 2**attempt))
        try:
            start = _where(client, session, stream_id)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if not (dropped(exc) or exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED):
                raise
            last = exc  # the aggregator has not yet seen the drop (in flight), or the link is still down
            continue
        call, metadata = _call(client)
        rest = SentStream(_rest(session, call, stream.header, stream_id, parts, start))
        try:
            sealed = client.stub.UploadUpdate(
                iter(rest), metadata=metadata, timeout=client.timeout, wait_for_ready=True
            )
        except grpc.RpcError as exc:
            if not dropped(exc):
                raise
            last = exc
            continue
        return sealed, call
    raise last


def _call(client: SiteClient) -> tuple[int, tuple[tuple[str, str], ...]]:
    _session, call, metadata = client._next_call()
    return call, metadata


def _where(client: SiteClient, session: JoinedSession, stream_id: bytes) -> int:
    """The next chunk index the aggregator expects of stream ``stream_id``."""
    call, metadata = _call(client)
    query = Chunk(
        resume_stream=stream_id,
        resume_query=True,
        resume_seal=resume_token(session.keys, call=call, stream_id=stream_id, query=True),
    )
    sealed = client.stub.UploadUpdate(iter([query]), metadata=metadata, timeout=client.timeout, wait_for_ready=True)
    answer = client._open(session, "UploadUpdate", call, sealed, pb.UploadReceipt)
    return int(answer.resume_index)


def _rest(
    session: JoinedSession, call: int, header: bytes, stream_id: bytes, parts: list[bytes | memoryview], start: int
) -> Iterator[Chunk]:
    token = resume_token(session.keys, call=call, stream_id=stream_id, query=False)
    for index, final, ciphertext in reseal_from(session.keys.site_to_aggregator, header, parts, start):
        if index == start:
            yield Chunk(index=index, final=final, ciphertext=ciphertext, resume_stream=stream_id, resume_seal=token)
        else:
            yield Chunk(index=index, final=final, ciphertext=ciphertext)


def download_resume_request(round_number: int, header: bytes, start: int) -> pb.DownloadRequest:
    return pb.DownloadRequest(round=round_number, start_index=start, resume_header=header)


__all__ = ["DROPPED", "RESUME_ATTEMPTS", "SentStream", "download_resume_request", "dropped", "resume_upload"]
