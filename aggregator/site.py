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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterator

import grpc
import numpy as np

from attestation.abi.bundle import encode_bundle, parse_bundle
from attestation.binding import BoundKeys
from attestation.bundle import appraise_bundle
from attestation.errors import AttestationError
from attestation.findings import Appraisal
from attestation.policy import Policy
from enclave.attester import Attester, make_bundle
from enclave.keys import EnclaveKeys, verify_enclave_signature

from .admission import admission_nonce, app_attest_client_data
from .credential import CredentialError, SessionClaims, verify_credential
from .secure_stream import SessionKeys, StreamError, StreamOpener, derive_session_keys, seal_chunks, transcript_hash
from .service import MAX_MESSAGE_BYTES, parse_stream_context, receipt_message, stream_context
from .update import ModelSpec, decode_tensors, encode_tensor_parts, encode_tensors
from .wire import federation_pb2 as pb
from .wire import federation_pb2_grpc as pb_grpc


class SiteError(Exception):
    """The site stopped: the message says why (nothing more was sent)."""


class AggregatorNotTrusted(SiteError):
    """The aggregator offered no evidence, or its evidence failed the site's policy."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message + ("".join(f"\n  - {r}" for r in reasons)))
        self.reasons = reasons


class AdmissionRefused(SiteError):
    """The aggregator refused this site; ``reasons`` are every failed check it reported."""

    def __init__(self, reasons: tuple[str, ...]) -> None:
        super().__init__("admission refused:" + "".join(f"\n  - {r}" for r in reasons))
        self.reasons = reasons


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
    site_id: str
    update_sha256: bytes
    weight: float
    accepted_unix_ms: int
    signature: bytes

    def verify(self, aggregator_ed25519: bytes) -> bool:
        message = receipt_message(self.round, self.site_id, self.update_sha256, self.weight, self.accepted_unix_ms)
        return verify_enclave_signature(aggregator_ed25519, self.signature, message)


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class SiteClient:
    """One site's connection to an aggregator. ``policy`` is the site's policy for the
    aggregator's evidence; ``attester`` produces the site's own evidence (a TEE, real or
    simulated) or ``app_attest`` does (a mobile/edge device)."""

    def __init__(
        self,
        target: str,
        *,
        site_id: str,
        policy: Policy,
        attester: Attester | None = None,
        app_attest: AppAttestEvidence | None = None,
        timeout: float = 30.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        if (attester is None) == (app_attest is None):
            raise SiteError("give exactly one of attester (TEE) or app_attest (mobile)")
        self.site_id = site_id
        self.policy = policy
        self.attester = attester
        self.app_attest = app_attest
        self.timeout = timeout
        self.keys = EnclaveKeys()
        self.channel = channel or grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.session: JoinedSession | None = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SiteClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- handshake ---------------------------------------------------------------------------

    def verify_aggregator(self) -> tuple[BoundKeys, Appraisal]:
        """Ask for the aggregator's evidence with a fresh nonce and appraise it; raise unless accepted."""
        nonce = os.urandom(32)
        try:
            response = self.stub.GetEvidence(pb.EvidenceRequest(nonce=nonce), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise AggregatorNotTrusted(f"the aggregator offered no evidence ({exc.code().name}: {exc.details()})") from None
        if not response.bundle:
            raise AggregatorNotTrusted("the aggregator offered no evidence")
        try:
            bundle = parse_bundle(response.bundle)
            appraisal = appraise_bundle(bundle, expected_nonce=nonce, policy=self.policy, at=datetime.now(timezone.utc))
        except AttestationError as exc:
            raise AggregatorNotTrusted(f"the aggregator's evidence is unusable: {exc}") from None
        if not appraisal.accepted:
            raise AggregatorNotTrusted("the aggregator's evidence fails this site's policy:", tuple(str(r) for r in appraisal.reasons))
        return bundle.keys, appraisal

    def join(self) -> JoinedSession:
        aggregator_keys, appraisal = self.verify_aggregator()
        challenge = self.stub.GetChallenge(pb.ChallengeRequest(site_id=self.site_id), timeout=self.timeout).challenge
        public = self.keys.public
        request = pb.AdmitRequest(site_id=self.site_id, challenge=challenge, site_x25519_public=public.x25519,
                                  site_ed25519_public=public.ed25519)
        if self.attester is not None:
            bundle = make_bundle(self.attester, self.keys, admission_nonce(self.site_id, challenge))
            request.evidence_format = "bundle"
            request.evidence = encode_bundle(bundle)
        else:
            assert self.app_attest is not None
            attestation, key_id = self.app_attest.attest(app_attest_client_data(self.site_id, challenge, public.x25519, public.ed25519))
            request.evidence_format = "app-attest"
            request.evidence = attestation
            request.app_attest_key_id = key_id
        response = self.stub.Admit(request, timeout=self.timeout)
        if not response.admitted:
            raise AdmissionRefused(tuple(response.reasons))
        try:
            claims = verify_credential(response.credential, aggregator_keys.ed25519, now=datetime.now(timezone.utc))
        except CredentialError as exc:
            raise AggregatorNotTrusted(f"the session credential is not signed by the attested aggregator key: {exc}") from None
        if claims.session_id != response.session_id or claims.site_id != self.site_id or claims.site_x25519 != public.x25519:
            raise AggregatorNotTrusted("the session credential is for another session, site or key")
        transcript = transcript_hash(site_id=self.site_id, challenge=challenge, aggregator_x25519=aggregator_keys.x25519,
                                     aggregator_ed25519=aggregator_keys.ed25519, site_x25519=public.x25519, site_ed25519=public.ed25519)
        keys = derive_session_keys(self.keys.shared_secret(aggregator_keys.x25519), session_id=claims.session_id, transcript=transcript)
        self.session = JoinedSession(aggregator_keys, appraisal, response.credential, claims, keys)
        return self.session

    # --- sealed payloads ---------------------------------------------------------------------

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.session is None:
            raise SiteError("join first")
        return (("authorization", f"Bearer {self.session.credential}"),)

    def task(self) -> pb.TaskResponse:
        return self.stub.GetTask(pb.TaskRequest(), metadata=self._metadata(), timeout=self.timeout)

    def download_model(self, round_number: int, spec: ModelSpec) -> dict[str, np.ndarray]:
        session = self.session
        metadata = self._metadata()
        assert session is not None
        chunks = self.stub.DownloadModel(pb.DownloadRequest(round=round_number), metadata=metadata, timeout=self.timeout)
        opener: StreamOpener | None = None
        data = bytearray()
        for chunk in chunks:
            if opener is None:
                opener = StreamOpener(session.keys.aggregator_to_site, chunk.header, session_id=session.claims.session_id,
                                      purpose="model", context=stream_context(round_number, self.site_id), max_bytes=spec.max_update_bytes)
            data += opener.open(chunk.index, chunk.ciphertext, final=chunk.final)
        if opener is None:
            raise StreamError("the aggregator sent no model")
        opener.finish()
        tensors, _metadata = decode_tensors(bytes(data), spec)
        return {name: array.copy() for name, array in tensors.items()}

    def sealed_update(self, round_number: int, update: dict[str, np.ndarray], weight: float) -> Iterator[pb.SealedChunk]:
        session = self.session
        if session is None:
            raise SiteError("join first")
        data = encode_tensor_parts(update, {"weight": repr(float(weight))})
        for header, index, final, ciphertext in seal_chunks(session.keys.site_to_aggregator, data, session_id=session.claims.session_id,
                                                            purpose="update", context=stream_context(round_number, self.site_id)):
            yield pb.SealedChunk(header=header, index=index, final=final, ciphertext=ciphertext)

    def upload_update(self, round_number: int, update: dict[str, np.ndarray], weight: float) -> Receipt:
        metadata = self._metadata()
        assert self.session is not None
        response = self.stub.UploadUpdate(self.sealed_update(round_number, update, weight), metadata=metadata, timeout=self.timeout)
        receipt = Receipt(response.round, response.site_id, response.update_sha256, response.weight, response.accepted_unix_ms, response.signature)
        if not receipt.verify(self.session.aggregator_keys.ed25519):
            raise AggregatorNotTrusted("the update receipt is not signed by the attested aggregator key")
        return receipt

    def report_metrics(self, round_number: int, metrics: dict[str, float], examples: int) -> None:
        self.stub.ReportMetrics(pb.MetricsReport(round=round_number, metrics=metrics, examples=examples), metadata=self._metadata(), timeout=self.timeout)


def update_digest(update: dict[str, np.ndarray], weight: float) -> bytes:
    return hashlib.sha256(encode_tensors(update, {"weight": repr(float(weight))})).digest()


__all__ = ["AdmissionRefused", "AggregatorNotTrusted", "AppAttestEvidence", "Receipt", "SiteClient", "SiteError", "parse_stream_context", "update_digest"]
