"""Attested is not authorised: each attack of the security review, done by a real client (or a
real man in the middle) against a real `attestfl serve` on loopback, asserting the refusal, its
reason id, and what the aggregator's own log says."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.binding import BoundKeys, report_data_for
from attestation.bundle_abi import EvidenceBundle, encode_bundle
from enclave.attester import make_bundle
from enclave.identity import SiteIdentity
from enclave.keys import EnclaveKeys
from enclave.measure import measure
from enclave.simulated.attester import SimulatedSnpAttester
from federation import MODEL, Aggregator, Deployment, run_aggregator
from fedsite.client import AdmissionRefused, AggregatorNotTrusted, SiteClient, admit_request
from protocol.formulas import admission_nonce
from protocol.wire import federation_pb2 as pb
from protocol.wire import federation_pb2_grpc as pb_grpc
from relay import Relay

CODE = measure().digest  # what every honest site's simulated TEE measures: the installed code


def _ca(tmp: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Health Network"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Example Health Network site CA"),
        ]
    )
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp / "organisation-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def _certify(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, identity: SiteIdentity, common_name: str
) -> bytes:
    now = datetime.now(UTC)
    public = serialization.load_der_public_key(
        bytes.fromhex("302a300506032b6570032100") + identity.public
    )  # SubjectPublicKeyInfo of an Ed25519 key
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return _ca(tmp_path_factory.mktemp("organisation"))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, ca: tuple) -> Deployment:
    pin = f'measurements = ["{CODE.hex()}"]'
    return Deployment(
        tmp_path_factory.mktemp("deployment"),
        tmp_path_factory.mktemp("vendor"),
        sites={
            "hospital-a": pin + "\nmax_weight = 500",
            "hospital-b": pin + "\nmax_weight = 500",
            "hospital-c": pin,
            "hospital-ca": f'{pin}\norganisation_ca = "{ca[2]}"',
            "hospital-chip": f'chip_ids = ["{"ee" * 64}"]',
        },
        task='rounds = 50\nmin_sites = 2\nround_deadline = "3s"',
    )


@pytest.fixture(scope="module")
def aggregator(deployment: Deployment) -> Iterator[Aggregator]:
    yield from run_aggregator(deployment)


@pytest.fixture
def stub(aggregator: Aggregator) -> Iterator[pb_grpc.FederationStub]:
    with grpc.insecure_channel(aggregator.target) as channel:
        yield pb_grpc.FederationStub(channel)


def _aggregator_keys(aggregator: Aggregator) -> BoundKeys:
    return BoundKeys(bytes.fromhex(aggregator.ready["x25519"]), bytes.fromhex(aggregator.ready["ed25519"]))


def _impostor_admit(
    stub: pb_grpc.FederationStub,
    aggregator: Aggregator,
    site_id: str,
    identity: SiteIdentity,
    keys: EnclaveKeys | None = None,
) -> pb.AdmitRequest:
    """An attacker's Admit: a genuine (simulated) TEE running the honest code, its own keys."""
    keys = keys or EnclaveKeys()
    challenge = stub.GetChallenge(pb.ChallengeRequest(site_id=site_id), timeout=10).challenge
    bundle = make_bundle(SimulatedSnpAttester(_vendor(aggregator)), keys, admission_nonce(site_id, challenge))
    return admit_request(
        site_id=site_id,
        challenge=challenge,
        session_keys=keys.public,
        evidence_format="bundle",
        evidence=encode_bundle(bundle),
        identity=identity,
        aggregator_keys=_aggregator_keys(aggregator),
        aggregator_evidence_sha256=bytes(32),
    )


def _vendor(aggregator: Aggregator) -> Path:
    import tomllib

    return Path(tomllib.loads(aggregator.config.read_text())["aggregator"]["simulated_dir"])


def _admissions(aggregator: Aggregator, site_id: str) -> list[dict]:
    return [e for e in aggregator.events() if e["message"] == "admission" and e["site"] == site_id]


def _update(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(array.shape, value, np.float32) for name, array in MODEL.items()}


# --- 1. site identity -------------------------------------------------------------------------


