"""Evidence bundles end to end: keys bound to the nonce, CPU + GPU evidence, the CLI."""

from __future__ import annotations

import copy
import json
import pickle
from dataclasses import replace
from pathlib import Path

import pytest

from attestation.binding import (
    BoundKeys,
    binding_reasons,
    gpu_binding_reasons,
    gpu_nonce_for,
    report_data_for,
)
from attestation.bundle import appraise_bundle, evidence_report_data
from attestation.bundle_abi import encode_bundle, parse_bundle
from attestation.errors import EvidenceFormatError, PolicyError
from attestation.policy import Policy
from attestfl.cli import main
from enclave.attester import make_bundle
from enclave.keys import EnclaveKeyError, EnclaveKeys, verify_enclave_signature
from enclave.simulated.attester import SimulatedGpuAttester, SimulatedSnpAttester, SimulatedTdxAttester
from enclave_fixtures import MEASUREMENT, NONCE_A, NONCE_B, now, shared_simulated_dir, trusting


@pytest.fixture(scope="module")
def tdx() -> SimulatedTdxAttester:
    return SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def snp() -> SimulatedSnpAttester:
    return SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def gpu() -> SimulatedGpuAttester:
    return SimulatedGpuAttester(shared_simulated_dir() / "gpu")


@pytest.fixture(scope="module")
def policy(tdx: SimulatedTdxAttester, gpu: SimulatedGpuAttester) -> Policy:
    return trusting(tdx.pki, gpu.pki.root_fingerprint)


def checks(appraisal) -> set[str]:  # noqa: ANN001
    return {r.check for r in appraisal.reasons}


# --- keys and the binding formula ------------------------------------------------------


def test_report_data_formula_and_gpu_nonce() -> None:
    import hashlib

    keys = BoundKeys(bytes(range(32)), bytes(range(32, 64)))
    expected = hashlib.sha512(
        b"attestfl/v1/enclave-report-data\x00" + bytes(range(64)) + bytes([32]) + NONCE_A
    ).digest()
    assert report_data_for(keys, NONCE_A) == expected
    assert gpu_nonce_for(expected) == hashlib.sha256(b"attestfl/v1/gpu-nonce\x00" + expected).digest()
    assert report_data_for(keys, NONCE_A) != report_data_for(keys, NONCE_B)
    with pytest.raises(EvidenceFormatError):
        report_data_for(keys, b"short")


def test_binding_check_names_nonce_and_keys() -> None:
    keys, other = EnclaveKeys(), EnclaveKeys()
    report_data = keys.report_data(NONCE_A)
    assert binding_reasons(report_data, keys.public, NONCE_A) == []
    assert [r.check for r in binding_reasons(report_data, keys.public, NONCE_B)] == ["binding.report_data"]
    assert [r.check for r in binding_reasons(report_data, other.public, NONCE_A)] == ["binding.report_data"]
    assert gpu_binding_reasons(gpu_nonce_for(report_data), report_data) == []
    assert [r.check for r in gpu_binding_reasons(gpu_nonce_for(other.report_data(NONCE_A)), report_data)] == [
        "binding.gpu_nonce"
    ]


