"""The aggregator's gRPC service (``attestfl.v1.Federation``), run inside the TEE.

Handshake (see docs/protocol.md): ``GetEvidence`` answers the site's nonce with an evidence
bundle bound to the enclave keys; ``GetChallenge`` hands out a single-use, expiring
challenge; ``Admit`` appraises the site's evidence against the admission policy and, when
it passes, derives the session keys (X25519 + HKDF) and issues the session credential (an
EAR JWT signed by the enclave key). Every later call proves possession of the session keys
(:mod:`protocol.formulas`); payloads travel as sealed streams (:mod:`protocol.streams`).

Before any of that, every call passes the :class:`~aggregator.gate.Gate` (budgets, rates, a
deadline for the request message) and runs inside one barrier: an unexpected error is logged
and answered ``INTERNAL`` with no internal detail, and a failure to write the audit log stops
the aggregator (fail-stop: no state change is applied without its durable audit entry).

What the rounds do with updates is the :class:`TaskDriver`'s business (:mod:`aggregator.rounds`).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

from aggregator.challenges import ChallengeStore
from aggregator.gate import Gate, Limits, Ticket, peer_address
from aggregator.resume import PartialUpload, Resumes, park, receive_chunks, receive_resumed
from aggregator.spool import StreamedUpdate, UpdateSpool
from attestation.binding import check_nonce
from attestation.bundle_abi import encode_bundle
from attestation.errors import EXIT_FAULT, EXIT_REFUSED, AttestationError, AttestflError
from attestation.files import read_bounded
from attestation.findings import Reason
from attestation.platforms.base import NEUTRAL_CLAIMS
from enclave.attester import Attester, GpuAttester, make_bundle
from enclave.keys import EnclaveKeyError, EnclaveKeys
from protocol.admission import AdmissionPolicy, IdentityProof, SiteAppraisal, appraise_site, valid_site_id
from protocol.credential import issue_credential
from protocol.formulas import (
    CALL_HEADER,
    MAX_EVIDENCE_BYTES,
    MAX_IDENTITY_CERTIFICATE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_METRIC_NAME,
    MAX_METRICS,
    SESSION_HEADER,
    STOPPED_ON_FAULT,
    ProtocolError,
    download_context,
    open_message,
    parse_upload_context,
    receipt_message,
    seal_message,
    upload_context,
)
from protocol.resume import reseal_from
from protocol.streams import (
    SessionKeys,
    StreamError,
    StreamHeader,
    StreamOpener,
    derive_session_keys,
    seal_chunks,
    transcript_hash,
)
from protocol.tensors import ModelSpec, UpdateFormatError
from protocol.wire import chunks as chunk_codec
from protocol.wire import federation_pb2 as pb
from protocol.wire import health_pb2
from protocol.wire.chunks import Chunk

LOG = logging.getLogger("attestfl.aggregator")
SERVICE_NAME = "attestfl.v1.Federation"
#: How often a GetTask long poll looks at the task when nothing woke it (a deadline, a retry).
TASK_RECHECK_SECONDS = 0.02


class UpdateRefused(AttestflError):
    """The round driver refuses an update or report (wrong round, duplicate, round closed)."""

    exit_code = EXIT_REFUSED

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
    compression: str = "float32"  # how sites encode updates (protocol.compression)
    adapters: Any = None  # protocol.adapters.AdapterSpec: only these tensors are federated, on a pinned base


class TaskDriver(Protocol):
    """What the service asks of the training rounds."""

    def task(self) -> Task: ...
    def model_bytes(self, round_number: int) -> bytes | bytearray: ...
    def check_upload(self, site_id: str, round_number: int, attempt: int) -> None: ...
    def accept_update(
        self,
        site_id: str,
        round_number: int,
        attempt: int,
        update: Any,  # the tensors, or an aggregator.spool.StreamedUpdate when the driver ``accepts_streamed``
        weight: float,
        digest: bytes,
        receipt: dict[str, Any],
    ) -> None: ...
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
    x25519: bytes = b""  # the site's attested session key (vendor evaluation seals models to it)


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


class FailStop(AttestflError):
    """The aggregator stopped on a fault (the audit log could not be written): no call is served."""

    exit_code = EXIT_FAULT


class ServerStopping(AttestflError):
    """The server was asked to stop while a round was closing (a leaf waiting for its root):
    the close gave up, nothing of it was committed, and this is not a fault."""


#: Exceptions of the event sink or the disk that stop the aggregator rather than the call.
def _is_fault(exc: BaseException) -> bool:
    from aggregator.audit.log import AuditLogError

    return isinstance(exc, (AuditLogError, OSError, FailStop))


@dataclass(frozen=True)
class _ReceivedUpdate:
    """An upload's plaintext (its spool, aggregator/spool.py) and what its stream was sealed for."""

    round: int
    attempt: int
    spec: ModelSpec
    spool: UpdateSpool
    decrypt_seconds: float
    call: int | None = None  # a resumed upload: the call its stream was sealed for (None: this call)

    @classmethod
    def of(cls, partial: PartialUpload, call: int | None = None) -> _ReceivedUpdate:
        """A finished upload."""
        return cls(partial.round, partial.attempt, partial.spec, partial.spool, partial.decrypt_seconds, call)


