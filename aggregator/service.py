"""The aggregator's gRPC service (``attestfl.v1.Federation``), run inside the TEE.

Handshake (see docs/protocol.md): ``GetEvidence`` answers the site's nonce with an evidence
bundle bound to the enclave keys; ``GetChallenge`` hands out a single-use, expiring
challenge; ``Admit`` appraises the site's evidence against the admission policy and, when
it passes, derives the session keys (X25519 + HKDF) and issues the session credential (an
EAR JWT signed by the enclave key). Every later call must carry that credential; payloads
travel as sealed streams (:mod:`aggregator.secure_stream`) under the session keys.

What the rounds do with updates is the :class:`TaskDriver`'s business (:mod:`aggregator.rounds`).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Callable, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from attestation.abi.bundle import encode_bundle
from attestation.binding import check_nonce
from attestation.errors import AttestationError
from attestation.findings import Reason
from enclave.attester import Attester, GpuAttester, make_bundle
from enclave.keys import EnclaveKeys, EnclaveKeyError

from .admission import AdmissionPolicy, ChallengeStore, IdentityProof, appraise_site, valid_site_id
from .credential import issue_credential
from .protocol import (
    CALL_HEADER,
    MAX_EVIDENCE_BYTES,
    MAX_IDENTITY_CERTIFICATE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_METRIC_NAME,
    MAX_METRICS,
    SESSION_HEADER,
    ProtocolError,
    download_context,
    open_message,
    parse_upload_context,
    receipt_message,
    seal_message,
    upload_context,
)
from .secure_stream import (
    SessionKeys,
    StreamError,
    StreamHeader,
    StreamOpener,
    derive_session_keys,
    seal_chunks,
    transcript_hash,
)
from .update import ModelSpec, UpdateFormatError, decode_tensors
from .wire import federation_pb2 as pb
from .wire import federation_pb2_grpc as pb_grpc

LOG = logging.getLogger("attestfl.aggregator")
SERVICE_NAME = "attestfl.v1.Federation"


class UpdateRefused(Exception):
    """The round driver refuses an update or report (wrong round, duplicate, round closed)."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Task:
    round: int
    spec: ModelSpec
    deadline_unix_ms: int
    finished: bool
    rounds_total: int
    evaluate: bool = False
    attempt: int = 1


class TaskDriver(Protocol):
    """What the service asks of the training rounds."""

    def task(self) -> Task: ...
    def model_bytes(self, round_number: int) -> bytes: ...
    def check_upload(self, site_id: str, round_number: int, attempt: int) -> None: ...
    def accept_update(self, site_id: str, round_number: int, attempt: int, update: dict[str, np.ndarray], weight: float,
                      digest: bytes, receipt: dict[str, Any]) -> None: ...
    def close_if_complete(self) -> None: ...
    def report_metrics(self, site_id: str, round_number: int, metrics: dict[str, float], examples: int) -> None: ...


class EventSink(Protocol):
    def record(self, kind: str, **fields: Any) -> None: ...


class LogEvents:
    """Security events as structured log lines (the audit log subscribes the same way)."""

    def record(self, kind: str, **fields: Any) -> None:
        LOG.info(kind, extra={"event": kind, "fields": fields})


class CallWindow:
    """Which call counters of a session were used: the highest one and a bitmap of the 64 below
    it (the anti-replay window of IPsec, RFC 4303 §3.4.3), so concurrent calls may arrive out of
    order while a replayed or too-old counter is refused."""

    SIZE = 64

    def __init__(self) -> None:
        self.highest = -1
        self.bitmap = 0

    def fresh(self, call: int) -> bool:
        if call > self.highest:
            return True
        offset = self.highest - call
        return offset < self.SIZE and not (self.bitmap >> offset) & 1

    def mark(self, call: int) -> None:
        if call > self.highest:
            shift = call - self.highest
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
            self.highest = call
        else:
            self.bitmap |= 1 << (self.highest - call)


