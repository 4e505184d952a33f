"""NVIDIA GPU evidence is parsed by its SPDM length fields, as NVIDIA's and Trustee's verifiers
parse it: bytes after the response's signature are outside the signed region and accepted with a
warning, while every byte inside the signed region stays checked."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.abi.x509 import Certificate, parse_certificates
from attestation.errors import EvidenceFormatError
from attestation.platforms.nvidia.abi import (
    REQUEST_SIZE,
    RESPONSE_HEADER_SIZE,
    GpuEvidence,
    parse_gpu_evidence,
    parse_gpu_evidence_hex,
)
from attestation.platforms.nvidia.appraise import appraise_gpu
from attestation.platforms.nvidia.verify import signature_is_valid
from attestation.policy import Policy

AT = datetime(2024, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def evidence(vectors: Path) -> GpuEvidence:
    return parse_gpu_evidence_hex((vectors / "nvidia-gpu/hopper-attestation-report.hex").read_text())


@pytest.fixture(scope="module")
def chain_pem(vectors: Path) -> bytes:
    return (vectors / "nvidia-gpu/hopper-cert-chain.pem").read_bytes()


@pytest.fixture(scope="module")
def leaf(chain_pem: bytes) -> Certificate:
    return parse_certificates(chain_pem)[0]


def test_real_vector_with_one_zero_byte_appended_is_accepted_with_a_warning(
    evidence: GpuEvidence, chain_pem: bytes
) -> None:
    padded = evidence.raw + b"\x00"
    parsed = parse_gpu_evidence(padded)
    assert (
        parsed.trailing == b"\x00"
        and parsed.signed_bytes == evidence.signed_bytes
        and parsed.signature == evidence.signature
    )
    appraisal = appraise_gpu(padded, certificates=chain_pem, expected_nonce=evidence.nonce, policy=Policy(), at=AT)
    assert appraisal.accepted, appraisal.reasons
    assert any("1 bytes after the response's signature" in w and "ignored" in w for w in appraisal.warnings)
    # as hex text too, and without trailing bytes there is no such warning
    assert appraise_gpu(
        padded.hex(), certificates=chain_pem, expected_nonce=evidence.nonce, policy=Policy(), at=AT
    ).accepted
    clean = appraise_gpu(evidence.raw, certificates=chain_pem, expected_nonce=evidence.nonce, policy=Policy(), at=AT)
    assert clean.accepted and not any("after the response's signature" in w for w in clean.warnings)


def test_many_trailing_bytes_change_nothing_signed(evidence: GpuEvidence, leaf: Certificate) -> None:
    padded = parse_gpu_evidence(evidence.raw + evidence.signature + b"\xff" * 100)
    assert len(padded.trailing) == 196 and padded.measurements() == evidence.measurements()
    assert signature_is_valid(padded, leaf)


def _refused(data: bytes, leaf: Certificate) -> bool:
    try:
        parsed = parse_gpu_evidence(data)
    except EvidenceFormatError:
        return True
    return not signature_is_valid(parsed, leaf)


def test_every_flipped_signed_byte_of_the_real_vector_is_refused(evidence: GpuEvidence, leaf: Certificate) -> None:
    raw = evidence.raw
    signed_length = len(evidence.signed_bytes)
    assert signed_length == 4021 and signature_is_valid(evidence, leaf)
    accepted = [i for i in range(len(raw)) if not _refused(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :], leaf)]
    assert accepted == []
    # every single bit of the response's length fields (NumberOfBlocks, MeasurementRecordLength,
    # OpaqueLength): a length that moves the signature must not move the signed region with it
    record_length = int.from_bytes(raw[REQUEST_SIZE + 5 : REQUEST_SIZE + 8], "little")
    opaque_length_at = REQUEST_SIZE + RESPONSE_HEADER_SIZE + record_length + 32
    length_bytes = [
        REQUEST_SIZE + 4,
        REQUEST_SIZE + 5,
        REQUEST_SIZE + 6,
        REQUEST_SIZE + 7,
        opaque_length_at,
        opaque_length_at + 1,
    ]
    for index in length_bytes:
        for bit in range(8):
            flipped = raw[:index] + bytes([raw[index] ^ (1 << bit)]) + raw[index + 1 :]
            assert _refused(flipped, leaf), (index, bit)
            assert _refused(flipped + b"\x00" * 64, leaf), (index, bit)


def test_trailing_bytes_never_make_truncated_evidence_whole(evidence: GpuEvidence) -> None:
    with pytest.raises(EvidenceFormatError, match="Signature"):
        parse_gpu_evidence(evidence.raw[:-1])