class FederationService:
    #: Model delivery under the task's release policy (aggregator.delivery.Delivery), when set.
    delivery: Any = None
    #: Where uploads larger than ``Limits.upload_memory_bytes`` are sealed to disk (None: the temp dir).
    spool_dir: Path | None = None

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
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        tree_head: Callable[[int], tuple[bytes, list[bytes]]] | None = None,
        limits: Limits | None = None,
        on_stop: Callable[[str], None] | None = None,
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
        self.limits = limits or Limits()
        self.gate = Gate(self.limits)
        #: Uploads whose connection dropped, and download headers, kept to resume (aggregator/resume.py).
        self.resumes = Resumes(
            retention=stall_timeout,
            max_parked=self.limits.parked_uploads,
            max_parked_bytes=self.limits.parked_upload_bytes,
        )
        self.challenges = ChallengeStore(admission.challenge_ttl)
        self._logged_collateral: set[bytes] = set()
        self.sessions: dict[bytes, Session] = {}
        self.counters = Counters()
        self.key_id = hashlib.sha256(keys.public.ed25519).hexdigest()[:16]
        self._closing: asyncio.Future | None = None
        #: Set (and replaced) when a round may have moved on: wakes GetTask long polls at once.
        self._task_moved: asyncio.Event | None = None
        #: Set when the server stops: long polls answer at once.
        self.stopping = False
        self._evidence = asyncio.Semaphore(self.limits.evidence_concurrency)
        self._appraisals = asyncio.Semaphore(self.limits.appraisal_concurrency)
        #: Why the aggregator stopped (fail-stop), or None while it serves.
        self.stopped: str | None = None
        self.on_stop = on_stop
        #: Vendor evaluation jobs (aggregator.evaluation_jobs.EvaluationJobs) when the task has a vendor policy.
        self.vendor_jobs: Any = None

    # --- the barrier every call runs in ---------------------------------------------------------

    def fail_stop(self, reason: str) -> None:
        """Stop serving for good: the audit log (or the disk under it) refused a write."""
        if self.stopped is None:
            self.stopped = _short(reason, 300)
            LOG.error("fail-stop", extra={"fields": {"reason": self.stopped}})
            if self.on_stop is not None:
                self.on_stop(self.stopped)

    def _record(self, kind: str, **fields: Any) -> None:
        """Log an event durably; a failure stops the aggregator (the caller applies nothing)."""
        try:
            self.events.record(kind, **fields)
        except Exception as exc:  # noqa: BLE001 - whatever the log's failure: fail-stop
            self.fail_stop(f"the audit log refused an entry ({kind}): {exc}")
            raise FailStop(str(exc)) from None

    def _refused(self, context: grpc.aio.ServicerContext, kind: str, **fields: Any) -> None:
        """Log an unauthenticated refusal, bounded and rate-limited per client address."""
        if self.gate.may_log(context.peer()):
            self._record(kind, peer=_short(peer_address(context.peer())[0], 64), **fields)

    async def _barrier(self, context: grpc.aio.ServicerContext, method: str, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (asyncio.CancelledError, grpc.aio.AbortError, StopAsyncIteration):
            raise
        except Exception as exc:  # noqa: BLE001 - the barrier: logged, answered INTERNAL, nothing accepted
            if _is_fault(exc):
                self.fail_stop(f"{method}: {exc}")
                await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPED_ON_FAULT)
            LOG.error(
                "internal error",
                extra={"fields": {"method": method, "error": type(exc).__name__, "detail": _short(str(exc), 300)}},
            )
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal error (logged by the aggregator); nothing was accepted"
            )

    async def _enter(self, context: grpc.aio.ServicerContext, method: str) -> Ticket:
        if self.stopped is not None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPED_ON_FAULT)
        if method in HANDSHAKE_METHODS:
            ticket = self.gate.enter_handshake(context.peer())
        else:
            session_id = _session_id(context)
            if session_id not in self.sessions:
                self._refused(context, "refused", method=method, reason="no live session")
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no live session: join (attested admission) first")
            ticket = self.gate.enter_session(session_id)
        if isinstance(ticket, str):
            self._refused(context, "refused", method=method, reason=_short(ticket, 120))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, ticket)
        assert isinstance(ticket, Ticket)
        return ticket

    async def _first(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        """The request message of a unary call, within ``request_timeout``."""
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                request = await requests.__anext__()
        except StopAsyncIteration:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message")
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no request message within {self.limits.request_timeout:g} s"
            )
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {request.type_name} message does not parse")
        return request

    def unary(self, method: str, implementation: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable:
        async def behaviour(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            ticket = await self._enter(context, method)
            try:
                request = await self._first(requests, context)
                return await self._barrier(context, method, implementation(request, context))
            finally:
                ticket.release()

        return behaviour

    def client_stream(self, method: str, implementation: Callable) -> Callable:
        async def behaviour(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            ticket = await self._enter(context, method)
            try:
                return await self._barrier(context, method, implementation(requests, context))
            finally:
                ticket.release()

        return behaviour

    def server_stream(self, method: str, implementation: Callable) -> Callable:
        async def behaviour(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            ticket = await self._enter(context, method)
            try:
                request = await self._first(requests, context)
                stream = implementation(request, context)
                while True:
                    try:
                        item = await self._barrier(context, method, stream.__anext__())
                    except StopAsyncIteration:
                        return
                    yield item
            finally:
                ticket.release()

        return behaviour

    # --- handshake ---------------------------------------------------------------------------

    async def GetEvidence(self, request: pb.EvidenceRequest, context: grpc.aio.ServicerContext) -> pb.EvidenceResponse:
        try:
            nonce = check_nonce(request.nonce)
        except AttestationError as exc:
            self._refused(context, "refused", method="GetEvidence", reason="nonce size")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        loop = asyncio.get_running_loop()
        async with self._evidence:
            bundle = await loop.run_in_executor(
                None, lambda: make_bundle(self.attester, self.keys, nonce, gpu=self.gpu)
            )
        data = encode_bundle(bundle)
        self.counters.bytes_out += len(data)
        return pb.EvidenceResponse(bundle=data)

    async def GetChallenge(
        self, request: pb.ChallengeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ChallengeResponse:
        if not valid_site_id(request.site_id):
            self._refused(context, "refused", method="GetChallenge", reason="site id")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a site id is 1-128 letters, digits, '-', '_' or '.'")
        challenge, expires = self.challenges.issue(request.site_id)
        return pb.ChallengeResponse(challenge=challenge, expires_unix_ms=int(expires * 1000))

    async def Admit(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> pb.AdmitResponse:
        await self._check_admit_request(request, context)
        site_id = request.site_id
        challenge_reason = self.challenges.consume(request.challenge, site_id)
        now = self.clock()
        identity = IdentityProof(
            bytes(request.identity_public),
            bytes(request.identity_signature),
            bytes(request.identity_certificate),
            bytes(request.aggregator_evidence_sha256),
        )
        appraisal = await self._appraise(request, context, challenge_reason, identity, now)
        self._log_admission(request, context, appraisal, identity, now)
        if not appraisal.admitted:
            self.counters.refused += 1
            for reason in appraisal.reasons:
                self.counters.by_reason[reason.check] = self.counters.by_reason.get(reason.check, 0) + 1
            return pb.AdmitResponse(admitted=False, reasons=list(appraisal.reply))
        return self._open_session(request, appraisal, now)

    async def _check_admit_request(self, request: pb.AdmitRequest, context: grpc.aio.ServicerContext) -> None:
        """Bounded sizes and a well-formed site id, before any work."""
        if (
            len(request.evidence) > MAX_EVIDENCE_BYTES
            or len(request.identity_certificate) > MAX_IDENTITY_CERTIFICATE_BYTES
        ):
            self._refused(context, "refused", method="Admit", reason="evidence or certificate size")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"evidence over {MAX_EVIDENCE_BYTES} bytes or identity certificate over "
                f"{MAX_IDENTITY_CERTIFICATE_BYTES} bytes",
            )
        if not valid_site_id(request.site_id):
            self._refused(context, "refused", method="Admit", reason="site id")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a site id is 1-128 letters, digits, '-', '_' or '.'")

    async def _appraise(
        self,
        request: pb.AdmitRequest,
        context: grpc.aio.ServicerContext,
        challenge_reason: Reason | None,
        identity: IdentityProof,
        now: datetime,
    ) -> SiteAppraisal:
        """The admission decision: the site's evidence and identity against the policy (off the
        event loop, at most ``appraisal_concurrency`` at once), then the live-session rule."""
        site_id = request.site_id
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                await self._appraisals.acquire()
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "the aggregator is busy appraising evidence; retry shortly"
            )
        try:
            appraisal = await loop.run_in_executor(
                None,
                lambda: appraise_site(
                    self.admission,
                    site_id=site_id,
                    challenge_reason=challenge_reason,
                    challenge=bytes(request.challenge),
                    x25519=bytes(request.site_x25519_public),
                    ed25519=bytes(request.site_ed25519_public),
                    evidence_format=request.evidence_format,
                    evidence=bytes(request.evidence),
                    app_attest_key_id=bytes(request.app_attest_key_id),
                    identity=identity,
                    aggregator=self.keys.public,
                    at=now,
                ),
            )
        finally:
            self._appraisals.release()
        live = [s for s in self.sessions.values() if s.site_id == site_id and s.expires > now]
        if appraisal.admitted and any(s.identity != appraisal.identity for s in live):
            # Re-admission replaces a live session only for the same identity key.
            refusal = Reason(
                "admission.session_live",
                f"site {site_id!r} has a live session under another identity key; it is not replaced",
            )
            appraisal = replace(appraisal, admitted=False, reasons=(refusal,), status="contraindicated", identity=None)
        return appraisal

    def _log_admission(
        self,
        request: pb.AdmitRequest,
        context: grpc.aio.ServicerContext,
        appraisal: SiteAppraisal,
        identity: IdentityProof,
        now: datetime,
    ) -> None:
        """The decision in the audit log. Once the peer proved the site's identity key: everything
        an auditor needs to re-run it offline (auditor.verify), the verifier's collateral included
        (each file once). Before that proof, only digests and bounded fields (rate-limited): an
        unauthenticated peer cannot make the log grow by its evidence."""
        reasons = [_short(str(r), 400) for r in appraisal.reasons]
        fields: dict[str, Any] = dict(
            site=request.site_id,
            admitted=appraisal.admitted,
            reasons=reasons,
            platform=appraisal.platform,
            evidence_format=_short(request.evidence_format, 32),
            evidence_sha256=hashlib.sha256(request.evidence).hexdigest(),
            evidence_bytes=len(request.evidence),
            policy_id=self.admission.policy_id,
            at=now.isoformat(),
            challenge=bytes(request.challenge[:64]),
            identity_public=identity.public[:32],
        )
        if not appraisal.identity_proven:
            self._refused(context, "admission", **fields)
            return
        self._log_collateral(appraisal.collateral)
        fields.update(
            collateral={path: digest.hex() for path, digest in sorted(appraisal.collateral.items())},
            evidence=bytes(request.evidence),
            claims=appraisal.claims,
            warnings=list(appraisal.warnings),
            x25519=bytes(request.site_x25519_public),
            ed25519=bytes(request.site_ed25519_public),
            app_attest_key_id=bytes(request.app_attest_key_id[:64]),
            identity_signature=identity.signature,
            identity_certificate=identity.certificate,
            aggregator_evidence_sha256=identity.aggregator_evidence_sha256[:64],
            aggregator_x25519=self.keys.public.x25519,
            aggregator_ed25519=self.keys.public.ed25519,
        )
        self._record("admission", **fields)

    def _open_session(self, request: pb.AdmitRequest, appraisal: SiteAppraisal, now: datetime) -> pb.AdmitResponse:
        """An admitted site's session: keys derived from the handshake, the credential signed by the
        enclave key, the session logged (it replaces the site's earlier ones)."""
        site_id = request.site_id
        try:
            shared = self.keys.shared_secret(bytes(request.site_x25519_public))
        except EnclaveKeyError as exc:  # appraisal refuses low-order keys; this is a last line
            return pb.AdmitResponse(admitted=False, reasons=[f"admission.keys: {exc}"])
        assert appraisal.identity is not None
        session_id = os.urandom(16)
        transcript = transcript_hash(
            site_id=site_id,
            challenge=bytes(request.challenge),
            aggregator_x25519=self.keys.public.x25519,
            aggregator_ed25519=self.keys.public.ed25519,
            site_x25519=bytes(request.site_x25519_public),
            site_ed25519=bytes(request.site_ed25519_public),
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
            self.keys.sign,
            key_id=self.key_id,
            session_id=session_id,
            site_id=site_id,
            site_x25519=bytes(request.site_x25519_public),
            site_ed25519=bytes(request.site_ed25519_public),
            status=appraisal.status,
            policy_id=self.admission.policy_id,
            annotated_claims=annotated,
            now=now,
            ttl=self.admission.credential_ttl,
            build=self.build,
        )
        replaced = [sid for sid, s in self.sessions.items() if s.site_id == site_id]
        self._record(
            "session",
            site=site_id,
            session=session_id.hex(),
            expires=expires.isoformat(),
            site_x25519=request.site_x25519_public.hex(),
            site_ed25519=request.site_ed25519_public.hex(),
            identity=appraisal.identity.hex(),
            replaces=[sid.hex() for sid in replaced],
        )
        for old in replaced:
            del self.sessions[old]
        self.sessions[session_id] = Session(
            session_id, site_id, session_keys, appraisal.platform, appraisal.identity, appraisal.max_weight, expires
        )
        self.sessions[session_id].x25519 = bytes(request.site_x25519_public)  # vendor evaluation seals to it
        self.counters.admitted += 1
        return pb.AdmitResponse(admitted=True, credential=token, session_id=session_id)

    def _log_collateral(self, used: dict[str, bytes]) -> None:
        """A ``collateral`` entry for each collateral file an appraisal used that this run has
        not logged yet: the auditor re-runs admissions with exactly these files."""
        store = self.admission.collateral
        for path, digest in sorted(used.items()):
            if digest in self._logged_collateral or store is None:
                continue
            data = store.file_bytes(digest)
            if data is None:
                try:
                    data = read_bounded(store.directory / path, 1 << 20, "collateral file")
                except AttestationError:
                    continue
                if hashlib.sha256(data).digest() != digest:
                    continue  # replaced since: the next admission logs the new file
            self._record("collateral", path=path, sha256=digest.hex(), data=data)
            self._logged_collateral.add(digest)

    # --- authenticated calls -----------------------------------------------------------------

    async def _session(self, context: grpc.aio.ServicerContext) -> tuple[Session, int]:
        """The live session the call names and the call's counter (not yet marked used)."""
        session = self.sessions.get(_session_id(context))
        call = _call_counter(context)
        if session is None or call < 0:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no live session: join (attested admission) first")
        assert session is not None
        if self.clock() >= session.expires:
            self.sessions.pop(session.session_id, None)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the session expired: join again")
        if not session.calls.fresh(call):
            self._refused(context, "call_refused", site=session.site_id, reason="replayed call counter")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"call {call} of this session was already made (replayed)"
            )
        return session, call

    async def _open(
        self, context: grpc.aio.ServicerContext, method: str, request: pb.Sealed
    ) -> tuple[Session, int, bytes]:
        """Authenticate a sealed request; the counter is used once it authenticates."""
        session, call = await self._session(context)
        try:
            plaintext = open_message(
                session.keys, method=method, call=call, response=False, ciphertext=request.ciphertext
            )
        except ProtocolError as exc:
            self._refused(
                context, "call_refused", site=session.site_id, method=method, reason="not sealed under the session keys"
            )
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        if not session.calls.fresh(call):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"call {call} of this session was already made (replayed)"
            )
        session.calls.mark(call)
        return session, call, plaintext

    def _seal(self, session: Session, method: str, call: int, message: Any) -> pb.Sealed:
        data = message.SerializeToString()
        self.counters.bytes_out += len(data)
        return pb.Sealed(ciphertext=seal_message(session.keys, method=method, call=call, response=True, plaintext=data))

    async def GetTask(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        session, call, plaintext = await self._open(context, "GetTask", request)
        inner = _parse(pb.TaskRequest, plaintext)
        if inner.wait_ms:
            await self._wait_for_task(int(inner.wait_round), int(inner.wait_attempt), inner.wait_ms / 1000)
        task = self.driver.task()
        head, proof = self.tree_head(int(inner.known_tree_size))
        response = pb.TaskResponse(
            round=task.round,
            model_spec=task.spec.to_json(),
            deadline_unix_ms=task.deadline_unix_ms,
            finished=task.finished,
            rounds_total=task.rounds_total,
            evaluate=task.evaluate,
            attempt=task.attempt,
            max_weight=session.max_weight,
            tree_head=head,
            consistency=proof,
            compression=task.compression,
            waits=True,
        )
        if task.adapters is not None:
            response.adapter_base_sha256 = task.adapters.base_sha256
            response.adapter_tensors.extend(task.adapters.tensors)
        if self.vendor_jobs is not None:
            response.vendor_jobs = self.vendor_jobs.pending(session.site_id)
        if self.delivery is not None:
            self.delivery.fill_task(response, task.round)
        return self._seal(session, "GetTask", call, response)

    async def _wait_for_task(self, round_number: int, attempt: int, seconds: float) -> None:
        """A long poll: return once the task is no longer (round_number, attempt) and open, or
        after ``seconds`` (at most ``Limits.task_wait``), or when the server stops. Woken at once
        when a round closes after an upload; any other move (a deadline, a retry) is seen within
        ``TASK_RECHECK_SECONDS``. Holds one of the session's call slots, nothing else."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(seconds, self.limits.task_wait)
        while not self.stopping and self.stopped is None:
            task = self.driver.task()
            if task.finished or (task.round, task.attempt) != (round_number, attempt):
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            if self._task_moved is None:
                self._task_moved = asyncio.Event()
            try:
                async with asyncio.timeout(min(remaining, TASK_RECHECK_SECONDS)):
                    await self._task_moved.wait()
            except TimeoutError:
                pass

    def wake_task_waiters(self) -> None:
        """The round may have moved on (or the server stops): GetTask long polls look again now.
        Call on the event loop's thread."""
        moved, self._task_moved = self._task_moved, None
        if moved is not None:
            moved.set()

    async def DownloadModel(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> AsyncIterator[Chunk]:
        session, call, plaintext = await self._open(context, "DownloadModel", request)
        inner = _parse(pb.DownloadRequest, plaintext)
        try:
            model = self.driver.model_bytes(inner.round)
            delivered = self.delivery.check_download(session.site_id, inner.round) if self.delivery else None
        except UpdateRefused as exc:
            await context.abort(exc.code, str(exc))
        if delivered is not None:
            self._record("model_delivered", **delivered)  # durably, before the model leaves
        if inner.resume_header:  # a resumed download: the rest of a stream issued to this session
            try:
                header = self.resumes.download_header(session.session_id, inner.resume_header, inner.round, len(model))
                chunks = reseal_from(session.keys.aggregator_to_site, header, model, inner.start_index)
                pending = [next(chunks)]  # an impossible start index fails here, before anything is sent
            except StreamError as exc:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            for index, final, ciphertext in itertools.chain(pending, chunks):
                self.counters.bytes_out += len(ciphertext)
                yield Chunk(index=index, final=final, ciphertext=ciphertext)
            return
        for header, index, final, ciphertext in seal_chunks(
            session.keys.aggregator_to_site,
            model,
            session_id=session.session_id,
            purpose="model",
            context=download_context(inner.round, session.site_id, call),
        ):
            if header:
                self.resumes.issued(session.session_id, header, inner.round, len(model))
            self.counters.bytes_out += len(ciphertext)
            yield Chunk(header=header, index=index, final=final, ciphertext=ciphertext)

    async def _next_chunk(
        self, iterator: AsyncIterator[Chunk], context: grpc.aio.ServicerContext, deadline: float
    ) -> Chunk | None:
        timeout = min(self.stall_timeout, deadline - time.monotonic())
        try:
            async with asyncio.timeout(max(0.0, timeout)):  # no extra task per chunk, unlike wait_for
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return None
        except TimeoutError:
            if time.monotonic() >= deadline:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"the upload did not finish within {self.limits.upload_timeout:g} s",
                )
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no chunk for {self.stall_timeout:.0f} s: the upload stalled"
            )
        if isinstance(chunk, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"the {chunk.type_name} message does not parse")
        return chunk

    async def UploadUpdate(
        self, request_iterator: AsyncIterator[Chunk], context: grpc.aio.ServicerContext
    ) -> pb.Sealed:
        session, call = await self._session(context)
        if session.uploading:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "an upload of this session is already in flight")
        session.uploading = True
        try:
            return await self._upload(session, call, request_iterator, context)
        finally:
            session.uploading = False

    async def _upload(
        self,
        session: Session,
        call: int,
        request_iterator: AsyncIterator[Chunk],
        context: grpc.aio.ServicerContext,
    ) -> pb.Sealed:
        update = await self._receive_update(session, call, request_iterator, context)
        if isinstance(update, pb.Sealed):
            return update  # a resume query's answer
        sealed_call = call
        call = call if update.call is None else update.call  # a resumed upload's receipt names its stream's call
        try:
            # CPU work off the event loop (hashing and numpy release the GIL): other sites'
            # streams keep flowing meanwhile.
            digest, weight, accepted_ms, signature = await asyncio.get_running_loop().run_in_executor(
                None, self._accept_update, session, call, update
            )
        except (UpdateRefused, UpdateFormatError, StreamError) as exc:
            await self._refuse_update(context, session, exc)
        self.counters.updates += 1
        head_bytes, _proof = self.tree_head(0)
        # Aggregation (and sealing the checkpoint) runs after the receipt is sent: a site does
        # not wait for the round's other work.
        self._closing = asyncio.get_running_loop().run_in_executor(None, self._close_if_complete)
        self._closing.add_done_callback(lambda _closed: self.wake_task_waiters())
        receipt = pb.UploadReceipt(
            round=update.round,
            site_id=session.site_id,
            update_sha256=digest,
            weight=weight,
            accepted_unix_ms=accepted_ms,
            signature=signature,
            attempt=update.attempt,
            call=call,
            tree_head=head_bytes,
        )
        return self._seal(session, "UploadUpdate", sealed_call, receipt)

    async def _receive_update(
        self,
        session: Session,
        call: int,
        request_iterator: AsyncIterator[Chunk],
        context: grpc.aio.ServicerContext,
    ) -> Any:
        """The sealed stream of an upload, authenticated chunk by chunk and decrypted in place into
        one buffer of the largest valid update; a refusal is logged and ends the call."""
        started_at = time.monotonic()
        deadline = started_at + self.limits.upload_timeout
        first = await self._next_chunk(request_iterator, context, deadline)
        if first is not None and (first.resume_stream or first.resume_query):
            resumed = await receive_resumed(
                self, session, call, first, request_iterator, context, (UpdateRefused, StreamError)
            )
            # where to resume, or the whole upload (sealed for its first call)
            return resumed if isinstance(resumed, pb.Sealed) else _ReceivedUpdate.of(resumed, resumed.call)
        if first is None or not first.header:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the upload does not start with a stream header")
        assert first is not None
        partial: PartialUpload | None = None
        try:
            header = StreamHeader.decode(first.header)
            round_number, attempt, site_id, stream_call = parse_upload_context(header.context)
            if site_id != session.site_id or stream_call != call:
                raise StreamError("the stream was sealed for another site or call (replayed or moved)")
            spec = self.driver.task().spec
            opener = StreamOpener(
                session.keys.site_to_aggregator,
                first.header,
                session_id=session.session_id,
                purpose="update",
                context=upload_context(round_number, attempt, session.site_id, call),
                max_bytes=spec.max_update_bytes,
            )
            # Chunk 0 authenticates before anything is allocated for the update.
            started = time.perf_counter()
            head = opener.open(first.index, first.ciphertext, final=first.final)
            decrypt_seconds = time.perf_counter() - started
            if not session.calls.fresh(call):
                raise StreamError(f"call {call} of this session was already made (replayed)")
            session.calls.mark(call)  # chunk 0 authenticated: this call's counter is used
            if not first.final and not head:
                raise StreamError("an empty chunk that is not the final one")
            self.counters.bytes_in += len(first.ciphertext)
            self.driver.check_upload(session.site_id, round_number, attempt)
            # In memory up to Limits.upload_memory_bytes, beyond that sealed on disk in blocks: a
            # bounded buffer per connection whatever the model's size (aggregator/spool.py).
            spool = UpdateSpool(
                spec.max_update_bytes, memory_bytes=self.limits.upload_memory_bytes, directory=self.spool_dir
            )
            spool.append_plaintext(head)
            partial = PartialUpload(
                session.session_id,
                header.stream_id,
                round_number,
                attempt,
                call,
                spec,
                opener,
                spool,
                decrypt_seconds,
                deadline,
            )
            chunk = None if first.final else await self._next_chunk(request_iterator, context, deadline)
            await receive_chunks(self, partial, chunk, request_iterator, context, started_at=started_at, counted_from=0)
        except asyncio.CancelledError:  # the connection dropped: parked if chunk 0 authenticated
            if partial is not None:
                park(self, session, partial)
            raise
        except (UpdateRefused, StreamError) as exc:
            await self._refuse_update(context, session, exc)
        assert partial is not None
        return _ReceivedUpdate.of(partial)

    def _accept_update(self, session: Session, call: int, update: _ReceivedUpdate) -> tuple[bytes, float, int, bytes]:
        """Check the update (read once from its spool: layout, finite values, norm), sign its
        receipt, and hand both to the driver, which logs the receipt durably, then applies the
        update (reading it again, piece by piece): no update is aggregated without its receipt,
        and no receipt is sent for an update not applied. Returns (digest, weight, accepted at
        (ms), receipt signature)."""
        started = time.perf_counter()
        digest = update.spool.finish()
        streamed = StreamedUpdate(update.spool, update.spec, self.driver.task().compression)
        weight = _weight(streamed.metadata, session.max_weight)
        streamed.check()
        validate_seconds = time.perf_counter() - started
        accepted_ms = int(time.time() * 1000)
        message = receipt_message(
            round_number=update.round,
            attempt=update.attempt,
            site_id=session.site_id,
            update_sha256=digest,
            weight=weight,
            accepted_unix_ms=accepted_ms,
            session_id=session.session_id,
            call=call,
        )
        signature = self.keys.sign(message)
        receipt = {
            "site": session.site_id,
            "round": update.round,
            "attempt": update.attempt,
            "update_sha256": digest.hex(),
            "weight": weight,
            "accepted_unix_ms": accepted_ms,
            "session": session.session_id.hex(),
            "call": call,
            "receipt_signature": signature.hex(),
            "bytes": update.spool.size,
            "spooled": update.spool.spooled,  # sealed to disk (over upload_memory_bytes), or held in memory
            "decrypt_seconds": round(update.decrypt_seconds, 6),
            "validate_seconds": round(validate_seconds, 6),
        }
        try:
            # A driver that takes the update piece by piece reads it from the spool (bounded
            # memory); any other gets it whole.
            accepted = streamed if getattr(self.driver, "accepts_streamed", False) else streamed.tensors()
            self.driver.accept_update(session.site_id, update.round, update.attempt, accepted, weight, digest, receipt)
        finally:
            streamed.close()
        return digest, weight, accepted_ms, signature

    def _close_if_complete(self) -> None:
        try:
            self.driver.close_if_complete()
        except ServerStopping as exc:  # asked to stop: the round is not committed, and that is no fault
            LOG.info("round close abandoned: stopping", extra={"fields": {"detail": _short(str(exc), 300)}})
        except Exception as exc:  # noqa: BLE001 - a round that cannot be logged or checkpointed: stop, apply nothing
            self.fail_stop(f"closing the round: {exc}")

    async def _refuse_update(self, context: grpc.aio.ServicerContext, session: Session, exc: Exception) -> None:
        """Log the refusal and end the call with the reason (the site learns why)."""
        self._record("update_refused", site=session.site_id, reason=_short(str(exc), 300))
        code = exc.code if isinstance(exc, UpdateRefused) else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, _short(str(exc), 300))

    async def ReportMetrics(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        session, call, plaintext = await self._open(context, "ReportMetrics", request)
        inner = _parse(pb.MetricsReport, plaintext)
        try:
            metrics = _metrics(inner.metrics)
            examples = int(inner.examples)
            if examples > session.max_weight:
                raise UpdateRefused(
                    f"{examples} evaluation examples is over this site's max_weight {session.max_weight:g} "
                    "(admission policy)",
                    grpc.StatusCode.INVALID_ARGUMENT,
                )
            report_card = getattr(self.driver, "report_card", None)  # async versions take no cards
            if inner.dataset_card and report_card is not None:  # the site's signed dataset card (aggregator/cards.py)
                await asyncio.get_running_loop().run_in_executor(
                    None,
                    report_card,
                    session.site_id,
                    int(inner.round),
                    session.session_id,
                    session.identity,
                    inner.dataset_card,
                    bytes(inner.dataset_card_signature),
                )
            await asyncio.get_running_loop().run_in_executor(  # logged durably: an fsync, off the event loop
                None, self.driver.report_metrics, session.site_id, int(inner.round), metrics, examples
            )
        except UpdateRefused as exc:
            self._record("call_refused", site=session.site_id, method="ReportMetrics", reason=_short(str(exc), 300))
            await context.abort(exc.code, _short(str(exc), 300))
        return self._seal(session, "ReportMetrics", call, pb.MetricsAck())

    # --- vendor evaluation (aggregator/evaluation_jobs.py) -------------------------------------

    async def _vendor(self, name: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if self.vendor_jobs is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this task has no vendor policy ([task.vendors])")
        return await getattr(self.vendor_jobs, name)(self, request, context)

    async def VendorSubmit(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._vendor("rpc_submit", request, context)

    async def VendorJobs(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        return await self._vendor("rpc_jobs", request, context)

    async def VendorReportMetrics(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        return await self._vendor("rpc_report_metrics", request, context)

    async def VendorReport(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._vendor("rpc_report", request, context)

    async def VendorUpload(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._vendor("rpc_upload", request_iterator, context)

    async def VendorFetch(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if self.vendor_jobs is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this task has no vendor policy ([task.vendors])")
        async for chunk in self.vendor_jobs.rpc_fetch(self, request, context):
            yield chunk

    # --- dataset cards (aggregator/card_calls.py) -------------------------------------------

    #: The module aggregator.card_calls, set by the server (None: the calls are not offered).
    card_calls: Any = None

    async def _cards(self, name: str, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        if self.card_calls is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this aggregator takes no dataset cards")
        return await getattr(self.card_calls, name)(self, request, context)

    async def PublishCard(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        return await self._cards("publish", request, context)

    async def ListCards(self, request: pb.Sealed, context: grpc.aio.ServicerContext) -> pb.Sealed:
        return await self._cards("list_cards", request, context)

    # --- health ------------------------------------------------------------------------------

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        serving = self.stopped is None
        return health_pb2.HealthCheckResponse(
            status=health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )


HANDSHAKE_METHODS = ("GetEvidence", "GetChallenge", "Admit", "Check", "VendorSubmit", "VendorReport", "VendorUpload")


class Malformed:
    """A request message that does not parse: the handler refuses it (gRPC would otherwise
    answer UNKNOWN with the parser's exception text)."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _deserializer(message_type: Any) -> Callable[[bytes], Any]:
    if message_type is Chunk:
        decode, name = chunk_codec.decode, "SealedChunk"
    else:
        decode, name = message_type.FromString, message_type.__name__

    def parse(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError (and anything a hostile message makes it raise)
            return Malformed(name)

    return parse


def _session_id(context: grpc.aio.ServicerContext) -> bytes:
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_HEADER and isinstance(value, str) and len(value) == 32:
            try:
                return bytes.fromhex(value)
            except ValueError:
                return b""
    return b""


def _call_counter(context: grpc.aio.ServicerContext) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == CALL_HEADER and isinstance(value, str) and 0 < len(value) <= 20 and value.isdigit():
            call = int(value)
            return call if call < 2**64 else -1
    return -1


def _parse(message_type: Any, data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError; authenticated but malformed
        raise UpdateRefused(
            f"the sealed {message_type.__name__} does not parse", grpc.StatusCode.INVALID_ARGUMENT
        ) from None


_EAR_CLAIMS = (*NEUTRAL_CLAIMS, "reported_tcb", "product", "app_id", "key_id")


def _metrics(values: Any) -> dict[str, float]:
    """A site's metrics: at most MAX_METRICS names of at most MAX_METRIC_NAME printable
    characters, finite values; anything else refuses the report."""
    if len(values) > MAX_METRICS:
        raise UpdateRefused(
            f"{len(values)} metrics is over the limit of {MAX_METRICS}", grpc.StatusCode.INVALID_ARGUMENT
        )
    metrics = {}
    for name, value in values.items():
        if not 0 < len(name) <= MAX_METRIC_NAME or not name.isascii() or not name.isprintable():
            raise UpdateRefused(
                f"metric name {_short(name, 40)!r} is not 1-{MAX_METRIC_NAME} printable ASCII characters",
                grpc.StatusCode.INVALID_ARGUMENT,
            )
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
        raise UpdateFormatError(
            f"update weight {weight:g} is over this site's max_weight {max_weight:g} (admission policy)"
        )
    return weight


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.http2.max_pings_without_data", 0),
    # Connections: a TCP+HTTP/2 handshake must finish in 10 s, a connection with no call is
    # closed after 5 min, and at most 64 calls run on one connection.
    ("grpc.server_handshake_timeout_ms", 10_000),
    ("grpc.max_connection_idle_ms", 300_000),
    # A connection lives at most 6 h; calls in flight then get an hour to finish (an upload's limit).
    ("grpc.max_connection_age_ms", 6 * 3600_000),
    ("grpc.max_connection_age_grace_ms", 3600_000),
    ("grpc.max_concurrent_streams", 64),
    # One aggregator per port: a second one fails to bind instead of sharing the port.
    ("grpc.so_reuseport", 0),
]

_METHODS = {
    # name: (kind, request type, response type)
    "GetEvidence": ("unary", pb.EvidenceRequest, pb.EvidenceResponse),
    "GetChallenge": ("unary", pb.ChallengeRequest, pb.ChallengeResponse),
    "Admit": ("unary", pb.AdmitRequest, pb.AdmitResponse),
    "GetTask": ("unary", pb.Sealed, pb.Sealed),
    "DownloadModel": ("server_stream", pb.Sealed, Chunk),  # chunks: protocol.wire.chunks, not protobuf's copies
    "UploadUpdate": ("client_stream", Chunk, pb.Sealed),
    "ReportMetrics": ("unary", pb.Sealed, pb.Sealed),
    "VendorSubmit": ("unary", pb.VendorSubmission, pb.VendorSubmitResponse),
    "VendorJobs": ("unary", pb.Sealed, pb.Sealed),
    "VendorReportMetrics": ("unary", pb.Sealed, pb.Sealed),
    "VendorReport": ("unary", pb.VendorReportRequest, pb.VendorReportResponse),
    "VendorUpload": ("client_stream", pb.VendorUploadChunk, pb.VendorSubmitResponse),
    "VendorFetch": ("server_stream", pb.Sealed, pb.VendorChunk),
    "PublishCard": ("unary", pb.Sealed, pb.Sealed),
    "ListCards": ("unary", pb.Sealed, pb.Sealed),
}


def handlers(service: FederationService) -> list[grpc.GenericRpcHandler]:
    """The federation and health services. Every method is registered as a *streaming-request*
    handler, whatever the .proto says: a client sends its one request message as it always
    does, and the handler runs as soon as the call starts, so budgets apply before the message
    is read and a message that never comes times out (gRPC's unary handlers start only once the
    message has arrived, unbounded in time)."""

    federation = {}
    for name, (kind, request_type, _response_type) in _METHODS.items():
        implementation = getattr(service, name)
        if kind == "unary":
            federation[name] = grpc.stream_unary_rpc_method_handler(
                service.unary(name, implementation), _deserializer(request_type), chunk_codec.encode
            )
        elif kind == "client_stream":
            federation[name] = grpc.stream_unary_rpc_method_handler(
                service.client_stream(name, implementation), _deserializer(request_type), chunk_codec.encode
            )
        else:
            federation[name] = grpc.stream_stream_rpc_method_handler(
                service.server_stream(name, implementation), _deserializer(request_type), chunk_codec.encode
            )
    health = {
        "Check": grpc.stream_unary_rpc_method_handler(
            service.unary("Check", service.Check), _deserializer(health_pb2.HealthCheckRequest), chunk_codec.encode
        )
    }
    return [
        grpc.method_handlers_generic_handler(SERVICE_NAME, federation),
        grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
    ]