def test_impostor_tee_with_a_passing_measurement_cannot_join_as_another_site(
    stub: pb_grpc.FederationStub, aggregator: Aggregator
) -> None:
    """A rented TEE running the very same code (its evidence passes every check, its measurement
    is the pinned one) but holding its own identity key asks to join as hospital-a."""
    response = stub.Admit(
        _impostor_admit(stub, aggregator, "hospital-a", SiteIdentity.generate("hospital-a")), timeout=30
    )
    assert not response.admitted
    assert [r.split(":")[0] for r in response.reasons] == ["admission.identity.key"]
    logged = _admissions(aggregator, "hospital-a")[-1]
    assert logged["admitted"] is False and logged["reasons"] == list(response.reasons)


def test_admission_without_an_identity_proof_is_refused(stub: pb_grpc.FederationStub, aggregator: Aggregator) -> None:
    request = _impostor_admit(stub, aggregator, "hospital-b", SiteIdentity.generate("hospital-b"))
    request.ClearField("identity_public")
    request.ClearField("identity_signature")
    response = stub.Admit(request, timeout=30)
    assert not response.admitted and [r.split(":")[0] for r in response.reasons] == ["admission.identity.missing"]


def test_identity_signature_over_another_transcript_is_refused(
    stub: pb_grpc.FederationStub, aggregator: Aggregator, deployment: Deployment
) -> None:
    """The right key, but a signature lifted from another handshake (another challenge)."""
    identity = deployment.identity("hospital-c")
    earlier = _impostor_admit(stub, aggregator, "hospital-c", identity)
    request = _impostor_admit(stub, aggregator, "hospital-c", identity)
    request.identity_signature = earlier.identity_signature
    response = stub.Admit(request, timeout=30)
    assert not response.admitted and [r.split(":")[0] for r in response.reasons] == ["admission.identity.signature"]
    stub.Admit(earlier, timeout=30)  # consume the earlier challenge


def test_readmission_without_the_identity_key_never_evicts_the_live_session(
    stub: pb_grpc.FederationStub, aggregator: Aggregator, deployment: Deployment
) -> None:
    with deployment.client(aggregator.target, site_id="hospital-b") as honest:
        session = honest.join()
        response = stub.Admit(
            _impostor_admit(stub, aggregator, "hospital-b", SiteIdentity.generate("hospital-b")), timeout=30
        )
        assert not response.admitted and response.reasons[0].startswith("admission.identity.key")
        assert honest.task().round >= 1  # still live: the refused admission replaced nothing
        # The same site re-admitted with its identity replaces its own session, and the log says so.
        with deployment.client(aggregator.target, site_id="hospital-b") as again:
            replacement = again.join()
            assert again.task().round >= 1
        with pytest.raises(grpc.RpcError) as old:
            honest.task()
        assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
    sessions = [e for e in aggregator.events() if e["message"] == "session" and e["site"] == "hospital-b"]
    assert sessions[-1]["replaces"] == [session.claims.session_id.hex()]
    assert sessions[-1]["session"] == replacement.claims.session_id.hex()


def test_organisation_ca_certifies_the_identity_for_that_site_only(
    aggregator: Aggregator, deployment: Deployment, ca: tuple
) -> None:
    ca_key, ca_cert, _path = ca
    identity = SiteIdentity.generate("hospital-ca")
    good = _certify(ca_key, ca_cert, identity, "hospital-ca")
    with deployment.client(
        aggregator.target, site_id="hospital-ca", identity=identity, identity_certificate=good
    ) as client:
        assert client.join().claims.site_id == "hospital-ca"
    for certificate, why in (
        (_certify(ca_key, ca_cert, identity, "hospital-a"), "names"),
        (_certify(ec.generate_private_key(ec.SECP256R1()), ca_cert, identity, "hospital-ca"), "not issued"),
        (b"", "no identity certificate"),
    ):
        with (
            deployment.client(
                aggregator.target, site_id="hospital-ca", identity=identity, identity_certificate=certificate
            ) as client,
            pytest.raises(AdmissionRefused) as refused,
        ):
            client.join()
        (reason,) = refused.value.reasons
        assert reason.startswith("admission.identity.certificate") and why in reason


def test_hardware_pin_of_another_chip_is_refused(aggregator: Aggregator, deployment: Deployment) -> None:
    with (
        deployment.client(aggregator.target, site_id="hospital-chip") as client,
        pytest.raises(AdmissionRefused) as refused,
    ):
        client.join()
    assert [r.split(":")[0] for r in refused.value.reasons] == ["admission.hardware"]


def test_rule_that_pins_nothing_site_specific_stops_the_aggregator(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, tmp_path / "vendor", sites={"hospital-a": "identity_keys = []"})
    config = deployment.write()
    result = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "[admission.sites.hospital-a]" in result.stderr and "pins nothing" in result.stderr
    assert "Traceback" not in result.stderr


