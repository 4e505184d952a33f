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
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable, Protocol

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from attestation.abi.bundle import encode_bundle
from attestation.binding import check_nonce
from attestation.errors import AttestationError
from enclave.attester import Attester, GpuAttester, make_bundle
from enclave.keys import EnclaveKeys, EnclaveKeyError

from .admission import AdmissionPolicy, ChallengeStore, appraise_site, valid_site_id
from .credential import CredentialError, SessionClaims, issue_credential, verify_credential
from .secure_stream import (
    MAX_CHUNK_BYTES,
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
#: Messages are bounded deliberately: chunks of at most 4 MiB, evidence of at most 64 KiB.
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + 64 * 1024
MAX_EVIDENCE_BYTES = 64 * 1024
RECEIPT_LABEL = b"attestfl/v1/update-receipt\x00"
MAX_WEIGHT = 1e12


def stream_context(round_number: int, site_id: str) -> bytes:
    """What a stream is sealed for: the round and the site (checked by the receiver)."""
    return f"round={round_number};site={site_id}".encode()


def parse_stream_context(context: bytes) -> tuple[int, str]:
    try:
        fields_ = dict(part.split("=", 1) for part in context.decode("ascii").split(";"))
        return int(fields_["round"]), fields_["site"]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise StreamError("the stream context is not round=<n>;site=<id>") from exc


def receipt_message(round_number: int, site_id: str, update_sha256: bytes, weight: float, accepted_unix_ms: int) -> bytes:
    """The bytes the enclave signs for an update receipt (and a site or auditor re-checks)."""
    body = {"accepted_unix_ms": accepted_unix_ms, "round": round_number, "site": site_id,
            "update_sha256": update_sha256.hex(), "weight": weight}
    return RECEIPT_LABEL + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


class UpdateRefused(Exception):
    """The round driver refuses an update (wrong round, duplicate, round closed)."""

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
    def check_upload(self, site_id: str, round_number: int) -> None: ...
    def accept_update(self, site_id: str, round_number: int, update: dict[str, np.ndarray], weight: float, digest: bytes) -> None: ...
    def close_if_complete(self) -> None: ...
    def report_metrics(self, site_id: str, round_number: int, metrics: dict[str, float], examples: int) -> None: ...


class EventSink(Protocol):
    def record(self, kind: str, **fields: Any) -> None: ...


class LogEvents:
    """Security events as structured log lines (the audit log subscribes the same way)."""

    def record(self, kind: str, **fields: Any) -> None:
        LOG.info(kind, extra={"event": kind, "fields": fields})


@dataclass
class Session:
    session_id: bytes
    site_id: str
    keys: SessionKeys
    claims: SessionClaims
    platform: str | None


@dataclass
class Counters:
    admitted: int = 0
    refused: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    updates: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


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
        site_id = request.site_id
        challenge_reason = self.challenges.consume(request.challenge, site_id)
        now = self.clock()
        loop = asyncio.get_running_loop()
        appraisal = await loop.run_in_executor(None, lambda: appraise_site(
            self.admission, site_id=site_id, challenge_reason=challenge_reason, challenge=bytes(request.challenge),
            x25519=bytes(request.site_x25519_public), ed25519=bytes(request.site_ed25519_public),
            evidence_format=request.evidence_format, evidence=bytes(request.evidence),
            app_attest_key_id=bytes(request.app_attest_key_id), at=now,
        ))
        reasons = [str(r) for r in appraisal.reasons]
        self.events.record(
            "admission", site=site_id, admitted=appraisal.admitted, reasons=reasons, platform=appraisal.platform,
            evidence_format=request.evidence_format, evidence_sha256=hashlib.sha256(request.evidence).hexdigest(),
            evidence=bytes(request.evidence), policy_id=self.admission.policy_id, claims=appraisal.claims,
            # What an auditor needs to re-run this decision offline (aggregator.audit.verify):
            challenge=bytes(request.challenge), x25519=bytes(request.site_x25519_public),
            ed25519=bytes(request.site_ed25519_public), app_attest_key_id=bytes(request.app_attest_key_id),
            at=now.isoformat(),
        )
        if not appraisal.admitted:
            self.counters.refused += 1
            for reason in appraisal.reasons:
                self.counters.by_reason[reason.check] = self.counters.by_reason.get(reason.check, 0) + 1
            return pb.AdmitResponse(admitted=False, reasons=reasons)

        try:
            shared = self.keys.shared_secret(bytes(request.site_x25519_public))
        except EnclaveKeyError as exc:
            return pb.AdmitResponse(admitted=False, reasons=[f"admission.keys: {exc}"])
        session_id = os.urandom(16)
        transcript = transcript_hash(
            site_id=site_id, challenge=bytes(request.challenge),
            aggregator_x25519=self.keys.public.x25519, aggregator_ed25519=self.keys.public.ed25519,
            site_x25519=bytes(request.site_x25519_public), site_ed25519=bytes(request.site_ed25519_public),
        )
        session_keys = derive_session_keys(shared, session_id=session_id, transcript=transcript)
        annotated = {k: v for k, v in appraisal.claims.items() if k in _EAR_CLAIMS}
        token = issue_credential(
            self.keys.sign, key_id=self.key_id, session_id=session_id, site_id=site_id,
            site_x25519=bytes(request.site_x25519_public), site_ed25519=bytes(request.site_ed25519_public),
            status=appraisal.status, policy_id=self.admission.policy_id, annotated_claims=annotated,
            now=now, ttl=self.admission.credential_ttl, build=self.build,
        )
        claims = verify_credential(token, self.keys.public.ed25519, now=now)
        # One live session per site: a re-admitted site (new keys, new evidence) replaces its old one.
        for old in [sid for sid, s in self.sessions.items() if s.site_id == site_id]:
            del self.sessions[old]
        self.sessions[session_id] = Session(session_id, site_id, session_keys, claims, appraisal.platform)
        self.counters.admitted += 1
        self.events.record("session", site=site_id, session=session_id.hex(), expires=claims.expires.isoformat(),
                           site_x25519=request.site_x25519_public.hex(), site_ed25519=request.site_ed25519_public.hex())
        return pb.AdmitResponse(admitted=True, credential=token, session_id=session_id)

    # --- authenticated calls -----------------------------------------------------------------

    async def _session(self, context: grpc.aio.ServicerContext) -> Session:
        token = ""
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[len("Bearer "):]
        try:
            claims = verify_credential(token, self.keys.public.ed25519, now=self.clock())
        except CredentialError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        session = self.sessions.get(claims.session_id)
        if session is None or session.site_id != claims.site_id:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the session of this credential is not live (replaced or unknown)")
        return session

    async def GetTask(self, request: pb.TaskRequest, context: grpc.aio.ServicerContext) -> pb.TaskResponse:
        await self._session(context)
        task = self.driver.task()
        return pb.TaskResponse(round=task.round, model_spec=task.spec.to_json(), deadline_unix_ms=task.deadline_unix_ms,
                               finished=task.finished, rounds_total=task.rounds_total, evaluate=task.evaluate,
                               attempt=task.attempt)

    async def DownloadModel(self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.SealedChunk]:
        session = await self._session(context)
        try:
            model = self.driver.model_bytes(request.round)
        except UpdateRefused as exc:
            await context.abort(exc.code, str(exc))
        for header, index, final, ciphertext in seal_chunks(
            session.keys.aggregator_to_site, model, session_id=session.session_id, purpose="model",
            context=stream_context(request.round, session.site_id),
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

    async def UploadUpdate(self, request_iterator: AsyncIterator[pb.SealedChunk], context: grpc.aio.ServicerContext) -> pb.UploadReceipt:
        session = await self._session(context)
        first = await self._next_chunk(request_iterator, context)
        if first is None or not first.header:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload does not start with a stream header")
        try:
            header = StreamHeader.decode(first.header)
            round_number, site_id = parse_stream_context(header.context)
            if site_id != session.site_id:
                raise StreamError(f"the stream names site {site_id!r}, but the credential is site {session.site_id!r}")
            self.driver.check_upload(session.site_id, round_number)
            spec = self.driver.task().spec
            opener = StreamOpener(session.keys.site_to_aggregator, first.header, session_id=session.session_id, purpose="update",
                                  context=stream_context(round_number, session.site_id), max_bytes=spec.max_update_bytes)
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
                if chunk.final:
                    break
                chunk = await self._next_chunk(request_iterator, context)
            opener.finish()
        except (UpdateRefused, StreamError) as exc:
            await self._refuse_update(context, session, exc)
        data = memoryview(buffer)[:size]

        def check_and_accept() -> tuple[bytes, float, float]:
            # CPU work off the event loop (hashing and numpy release the GIL): other sites'
            # streams keep flowing meanwhile.
            started = time.perf_counter()
            update, metadata = decode_tensors(data, spec)
            weight = _weight(metadata)
            validate_seconds = time.perf_counter() - started
            digest = hashlib.sha256(data).digest()
            self.driver.accept_update(session.site_id, round_number, update, weight, digest)
            return digest, weight, validate_seconds

        try:
            digest, weight, validate_seconds = await asyncio.get_running_loop().run_in_executor(None, check_and_accept)
        except (UpdateRefused, UpdateFormatError) as exc:
            await self._refuse_update(context, session, exc)
        accepted_ms = int(time.time() * 1000)
        message = receipt_message(round_number, session.site_id, digest, weight, accepted_ms)
        signature = self.keys.sign(message)
        self.counters.updates += 1
        self.events.record("update_accepted", site=session.site_id, round=round_number, update_sha256=digest.hex(),
                           weight=weight, accepted_unix_ms=accepted_ms, receipt_signature=signature.hex(),
                           bytes=len(data), decrypt_seconds=round(decrypt_seconds, 6), validate_seconds=round(validate_seconds, 6))
        # Aggregation (and sealing the checkpoint) runs after the receipt is sent: a site does
        # not wait for the round's other work.
        self._closing = asyncio.get_running_loop().run_in_executor(None, self.driver.close_if_complete)
        return pb.UploadReceipt(round=round_number, site_id=session.site_id, update_sha256=digest, weight=weight,
                                accepted_unix_ms=accepted_ms, signature=signature)

    async def _refuse_update(self, context: grpc.aio.ServicerContext, session: Session, exc: Exception) -> None:
        """Log the refusal and end the call with the reason (the site learns why)."""
        self.events.record("update_refused", site=session.site_id, reason=str(exc))
        code = exc.code if isinstance(exc, UpdateRefused) else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, str(exc))

    async def ReportMetrics(self, request: pb.MetricsReport, context: grpc.aio.ServicerContext) -> pb.MetricsAck:
        session = await self._session(context)
        metrics = {str(k): float(v) for k, v in list(request.metrics.items())[:64] if np.isfinite(v)}
        try:
            self.driver.report_metrics(session.site_id, int(request.round), metrics, int(request.examples))
        except UpdateRefused as exc:
            await context.abort(exc.code, str(exc))
        return pb.MetricsAck()


_EAR_CLAIMS = ("measurement", "mr_td", "debug", "reported_tcb", "tcb_status", "simulated", "platform", "product", "app_id", "key_id")


def _weight(metadata: dict[str, str]) -> float:
    try:
        weight = float(metadata.get("weight", "1"))
    except ValueError:
        raise UpdateFormatError("update metadata 'weight' is not a number") from None
    if not np.isfinite(weight) or weight <= 0 or weight > MAX_WEIGHT:
        raise UpdateFormatError(f"update weight {weight} is not a positive finite number up to {MAX_WEIGHT:g}")
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


