"""The attested federation protocol over real gRPC on loopback; the aggregator is `attestfl serve`
in its own process, sites run here, each refusal is checked from the site's side and in the
aggregator's own event log."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import jwt
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from attestation.binding import BoundKeys
from attestation.bundle_abi import encode_bundle, parse_bundle
from enclave.attester import make_bundle
from enclave.keys import EnclaveKeys
from enclave.simulated.attester import SimulatedSnpAttester, SimulatedTdxAttester
from federation import MODEL, Aggregator, Deployment, run_aggregator
from fedsite.client import (
    AdmissionRefused,
    AggregatorNotTrusted,
    AppAttestEvidence,
    SiteClient,
    SiteError,
    admit_request,
)
from forwarder import Forwarder
from protocol.admission import admission_nonce, app_attest_client_data
from protocol.credential import AUDIENCE, issue_credential
from protocol.streams import MAX_CHUNK_BYTES
from protocol.tensors import ModelSpec, encode_tensors
from protocol.wire import federation_pb2 as pb
from protocol.wire import federation_pb2_grpc as pb_grpc

PYATTEST_ROOT = Path(__import__("pyattest").__file__).parent / "testutils" / "fixtures" / "root_cert.pem"


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("simulated-vendor")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, sim_dir: Path) -> Deployment:
    return Deployment(
        tmp_path_factory.mktemp("deployment"),
        sim_dir,
        sites={
            "site-a": "",
            "site-b": "",
            "site-c": "",
            "site-cautious": "",
            "site-pinned": f'measurements = ["{"ab" * 48}"]',
            "mobile-1": (
                'platforms = ["app-attest"]\napp_id = "org.example.monitor"\n'
                f'app_attest_root = "{PYATTEST_ROOT}"\nproduction = false'
            ),
        },
        task='rounds = 100\nmin_sites = 1\nround_deadline = "600s"',
        aggregator_extra='stall_timeout = "2s"',
    )


@pytest.fixture(scope="module")
def aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    yield from run_aggregator(deployment)


def site(
    aggregator: Aggregator, deployment: Deployment, site_id: str, attester: object | None = None, **policy: object
) -> SiteClient:
    return deployment.client(
        aggregator.target,
        site_id=site_id,
        policy=deployment.site_policy(**policy),
        attester=attester or SimulatedSnpAttester(deployment.sim_dir),
    )


def admissions(aggregator: Aggregator, site_id: str) -> list[dict]:
    return [e for e in aggregator.events() if e["message"] == "admission" and e["site"] == site_id]


def accepted_updates(aggregator: Aggregator, site_id: str) -> list[dict]:
    return [e for e in aggregator.events() if e["message"] == "update_accepted" and e["site"] == site_id]


def update_like(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(array.shape, value, np.float32) for name, array in MODEL.items()}


# --- the happy path ----------------------------------------------------------------------


def test_site_joins_and_exchanges_sealed_payloads(aggregator: Aggregator, deployment: Deployment) -> None:
    measurement = bytes.fromhex(aggregator.ready["measurement"])
    assert measurement == deployment.measurement()  # the site's reference value: code + aggregator.toml
    policy_pin = deployment.site_policy().snp.__class__(measurement=frozenset({measurement}))
    with deployment.client(
        aggregator.target,
        site_id="site-a",
        policy=deployment.site_policy(snp=policy_pin),
        attester=SimulatedTdxAttester(deployment.sim_dir),
    ) as client:
        session = client.join()
        assert session.aggregator_keys.ed25519.hex() == aggregator.ready["ed25519"]
        # The credential is an EAR JWT any JWT library checks with the attested key.
        claims = jwt.decode(
            session.credential,
            key=Ed25519PublicKey.from_public_bytes(session.aggregator_keys.ed25519),
            algorithms=["EdDSA"],
            audience=AUDIENCE,
        )
        assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
        submod = claims["submods"]["site-a"]
        assert submod["ear.status"] in ("affirming", "warning")
        assert submod["ear.veraison.annotated-evidence"]["simulated"] is True
        assert claims["attestfl.session"] == session.claims.session_id.hex()
        task = client.task()
        spec = ModelSpec.from_json(task.model_spec)
        model = client.download_model(task.round, spec)
        assert all(np.array_equal(model[k], MODEL[k]) or task.round > 1 for k in MODEL)
        receipt = client.upload_update(task.round, update_like(0.5), weight=7)
        assert receipt.verify(session.aggregator_keys.ed25519) and receipt.weight == 7.0 and receipt.site_id == "site-a"
    assert accepted_updates(aggregator, "site-a")[-1]["update_sha256"] == receipt.update_sha256.hex()


# --- refusals: each told why, no payload ever accepted ---------------------------------------


@pytest.mark.parametrize(
    ("case", "site_id", "expected"),
    [
        ("wrong measurement", "site-pinned", "admission.measurement"),
        ("debug evidence", "site-b", "snp.policy.allow_debug"),
        ("untrusted simulated root", "site-b", "snp.chain.root"),
        ("site id not in the admission policy", "intruder", "admission.identity.key"),
    ],
)
def test_refused_sites_learn_why(
    aggregator: Aggregator, deployment: Deployment, tmp_path: Path, case: str, site_id: str, expected: str
) -> None:
    attester = SimulatedSnpAttester(deployment.sim_dir)
    if case == "debug evidence":
        attester = SimulatedSnpAttester(deployment.sim_dir, debug=True)
    elif case == "untrusted simulated root":
        attester = SimulatedSnpAttester(tmp_path / "another-vendor")
    before = len(accepted_updates(aggregator, site_id))
    with site(aggregator, deployment, site_id, attester) as client:
        with pytest.raises(AdmissionRefused) as refused:
            client.join()
        assert any(r.startswith(expected) for r in refused.value.reasons), refused.value.reasons
        with pytest.raises(SiteError, match="join first"):  # never admitted: no session to send an update in
            client.upload_update(1, update_like(1.0), 1)
    logged = admissions(aggregator, site_id)[-1]
    # The aggregator's own log says the truth; the wire answers an unknown site id like a known one.
    truth = "admission.site_id" if case == "site id not in the admission policy" else expected
    assert logged["admitted"] is False and any(r.startswith(truth) for r in logged["reasons"])
    assert len(accepted_updates(aggregator, site_id)) == before


def _admit_request(
    stub: pb_grpc.FederationStub,
    site_id: str,
    keys: EnclaveKeys,
    attester: object,
    deployment: Deployment,
    aggregator: Aggregator,
    nonce_site: str | None = None,
    present: BoundKeys | None = None,
) -> pb.AdmitRequest:
    challenge = stub.GetChallenge(pb.ChallengeRequest(site_id=site_id), timeout=10).challenge
    bundle = make_bundle(attester, keys, admission_nonce(nonce_site or site_id, challenge))
    aggregator_keys = BoundKeys(bytes.fromhex(aggregator.ready["x25519"]), bytes.fromhex(aggregator.ready["ed25519"]))
    return admit_request(
        site_id=site_id,
        challenge=challenge,
        session_keys=present or keys.public,
        evidence_format="bundle",
        evidence=encode_bundle(bundle),
        identity=deployment.identity(site_id),
        aggregator_keys=aggregator_keys,
        aggregator_evidence_sha256=bytes(32),
    )


@pytest.fixture
def stub(aggregator: Aggregator) -> Iterator[pb_grpc.FederationStub]:
    with grpc.insecure_channel(aggregator.target) as channel:
        yield pb_grpc.FederationStub(channel)


def test_replayed_challenge_is_refused(
    stub: pb_grpc.FederationStub, deployment: Deployment, aggregator: Aggregator
) -> None:
    request = _admit_request(
        stub, "site-c", EnclaveKeys(), SimulatedSnpAttester(deployment.sim_dir), deployment, aggregator
    )
    assert stub.Admit(request, timeout=30).admitted
    replay = stub.Admit(request, timeout=30)
    assert not replay.admitted and any(r.startswith("admission.challenge") and "replayed" in r for r in replay.reasons)


def test_challenge_of_another_site_is_refused(
    stub: pb_grpc.FederationStub, deployment: Deployment, aggregator: Aggregator
) -> None:
    request = _admit_request(
        stub, "site-c", EnclaveKeys(), SimulatedSnpAttester(deployment.sim_dir), deployment, aggregator
    )
    request.site_id = "site-b"
    response = stub.Admit(request, timeout=30)
    assert not response.admitted and any(
        r.startswith("admission.challenge") and "not issued by this aggregator to this site id" in r
        for r in response.reasons
    )


def test_evidence_bound_to_another_site_id_is_refused(
    stub: pb_grpc.FederationStub, deployment: Deployment, aggregator: Aggregator
) -> None:
    request = _admit_request(
        stub,
        "site-b",
        EnclaveKeys(),
        SimulatedSnpAttester(deployment.sim_dir),
        deployment,
        aggregator,
        nonce_site="site-a",
    )
    response = stub.Admit(request, timeout=30)
    assert not response.admitted and any(r.startswith("binding.nonce") for r in response.reasons)


def test_evidence_bound_to_other_keys_is_refused(
    stub: pb_grpc.FederationStub, deployment: Deployment, aggregator: Aggregator
) -> None:
    mine, theirs = EnclaveKeys(), EnclaveKeys()
    request = _admit_request(
        stub, "site-b", theirs, SimulatedSnpAttester(deployment.sim_dir), deployment, aggregator, present=mine.public
    )
    response = stub.Admit(request, timeout=30)
    assert not response.admitted and any(r.startswith("admission.keys") for r in response.reasons)


def test_calls_without_a_live_session_are_refused(stub: pb_grpc.FederationStub) -> None:
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetTask(pb.Sealed(ciphertext=b"x" * 32), timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    forged = issue_credential(
        EnclaveKeys().sign,
        key_id="x",
        session_id=os.urandom(16),
        site_id="site-a",
        site_x25519=bytes(32),
        site_ed25519=bytes(32),
        status="affirming",
        policy_id="p",
        annotated_claims={},
        now=__import__("datetime").datetime.now(__import__("datetime").timezone.utc),
        ttl=__import__("datetime").timedelta(hours=1),
        build="forger",
    )
    for metadata in (
        (("authorization", "Bearer garbage"),),
        (("authorization", f"Bearer {forged}"),),
        (("attestfl-session", os.urandom(16).hex()), ("attestfl-call", "1")),
    ):
        with pytest.raises(grpc.RpcError) as bad:
            stub.UploadUpdate(iter([pb.SealedChunk(header=b"x", final=True)]), metadata=metadata, timeout=10)
        assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_session_of_another_site_is_refused(aggregator: Aggregator, deployment: Deployment) -> None:
    with site(aggregator, deployment, "site-b") as b, site(aggregator, deployment, "site-c") as c:
        b.join()
        c.join()
        round_number = c.task().round
        # c's sealed stream (its session keys) under b's session id.
        _session, call, _metadata = c._next_call()
        metadata = (("attestfl-session", b.session.claims.session_id.hex()), ("attestfl-call", str(call)))
        with pytest.raises(grpc.RpcError) as refused:
            c.stub.UploadUpdate(
                c.sealed_update(round_number, 1, call, update_like(1.0), 1), metadata=metadata, timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another session" in refused.value.details() or "site" in refused.value.details()


def test_duplicate_submission_in_a_round_is_refused(aggregator: Aggregator, deployment: Deployment) -> None:
    with site(aggregator, deployment, "site-b") as b, site(aggregator, deployment, "site-c") as c:
        b.join()
        c.join()  # two live sites: b's update alone does not close the round
        round_number = b.task().round
        b.upload_update(round_number, update_like(0.1), 1)
        with pytest.raises(grpc.RpcError) as again:
            b.upload_update(round_number, update_like(0.2), 1)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_update_not_matching_the_model_spec_is_refused(aggregator: Aggregator, deployment: Deployment) -> None:
    with site(aggregator, deployment, "site-c") as client:
        client.join()
        round_number = client.task().round
        before = len(accepted_updates(aggregator, "site-c"))
        bad_shape = {"dense.weight": np.zeros((3, 4), np.float32), "dense.bias": np.zeros(3, np.float32)}
        nan = update_like(0.0)
        nan["dense.bias"][1] = np.nan
        for update, message in ((bad_shape, "model spec says"), (nan, "non-finite")):
            with pytest.raises(grpc.RpcError) as refused:
                client.upload_update(round_number, update, 1)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in refused.value.details()
        assert len(accepted_updates(aggregator, "site-c")) == before


def test_oversize_messages_and_stalled_uploads(aggregator: Aggregator, deployment: Deployment) -> None:
    with site(aggregator, deployment, "site-c") as client:
        client.join()
        with pytest.raises(grpc.RpcError) as oversize:
            client.stub.UploadUpdate(
                iter([pb.SealedChunk(header=b"h", ciphertext=bytes(MAX_CHUNK_BYTES + 128 * 1024))]),
                metadata=client._next_call()[2],
                timeout=20,
            )
        assert oversize.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        round_number = client.task().round
        _session, call, metadata = client._next_call()
        chunks = list(client.sealed_update(round_number, 1, call, update_like(0.3), 1))

        def stalling() -> Iterator[pb.SealedChunk]:
            first = chunks[0]
            yield pb.SealedChunk(header=first.header, index=0, final=False, ciphertext=b"\0" * 64)
            time.sleep(4)  # the aggregator's stall_timeout is 2 s
            yield pb.SealedChunk(index=1, final=True, ciphertext=b"\0" * 64)

        started = time.time()
        with pytest.raises(grpc.RpcError) as stalled:
            client.stub.UploadUpdate(stalling(), metadata=metadata, timeout=20)
        assert stalled.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INVALID_ARGUMENT)
        assert time.time() - started < 10


# --- the site never trusts an unverified aggregator -------------------------------------------


def test_site_never_uploads_to_an_aggregator_failing_its_policy(aggregator: Aggregator, deployment: Deployment) -> None:
    other = deployment.site_policy().snp.__class__(measurement=frozenset({b"\x11" * 48}))
    with site(aggregator, deployment, "site-cautious", snp=other) as client:
        with pytest.raises(AggregatorNotTrusted) as untrusted:
            client.join()
        assert any(r.startswith("snp.policy.measurement") for r in untrusted.value.reasons)
    assert admissions(aggregator, "site-cautious") == []  # the site stopped: it never even asked to join


class _Impostor(pb_grpc.FederationServicer):
    """A server that is not attested: it offers no evidence (or none at all)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls: list[str] = []

    def GetEvidence(self, request, context):  # noqa: ANN001, ANN201
        self.calls.append("GetEvidence")
        if self.mode == "unimplemented":
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "no TEE here")
        return pb.EvidenceResponse(bundle=b"")

    def GetChallenge(self, request, context):  # noqa: ANN001, ANN201
        self.calls.append("GetChallenge")
        return pb.ChallengeResponse(challenge=os.urandom(32))

    def Admit(self, request, context):  # noqa: ANN001, ANN201
        self.calls.append("Admit")
        return pb.AdmitResponse(admitted=True)


