"""The site side of the protocol: verify the aggregator first, then join and exchange sealed payloads.

A :class:`SiteClient` sends nothing about itself until the aggregator's evidence, bound to
the site's own fresh nonce, has passed the site's policy. Then it asks for a challenge,
presents its own evidence bound to (site id, its keys, the challenge), checks that the
session credential it gets back is signed by the key the aggregator's evidence binds, and
derives the session keys. A failure at any step raises and nothing more is sent.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import numpy as np

from attestation.binding import BoundKeys
from attestation.bundle import appraise_bundle
from attestation.bundle_abi import encode_bundle, parse_bundle
from attestation.errors import EXIT_FAULT, EXIT_REFUSED, AttestationError, AttestflError
from attestation.findings import Appraisal
from attestation.policy import Policy
from enclave.attester import Attester, make_bundle
from enclave.identity import SiteIdentity
from enclave.keys import EnclaveKeys, verify_enclave_signature
from fedsite.resume import RESUME_ATTEMPTS, SentStream, download_resume_request, dropped, resume_upload
from protocol.admission import IdentityProof
from protocol.auditlog.heads import HeadError, HeadInconsistent, TreeHead, verify_consistency
from protocol.compression import ErrorFeedback
from protocol.compression import encode_update as encode_compressed
from protocol.credential import (
    DEFAULT_MAX_CLOCK_SKEW,
    ClockSkewError,
    CredentialError,
    SessionClaims,
    verify_credential,
)
from protocol.formulas import (
    CALL_HEADER,
    MAX_MESSAGE_BYTES,
    SESSION_HEADER,
    ProtocolError,
    admission_nonce,
    app_attest_client_data,
    download_context,
    open_message,
    receipt_message,
    seal_message,
    upload_context,
)
from protocol.streams import SessionKeys, StreamError, StreamOpener, derive_session_keys, seal_chunks, transcript_hash
from protocol.tensors import ModelSpec, ReceiveBuffers, decode_tensors, encode_tensor_parts
from protocol.wire import federation_pb2 as pb
from protocol.wire import federation_pb2_grpc as pb_grpc
from protocol.wire.chunks import DOWNLOAD_METHOD, UPLOAD_METHOD, Chunk
from protocol.wire.chunks import decode as decode_chunk
from protocol.wire.chunks import encode as encode_chunk


class SiteError(AttestflError):
    """The site stopped: the message says why (nothing more was sent)."""


class SitePolicyError(SiteError):
    """The site's policy for the aggregator is unusable (e.g. it pins no measurement)."""


class AggregatorNotTrusted(SiteError):
    """The aggregator's evidence failed the site's policy, or the aggregator proved something false."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message + ("".join(f"\n  - {r}" for r in reasons)))
        self.reasons = reasons


class ClockSkew(SiteError):
    """This machine's clock and the aggregator's disagree by more than the tolerated skew."""


class AggregatorUnreachable(SiteError):
    """The aggregator could not be reached or gave no answer (transient: retry later). Not a
    refusal: exit 3 (a fault), never 1 (untrusted)."""

    exit_code = EXIT_FAULT


class AdmissionRefused(SiteError):
    """The aggregator refused this site; ``reasons`` are every failed check it reported."""

    exit_code = EXIT_REFUSED

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("admission refused:" + "".join(f"\n  - {r}" for r in reasons))
        self.reasons = reasons


def unpinned_platforms(policy: Policy) -> list[str]:
    """The CPU platforms ``policy`` accepts for the aggregator without pinning its measurement:
    for those, any code in any TEE would pass as the aggregator."""
    return policy.unpinned_measurements()  # each CPU platform's own pin (SNP MEASUREMENT, TDX MRTD, ...)


def require_measurement_pins(policy: Policy, *, allow_unpinned: bool = False) -> None:
    """Refuse a site policy that pins no aggregator measurement, unless explicitly overridden."""
    missing = unpinned_platforms(policy)
    if missing and not allow_unpinned:
        raise SitePolicyError(
            "the site's policy for the aggregator pins no launch measurement (" + ", ".join(missing) + "): any code "
            "in any TEE passing the policy would receive this site's updates. Pin the aggregator's measurement (the "
            "operator publishes it; `attestfl enclave measure` reproduces it), or restrict `platforms`; to run "
            "unpinned anyway set [site] INSECURE_accept_any_aggregator = true"
        )


@dataclass(frozen=True)
class AppAttestEvidence:
    """How a mobile/edge site proves itself: a function from client data (32 bytes) to
    (attestation object, key id), e.g. the device's App Attest ``attestKey`` call."""

    attest: Callable[[bytes], tuple[bytes, bytes]]