@dataclass
class Session:
    session_id: bytes
    site_id: str
    keys: SessionKeys
    platform: str | None
    identity: bytes
    max_weight: float
    expires: datetime
    calls: CallWindow = field(default_factory=CallWindow)
    uploading: bool = False


@dataclass
class Counters:
    admitted: int = 0
    refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    updates: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


def _short(value: str, limit: int = 160) -> str:
    """A bounded, printable rendering of text a peer chose (for logs and replies)."""
    text = value if len(value) <= limit else value[:limit] + f"...(+{len(value) - limit} chars)"
    return text.encode("ascii", "backslashreplace").decode("ascii")


class FederationService(pb_grpc.FederationServicer):
    def __init__(
        self,
        *,
        keys: EnclaveKeys,
        attester: Attester,
        admission: AdmissionPolicy,
        driver: TaskDriver,
        gpu: GpuAttester | None = None,
        events: EventSink | None = None,
        stall_timeout: float = 30.0,
        build: str = "attestfl",
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        tree_head: Callable[[int], tuple[bytes, list[bytes]]] | None = None,
    ) -> None:
        self.keys = keys
        self.attester = attester
        self.gpu = gpu
        self.admission = admission
        self.driver = driver
        self.events = events or LogEvents()
        self.stall_timeout = stall_timeout
        self.build = build
        self.clock = clock
        #: The audit log's current signed tree head (CBOR) and a consistency proof from a size.
        self.tree_head = tree_head or (lambda known: (b"", []))
        self.challenges = ChallengeStore(admission.challenge_ttl)
        self.sessions: dict[bytes, Session] = {}
        self.counters = Counters()
        self.key_id = hashlib.sha256(keys.public.ed25519).hexdigest()[:16]
        self._closing: asyncio.Future | None = None

    # --- handshake ---------------------------------------------------------------------------

    async def GetEvidence(self, request: pb.EvidenceRequest, context: grpc.aio.ServicerContext) -> pb.EvidenceResponse:
        try:
            nonce = check_nonce(request.nonce)
        except AttestationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        loop = asyncio.get_running_loop()
        bundle = await loop.run_in_executor(None, lambda: make_bundle(self.attester, self.keys, nonce, gpu=self.gpu))
        data = encode_bundle(bundle)
        self.counters.bytes_out += len(data)
        return pb.EvidenceResponse(bundle=data)

    async def GetChallenge(self, request: pb.ChallengeRequest, context: grpc.aio.ServicerContext) -> pb.ChallengeResponse:
        if not valid_site_id(request.site_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a site id is 1-128 letters, digits, '-', '_' or '.'")
        challenge, expires = self.challenges.issue(request.site_id)
        return pb.ChallengeResponse(challenge=challenge, expires_unix_ms=int(expires * 1000))

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        if len(request.evidence) > MAX_EVIDENCE_BYTES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"evidence over {MAX_EVIDENCE_BYTES} bytes")
        if len(request.identity_certificate) > MAX_IDENTITY_CERTIFICATE_BYTES:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"identity certificate over {MAX_IDENTITY_CERTIFICATE_BYTES} bytes")
        if not valid_site_id(request.site_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a site id is 1-128 letters, digits, '-', '_' or '.'")
        site_id = request.site_id
        challenge_reason = self.challenges.consume(request.challenge, site_id)
        now = self.clock()
        identity = IdentityProof(bytes(request.identity_public), bytes(request.identity_signature),
                                 bytes(request.identity_certificate), bytes(request.aggregator_evidence_sha256))
        loop = asyncio.get_running_loop()
        appraisal = await loop.run_in_executor(None, lambda: appraise_site(
            self.admission, site_id=site_id, challenge_reason=challenge_reason, challenge=bytes(request.challenge),
            x25519=bytes(request.site_x25519_public), ed25519=bytes(request.site_ed25519_public),
            evidence_format=request.evidence_format, evidence=bytes(request.evidence),
            app_attest_key_id=bytes(request.app_attest_key_id), identity=identity, aggregator=self.keys.public, at=now,
        ))
        reasons = [str(r) for r in appraisal.reasons]
        live = [s for s in self.sessions.values() if s.site_id == site_id and s.expires > now]
        if appraisal.admitted and any(s.identity != appraisal.identity for s in live):
            # Re-admission replaces a live session only for the same identity key.
            refusal = Reason("admission.session_live", f"site {site_id!r} has a live session under another identity key; it is not replaced")
            appraisal = replace(appraisal, admitted=False, reasons=(refusal,), status="contraindicated", identity=None)
            reasons = [str(refusal)]
        self.events.record(
            "admission", site=site_id, admitted=appraisal.admitted, reasons=reasons, platform=appraisal.platform,
            evidence_format=_short(request.evidence_format, 32), evidence_sha256=hashlib.sha256(request.evidence).hexdigest(),
            evidence=bytes(request.evidence), policy_id=self.admission.policy_id, claims=appraisal.claims,
            warnings=list(appraisal.warnings),
            # What an auditor needs to re-run this decision offline (aggregator.audit.verify):
            challenge=bytes(request.challenge[:64]), x25519=bytes(request.site_x25519_public[:64]),
            ed25519=bytes(request.site_ed25519_public[:64]), app_attest_key_id=bytes(request.app_attest_key_id[:64]),
            identity_public=identity.public[:64], identity_signature=identity.signature[:128],
            identity_certificate=identity.certificate, aggregator_evidence_sha256=identity.aggregator_evidence_sha256[:64],
            aggregator_x25519=self.keys.public.x25519, aggregator_ed25519=self.keys.public.ed25519,
            at=now.isoformat(),
        )
        if not appraisal.admitted:
            self.counters.refused += 1
            for reason in appraisal.reasons:
                self.counters.by_reason[reason.check] = self.counters.by_reason.get(reason.check, 0) + 1
            return pb.AdmitResponse(admitted=False, reasons=reasons)

        try:
            shared = self.keys.shared_secret(bytes(request.site_x25519_public))
        except EnclaveKeyError as exc:  # appraisal refuses low-order keys; this is a last line
            return pb.AdmitResponse(admitted=False, reasons=[f"admission.keys: {exc}"])
        assert appraisal.identity is not None
        session_id = os.urandom(16)
        transcript = transcript_hash(
            site_id=site_id, challenge=bytes(request.challenge),
            aggregator_x25519=self.keys.public.x25519, aggregator_ed25519=self.keys.public.ed25519,
            site_x25519=bytes(request.site_x25519_public), site_ed25519=bytes(request.site_ed25519_public),
        )
        session_keys = derive_session_keys(shared, session_id=session_id, transcript=transcript)
        annotated = {k: v for k, v in appraisal.claims.items() if k in _EAR_CLAIMS}
        if appraisal.platform:
            annotated["platform"] = appraisal.platform
        annotated["identity"] = appraisal.identity.hex()
        if appraisal.warnings:
            annotated["warnings"] = list(appraisal.warnings)
        expires = now + self.admission.credential_ttl
        token = issue_credential(
            self.keys.sign, key_id=self.key_id, session_id=session_id, site_id=site_id,
            site_x25519=bytes(request.site_x25519_public), site_ed25519=bytes(request.site_ed25519_public),
            status=appraisal.status, policy_id=self.admission.policy_id, annotated_claims=annotated,
            now=now, ttl=self.admission.credential_ttl, build=self.build,
        )
        replaced = [sid for sid, s in self.sessions.items() if s.site_id == site_id]
        self.events.record("session", site=site_id, session=session_id.hex(), expires=expires.isoformat(),
                           site_x25519=request.site_x25519_public.hex(), site_ed25519=request.site_ed25519_public.hex(),
                           identity=appraisal.identity.hex(), replaces=[sid.hex() for sid in replaced])
        for old in replaced:
            del self.sessions[old]
        self.sessions[session_id] = Session(session_id, site_id, session_keys, appraisal.platform, appraisal.identity,
                                            appraisal.max_weight, expires)
        self.counters.admitted += 1
        return pb.AdmitResponse(admitted=True, credential=token, session_id=session_id)

    # --- authenticated calls -----------------------------------------------------------------

    async def _session(self, context: grpc.aio.ServicerContext) -> tuple[Session, int]:
        """The live session the call names and the call's counter (not yet marked used)."""
        session_hex, call_text = "", ""
        for key, value in context.invocation_metadata() or ():
            if key == SESSION_HEADER and isinstance(value, str):
                session_hex = value
            elif key == CALL_HEADER and isinstance(value, str):
                call_text = value
        try:
            session_id = bytes.fromhex(session_hex) if len(session_hex) == 32 else b""
            call = int(call_text) if 0 < len(call_text) <= 20 and call_text.isdigit() else -1
        except ValueError:
            session_id, call = b"", -1
        session = self.sessions.get(session_id)
        if session is None or call < 0 or call >= 2**64:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no live session: join (attested admission) first")
        assert session is not None
        if self.clock() >= session.expires:
            self.sessions.pop(session.session_id, None)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the session expired: join again")
        if not session.calls.fresh(call):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"call {call} of this session was already made (replayed)")
        return session, call

    async def _open(self, context: grpc.aio.ServicerContext, method: str, request: pb.Sealed) -> tuple[Session, int, bytes]:
        """Authenticate a sealed request; the counter is used once it authenticates."""
        session, call = await self._session(context)
        try:
            plaintext = open_message(session.keys, method=method, call=call, response=False, ciphertext=request.ciphertext)
        except ProtocolError as exc:
            self._log_refusal(session, method, "auth", str(exc))
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if not session.calls.fresh(call):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"call {call} of this session was already made (replayed)")
        session.calls.mark(call)
        return session, call, plaintext

    def _seal(self, session: Session, method: str, call: int, message: Any) -> pb.Sealed:
        data = message.SerializeToString()
        self.counters.bytes_out += len(data)
        return pb.Sealed(ciphertext=seal_message(session.keys, method=method, call=call, response=True, plaintext=data))

    def _log_refusal(self, session: Session, method: str, check: str, reason: str) -> None:
        self.events.record("call_refused", site=session.site_id, method=method, check=check, reason=_short(reason, 300))

    async def GetTask(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        session, call, plaintext = await self._open(context, "GetTask", request)
        inner = pb.TaskRequest.FromString(plaintext)
        task = self.driver.task()
        head, proof = self.tree_head(int(inner.known_tree_size))
        response = pb.TaskResponse(round=task.round, model_spec=task.spec.to_json(), deadline_unix_ms=task.deadline_unix_ms,
                                   finished=task.finished, rounds_total=task.rounds_total, evaluate=task.evaluate,
                                   attempt=task.attempt, max_weight=session.max_weight, tree_head=head, consistency=proof)
        return self._seal(session, "GetTask", call, response)

    async def DownloadModel(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SealedChunk]:
        session, call, plaintext = await self._open(context, "DownloadModel", request)
        inner = pb.DownloadRequest.FromString(plaintext)
        try:
            model = self.driver.model_bytes(inner.round)
        except UpdateRefused as exc:
            await context.abort(exc.code, str(exc))
        for header, index, final, ciphertext in seal_chunks(
            session.keys.aggregator_to_site, model, session_id=session.session_id, purpose="model",
            context=download_context(inner.round, session.site_id, call),
        ):
            self.counters.bytes_out += len(ciphertext)
            yield pb.SealedChunk(header=header, index=index, final=final, ciphertext=ciphertext)

    async def _next_chunk(self, iterator: AsyncIterator[pb.SealedChunk], context: grpc.aio.ServicerContext) -> pb.SealedChunk | None:
        try:
            async with asyncio.timeout(self.stall_timeout):  # no extra task per chunk, unlike wait_for
                return await iterator.__anext__()
        except StopAsyncIteration:
            return None
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no chunk for {self.stall_timeout:.0f} s: the upload stalled")
        return None

    async def UploadUpdate(self, request_iterator: AsyncIterator[pb.SealedChunk], context: grpc.aio.ServicerContext) -> pb.Sealed:
        session, call = await self._session(context)
        first = await self._next_chunk(request_iterator, context)
        if first is None or not first.header:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload does not start with a stream header")
        assert first is not None
        try:
            header = StreamHeader.decode(first.header)
            round_number, attempt, site_id, stream_call = parse_upload_context(header.context)
            if site_id != session.site_id or stream_call != call:
                raise StreamError("the stream was sealed for another site or call (replayed or moved)")
            spec = self.driver.task().spec
            opener = StreamOpener(session.keys.site_to_aggregator, first.header, session_id=session.session_id, purpose="update",
                                  context=upload_context(round_number, attempt, session.site_id, call), max_bytes=spec.max_update_bytes)
            self.driver.check_upload(session.site_id, round_number, attempt)
            # One buffer of the largest valid update, decrypted into in place (no copies per chunk).
            buffer = bytearray(spec.max_update_bytes)
            size = 0
            chunk: pb.SealedChunk | None = first
            decrypt_seconds = 0.0
            while chunk is not None:
                self.counters.bytes_in += len(chunk.ciphertext)
                started = time.perf_counter()
                size += opener.open_into(chunk.index, chunk.ciphertext, final=chunk.final, buffer=buffer, offset=size)
                decrypt_seconds += time.perf_counter() - started
                if chunk.index == 0:
                    if not session.calls.fresh(call):
                        raise StreamError(f"call {call} of this session was already made (replayed)")
                    session.calls.mark(call)  # chunk 0 authenticated: this call's counter is used
                if chunk.final:
                    break
                chunk = await self._next_chunk(request_iterator, context)
            opener.finish()
        except (UpdateRefused, StreamError) as exc:
            await self._refuse_update(context, session, exc)
        data = memoryview(buffer)[:size]

        def check_and_accept() -> tuple[bytes, float, float, int, bytes]:
            # CPU work off the event loop (hashing and numpy release the GIL): other sites'
            # streams keep flowing meanwhile.
            started = time.perf_counter()
            update, metadata = decode_tensors(data, spec)
            weight = _weight(metadata, session.max_weight)
            validate_seconds = time.perf_counter() - started
            digest = hashlib.sha256(data).digest()
            accepted_ms = int(time.time() * 1000)
            message = receipt_message(round_number=round_number, attempt=attempt, site_id=session.site_id, update_sha256=digest,
                                      weight=weight, accepted_unix_ms=accepted_ms, session_id=session.session_id, call=call)
            signature = self.keys.sign(message)
            receipt = {"site": session.site_id, "round": round_number, "attempt": attempt, "update_sha256": digest.hex(),
                       "weight": weight, "accepted_unix_ms": accepted_ms, "session": session.session_id.hex(), "call": call,
                       "receipt_signature": signature.hex(), "bytes": len(data), "decrypt_seconds": round(decrypt_seconds, 6),
                       "validate_seconds": round(validate_seconds, 6)}
            # The driver logs the receipt durably, then applies the update: no update is
            # aggregated without its receipt, and no receipt is sent for an update not applied.
            self.driver.accept_update(session.site_id, round_number, attempt, update, weight, digest, receipt)
            return digest, weight, validate_seconds, accepted_ms, signature

        try:
            digest, weight, validate_seconds, accepted_ms, signature = await asyncio.get_running_loop().run_in_executor(None, check_and_accept)
        except (UpdateRefused, UpdateFormatError) as exc:
            await self._refuse_update(context, session, exc)
        self.counters.updates += 1
        head, _proof = self.tree_head(0)
        # Aggregation (and sealing the checkpoint) runs after the receipt is sent: a site does
        # not wait for the round's other work.
        self._closing = asyncio.get_running_loop().run_in_executor(None, self.driver.close_if_complete)
        receipt = pb.UploadReceipt(round=round_number, site_id=session.site_id, update_sha256=digest, weight=weight,
                                   accepted_unix_ms=accepted_ms, signature=signature, attempt=attempt, call=call, tree_head=head)
        return self._seal(session, "UploadUpdate", call, receipt)

    async def _refuse_update(self, context: grpc.aio.ServicerContext, session: Session, exc: Exception) -> None:
        """Log the refusal and end the call with the reason (the site learns why)."""
        self.events.record("update_refused", site=session.site_id, reason=_short(str(exc), 300))
        code = exc.code if isinstance(exc, UpdateRefused) else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, _short(str(exc), 300))

    async def ReportMetrics(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        session, call, plaintext = await self._open(context, "ReportMetrics", request)
        inner = pb.MetricsReport.FromString(plaintext)
        try:
            metrics = _metrics(inner.metrics)
            examples = int(inner.examples)
            if examples > session.max_weight:
                raise UpdateRefused(f"{examples} evaluation examples is over this site's max_weight {session.max_weight:g} "
                                    "(admission policy)", grpc.StatusCode.INVALID_ARGUMENT)
            self.driver.report_metrics(session.site_id, int(inner.round), metrics, examples)
        except UpdateRefused as exc:
            self._log_refusal(session, "ReportMetrics", "metrics", str(exc))
            await context.abort(exc.code, _short(str(exc), 300))
        return self._seal(session, "ReportMetrics", call, pb.MetricsAck())


_EAR_CLAIMS = ("measurement", "mr_td", "debug", "reported_tcb", "tcb_status", "simulated", "product", "app_id", "key_id")


def _metrics(values: Any) -> dict[str, float]:
    """A site's metrics: at most MAX_METRICS names of at most MAX_METRIC_NAME printable
    characters, finite values; anything else refuses the report."""
    if len(values) > MAX_METRICS:
        raise UpdateRefused(f"{len(values)} metrics is over the limit of {MAX_METRICS}", grpc.StatusCode.INVALID_ARGUMENT)
    metrics = {}
    for name, value in values.items():
        if not 0 < len(name) <= MAX_METRIC_NAME or not name.isascii() or not name.isprintable():
            raise UpdateRefused(f"metric name {_short(name, 40)!r} is not 1-{MAX_METRIC_NAME} printable ASCII characters",
                                grpc.StatusCode.INVALID_ARGUMENT)
        if not np.isfinite(value):
            raise UpdateRefused(f"metric {name!r} is not finite", grpc.StatusCode.INVALID_ARGUMENT)
        metrics[name] = float(value)
    return metrics


def _weight(metadata: dict[str, str], max_weight: float) -> float:
    try:
        weight = float(metadata.get("weight", "1"))
    except ValueError:
        raise UpdateFormatError("update metadata 'weight' is not a number") from None
    if not np.isfinite(weight) or weight <= 0:
        raise UpdateFormatError(f"update weight {weight} is not a positive finite number")
    if weight > max_weight:
        raise UpdateFormatError(f"update weight {weight:g} is over this site's max_weight {max_weight:g} (admission policy)")
    return weight


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.max_pings_without_data", 0),
]


async def start_server(service: FederationService, listen: str, *, max_concurrent_rpcs: int = 256) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server (plaintext: the payloads are sealed end to end) with the health service."""
    server = grpc.aio.server(options=SERVER_OPTIONS, maximum_concurrent_rpcs=max_concurrent_rpcs)
    pb_grpc.add_FederationServicer_to_server(service, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
