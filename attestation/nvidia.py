"""NVIDIA confidential-computing GPU evidence: parse, verify, appraise.

:func:`appraise_gpu` is the entry point. The evidence is the SPDM GET_MEASUREMENTS
request + signed MEASUREMENTS response (binary, or hex text as NVIDIA's tools write it,
see :mod:`attestation.abi.spdm`); the certificate chain comes separately (NVML returns
it beside the report), as PEM, leaf first.

Freshness and binding: the request nonce is 32 bytes chosen by the verifier. Passing it
as ``expected_nonce`` makes a replayed report fail ``gpu.nonce``; a caller binding GPU
evidence to a CPU TEE derives that nonce from the same values the CPU report binds and
passes the result here.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .abi.spdm import (
    OPAQUE_FIELD_NAMES,
    TEXT_FIELDS,
    GpuEvidence,
    OpaqueFieldType,
    decode_text,
    parse_gpu_evidence_any,
)
from .abi.x509 import Certificate, parse_certificates
from .errors import EvidenceFormatError, PolicyError
from .findings import Appraisal
from .policy import Policy
from .validate.nvidia import GpuFacts, validate_gpu, validation_warnings
from .verify.nvidia import GpuVerification, verify_gpu_evidence

PLATFORM = "nvidia-gpu"


def opaque_claims(evidence: GpuEvidence) -> dict[str, Any]:
    """Every opaque field as a claim, under NVIDIA's field name.

    Text fields (driver version, chip SKU and SKU mod, project, project SKU, chip info) are
    strings; ``vbios_version`` is NVIDIA's dotted rendering; ``measurement_count`` maps each
    SPDM index (as a string) to how often that measurement was extended; every other field
    (board id, CPR info, GPU info, project SKU mod, NVDEC0 and protected-PCIe status bytes,
    FWID, ...) is lowercase hex of its raw bytes. An unknown field type ``n`` appears as
    ``opaque_field_n``.
    """
    opaque = evidence.response.opaque
    claims: dict[str, Any] = {}
    for item in opaque.fields:
        name = item.name
        if item.type_id == OpaqueFieldType.VBIOS_VERSION:
            claims[name] = opaque.vbios_version
        elif item.type_id == OpaqueFieldType.MSRSCNT:
            counts = opaque.measurement_counts or ()
            claims[name] = {str(index): count for index, count in enumerate(counts, start=1)}
        elif item.type_id in TEXT_FIELDS:
            claims[name] = decode_text(item.value, OPAQUE_FIELD_NAMES[item.type_id])
        else:
            claims[name] = item.value.hex()
    return claims


def gpu_claims(verification: GpuVerification) -> dict[str, Any]:
    """The claims of the ``nvidia-gpu`` platform (reported whether or not the evidence is accepted)."""
    evidence = verification.evidence
    opaque = evidence.response.opaque
    claims: dict[str, Any] = {
        "arch": verification.arch,
        "chip": verification.chip,
        "spdm_version": f"{evidence.request.version >> 4}.{evidence.request.version & 0x0F}",
        "nonce": evidence.nonce.hex(),
        "responder_nonce": evidence.response.responder_nonce.hex(),
        "driver_version": opaque.driver_version,
        "vbios_version": opaque.vbios_version,
        "fwid": opaque.fwid.hex() if opaque.fwid is not None else None,
        "measurements": {str(block.index): block.value.hex() for block in evidence.response.blocks},
    }
    for name, value in opaque_claims(evidence).items():
        claims.setdefault(name, value)
    claims["root_fingerprint"] = verification.root_fingerprint
    claims["simulated"] = verification.simulated
    return claims


def gpu_facts(verification: GpuVerification, *, nonce_checked: bool) -> GpuFacts:
    opaque = verification.evidence.response.opaque
    return GpuFacts(
        arch=verification.arch,
        chip=verification.chip,
        driver_version=opaque.driver_version,
        vbios_version=opaque.vbios_version,
        protected_pcie_status=opaque.protected_pcie_status,
        measurements=verification.evidence.measurements(),
        nonce_checked=nonce_checked,
    )


def parse_chain(certificates: bytes | None) -> list[Certificate]:
    """The PEM (or single DER) chain, leaf first; None or empty gives no chain."""
    if not certificates:
        return []
    return parse_certificates(certificates)


def appraise_gpu(
    evidence: bytes | str,
    *,
    certificates: bytes | None = None,
    expected_nonce: bytes | None = None,
    policy: Policy,
    at: datetime,
) -> Appraisal:
    """Verify NVIDIA GPU evidence and appraise it against ``policy``.

    ``evidence``: binary SPDM request + response, or hex text (``str``, or ASCII bytes).
    ``certificates``: the attestation certificate chain as PEM, leaf first (root optional).
    ``expected_nonce``: the 32-byte nonce the verifier chose for the request.
    ``at``: the verification time (aware, UTC).

    Malformed evidence or certificates raise :class:`~attestation.errors.EvidenceFormatError`
    / :class:`~attestation.errors.CertificateFormatError`; evidence that parses yields an
    :class:`~attestation.findings.Appraisal` listing every failed check.
    """
    if at.tzinfo is None:
        raise PolicyError("verification time must be timezone-aware (UTC)")
    if not isinstance(evidence, (bytes, bytearray, memoryview, str)):
        raise EvidenceFormatError(f"GPU evidence must be bytes or hex text, got {type(evidence).__name__}")
    parsed = parse_gpu_evidence_any(evidence)
    chain = parse_chain(certificates)
    verification = verify_gpu_evidence(
        parsed,
        chain,
        expected_nonce=expected_nonce,
        at=at,
        trusted_simulated_roots=policy.trusted_simulated_roots,
    )
    facts = gpu_facts(verification, nonce_checked=expected_nonce is not None)
    reasons = list(verification.reasons) + validate_gpu(facts, policy.gpu)
    warnings = list(verification.warnings) + validation_warnings(facts, policy.gpu)
    return Appraisal(
        platform=PLATFORM,
        claims=gpu_claims(verification),
        reasons=tuple(reasons),
        warnings=tuple(warnings),
    )
