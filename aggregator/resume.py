"""Resumable uploads and downloads on the aggregator's side (see :mod:`protocol.resume`).

An upload whose connection drops after its chunk 0 authenticated is *parked*: its opener (the
stream's key and the next index), its receive buffer and what it was sealed for stay for
``retention`` seconds (the service's ``stall_timeout``), one per session and at most
``Limits.parked_uploads`` / ``Limits.parked_upload_bytes`` in all (the oldest is dropped
first). The site asks where to resume and continues at that chunk in a new call; the parked
upload is taken out while that call runs (parked again if it drops too, at most
:data:`~protocol.resume.MAX_RESUMES` times). A chunk that fails (replayed, reordered, foreign,
tampered, truncated stream) refuses the upload for good, as in a first call.

A download stream's header is remembered (a few per session, bounded in all) so that the
site can ask for the rest of it from chunk k; only a header issued to that session for that
round is resumed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from aggregator.spool import UpdateSpool
from protocol.formulas import ProtocolError
from protocol.resume import MAX_RESUMES, check_resume_token
from protocol.streams import TAG_BYTES, StreamError, StreamHeader, StreamOpener
from protocol.tensors import ModelSpec
from protocol.wire import federation_pb2 as pb
from protocol.wire.chunks import Chunk

#: aggregator.service.FederationService and its Session (not imported: the service imports this module).
FederationService = Any
Session = Any

#: Download stream headers remembered per session, and in all.
DOWNLOADS_PER_SESSION = 4
MAX_DOWNLOADS = 4096


@dataclass
class PartialUpload:
    """An upload whose connection dropped: everything needed to continue it at ``opener.next_index``."""

    session_id: bytes
    stream_id: bytes
    round: int
    attempt: int
    call: int  # the call the stream was sealed for (its receipt names it)
    spec: ModelSpec
    opener: StreamOpener
    spool: UpdateSpool  # what arrived, in memory or sealed on disk (aggregator/spool.py)
    decrypt_seconds: float
    deadline: float  # monotonic: the upload's overall limit (Limits.upload_timeout from its start)
    resumes: int = 0
    expires: float = 0.0

    @property
    def size(self) -> int:
        """Plaintext bytes received so far."""
        return self.spool.size


class Resumes:
    """Parked uploads and issued download headers, both bounded."""

    def __init__(self, *, retention: float, max_parked: int, max_parked_bytes: int) -> None:
        self.retention = retention
        self.max_parked = max_parked
        self.max_parked_bytes = max_parked_bytes
        self._parked: OrderedDict[bytes, PartialUpload] = OrderedDict()  # by session id, oldest first
        #: (session, stream id) -> (header, round, model size): a round's model never changes (its bytes
        #: are set once, aggregator/rounds.py), so re-sealing it under the header gives the same ciphertexts.
        self._downloads: OrderedDict[tuple[bytes, bytes], tuple[bytes, int, int]] = OrderedDict()

    # --- uploads ------------------------------------------------------------------------------

    @property
    def parked_bytes(self) -> int:
        return sum(p.spool.size for p in self._parked.values())

    def park(self, partial: PartialUpload) -> bool:
        """Keep ``partial`` for ``retention`` seconds (replacing this session's previous one);
        False when it may not be kept (too many resumes, or larger than the whole budget)."""
        self.expire()
        self._parked.pop(partial.session_id, None)
        if partial.resumes >= MAX_RESUMES or partial.size > self.max_parked_bytes or self.max_parked <= 0:
            partial.spool.close()
            return False
        while self._parked and (
            len(self._parked) >= self.max_parked or self.parked_bytes + partial.size > self.max_parked_bytes
        ):
            self._parked.popitem(last=False)[1].spool.close()
        partial.expires = time.monotonic() + self.retention
        self._parked[partial.session_id] = partial
        try:  # its memory is released when the retention passes, resumed or not
            asyncio.get_running_loop().call_later(self.retention + 0.05, self.expire)
        except RuntimeError:
            pass  # no event loop (a test of the store alone): expired on the next use
        return True

    def find(self, session_id: bytes, stream_id: bytes) -> PartialUpload | None:
        self.expire()
        partial = self._parked.get(session_id)
        return partial if partial is not None and partial.stream_id == stream_id else None

    def take(self, session_id: bytes, stream_id: bytes) -> PartialUpload | None:
        partial = self.find(session_id, stream_id)
        if partial is not None:
            del self._parked[session_id]
        return partial

    def drop(self, session_id: bytes) -> None:
        partial = self._parked.pop(session_id, None)
        if partial is not None:
            partial.spool.close()

    def expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, p in self._parked.items() if p.expires <= now or p.deadline <= now]:
            self._parked.pop(key).spool.close()

    # --- downloads ----------------------------------------------------------------------------

    def issued(self, session_id: bytes, header: bytes, round_number: int, size: int) -> None:
        stream_id = StreamHeader.decode(header).stream_id
        self._downloads[(session_id, stream_id)] = (header, round_number, size)
        mine = [key for key in self._downloads if key[0] == session_id]
        for key in mine[:-DOWNLOADS_PER_SESSION]:
            del self._downloads[key]
        while len(self._downloads) > MAX_DOWNLOADS:
            self._downloads.popitem(last=False)

    def download_header(self, session_id: bytes, header: bytes, round_number: int, size: int) -> bytes:
        """``header`` if this aggregator issued it to this session for this round; else StreamError."""
        try:
            stream_id = StreamHeader.decode(header).stream_id
        except StreamError:
            raise StreamError("the resumed download names a malformed stream header") from None
        known = self._downloads.get((session_id, stream_id))
        if known is None or known[0] != header or known[1] != round_number:
            raise StreamError("the resumed download names a stream this aggregator did not send to this session")
        if known[2] != size:
            raise StreamError("the model of that round changed since the stream was sent: download it again")
        return header


async def receive_chunks(
    service: FederationService,
    partial: PartialUpload,
    chunk: Chunk | None,
    iterator: AsyncIterator[Chunk],
    context: grpc.aio.ServicerContext,
    *,
    started_at: float,
    counted_from: int,
) -> None:
    """Authenticate and decrypt ``chunk`` and the stream's next chunks into ``partial``'s spool
    through the final one. Refuses (StreamError) an empty chunk that is not the final one
    and an upload slower than the minimum rate (its bytes from ``counted_from`` on, since
    ``started_at``); raises CancelledError when the connection dropped before the final chunk (the
    caller parks the upload). Every upload, first or resumed, reads its chunks here."""
    limits = service.limits
    while chunk is not None:
        ciphertext = chunk.ciphertext  # a view of the received message (protocol.wire.chunks)
        service.counters.bytes_in += len(ciphertext)
        if not chunk.final and len(ciphertext) <= TAG_BYTES:
            raise StreamError("an empty chunk that is not the final one")
        started = time.perf_counter()
        partial.spool.receive(partial.opener, chunk.index, ciphertext, final=chunk.final)
        partial.decrypt_seconds += time.perf_counter() - started
        elapsed = time.monotonic() - started_at
        if elapsed > limits.upload_rate_grace and (partial.size - counted_from) / elapsed < limits.upload_min_rate:
            raise StreamError(f"the upload is slower than {limits.upload_min_rate / 1024:g} KiB/s")
        if chunk.final:
            break
        chunk = await service._next_chunk(iterator, context, partial.deadline)
    if not partial.opener.finished and await dropped(context):
        raise asyncio.CancelledError  # the connection dropped (not a half-close)
    partial.opener.finish()


async def receive_resumed(
    service: FederationService,
    session: Session,
    call: int,
    first: Chunk,
    iterator: AsyncIterator[Chunk],
    context: grpc.aio.ServicerContext,
    refusals: tuple[type[Exception], ...],
) -> pb.Sealed | PartialUpload:
    """A resume call of ``UploadUpdate``: the answer to a query (a Sealed UploadReceipt with
    ``resume_index``), or the whole upload once its final chunk arrived. An exception of
    ``refusals`` (the driver's, a stream's) refuses the upload for good."""
    resumes: Resumes = service.resumes
    query = bool(first.resume_query)
    try:
        check_resume_token(
            session.keys, call=call, stream_id=bytes(first.resume_stream), query=query, token=first.resume_seal
        )
    except ProtocolError as exc:
        service._refused(context, "call_refused", site=session.site_id, method="UploadUpdate", reason="resume token")
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    if not session.calls.fresh(call):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"call {call} of this session was already made (replayed)")
    session.calls.mark(call)
    stream_id = bytes(first.resume_stream)
    if query:
        partial = resumes.find(session.session_id, stream_id)
        if partial is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, _gone(resumes.retention))
        assert partial is not None
        answer = pb.UploadReceipt(
            round=partial.round,
            site_id=session.site_id,
            attempt=partial.attempt,
            call=partial.call,
            resume_index=partial.opener.next_index,
            resume_bytes=partial.size,
        )
        return service._seal(session, "UploadUpdate", call, answer)
    partial = resumes.take(session.session_id, stream_id)
    if partial is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, _gone(resumes.retention))
    assert partial is not None
    service._record(
        "upload_resumed",
        site=session.site_id,
        round=partial.round,
        attempt=partial.attempt,
        stream=stream_id.hex(),
        call=partial.call,
        resume_call=call,
        index=partial.opener.next_index,
        bytes=partial.size,
    )
    partial.resumes += 1
    started_at, resumed_from = time.monotonic(), partial.size
    try:
        service.driver.check_upload(session.site_id, partial.round, partial.attempt)
        await receive_chunks(
            service, partial, first, iterator, context, started_at=started_at, counted_from=resumed_from
        )
    except asyncio.CancelledError:
        park(service, session, partial)
        raise
    except grpc.aio.AbortError:
        raise
    except refusals as exc:  # the upload is refused for good
        await service._refuse_update(context, session, exc)
    return partial


async def dropped(context: grpc.aio.ServicerContext, wait: float = 1.0) -> bool:
    """Whether a request stream that ended without its final chunk ended because the connection
    dropped (the call is cancelled) rather than by the site's half-close (a truncated stream)."""
    deadline = time.monotonic() + wait
    while True:
        if context.cancelled() or context.done():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.01)


def park(service: FederationService, session: Session, partial: PartialUpload) -> None:
    """Park an upload whose connection dropped, logged durably first (one entry per drop)."""
    if partial.resumes >= MAX_RESUMES or service.stopped is not None:
        service.resumes.drop(session.session_id)
        return
    try:
        service._record(
            "upload_parked",
            site=session.site_id,
            round=partial.round,
            attempt=partial.attempt,
            stream=partial.stream_id.hex(),
            call=partial.call,
            index=partial.opener.next_index,
            bytes=partial.size,
        )
    except Exception:  # noqa: BLE001 - the log refused: fail-stop already ran; nothing parked
        return
    service.resumes.park(partial)


def _gone(retention: float) -> str:
    return (
        f"no parked upload of that stream (none was parked, or it was dropped after {retention:g} s "
        "or refused): start the upload over"
    )
