"""NVIDIA confidential-computing GPU evidence: parse, verify, appraise.

:func:`appraise_gpu` is the entry point. The evidence is the SPDM GET_MEASUREMENTS
request + signed MEASUREMENTS response (binary, or hex text as NVIDIA's tools write it,
see :mod:`attestation.platforms.nvidia.abi`); the certificate chain comes separately (NVML returns
it beside the report), as PEM, leaf first.

Freshness and binding: the request nonce is 32 bytes chosen by the verifier. Passing it
as ``expected_nonce`` makes a replayed report fail ``gpu.nonce``; a caller binding GPU
evidence to a CPU TEE derives that nonce from the same values the CPU report binds and
passes the result here.
"""

from __future__ import annotations

from datetime import datetime

from ...abi.x509 import Certificate, parse_certificates
from ...errors import EvidenceFormatError, PolicyError
from ...findings import Appraisal
from ..base import AppraisalPolicy
from . import NAME
from .abi import parse_gpu_evidence_any
from .claims import gpu_claims
from .validate import GpuFacts, GpuPolicy, validate_gpu, validation_warnings
from .verify import GpuVerification, verify_gpu_evidence


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
    policy: AppraisalPolicy,
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
    section = policy.section(NAME, GpuPolicy)
    reasons = list(verification.reasons) + validate_gpu(facts, section)
    warnings = list(verification.warnings) + validation_warnings(facts, section)
    return Appraisal(
        platform=NAME,
        claims=gpu_claims(verification),
        reasons=tuple(reasons),
        warnings=tuple(warnings),
    )