def test_enclave_keys_sign_agree_and_never_leave_the_process() -> None:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    keys = EnclaveKeys()
    signature = keys.sign(b"log head 7")
    assert verify_enclave_signature(keys.public.ed25519, signature, b"log head 7")
    assert not verify_enclave_signature(keys.public.ed25519, signature, b"log head 8")
    peer = X25519PrivateKey.generate()
    shared = keys.shared_secret(peer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert shared == peer.exchange(
        __import__(
            "cryptography.hazmat.primitives.asymmetric.x25519", fromlist=["X"]
        ).X25519PublicKey.from_public_bytes(keys.public.x25519)
    )
    for leak in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(EnclaveKeyError):
            leak(keys)
    assert not hasattr(keys, "__dict__")
    assert "x25519=" in repr(keys) and "private" not in repr(keys).lower()


# --- bundles ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tdx", "snp"])
def test_simulated_bundle_verifies(name: str, request: pytest.FixtureRequest, policy: Policy) -> None:
    attester = request.getfixturevalue(name)
    keys = EnclaveKeys()
    data = encode_bundle(make_bundle(attester, keys, NONCE_A))
    appraisal = appraise_bundle(data, expected_nonce=NONCE_A, policy=policy, at=now())
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["simulated"] is True
    assert appraisal.claims["bundle"]["x25519"] == keys.public.x25519.hex()
    assert evidence_report_data(
        attester.evidence(keys.report_data(NONCE_A)).platform, parse_bundle(data).evidence
    ) == keys.report_data(NONCE_A)


@pytest.mark.parametrize("name", ["tdx", "snp"])
def test_nonce_a_evidence_fails_for_nonce_b_and_other_keys(
    name: str, request: pytest.FixtureRequest, policy: Policy
) -> None:
    attester = request.getfixturevalue(name)
    bundle = make_bundle(attester, EnclaveKeys(), NONCE_A)
    # the verifier asked for B
    assert checks(appraise_bundle(bundle, expected_nonce=NONCE_B, policy=policy, at=now())) == {"binding.nonce"}
    # the bundle claims B but the evidence was made for A
    relabelled = replace(bundle, nonce=NONCE_B)
    assert checks(appraise_bundle(relabelled, expected_nonce=NONCE_B, policy=policy, at=now())) == {
        "binding.report_data"
    }
    # same nonce, other keys
    swapped = replace(bundle, keys=EnclaveKeys().public)
    assert checks(appraise_bundle(swapped, expected_nonce=NONCE_A, policy=policy, at=now())) == {"binding.report_data"}


def test_bundle_without_trust_is_rejected_as_simulated(tdx: SimulatedTdxAttester) -> None:
    appraisal = appraise_bundle(
        make_bundle(tdx, EnclaveKeys(), NONCE_A), expected_nonce=NONCE_A, policy=Policy(), at=now()
    )
    assert "tdx.pck.root" in checks(appraisal)
    assert any("simulated" in r.message for r in appraisal.reasons)


def test_missing_expected_nonce_is_a_warning(tdx: SimulatedTdxAttester, policy: Policy) -> None:
    appraisal = appraise_bundle(make_bundle(tdx, EnclaveKeys(), NONCE_A), expected_nonce=None, policy=policy, at=now())
    assert appraisal.accepted and any("freshness was not checked" in w for w in appraisal.warnings)


@pytest.mark.parametrize("name", ["tdx", "snp"])
def test_cpu_and_gpu_evidence_verify_together(
    name: str, request: pytest.FixtureRequest, gpu: SimulatedGpuAttester, policy: Policy
) -> None:
    attester = request.getfixturevalue(name)
    keys = EnclaveKeys()
    bundle = make_bundle(attester, keys, NONCE_A, gpu=gpu)
    assert bundle.gpu is not None
    appraisal = appraise_bundle(
        encode_bundle(bundle), expected_nonce=NONCE_A, policy=replace(policy, require_gpu=True), at=now()
    )
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["gpu"]["nonce"] == gpu_nonce_for(keys.report_data(NONCE_A)).hex()
    assert appraisal.claims["gpu"]["simulated"] is True


def test_gpu_evidence_moved_to_another_bundle_fails_the_binding(
    tdx: SimulatedTdxAttester, snp: SimulatedSnpAttester, gpu: SimulatedGpuAttester, policy: Policy
) -> None:
    donor = make_bundle(snp, EnclaveKeys(), NONCE_A, gpu=gpu)
    target = make_bundle(tdx, EnclaveKeys(), NONCE_A)
    moved = replace(target, gpu=donor.gpu)
    appraisal = appraise_bundle(encode_bundle(moved), expected_nonce=NONCE_A, policy=policy, at=now())
    assert {"binding.gpu_nonce", "gpu.nonce"} <= checks(appraisal)
    assert not checks(appraisal) & {"binding.report_data", "binding.nonce"}
    # and replayed GPU evidence for an older nonce on the same keys fails too
    keys = EnclaveKeys()
    old = make_bundle(tdx, keys, NONCE_B, gpu=gpu)
    fresh = make_bundle(tdx, keys, NONCE_A)
    assert "binding.gpu_nonce" in checks(
        appraise_bundle(replace(fresh, gpu=old.gpu), expected_nonce=NONCE_A, policy=policy, at=now())
    )


def test_policy_can_require_a_gpu(tdx: SimulatedTdxAttester, policy: Policy) -> None:
    bundle = make_bundle(tdx, EnclaveKeys(), NONCE_A)
    assert checks(
        appraise_bundle(bundle, expected_nonce=NONCE_A, policy=replace(policy, require_gpu=True), at=now())
    ) == {"policy.require_gpu"}
    assert Policy.from_toml("require_gpu = true").require_gpu is True
    assert Policy.from_toml("").require_gpu is False
    with pytest.raises(PolicyError):
        Policy.from_toml('require_gpu = "yes"')


def test_every_failure_is_listed(tdx: SimulatedTdxAttester) -> None:
    debug = SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT, debug=True)
    bundle = replace(make_bundle(debug, EnclaveKeys(), NONCE_A), keys=EnclaveKeys().public)
    appraisal = appraise_bundle(bundle, expected_nonce=NONCE_B, policy=replace(Policy(), require_gpu=True), at=now())
    assert {
        "tdx.pck.root",
        "tdx.policy.allow_debug",
        "binding.nonce",
        "binding.report_data",
        "policy.require_gpu",
    } <= checks(appraisal)


