"""One entry point for every kind of evidence: detect the platform from the bytes,
verify it, appraise it against a policy.

Size is checked before anything is parsed; detection looks only at fixed header
fields. Platform modules do the work: :mod:`attestation.snp`, :mod:`attestation.tdx`,
:mod:`attestation.nvidia`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Sequence

from .errors import MAX_EVIDENCE_BYTES, EvidenceFormatError, EvidenceTooLargeError
from .findings import Appraisal, Reason
from .policy import Policy

if TYPE_CHECKING:
    from .collateral import CollateralStore

PLATFORM_CHOICES = ("auto", "sev-snp", "tdx", "nvidia-gpu")


@dataclass(frozen=True)
class EvidenceInputs:
    """Everything a relying party may hold beside the evidence itself."""

    #: Certificates given separately (VCEK/VLEK for SNP, a PEM chain for the GPU), DER or PEM.
    certificates: Sequence[bytes] = ()
    #: Intel collateral for TDX (see :func:`attestation.tdx.load_collateral_dir`).
    tdx_collateral: object | None = None
    #: An AMD CRL (DER or PEM) for SNP.
    snp_crl: bytes | None = None
    #: The nonce the relying party chose (GPU request nonce).
    nonce: bytes | None = None
    extra_warnings: tuple[str, ...] = field(default=())


def detect_platform(data: bytes) -> str:
    """Name the platform of raw evidence from its header fields alone."""
    from .abi.snp import looks_like_snp_report
    from .abi.tdx import looks_like_tdx_quote
    from .abi.spdm import looks_like_gpu_evidence

    if looks_like_tdx_quote(data):
        return "tdx"
    if looks_like_snp_report(data):
        return "sev-snp"
    if looks_like_gpu_evidence(data):
        return "nvidia-gpu"
    raise EvidenceFormatError(
        f"unrecognised evidence ({len(data)} bytes): not an SEV-SNP attestation report "
        "(1184 bytes, version 2, 3 or 5), a TDX DCAP quote (version 4 or 5) or NVIDIA SPDM evidence"
    )


def check_size(data: bytes) -> None:
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceTooLargeError(
            f"evidence is {len(data)} bytes; nothing larger than {MAX_EVIDENCE_BYTES} bytes is accepted"
        )


def _platform_allowed(appraisal: Appraisal, policy: Policy) -> Appraisal:
    if appraisal.platform in policy.platforms:
        return appraisal
    reason = Reason("policy.platforms", f"platform {appraisal.platform} is not among the allowed platforms ({', '.join(sorted(policy.platforms))})")
    return replace(appraisal, reasons=(reason,) + appraisal.reasons)


def appraise_raw(
    data: bytes,
    *,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = EvidenceInputs(),
    platform: str = "auto",
    collateral: "CollateralStore | None" = None,
) -> Appraisal:
    """Verify and appraise one piece of raw evidence (report, quote or GPU evidence).

    ``collateral``: the verifier's collateral store; it then supplies the AMD CRL and the
    Intel collateral (``inputs`` must carry none) and a VCEK the inputs lack."""
    check_size(data)
    if collateral is not None and (inputs.snp_crl is not None or inputs.tdx_collateral is not None):
        from .errors import CollateralError

        raise CollateralError("collateral was given both as inputs (a CRL or TDX collateral) and as a collateral store; give one")
    if platform == "auto":
        platform = detect_platform(data)
    if platform == "sev-snp":
        from .snp import appraise_snp

        result = appraise_snp(data, certificates=tuple(inputs.certificates), crl=inputs.snp_crl, policy=policy, at=at, store=collateral)
    elif platform == "tdx":
        from .tdx import appraise_tdx

        result = appraise_tdx(data, collateral=inputs.tdx_collateral, policy=policy, at=at, store=collateral)
    elif platform == "nvidia-gpu":
        from .nvidia import appraise_gpu

        chain = b"".join(inputs.certificates) if inputs.certificates else None
        result = appraise_gpu(data, certificates=chain, expected_nonce=inputs.nonce, policy=policy, at=at)
    else:
        raise EvidenceFormatError(f"unknown platform {platform!r}; expected one of {', '.join(PLATFORM_CHOICES)}")
    result = _platform_allowed(result, policy)
    if inputs.extra_warnings:
        result = replace(result, warnings=result.warnings + inputs.extra_warnings)
    return result


def appraise_evidence(
    data: bytes,
    *,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = EvidenceInputs(),
    platform: str = "auto",
    collateral: "CollateralStore | None" = None,
) -> Appraisal:
    """Appraise an evidence bundle (recognised by its CBOR self-describe tag; ``inputs.nonce``
    is then the verifier's nonce, see :func:`attestation.bundle.appraise_bundle`) or raw
    evidence (:func:`appraise_raw`); ``collateral`` is the verifier's collateral store."""
    from .abi.bundle import looks_like_bundle

    check_size(data)
    if looks_like_bundle(data):
        from .bundle import appraise_bundle

        return appraise_bundle(data, expected_nonce=inputs.nonce, policy=policy, at=at, inputs=replace(inputs, nonce=None), collateral=collateral)
    return appraise_raw(data, policy=policy, at=at, inputs=inputs, platform=platform, collateral=collateral)