@pytest.mark.parametrize("mode", ["empty", "unimplemented"])
def test_site_never_trusts_a_server_without_evidence(deployment: Deployment, mode: str) -> None:
    impostor = _Impostor(mode)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_FederationServicer_to_server(impostor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            deployment.client(
                f"127.0.0.1:{port}",
                site_id="site-a",
                policy=deployment.site_policy(),
                attester=SimulatedSnpAttester(deployment.sim_dir),
            ) as client,
            pytest.raises(AggregatorNotTrusted, match="offered no evidence"),
        ):
            client.join()
    finally:
        server.stop(0)
    assert impostor.calls == ["GetEvidence"]


# --- men in the middle --------------------------------------------------------------------------


class _KeySwappingRelay(pb_grpc.FederationServicer):
    """Forwards every call to the real aggregator, substituting its own keys in one direction."""

    def __init__(self, target: str, swap: str) -> None:
        self.channel = grpc.insecure_channel(target)
        self.upstream = pb_grpc.FederationStub(self.channel)
        self.swap = swap
        self.keys = EnclaveKeys()

    def GetEvidence(self, request, context):  # noqa: ANN001, ANN201
        response = self.upstream.GetEvidence(request, timeout=30)
        if self.swap == "aggregator":
            from dataclasses import replace

            bundle = replace(parse_bundle(response.bundle), keys=self.keys.public)
            return pb.EvidenceResponse(bundle=encode_bundle(bundle))
        return response

    def GetChallenge(self, request, context):  # noqa: ANN001, ANN201
        return self.upstream.GetChallenge(request, timeout=30)

    def Admit(self, request, context):  # noqa: ANN001, ANN201
        if self.swap == "site":
            request.site_x25519_public = self.keys.public.x25519
            request.site_ed25519_public = self.keys.public.ed25519
        return self.upstream.Admit(request, timeout=30)