@dataclass
class JoinedSession:
    aggregator_keys: BoundKeys
    aggregator_appraisal: Appraisal
    credential: str
    claims: SessionClaims
    keys: SessionKeys


@dataclass(frozen=True)
class Receipt:
    round: int
    attempt: int
    site_id: str
    update_sha256: bytes
    weight: float
    accepted_unix_ms: int
    session_id: bytes
    call: int
    signature: bytes
    tree_head: bytes = b""

    def message(self) -> bytes:
        return receipt_message(
            round_number=self.round,
            attempt=self.attempt,
            site_id=self.site_id,
            update_sha256=self.update_sha256,
            weight=self.weight,
            accepted_unix_ms=self.accepted_unix_ms,
            session_id=self.session_id,
            call=self.call,
        )

    def verify(self, aggregator_ed25519: bytes) -> bool:
        return verify_enclave_signature(aggregator_ed25519, self.signature, self.message())

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "attempt": self.attempt,
            "site": self.site_id,
            "update_sha256": self.update_sha256.hex(),
            "weight": self.weight,
            "accepted_unix_ms": self.accepted_unix_ms,
            "session": self.session_id.hex(),
            "call": self.call,
            "signature": self.signature.hex(),
            "tree_head": self.tree_head.hex(),
        }


def admit_request(
    *,
    site_id: str,
    challenge: bytes,
    session_keys: BoundKeys,
    evidence_format: str,
    evidence: bytes,
    identity: SiteIdentity,
    aggregator_keys: BoundKeys,
    aggregator_evidence_sha256: bytes,
    app_attest_key_id: bytes = b"",
    identity_certificate: bytes = b"",
) -> pb.AdmitRequest:
    """The ``Admit`` request of a site: its evidence, its session keys, and its identity key's
    signature over this handshake's transcript."""
    proof = IdentityProof.signed(
        identity,
        site_id=site_id,
        challenge=challenge,
        evidence=evidence,
        site_keys=session_keys,
        aggregator_keys=aggregator_keys,
        aggregator_evidence_sha256=aggregator_evidence_sha256,
    )
    return pb.AdmitRequest(
        site_id=site_id,
        challenge=challenge,
        site_x25519_public=session_keys.x25519,
        site_ed25519_public=session_keys.ed25519,
        evidence_format=evidence_format,
        evidence=evidence,
        app_attest_key_id=app_attest_key_id,
        identity_public=proof.public,
        identity_signature=proof.signature,
        identity_certificate=identity_certificate,
        aggregator_evidence_sha256=aggregator_evidence_sha256,
    )


#: gRPC outcomes of GetEvidence that mean "no aggregator answered" (not "it answered badly").
_UNREACHABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
)


