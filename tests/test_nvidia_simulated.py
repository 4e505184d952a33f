"""The simulated NVIDIA GPU: its PKI on disk, its SPDM evidence, and what a verifier makes of them."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.abi.x509 import parse_certificates
from attestation.platforms.nvidia.abi import parse_gpu_evidence
from attestation.platforms.nvidia.appraise import appraise_gpu
from attestation.platforms.nvidia.verify import signature_is_valid
from attestation.policy import Policy
from attestation.trust import SIMULATED_ORGANIZATION
from enclave.simulated import SimulatedTeeError
from enclave.simulated.gpu import (
    SimulatedGpuPki,
    issue_attestation_leaf,
    load_or_create_gpu_pki,
    simulated_gpu_evidence,
    simulated_measurements,
)

NONCE = hashlib.sha256(b"verifier nonce").digest()


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimulatedGpuPki:
    return load_or_create_gpu_pki(tmp_path_factory.mktemp("sim") / "gpu")


@pytest.fixture(scope="module")
def trusting(pki: SimulatedGpuPki) -> Policy:
    return Policy(trusted_simulated_roots=frozenset({pki.root_fingerprint}))


def test_pki_is_persisted_with_private_keys_0600(pki: SimulatedGpuPki) -> None:
    directory = pki.directory
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for role in ("root", "identity", "provisioner", "brom", "leaf"):
        assert (directory / f"{role}.pem").is_file()
        assert stat.S_IMODE(os.stat(directory / f"{role}.key.pem").st_mode) == 0o600
    again = load_or_create_gpu_pki(directory)
    assert again.root_fingerprint == pki.root_fingerprint and again.fwid == pki.fwid
    assert again.leaf.der == pki.leaf.der


def test_chain_mirrors_nvidia_and_is_marked_simulated(pki: SimulatedGpuPki) -> None:
    chain = parse_certificates(pki.chain_pem())
    assert len(chain) == 5
    assert all(SIMULATED_ORGANIZATION in c.subject for c in chain)
    assert "GH100 A01 GSP FMC LF" in chain[0].subject and "NVIDIA Device Identity CA" in chain[-1].subject
    assert chain[-1].fingerprint_sha256 == pki.root_fingerprint
    assert [c.is_ca for c in chain] == [False, True, True, True, True]


def test_evidence_is_hardware_format_and_round_trips(pki: SimulatedGpuPki) -> None:
    evidence_bytes, _chain = simulated_gpu_evidence(NONCE, pki)
    evidence = parse_gpu_evidence(evidence_bytes)
    assert evidence.to_bytes() == evidence_bytes
    assert evidence.nonce == NONCE
    assert (evidence.request.version, evidence.request.param1, evidence.request.param2) == (0x11, 0x01, 0xFF)
    assert evidence.measurements() == simulated_measurements()
    assert evidence.response.opaque.fwid == pki.fwid
    assert evidence.response.opaque.driver_version == "550.90.07"
    assert len(evidence_bytes) == 4117  # the same layout, byte for byte, as the Hopper sample


def test_simulated_evidence_verifies_only_when_its_root_is_trusted(pki: SimulatedGpuPki, trusting: Policy) -> None:
    evidence, chain = simulated_gpu_evidence(NONCE, pki)
    untrusted = appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=Policy(), at=now())
    assert [r.check for r in untrusted.reasons] == ["gpu.chain.root"]
    assert "simulated" in untrusted.reasons[0].message and pki.root_fingerprint in untrusted.reasons[0].message
    assert untrusted.claims["simulated"] is True

    trusted = appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=trusting, at=now())
    assert trusted.accepted, trusted.reasons
    assert trusted.claims["simulated"] is True
    assert trusted.claims["arch"] == "Hopper" and trusted.claims["nonce"] == NONCE.hex()
    assert any("simulated" in w for w in trusted.warnings)


def test_simulated_evidence_is_bound_to_its_nonce(pki: SimulatedGpuPki, trusting: Policy) -> None:
    evidence, chain = simulated_gpu_evidence(NONCE, pki)
    other = hashlib.sha256(b"another session").digest()
    appraisal = appraise_gpu(evidence, certificates=chain, expected_nonce=other, policy=trusting, at=now())
    assert [r.check for r in appraisal.reasons] == ["gpu.nonce"]


def test_leaf_certifying_another_fwid_is_rejected(pki: SimulatedGpuPki, trusting: Policy) -> None:
    other_fwid = hashlib.sha384(b"other firmware").digest()
    leaf = issue_attestation_leaf(pki, fwid=other_fwid)
    # Signed by the new leaf (valid signature, valid chain), but the report carries the original FWID.
    evidence, chain = simulated_gpu_evidence(NONCE, pki, leaf=leaf)
    appraisal = appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=trusting, at=now())
    assert [r.check for r in appraisal.reasons] == ["gpu.fwid"]
    assert other_fwid.hex() in appraisal.reasons[0].message and pki.fwid.hex() in appraisal.reasons[0].message
    # The same leaf with a report naming its own FWID is accepted.
    evidence, chain = simulated_gpu_evidence(NONCE, pki, leaf=leaf, report_fwid=other_fwid)
    assert appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=trusting, at=now()).accepted


def test_report_fwid_differing_from_the_certified_one_is_rejected(pki: SimulatedGpuPki, trusting: Policy) -> None:
    evidence, chain = simulated_gpu_evidence(NONCE, pki, report_fwid=bytes(48))
    appraisal = appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=trusting, at=now())
    assert [r.check for r in appraisal.reasons] == ["gpu.fwid"]


def test_simulated_evidence_with_the_real_nvidia_chain_fails(pki: SimulatedGpuPki, vectors: Path) -> None:
    evidence, _chain = simulated_gpu_evidence(NONCE, pki)
    real_chain = (vectors / "nvidia-gpu" / "hopper-cert-chain.pem").read_bytes()
    appraisal = appraise_gpu(
        evidence,
        certificates=real_chain,
        expected_nonce=NONCE,
        policy=Policy(),
        at=datetime(2024, 7, 1, tzinfo=UTC),
    )
    assert {r.check for r in appraisal.reasons} == {"gpu.signature", "gpu.fwid"}


def test_tampered_simulated_evidence_is_rejected(pki: SimulatedGpuPki, trusting: Policy) -> None:
    evidence, chain = simulated_gpu_evidence(NONCE, pki)
    leaf = parse_certificates(chain)[0]
    parsed = parse_gpu_evidence(evidence)
    assert signature_is_valid(parsed, leaf)
    for byte in (10, 37 + 8 + 4 + 3 + 7, 37 + 8 + 3520 + 40, len(evidence) - 97, len(evidence) - 1):
        tampered = evidence[:byte] + bytes([evidence[byte] ^ 0x01]) + evidence[byte + 1 :]
        appraisal = appraise_gpu(tampered, certificates=chain, policy=trusting, at=now())
        assert "gpu.signature" in {r.check for r in appraisal.reasons}


def test_policy_settings_on_simulated_evidence(pki: SimulatedGpuPki) -> None:
    measurements = simulated_measurements()
    measurements[5] = b"\x05" * 48
    evidence, chain = simulated_gpu_evidence(
        NONCE,
        pki,
        measurements=measurements,
        protected_pcie=True,
        driver_version="560.35.03",
        vbios_version="96.00.74.00.1C",
    )
    policy = Policy.from_dict(
        {
            "trusted_simulated_roots": [pki.root_fingerprint],
            "nvidia-gpu": {
                "protected_pcie": "enabled",
                "allowed_driver_versions": ["560.35.03"],
                "allowed_vbios_versions": ["96.00.74.00.1c"],
                "measurements": {"5": "05" * 48, "6": measurements[6].hex()},
            },
        }
    )
    appraisal = appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=policy, at=now())
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["protected_pcie_status"] == "aa"
    assert appraisal.claims["vbios_version"] == "96.00.74.00.1c"


def test_bad_inputs(pki: SimulatedGpuPki, tmp_path: Path) -> None:
    with pytest.raises(SimulatedTeeError, match="32 bytes"):
        simulated_gpu_evidence(b"short", pki)
    with pytest.raises(SimulatedTeeError, match="48 bytes"):
        simulated_gpu_evidence(NONCE, pki, measurements={1: b"x"})
    with pytest.raises(SimulatedTeeError, match="FWID"):
        issue_attestation_leaf(pki, fwid=b"x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "simulated-gpu.txt").write_text("marker without keys")
    with pytest.raises(SimulatedTeeError, match="unusable"):
        load_or_create_gpu_pki(broken)


def test_directory_argument_creates_the_pki(tmp_path: Path) -> None:
    evidence, chain = simulated_gpu_evidence(NONCE, tmp_path / "fresh")
    pki = load_or_create_gpu_pki(tmp_path / "fresh")
    policy = Policy(trusted_simulated_roots=frozenset({pki.root_fingerprint}))
    assert appraise_gpu(evidence, certificates=chain, expected_nonce=NONCE, policy=policy, at=now()).accepted