# --- CLI ----------------------------------------------------------------------------------


def _policy_file(tmp_path: Path, *fingerprints: str, extra: str = "") -> Path:
    path = tmp_path / "policy.toml"
    path.write_text("trusted_simulated_roots = [" + ", ".join(f'"{f}"' for f in fingerprints) + "]\n" + extra)
    return path


@pytest.mark.parametrize("tee", ["simulated-tdx", "simulated-snp"])
def test_cli_evidence_then_verify(
    tee: str, tmp_path: Path, capsys: pytest.CaptureFixture, tdx: SimulatedTdxAttester, gpu: SimulatedGpuAttester
) -> None:
    out = tmp_path / "bundle.cbor"
    directory = str(shared_simulated_dir())
    assert (
        main(
            [
                "enclave",
                "evidence",
                "--nonce",
                NONCE_A.hex(),
                "--tee",
                tee,
                "--simulated-dir",
                directory,
                "--gpu",
                "simulated",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert parse_bundle(out.read_bytes()).gpu is not None
    capsys.readouterr()
    assert main(["enclave", "trust", "--simulated-dir", directory, "--gpu"]) == 0
    policy = tmp_path / "policy.toml"
    policy.write_text(capsys.readouterr().out + "require_gpu = true\n")
    assert main(["evidence", "verify", str(out), "--nonce", NONCE_A.hex(), "--policy", str(policy), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accepted"] and result["claims"]["simulated"] is True
    assert main(["evidence", "verify", str(out), "--nonce", NONCE_B.hex(), "--policy", str(policy)]) == 1
    assert "binding.nonce" in capsys.readouterr().out
    assert main(["evidence", "verify", str(out), "--nonce", NONCE_A.hex()]) == 1
    assert "simulated" in capsys.readouterr().out


def test_cli_errors_are_clean(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "b.cbor")
    assert (
        main(
            [
                "enclave",
                "evidence",
                "--nonce",
                "zz",
                "--tee",
                "simulated-tdx",
                "--simulated-dir",
                str(tmp_path),
                "-o",
                out,
            ]
        )
        == 2
    )
    assert (
        main(
            [
                "enclave",
                "evidence",
                "--nonce",
                "00" * 8,
                "--tee",
                "simulated-tdx",
                "--simulated-dir",
                str(tmp_path),
                "-o",
                out,
            ]
        )
        == 2
    )
    assert main(["enclave", "evidence", "--nonce", NONCE_A.hex(), "--tee", "simulated-snp", "-o", out]) == 2
    assert main(["enclave", "evidence", "--nonce", NONCE_A.hex(), "--tee", "tdx", "--debug", "-o", out]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("attestfl: error:") == 4
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(b"\xd9\xd9\xf7\xa1\x61")
    assert main(["evidence", "verify", str(bad)]) == 2
    assert "bundle" in capsys.readouterr().err


def test_cli_measure(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from enclave.measure import measure

    assert main(["enclave", "measure"]) == 0
    assert capsys.readouterr().out.strip() == measure().hex
    config = tmp_path / "aggregator.toml"
    config.write_text("rounds = 3\n")
    assert main(["enclave", "measure", "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    from enclave.config_bundle import config_bundle

    assert result["measurement"] == measure(config_bundle(config).data).hex != measure().hex
    assert result["config_bundle"]["sha384"] == result["config_sha384"]
    assert result["files"] and "attestfl" in result["versions"]


def test_unknown_collateral_files_are_refused(
    tdx: SimulatedTdxAttester, snp: SimulatedSnpAttester, policy: Policy
) -> None:
    for attester in (tdx, snp):
        bundle = make_bundle(attester, EnclaveKeys(), NONCE_A)
        odd = replace(bundle, collateral={**bundle.collateral, "notes.txt": b"hello"})
        with pytest.raises(EvidenceFormatError, match=r"notes\.txt"):
            appraise_bundle(encode_bundle(odd), expected_nonce=NONCE_A, policy=policy, at=now())


def test_cli_writes_the_bundle_to_stdout(capfdbinary: pytest.CaptureFixture) -> None:
    directory = str(shared_simulated_dir())
    assert (
        main(
            [
                "enclave",
                "evidence",
                "--nonce",
                NONCE_A.hex(),
                "--tee",
                "simulated-tdx",
                "--simulated-dir",
                directory,
                "-o",
                "-",
            ]
        )
        == 0
    )
    captured = capfdbinary.readouterr()
    assert parse_bundle(captured.out).platform == "tdx"
    assert b"wrote" in captured.err