def fetch_aggregator_evidence(stub: Any, policy: Policy, timeout: float) -> tuple[Any, Appraisal, bytes]:
    """Ask for the aggregator's evidence with a fresh nonce and appraise it under ``policy``:
    (the parsed bundle, the appraisal, the bundle's SHA-256). Nothing else is sent. Raises
    :class:`AggregatorUnreachable` when no aggregator answers, :class:`AggregatorNotTrusted`
    when one answers without usable evidence; a refusal is an appraisal that is not accepted."""
    nonce = os.urandom(32)
    try:
        response = stub.GetEvidence(pb.EvidenceRequest(nonce=nonce), timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() in _UNREACHABLE:
            raise AggregatorUnreachable(f"the aggregator is unreachable ({exc.code().name}: {exc.details()})") from None
        raise AggregatorNotTrusted(f"the aggregator offered no evidence ({exc.code().name}: {exc.details()})") from None
    if not response.bundle:
        raise AggregatorNotTrusted("the aggregator offered no evidence")
    try:
        bundle = parse_bundle(response.bundle)
        appraisal = appraise_bundle(bundle, expected_nonce=nonce, policy=policy, at=datetime.now(UTC))
    except AttestationError as exc:
        raise AggregatorNotTrusted(f"the aggregator's evidence is unusable: {exc}") from None
    return bundle, appraisal, hashlib.sha256(response.bundle).digest()


#: How long :meth:`SiteClient.task` asks the aggregator to hold a long poll (it may hold it less).
TASK_WAIT_SECONDS = 5.0

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


class SiteClient:
    """One site's connection to an aggregator. ``policy`` is the site's policy for the
    aggregator's evidence (it must pin the aggregator's measurement unless
    ``allow_unpinned_aggregator``); ``identity`` is the site's enrolled identity key;
    ``attester`` produces the site's own evidence (a TEE, real or simulated) or
    ``app_attest`` does (a mobile/edge device)."""

    def __init__(
        self,
        target: str,
        *,
        site_id: str,
        policy: Policy,
        identity: SiteIdentity,
        attester: Attester | None = None,
        app_attest: AppAttestEvidence | None = None,
        identity_certificate: bytes = b"",
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
        allow_unpinned_aggregator: bool = False,
        max_clock_skew: timedelta = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        if (attester is None) == (app_attest is None):
            raise SiteError("give exactly one of attester (TEE) or app_attest (mobile)")
        require_measurement_pins(policy, allow_unpinned=allow_unpinned_aggregator)
        if identity.site_id != site_id:
            raise SiteError(f"the identity key was enrolled for site {identity.site_id!r}, not {site_id!r}")
        self.site_id = site_id
        self.policy = policy
        self.identity = identity
        self.identity_certificate = identity_certificate
        self.attester = attester
        self.app_attest = app_attest
        self.timeout = timeout
        self.max_clock_skew = max_clock_skew
        self.keys = EnclaveKeys()
        self.channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        #: Download buffers: a round's model is received into the buffer of the round before the
        #: last once the site holds no view of it any more (two models' worth at most).
        self._download_buffers = ReceiveBuffers(most_buffers=2, most_bytes=1 << 62)
        # The two chunk streams through protocol.wire.chunks: the same bytes on the wire, without
        # protobuf's copies of each 1 MiB chunk (a generated SealedChunk is still sent as itself).
        self.stub.DownloadModel = self.channel.unary_stream(
            DOWNLOAD_METHOD, request_serializer=pb.Sealed.SerializeToString, response_deserializer=decode_chunk
        )
        self.stub.UploadUpdate = self.channel.stream_unary(
            UPLOAD_METHOD, request_serializer=encode_chunk, response_deserializer=pb.Sealed.FromString
        )
        self.session: JoinedSession | None = None
        #: The newest signed audit tree head this site has seen (kept across re-joins: a
        #: restarted aggregator must show a log that extends it, or the site stops).
        self.tree_head: TreeHead | None = None
        self._calls = 0
        self._lock = threading.Lock()
        #: How updates are encoded (the task's ``compression``, learnt from GetTask) and what it lost.
        self.compression = "float32"
        self.feedback = ErrorFeedback()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- handshake ---------------------------------------------------------------------------

    def verify_aggregator(self) -> tuple[BoundKeys, Appraisal, bytes]:
        """Ask for the aggregator's evidence with a fresh nonce and appraise it; raise unless
        accepted. Returns its keys, the appraisal and the bundle's SHA-256."""
        bundle, appraisal, digest = fetch_aggregator_evidence(self.stub, self.policy, self.timeout)
        if not appraisal.accepted:
            raise AggregatorNotTrusted(
                "the aggregator's evidence fails this site's policy:", tuple(str(r) for r in appraisal.reasons)
            )
        return bundle.keys, appraisal, digest

    def join(self) -> JoinedSession:
        aggregator_keys, appraisal, aggregator_evidence_sha256 = self.verify_aggregator()
        challenge = self.stub.GetChallenge(pb.ChallengeRequest(site_id=self.site_id), timeout=self.timeout).challenge
        public = self.keys.public
        if self.attester is not None:
            bundle = make_bundle(self.attester, self.keys, admission_nonce(self.site_id, challenge))
            evidence_format, evidence, key_id = "bundle", encode_bundle(bundle), b""
        else:
            assert self.app_attest is not None
            evidence, key_id = self.app_attest.attest(
                app_attest_client_data(self.site_id, challenge, public.x25519, public.ed25519)
            )
            evidence_format = "app-attest"
        request = admit_request(
            site_id=self.site_id,
            challenge=challenge,
            session_keys=public,
            evidence_format=evidence_format,
            evidence=evidence,
            identity=self.identity,
            aggregator_keys=aggregator_keys,
            aggregator_evidence_sha256=aggregator_evidence_sha256,
            app_attest_key_id=key_id,
            identity_certificate=self.identity_certificate,
        )
        response = self.stub.Admit(request, timeout=self.timeout)
        if not response.admitted:
            raise AdmissionRefused(tuple(response.reasons))
        try:
            claims = verify_credential(
                response.credential, aggregator_keys.ed25519, now=datetime.now(UTC), max_clock_skew=self.max_clock_skew
            )
        except ClockSkewError as exc:
            raise ClockSkew(str(exc)) from None
        except CredentialError as exc:
            raise AggregatorNotTrusted(
                f"the session credential is not signed by the attested aggregator key: {exc}"
            ) from None
        if (
            claims.session_id != response.session_id
            or claims.site_id != self.site_id
            or claims.site_x25519 != public.x25519
        ):
            raise AggregatorNotTrusted("the session credential is for another session, site or key")
        transcript = transcript_hash(
            site_id=self.site_id,
            challenge=challenge,
            aggregator_x25519=aggregator_keys.x25519,
            aggregator_ed25519=aggregator_keys.ed25519,
            site_x25519=public.x25519,
            site_ed25519=public.ed25519,
        )
        keys = derive_session_keys(
            self.keys.shared_secret(aggregator_keys.x25519), session_id=claims.session_id, transcript=transcript
        )
        with self._lock:
            self.session = JoinedSession(aggregator_keys, appraisal, response.credential, claims, keys)
            self._calls = 0
        return self.session

    # --- authenticated calls -------------------------------------------------------------------

    def _next_call(self) -> tuple[JoinedSession, int, tuple[tuple[str, str], ...]]:
        with self._lock:
            if self.session is None:
                raise SiteError("join first")
            self._calls += 1
            call = self._calls
            session = self.session
        return session, call, ((SESSION_HEADER, session.claims.session_id.hex()), (CALL_HEADER, str(call)))

    def _sealed(self, session: JoinedSession, method: str, call: int, message: Any) -> pb.Sealed:
        return pb.Sealed(
            ciphertext=seal_message(
                session.keys, method=method, call=call, response=False, plaintext=message.SerializeToString()
            )
        )

    def _open(self, session: JoinedSession, method: str, call: int, sealed: pb.Sealed, message_type: Any) -> Any:
        try:
            plaintext = open_message(
                session.keys, method=method, call=call, response=True, ciphertext=sealed.ciphertext
            )
        except ProtocolError as exc:
            raise AggregatorNotTrusted(f"the aggregator's answer is not authentic: {exc}") from None
        return message_type.FromString(plaintext)

    def task(self, *, after: tuple[int, int] | None = None, wait: float = TASK_WAIT_SECONDS) -> pb.TaskResponse:
        """The current task; its signed tree head must extend the last one this site saw.

        ``after`` = (round, attempt) asks for a long poll: the aggregator answers when its task
        is past that round and attempt (or finished), or after ``wait`` seconds at most (it may
        hold the call for less). ``response.waits`` says whether it holds such calls; an
        aggregator that does not answers at once, and the caller sleeps between calls."""
        session, call, metadata = self._next_call()
        known = self.tree_head.tree_size if self.tree_head is not None else 0
        request = pb.TaskRequest(known_tree_size=known)
        if after is not None and wait > 0:
            request.wait_round, request.wait_attempt = after
            request.wait_ms = int(wait * 1000)
        sealed = self.stub.GetTask(
            self._sealed(session, "GetTask", call, request),
            metadata=metadata,
            timeout=self.timeout + (wait if after is not None else 0.0),
        )
        task = self._open(session, "GetTask", call, sealed, pb.TaskResponse)
        self._check_tree_head(session, task.tree_head, list(task.consistency))
        self.compression = task.compression or "float32"
        return task

    def _check_tree_head(self, session: JoinedSession, encoded: bytes, proof: list[bytes]) -> None:
        """Keep the aggregator's signed tree head if it is its own and extends the last one seen:
        a log that shrank, forked or was rolled back (a restored disk snapshot) stops the site."""
        if not encoded:
            return  # an aggregator without an audit log (in-process tests) shows no head
        try:
            head = TreeHead.from_bytes(encoded, key=session.aggregator_keys.ed25519)
        except HeadError as exc:
            raise AggregatorNotTrusted(f"the aggregator's audit tree head is not usable: {exc}") from None
        if self.tree_head is not None:
            try:
                verify_consistency(self.tree_head, head, proof)
            except HeadInconsistent as exc:
                raise AggregatorNotTrusted(f"rollback or fork of the aggregator's audit log: {exc}") from None
            except HeadError as exc:
                raise AggregatorNotTrusted(
                    f"the aggregator's audit log does not extend the head this site kept: {exc}"
                ) from None
        self.tree_head = head

    def download_model(self, round_number: int, spec: ModelSpec) -> dict[str, np.ndarray]:
        """The model of a round as arrays (writable views of the one buffer it was received into)."""
        tensors, _metadata = decode_tensors(self.download_model_bytes(round_number, spec), spec)
        return tensors

    def download_model_bytes(
        self, round_number: int, spec: ModelSpec, on_chunk: Callable[[int], None] | None = None
    ) -> memoryview:
        """The model of a round as the aggregator serves it (safetensors bytes, the bytes its
        logged digest covers); ``on_chunk(plaintext bytes)`` after each chunk (progress).
        Decrypted in place into one buffer of the largest model the spec allows, cut to size:
        the site holds the model once, whatever its size."""
        session, call, metadata = self._next_call()
        request = self._sealed(session, "DownloadModel", call, pb.DownloadRequest(round=round_number))
        chunks = self.stub.DownloadModel(request, metadata=metadata, timeout=self.timeout)
        opener: StreamOpener | None = None
        data = self._download_buffers.take(spec.max_update_bytes)
        size, header, resumes = 0, b"", 0
        while True:
            try:
                for chunk in chunks:
                    if opener is None:
                        header = bytes(chunk.header)
                        opener = StreamOpener(
                            session.keys.aggregator_to_site,
                            chunk.header,
                            session_id=session.claims.session_id,
                            purpose="model",
                            context=download_context(round_number, self.site_id, call),
                            max_bytes=spec.max_update_bytes,
                        )
                    received = opener.open_into(
                        chunk.index, chunk.ciphertext, final=chunk.final, buffer=data, offset=size
                    )
                    size += received
                    if on_chunk is not None:
                        on_chunk(received)
                break
            except grpc.RpcError as exc:  # dropped: ask for the rest of the same stream, checked by the same opener
                if not dropped(exc) or resumes >= RESUME_ATTEMPTS:
                    raise
                if opener is not None and opener.finished:
                    break
                resumes += 1
                session, again, metadata = self._next_call()
                if opener is None:  # dropped before a chunk was read: nothing to resume, ask for the model again
                    call = again  # (the new stream is sealed for the new call)
                    request = self._sealed(session, "DownloadModel", call, pb.DownloadRequest(round=round_number))
                else:
                    resume = download_resume_request(round_number, header, opener.next_index)
                    request = self._sealed(session, "DownloadModel", again, resume)
                chunks = self.stub.DownloadModel(request, metadata=metadata, timeout=self.timeout, wait_for_ready=True)
        if opener is None:
            raise StreamError("the aggregator sent no model")
        opener.finish()
        return data[:size]

    def encode_update(self, update: dict[str, np.ndarray], weight: float) -> list[bytes | memoryview]:
        """The update's bytes in the task's compression (error feedback applied when compressed)."""
        mode = self.compression
        if mode == "float32":
            return encode_tensor_parts(update, {"weight": repr(float(weight))})
        return encode_compressed(update, {"weight": repr(float(weight))}, mode, self.feedback)

    def sealed_update(
        self,
        round_number: int,
        attempt: int,
        call: int,
        update: dict[str, np.ndarray],
        weight: float,
        parts: list[bytes | memoryview] | None = None,
    ) -> Iterator[Chunk]:
        """The sealed stream of one update, for call ``call`` (see :meth:`upload_update`)."""
        session = self.session
        if session is None:
            raise SiteError("join first")
        data = parts if parts is not None else self.encode_update(update, weight)
        for header, index, final, ciphertext in seal_chunks(
            session.keys.site_to_aggregator,
            data,
            session_id=session.claims.session_id,
            purpose="update",
            context=upload_context(round_number, attempt, self.site_id, call),
        ):
            yield Chunk(header=header, index=index, final=final, ciphertext=ciphertext)

    def upload_update(
        self,
        round_number: int,
        update: dict[str, np.ndarray],
        weight: float,
        *,
        attempt: int = 1,
        on_chunk: Callable[[int], None] | None = None,
    ) -> Receipt:
        """Upload one update; return the aggregator's receipt after checking that it is signed by
        the attested key and answers exactly this upload (round, attempt, call, digest, weight).
        ``on_chunk(bytes)`` as each sealed chunk is sent (progress)."""
        session, call, metadata = self._next_call()
        hasher = hashlib.sha256()
        residual = dict(self.feedback.residual)  # restored if this upload is not accepted
        parts = self.encode_update(update, weight)  # once: error feedback moves on once per update
        for part in parts:
            hasher.update(memoryview(part).cast("B"))
        digest = hasher.digest()
        answered = call  # the call whose counter seals the receipt (a resumed upload's last call)
        try:
            stream = SentStream(self.sealed_update(round_number, attempt, call, update, weight, parts))
            chunks = iter(stream)
            try:
                sealed = self.stub.UploadUpdate(
                    _counted(chunks, on_chunk) if on_chunk is not None else chunks,
                    metadata=metadata,
                    timeout=self.timeout,
                )
            except grpc.RpcError as exc:  # a dropped connection resumes where the aggregator stopped
                resumed = resume_upload(self, session, stream, parts, exc)
                if resumed is None:  # the aggregator holds none of it: start over, in a new call
                    session, call, metadata = self._next_call()
                    answered = call
                    stream = SentStream(self.sealed_update(round_number, attempt, call, update, weight, parts))
                    sealed = self.stub.UploadUpdate(iter(stream), metadata=metadata, timeout=self.timeout)
                else:
                    sealed, answered = resumed
        except grpc.RpcError:
            self.feedback.residual = residual
            raise
        response = self._open(session, "UploadUpdate", answered, sealed, pb.UploadReceipt)
        receipt = Receipt(
            response.round,
            response.attempt,
            response.site_id,
            response.update_sha256,
            response.weight,
            response.accepted_unix_ms,
            session.claims.session_id,
            response.call,
            response.signature,
            response.tree_head,
        )
        if response.tree_head:
            try:
                TreeHead.from_bytes(response.tree_head, key=session.aggregator_keys.ed25519)
            except HeadError as exc:
                raise AggregatorNotTrusted(f"the receipt's audit tree head is not usable: {exc}") from None
        expected = (round_number, attempt, self.site_id, digest, float(weight), call)
        got = (receipt.round, receipt.attempt, receipt.site_id, receipt.update_sha256, receipt.weight, receipt.call)
        if got != expected:
            raise AggregatorNotTrusted(
                "the update receipt does not answer this upload (stale or foreign receipt): "
                f"expected round/attempt/site/digest/weight/call {expected[:3]}, got {got[:3]}"
            )
        if not receipt.verify(session.aggregator_keys.ed25519):
            raise AggregatorNotTrusted("the update receipt is not signed by the attested aggregator key")
        return receipt

    def report_metrics(
        self, round_number: int, metrics: dict[str, float], examples: int, card: Any | None = None
    ) -> None:
        """``card``: the site's :class:`protocol.cards.DatasetCard`, signed here by its identity key."""
        session, call, metadata = self._next_call()
        report = pb.MetricsReport(round=round_number, metrics=metrics, examples=examples)
        if card is not None:
            from protocol.cards import card_message

            text = card.to_json()
            report.dataset_card = text
            report.dataset_card_signature = self.identity.sign(card_message(session.claims.session_id, text.encode()))
        request = self._sealed(session, "ReportMetrics", call, report)
        sealed = self.stub.ReportMetrics(request, metadata=metadata, timeout=self.timeout)
        self._open(session, "ReportMetrics", call, sealed, pb.MetricsAck)

    def publish_card(self, card: Any) -> bool:
        """Publish the site's dataset card (signed here by its identity key for this session),
        right after admission: the aggregator refuses a schema that is not the task's
        (grpc FAILED_PRECONDITION). True when the aggregator logged it (False: unchanged)."""
        from protocol.cards import card_message

        session, call, metadata = self._next_call()
        text = card.to_json()
        signature = self.identity.sign(card_message(session.claims.session_id, text.encode()))
        request = self._sealed(session, "PublishCard", call, pb.CardPublish(card=text, signature=signature))
        sealed = self.stub.PublishCard(request, metadata=metadata, timeout=self.timeout)
        return bool(self._open(session, "PublishCard", call, sealed, pb.CardAck).logged)

    def list_cards(self, offset: int = 0) -> Any:
        """One page of the federation's dataset cards (``pb.CardList``); verify them with
        :func:`fedsite.cards.verify_listing`."""
        session, call, metadata = self._next_call()
        request = self._sealed(session, "ListCards", call, pb.CardListRequest(offset=offset))
        sealed = self.stub.ListCards(request, metadata=metadata, timeout=self.timeout)
        return self._open(session, "ListCards", call, sealed, pb.CardList)


__all__ = [
    "AdmissionRefused",
    "AggregatorNotTrusted",
    "AggregatorUnreachable",
    "AppAttestEvidence",
    "ClockSkew",
    "Receipt",
    "SiteClient",
    "SiteError",
    "SitePolicyError",
    "admit_request",
    "fetch_aggregator_evidence",
    "require_measurement_pins",
    "unpinned_platforms",
]


def _counted(chunks: Iterator[Chunk], on_chunk: Callable[[int], None]) -> Iterator[Chunk]:
    """The chunks, calling ``on_chunk`` with each one's size as gRPC takes it to send."""
    for chunk in chunks:
        on_chunk(len(chunk.ciphertext))
        yield chunk