@pytest.mark.parametrize("swap", ["aggregator", "site"])
def test_relay_substituting_keys_is_detected(aggregator: Aggregator, deployment: Deployment, swap: str) -> None:
    relay = _KeySwappingRelay(aggregator.target, swap)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_FederationServicer_to_server(relay, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with deployment.client(
            f"127.0.0.1:{port}",
            site_id="site-b",
            policy=deployment.site_policy(),
            attester=SimulatedSnpAttester(deployment.sim_dir),
        ) as client:
            if swap == "aggregator":
                with pytest.raises(AggregatorNotTrusted) as detected:
                    client.join()
                assert any(r.startswith("binding.report_data") for r in detected.value.reasons), detected.value.reasons
            else:
                with pytest.raises(AdmissionRefused) as refused:
                    client.join()
                # The identity signature covers the session keys: the substitution fails there, before any
                # evidence work.
                assert any(
                    r.startswith(("admission.identity.signature", "binding.", "admission.keys"))
                    for r in refused.value.reasons
                )
    finally:
        server.stop(0)
        relay.channel.close()


def test_byte_relay_never_sees_a_plaintext_update(aggregator: Aggregator, deployment: Deployment) -> None:
    relay = Forwarder(aggregator.ready["port"], record=True)
    marker = np.frombuffer(hashlib.sha512(b"patient-derived gradient").digest() * 2, dtype=np.float32)[:12].reshape(
        4, 3
    )
    update = {"dense.weight": marker.copy(), "dense.bias": np.array([1.25, -2.5, 3.75], np.float32)}
    try:
        with deployment.client(
            f"127.0.0.1:{relay.port}",
            site_id="site-c",
            policy=deployment.site_policy(),
            attester=SimulatedSnpAttester(deployment.sim_dir),
        ) as client:
            client.join()
            round_number = client.task().round
            receipt = client.upload_update(round_number, update, weight=3)
    finally:
        relay.close()
    plaintext = encode_tensors(update, {"weight": repr(3.0)})
    assert hashlib.sha256(plaintext).digest() == receipt.update_sha256  # the aggregator got exactly this
    seen = bytes(relay.seen)
    assert len(seen) > len(plaintext)
    assert marker.tobytes()[:16] not in seen
    assert update["dense.bias"].tobytes() not in seen
    assert plaintext[:64] not in seen  # not even the update's safetensors header


# --- mobile / edge sites: App Attest via pyattest ---------------------------------------------


def _app_attest(app_id: str, tamper: bool = False) -> AppAttestEvidence:
    from pyattest.testutils.factories.attestation import apple as apple_factory

    def attest(client_data: bytes) -> tuple[bytes, bytes]:
        attestation, public_key = apple_factory.get(app_id=app_id, nonce=client_data if not tamper else os.urandom(32))
        return attestation, hashlib.sha256(public_key).digest()

    return AppAttestEvidence(attest)


def test_app_attest_site_joins(aggregator: Aggregator, deployment: Deployment) -> None:
    with deployment.client(
        aggregator.target,
        site_id="mobile-1",
        policy=deployment.site_policy(),
        app_attest=_app_attest("org.example.monitor"),
    ) as client:
        session = client.join()
        assert session.claims.site_id == "mobile-1"
        round_number = client.task().round
        assert client.upload_update(round_number, update_like(0.01), 1).verify(session.aggregator_keys.ed25519)


@pytest.mark.parametrize(
    ("app_id", "tamper", "check"),
    [("org.example.monitor", True, "admission.app_attest"), ("org.example.other", False, "admission.app_attest")],
)
def test_bad_app_attestation_is_refused(
    aggregator: Aggregator, deployment: Deployment, app_id: str, tamper: bool, check: str
) -> None:
    with deployment.client(
        aggregator.target, site_id="mobile-1", policy=deployment.site_policy(), app_attest=_app_attest(app_id, tamper)
    ) as client:
        with pytest.raises(AdmissionRefused) as refused:
            client.join()
        assert any(r.startswith(check) for r in refused.value.reasons), refused.value.reasons


def test_app_attest_is_bound_to_the_site_keys() -> None:
    a = app_attest_client_data("mobile-1", b"c" * 32, b"x" * 32, b"e" * 32)
    assert a != app_attest_client_data("mobile-1", b"c" * 32, b"y" * 32, b"e" * 32)
    assert a != app_attest_client_data("mobile-2", b"c" * 32, b"x" * 32, b"e" * 32)


def test_health_service(aggregator: Aggregator) -> None:
    from protocol.wire import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(aggregator.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="attestfl.v1.Federation"), timeout=10
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_asyncio_is_not_left_running() -> None:
    assert not asyncio.get_event_loop_policy().get_event_loop().is_running()