def test_weight_over_the_rule_is_refused(aggregator: Aggregator, deployment: Deployment) -> None:
    with deployment.client(aggregator.target, site_id="hospital-a") as client:
        client.join()
        task = client.task()
        assert task.max_weight == 500
        with pytest.raises(grpc.RpcError) as refused:
            client.upload_update(task.round, _update(0.01), weight=1e6, attempt=task.attempt)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_weight" in refused.value.details()


def test_low_order_x25519_key_is_refused_at_appraisal(
    stub: pb_grpc.FederationStub, aggregator: Aggregator, deployment: Deployment
) -> None:
    """The evidence binds a low-order X25519 point: refused by the appraisal, so the log and the
    reply agree (no 'admitted' entry followed by a failure to agree a key)."""
    low_order = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    ed25519 = EnclaveKeys().public.ed25519
    challenge = stub.GetChallenge(pb.ChallengeRequest(site_id="hospital-c"), timeout=10).challenge
    nonce = admission_nonce("hospital-c", challenge)
    keys = BoundKeys(low_order, ed25519)
    cpu = SimulatedSnpAttester(_vendor(aggregator)).evidence(report_data_for(keys, nonce))
    bundle = EvidenceBundle(
        platform=cpu.platform,
        evidence=cpu.evidence,
        keys=keys,
        nonce=nonce,
        created=datetime.now(UTC),
        certificates=cpu.certificates,
        collateral=dict(cpu.collateral),
    )
    request = admit_request(
        site_id="hospital-c",
        challenge=challenge,
        session_keys=keys,
        evidence_format="bundle",
        evidence=encode_bundle(bundle),
        identity=deployment.identity("hospital-c"),
        aggregator_keys=_aggregator_keys(aggregator),
        aggregator_evidence_sha256=bytes(32),
    )
    response = stub.Admit(request, timeout=30)
    assert not response.admitted and any(r.startswith("admission.keys") and "low-order" in r for r in response.reasons)
    logged = _admissions(aggregator, "hospital-c")[-1]
    assert logged["admitted"] is False and logged["reasons"] == list(response.reasons)


# --- the site mirrors it: no unpinned aggregator ----------------------------------------------


