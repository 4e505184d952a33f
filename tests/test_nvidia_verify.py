"""Authenticity of NVIDIA Hopper evidence: signature, chain, root, FWID, nonce, claims."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from attestation.abi.x509 import Certificate, parse_certificates, pem_encode_certificates
from attestation.errors import CertificateFormatError, EvidenceFormatError, PolicyError
from attestation.platforms.nvidia.abi import GpuEvidence, parse_gpu_evidence, parse_gpu_evidence_hex
from attestation.platforms.nvidia.appraise import appraise_gpu
from attestation.platforms.nvidia.roots import nvidia_device_identity_root
from attestation.platforms.nvidia.verify import architecture_of, chip_of, signature_is_valid, verify_gpu_evidence
from attestation.policy import Policy

#: The Hopper chain's certificates are valid from 2022-03-01 (the GH100 Identity CA) to 9999;
#: the report was produced with driver 550.90.07 (mid 2024).
AT = datetime(2024, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def gpu_dir(vectors: Path) -> Path:
    return vectors / "nvidia-gpu"


@pytest.fixture(scope="module")
def report_hex(gpu_dir: Path) -> str:
    return (gpu_dir / "hopper-attestation-report.hex").read_text()


@pytest.fixture(scope="module")
def evidence(report_hex: str) -> GpuEvidence:
    return parse_gpu_evidence_hex(report_hex)


@pytest.fixture(scope="module")
def chain_pem(gpu_dir: Path) -> bytes:
    return (gpu_dir / "hopper-cert-chain.pem").read_bytes()


@pytest.fixture(scope="module")
def chain(chain_pem: bytes) -> list[Certificate]:
    return parse_certificates(chain_pem)


def test_chain_order_and_validity_window(chain: list[Certificate], gpu_dir: Path) -> None:
    assert [re.search(r"Common Name: ([^,]+)", c.subject).group(1) for c in chain] == [
        "GH100 A01 GSP FMC LF",
        "GH100 A01 GSP BROM",
        "NVIDIA GH100 Provisioner ICA 1",
        "NVIDIA GH100 Identity",
        "NVIDIA Device Identity CA",
    ]
    assert chain[-1].der == nvidia_device_identity_root().der
    assert parse_certificates((gpu_dir / "nvidia-device-identity-root.pem").read_bytes())[0].der == chain[-1].der
    assert max(c.not_before for c in chain) == datetime(2022, 3, 1, tzinfo=UTC)
    assert min(c.not_after for c in chain).year == 9999
    assert chip_of(chain) == "GH100" and architecture_of(chain) == "Hopper"


def test_real_hopper_evidence_is_accepted_with_claims_of_trustee(
    report_hex: str, chain_pem: bytes, evidence: GpuEvidence, gpu_dir: Path
) -> None:
    appraisal = appraise_gpu(report_hex, certificates=chain_pem, expected_nonce=evidence.nonce, policy=Policy(), at=AT)
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.platform == "nvidia-gpu"
    assert appraisal.warnings == ()
    claims = appraisal.claims
    expected = json.loads((gpu_dir / "hopper-attestation-report.claims.txt").read_text())
    assert claims["arch"] == expected["arch"] == "Hopper"
    assert claims["measurements"] == expected["measurements"]
    assert len(claims["measurements"]) == 64
    config = expected["config"]
    assert claims["driver_version"] == config["driver_version"] == "550.90.07"
    assert claims["vbios_version"] == config["vbios_version"] == "96.00.9f.00.01"
    assert claims["fwid"] == config["fwid"]
    assert claims["measurement_count"] == config["measurement_count"]
    for name in (
        "board_id",
        "chip_sku",
        "chip_sku_mod",
        "cpr_info",
        "gpu_info",
        "project",
        "project_sku",
        "project_sku_mod",
    ):
        assert claims[name] == config[name], name
    # trustee rendered the one-byte status fields as UTF-8 text: byte 0x55 is "U". We report the byte in hex.
    for name in ("nvdec0_status", "protected_pcie_status"):
        assert claims[name] == config[name].encode().hex() == "55"
    assert claims["nonce"] == evidence.nonce.hex()
    assert claims["simulated"] is False
    assert claims["root_fingerprint"] == nvidia_device_identity_root().fingerprint_sha256
    assert json.dumps(appraisal.to_json_dict())  # claims are JSON-serialisable


def test_binary_evidence_and_chain_without_root(evidence: GpuEvidence, chain: list[Certificate]) -> None:
    without_root = pem_encode_certificates(chain[:-1])
    appraisal = appraise_gpu(
        evidence.raw, certificates=without_root, expected_nonce=evidence.nonce, policy=Policy(), at=AT
    )
    assert appraisal.accepted, appraisal.reasons


def test_without_expected_nonce_freshness_is_a_warning(report_hex: str, chain_pem: bytes) -> None:
    appraisal = appraise_gpu(report_hex, certificates=chain_pem, policy=Policy(), at=AT)
    assert appraisal.accepted
    assert any("freshness" in w for w in appraisal.warnings)


def test_wrong_nonce_is_rejected(report_hex: str, chain_pem: bytes) -> None:
    appraisal = appraise_gpu(report_hex, certificates=chain_pem, expected_nonce=bytes(32), policy=Policy(), at=AT)
    assert [r.check for r in appraisal.reasons] == ["gpu.nonce"]
    assert "931d8dd0" in appraisal.reasons[0].message


def test_expected_nonce_must_be_32_bytes_and_time_aware(report_hex: str, chain_pem: bytes) -> None:
    with pytest.raises(PolicyError, match="32 bytes"):
        appraise_gpu(report_hex, certificates=chain_pem, expected_nonce=bytes(16), policy=Policy(), at=AT)
    with pytest.raises(PolicyError, match="timezone"):
        appraise_gpu(report_hex, certificates=chain_pem, policy=Policy(), at=datetime(2024, 7, 1))


def _flip(data: bytes, bit: int) -> bytes:
    return data[: bit // 8] + bytes([data[bit // 8] ^ (1 << (bit % 8))]) + data[bit // 8 + 1 :]


def test_every_single_bit_flip_of_the_signed_bytes_and_signature_fails(
    evidence: GpuEvidence, chain: list[Certificate]
) -> None:
    leaf = chain[0]
    assert signature_is_valid(evidence, leaf)
    signed, signature = evidence.signed_bytes, evidence.signature
    accepted = []
    for bit in range(len(signed) * 8):
        flipped = replace(evidence, raw=_flip(signed, bit) + signature)
        if signature_is_valid(flipped, leaf):
            accepted.append(bit)
    for bit in range(len(signature) * 8):
        flipped = replace(
            evidence,
            raw=signed + _flip(signature, bit),
            response=replace(evidence.response, signature=_flip(signature, bit)),
        )
        if signature_is_valid(flipped, leaf):
            accepted.append(len(signed) * 8 + bit)
    assert accepted == []
    assert len(signed) == 4021


@pytest.mark.parametrize(
    "byte",
    # request nonce, measurement values of blocks 1/12/41, responder nonce, opaque driver version, FWID,
    # PCIe status, signature
    [
        5,
        36,
        37 + 8 + 10,
        37 + 8 + 11 * 55 + 20,
        37 + 8 + 40 * 55 + 54,
        37 + 8 + 3520 + 3,
        37 + 8 + 3520 + 34 + 80,
        4000,
        4019,
        4020,
        4030,
        4116,
    ],
)
def test_bit_flips_through_appraise_gpu_are_rejected(evidence: GpuEvidence, chain_pem: bytes, byte: int) -> None:
    for bit in (0, 7):
        tampered = _flip(evidence.raw, byte * 8 + bit)
        try:
            appraisal = appraise_gpu(
                tampered, certificates=chain_pem, expected_nonce=evidence.nonce, policy=Policy(), at=AT
            )
        except EvidenceFormatError:
            continue  # a flipped byte that breaks the structure is rejected before any check
        assert not appraisal.accepted
        assert "gpu.signature" in {r.check for r in appraisal.reasons}


def _self_signed(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, common_name), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NVIDIA")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2021, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def test_chain_ending_at_another_root_is_rejected(
    report_hex: str, chain: list[Certificate], evidence: GpuEvidence
) -> None:
    impostor = pem_encode_certificates(chain[:-1]) + _self_signed("NVIDIA Device Identity CA")
    appraisal = appraise_gpu(report_hex, certificates=impostor, expected_nonce=evidence.nonce, policy=Policy(), at=AT)
    checks = {r.check for r in appraisal.reasons}
    assert checks == {"gpu.chain.signature", "gpu.chain.root"}
    assert any("which is not the NVIDIA Device Identity CA" in r.message for r in appraisal.reasons)
    assert appraisal.claims["simulated"] is False


def test_chain_ending_at_an_intermediate_is_rejected(
    report_hex: str, chain: list[Certificate], evidence: GpuEvidence
) -> None:
    appraisal = appraise_gpu(
        report_hex,
        certificates=pem_encode_certificates(chain[:3]),
        expected_nonce=evidence.nonce,
        policy=Policy(),
        at=AT,
    )
    checks = [r.check for r in appraisal.reasons]
    assert "gpu.chain.root" in checks and "gpu.chain.signature" in checks
    assert not appraisal.accepted


def test_missing_leaf_means_no_signature_and_no_fwid(
    report_hex: str, chain: list[Certificate], evidence: GpuEvidence
) -> None:
    appraisal = appraise_gpu(
        report_hex,
        certificates=pem_encode_certificates(chain[1:]),
        expected_nonce=evidence.nonce,
        policy=Policy(),
        at=AT,
    )
    checks = {r.check for r in appraisal.reasons}
    assert checks == {"gpu.signature", "gpu.fwid"}


def test_missing_chain_lists_every_consequence(report_hex: str, evidence: GpuEvidence) -> None:
    appraisal = appraise_gpu(report_hex, expected_nonce=evidence.nonce, policy=Policy(), at=AT)
    assert [r.check for r in appraisal.reasons] == ["gpu.chain.missing", "gpu.signature", "gpu.fwid"]
    assert appraisal.claims["driver_version"] == "550.90.07"  # claims are reported even when rejected
    assert appraisal.claims["arch"] == "unknown"


def test_verification_time_outside_the_chain_window(report_hex: str, chain_pem: bytes, evidence: GpuEvidence) -> None:
    appraisal = appraise_gpu(
        report_hex,
        certificates=chain_pem,
        expected_nonce=evidence.nonce,
        policy=Policy(),
        at=datetime(2022, 1, 1, tzinfo=UTC),
    )
    assert {r.check for r in appraisal.reasons} == {"gpu.chain.validity"}
    assert any("NVIDIA GH100 Identity" in r.message for r in appraisal.reasons)


def test_all_failures_are_collected(report_hex: str, chain: list[Certificate]) -> None:
    impostor = pem_encode_certificates(chain[1:-1]) + _self_signed("Someone Else")
    appraisal = appraise_gpu(
        report_hex,
        certificates=impostor,
        expected_nonce=b"\x01" * 32,
        policy=Policy(),
        at=datetime(2022, 1, 1, tzinfo=UTC),
    )
    checks = {r.check for r in appraisal.reasons}
    assert {
        "gpu.signature",
        "gpu.chain.signature",
        "gpu.chain.validity",
        "gpu.chain.root",
        "gpu.fwid",
        "gpu.nonce",
    } <= checks


def test_verify_gpu_evidence_directly(evidence: GpuEvidence, chain: list[Certificate]) -> None:
    result = verify_gpu_evidence(evidence, chain, expected_nonce=evidence.nonce, at=AT)
    assert result.authentic and not result.simulated
    assert result.certificate_fwid.digest == evidence.response.opaque.fwid
    assert result.chip == "GH100"


def test_bad_certificate_input_raises_typed_errors(report_hex: str) -> None:
    with pytest.raises(CertificateFormatError):
        appraise_gpu(
            report_hex,
            certificates=b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            policy=Policy(),
            at=AT,
        )
    with pytest.raises(CertificateFormatError):
        appraise_gpu(report_hex, certificates=b"not a certificate", policy=Policy(), at=AT)


def test_malformed_evidence_raises_typed_errors(evidence: GpuEvidence, chain_pem: bytes) -> None:
    with pytest.raises(EvidenceFormatError):
        appraise_gpu(evidence.raw[:-3], certificates=chain_pem, policy=Policy(), at=AT)
    with pytest.raises(EvidenceFormatError):
        appraise_gpu("11e001", certificates=chain_pem, policy=Policy(), at=AT)
    with pytest.raises(EvidenceFormatError):
        appraise_gpu(12345, certificates=chain_pem, policy=Policy(), at=AT)  # type: ignore[arg-type]
    assert parse_gpu_evidence(evidence.raw) == evidence