def test_site_refuses_a_policy_that_pins_no_aggregator_measurement(
    tmp_path: Path, aggregator: Aggregator, deployment: Deployment
) -> None:
    roots = ", ".join(f'"{fp}"' for fp in deployment.roots.values())
    (tmp_path / "policy.toml").write_text(f"trusted_simulated_roots = [{roots}]\n")
    (tmp_path / "trainer.py").write_text("def make(data, base):\n    raise SystemExit('never reached')\n")
    site = tmp_path / "site.toml"
    base = textwrap.dedent(f"""\
        [site]
        id = "hospital-c"
        aggregator = "{aggregator.target}"
        tee = "simulated-snp"
        simulated_dir = "{_vendor(aggregator)}"
        policy = "policy.toml"
        """)
    site.write_text(base)
    for command in (["site", "run"], ["site", "join"]):
        result = subprocess.run(
            [sys.executable, "-m", "attestfl.cli", *command, "--config", str(site)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert result.returncode == 2, result.stderr
        assert "pins no launch measurement" in result.stderr and "INSECURE_accept_any_aggregator" in result.stderr
    # The override is explicit, loudly named, and warned about at every start.
    site.write_text(base + "INSECURE_accept_any_aggregator = true\n")
    enrolled = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "site", "enroll", "--config", str(site), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    result = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "site", "join", "--config", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert "WARNING: INSECURE_accept_any_aggregator" in result.stderr
    assert (
        result.returncode == 1 and "admission.identity.key" in result.stderr
    )  # and the operator never pinned this key


def test_site_client_refuses_an_unpinned_policy(deployment: Deployment) -> None:
    from attestation.policy import Policy

    with pytest.raises(Exception, match="pins no launch measurement"):
        SiteClient(
            "127.0.0.1:1",
            site_id="hospital-a",
            policy=Policy(trusted_simulated_roots=frozenset(deployment.roots.values())),
            identity=deployment.identity("hospital-a"),
            attester=SimulatedSnpAttester(deployment.sim_dir),
        )


# --- 2. every authenticated call proves possession ---------------------------------------------


@pytest.fixture
def relay(aggregator: Aggregator) -> Iterator[Relay]:
    relay = Relay(aggregator.target)
    yield relay
    relay.close()


def test_a_copied_credential_or_session_id_is_useless_without_the_session_keys(
    relay: Relay, deployment: Deployment
) -> None:
    with deployment.client(relay.target, site_id="hospital-c") as honest:
        session = honest.join()
        honest.task()
    (captured,) = relay.calls("GetTask")
    session_header = dict(captured.metadata)["attestfl-session"]
    with grpc.insecure_channel(relay.target) as channel:
        attacker = pb_grpc.FederationStub(channel)
        # The EAR credential as a bearer token: a statement, not a key.
        with pytest.raises(grpc.RpcError) as bearer:
            attacker.GetTask(
                pb.Sealed(ciphertext=os.urandom(48)),
                metadata=(("authorization", f"Bearer {session.credential}"),),
                timeout=10,
            )
        assert bearer.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The session id and a fresh counter, without the keys.
        with pytest.raises(grpc.RpcError) as forged:
            attacker.GetTask(
                pb.Sealed(ciphertext=os.urandom(48)),
                metadata=(("attestfl-session", session_header), ("attestfl-call", "999")),
                timeout=10,
            )
        assert (
            forged.value.code() == grpc.StatusCode.UNAUTHENTICATED and "failed authentication" in forged.value.details()
        )
    # The captured sealed request, replayed as it was.
    with pytest.raises(grpc.RpcError) as replayed:
        relay.replay("GetTask", captured.requests, captured.metadata)
    assert replayed.value.code() == grpc.StatusCode.UNAUTHENTICATED and "replayed" in replayed.value.details()


def test_forged_metrics_are_refused(relay: Relay, aggregator: Aggregator, deployment: Deployment) -> None:
    with deployment.client(relay.target, site_id="hospital-c") as honest:
        honest.join()
        task = honest.task()
        session_header = dict(relay.calls("GetTask")[-1].metadata)["attestfl-session"]
        forged = pb.MetricsReport(round=task.round, metrics={"accuracy": 0.01}, examples=1).SerializeToString()
        with pytest.raises(grpc.RpcError) as refused:
            relay.replay(
                "ReportMetrics",
                [pb.Sealed(ciphertext=forged).SerializeToString()],
                (("attestfl-session", session_header), ("attestfl-call", "777")),
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The site itself: only the current round, once, with a bounded example count.
        with pytest.raises(grpc.RpcError, match="current round"):
            honest.report_metrics(task.round + 5, {"accuracy": 0.9}, 10)
        with pytest.raises(grpc.RpcError, match="max_weight"):
            honest.report_metrics(task.round, {"accuracy": 0.9}, 10**9)
        honest.report_metrics(task.round, {"accuracy": 0.9}, 10)
        with pytest.raises(grpc.RpcError, match="already reported"):
            honest.report_metrics(task.round, {"accuracy": 0.1}, 10)
    forged_logged = [
        e
        for e in aggregator.events()
        if e["message"] == "metrics" and e["site"] == "hospital-c" and e["metrics"].get("accuracy") == 0.01
    ]
    assert forged_logged == []


def test_a_stale_receipt_is_refused_by_the_site(relay: Relay, deployment: Deployment) -> None:
    with (
        deployment.client(relay.target, site_id="hospital-a") as site_a,
        deployment.client(relay.target, site_id="hospital-b") as site_b,
    ):
        site_a.join()
        site_b.join()
        task = site_a.task()
        first = site_a.upload_update(task.round, _update(0.01), weight=3, attempt=task.attempt)
        assert first.verify(site_a.session.aggregator_keys.ed25519)
        stale = relay.calls("UploadUpdate")[-1].responses[-1]
        # The network answers b's upload with a's (authentic, signed) receipt.
        relay.rewrite_response = lambda method, data: stale if method == "UploadUpdate" else data
        with pytest.raises(AggregatorNotTrusted, match=r"not authentic|does not answer"):
            site_b.upload_update(task.round, _update(0.02), weight=3, attempt=task.attempt)


def test_a_forged_finished_task_is_refused_by_the_site(relay: Relay, deployment: Deployment) -> None:
    with deployment.client(relay.target, site_id="hospital-c") as site:
        site.join()
        site.task()
        earlier = relay.calls("GetTask")[-1].responses[-1]
        forged = pb.Sealed(
            ciphertext=pb.TaskResponse(round=99, finished=True, rounds_total=99).SerializeToString()
        ).SerializeToString()
        for substitute in (forged, earlier):  # a made-up "training is finished", or an older genuine answer
            relay.rewrite_response = lambda method, data, substitute=substitute: (
                substitute if method == "GetTask" else data
            )
            with pytest.raises(AggregatorNotTrusted, match="not authentic"):
                site.task()


def test_a_captured_upload_replayed_into_a_retried_attempt_is_refused(
    relay: Relay, aggregator: Aggregator, deployment: Deployment
) -> None:
    """min_sites = 2 and a 3 s deadline: one upload, the round is retried; the network replays the
    captured upload (the same call, then as a new call) into the new attempt."""
    with deployment.client(relay.target, site_id="hospital-c") as site:
        site.join()
        task = site.task()
        while task.attempt == 0 or time.time() * 1000 > task.deadline_unix_ms - 2000:  # a fresh attempt: time to upload
            time.sleep(0.2)
            task = site.task()
        site.upload_update(task.round, _update(0.03), weight=2, attempt=task.attempt)
        captured = relay.calls("UploadUpdate")[-1]
        while (now := site.task()).round == task.round and now.attempt == task.attempt:
            time.sleep(0.2)
        assert now.round == task.round and now.attempt == task.attempt + 1  # retried: quorum not met
        accepted = len(
            [e for e in aggregator.events() if e["message"] == "update_accepted" and e["site"] == "hospital-c"]
        )
        with pytest.raises(grpc.RpcError) as same_call:
            relay.replay("UploadUpdate", captured.requests, captured.metadata)
        assert same_call.value.code() == grpc.StatusCode.UNAUTHENTICATED and "replayed" in same_call.value.details()
        metadata = tuple((k, "12345" if k == "attestfl-call" else v) for k, v in captured.metadata)
        with pytest.raises(grpc.RpcError) as new_call:
            relay.replay("UploadUpdate", captured.requests, metadata)
        assert (
            new_call.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            and "another site or call" in new_call.value.details()
        )
        assert (
            len([e for e in aggregator.events() if e["message"] == "update_accepted" and e["site"] == "hospital-c"])
            == accepted
        )


# --- 3. the verifier decides the collateral ------------------------------------------------


def test_a_revoked_site_that_strips_or_stales_its_crl_is_still_refused(tmp_path: Path) -> None:
    """The site's chip (its VCEK) is revoked in the verifier's CRL. Leaving the CRL out of its
    bundle, or bringing an old one, changes nothing: the aggregator uses its own collateral."""
    from enclave.simulated.collateral import write_simulated_collateral

    vendor = tmp_path / "vendor"
    vcek = SimulatedSnpAttester(vendor).evidence(bytes(64)).certificates[0]
    write_simulated_collateral(vendor, tmp_path / "collateral", revoked=[vcek])
    deployment = Deployment(tmp_path, vendor, sites={"hospital-r": ""})
    for aggregator in run_aggregator(deployment):
        for attester in (
            SimulatedSnpAttester(vendor, crl=False),  # stripped
            SimulatedSnpAttester(vendor, crl_issued=datetime.now(UTC) - timedelta(days=2)),  # its own, older
        ):
            with (
                deployment.client(aggregator.target, site_id="hospital-r", attester=attester) as client,
                pytest.raises(AdmissionRefused) as refused,
            ):
                client.join()
            assert any(r.startswith("snp.crl.revoked") for r in refused.value.reasons), refused.value.reasons
        logged = _admissions(aggregator, "hospital-r")
        assert len(logged) == 2 and not any(e["admitted"] for e in logged)
        assert all("amd/milan/crl-vcek.der" in e["collateral"] for e in logged)


def test_without_the_verifiers_collateral_a_site_is_refused_not_warned(tmp_path: Path) -> None:
    """An aggregator holding no CRL for the site's chip refuses (require_collateral defaults to
    true for admission), whatever CRL the site brings."""
    (tmp_path / "collateral").mkdir()  # the verifier's collateral directory, empty
    deployment = Deployment(tmp_path, tmp_path / "vendor", sites={"hospital-n": ""})
    for aggregator in run_aggregator(deployment):
        with (
            deployment.client(aggregator.target, site_id="hospital-n") as client,  # its bundle carries a fresh CRL
            pytest.raises(AdmissionRefused) as refused,
        ):
            client.join()
    assert any(r.startswith("snp.policy.require_collateral") for r in refused.value.reasons), refused.value.reasons
