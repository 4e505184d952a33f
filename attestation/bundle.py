"""Appraisal of an evidence bundle: CPU evidence, its binding, optional GPU evidence.

:func:`appraise_bundle` decodes the bundle (:mod:`attestation.abi.bundle`), then

1. verifies and appraises the CPU evidence through :func:`attestation.appraise.appraise_raw`,
   exactly as raw evidence, with the certificates the bundle carries (plus any the caller
   gives) and the verifier's collateral store when one is given (the bundle's own collateral
   is then ignored), else the collateral the bundle carries;
2. checks the binding [binding.report_data]: the evidence's report_data is SHA-512 over
   the label, the bundle's X25519 and Ed25519 keys and the bundle's nonce
   (:mod:`attestation.binding`);
3. checks freshness [binding.nonce]: the bundle's nonce is the one the verifier chose;
4. appraises GPU evidence, when present, through :func:`attestation.nvidia.appraise_gpu`
   with the request nonce derived from the binding, and checks that derivation
   [binding.gpu_nonce]; a policy with ``require_gpu = true`` rejects a bundle without GPU
   evidence [policy.require_gpu].

Every failed check of every part is listed in one :class:`~attestation.findings.Appraisal`
whose platform is the CPU platform; the GPU's claims are under ``claims["gpu"]`` and the
bundle's under ``claims["bundle"]``.
"""
from __future__ import annotations

import hmac
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .abi.bundle import EvidenceBundle, parse_bundle
from .abi.spdm import parse_gpu_evidence_any
from .appraise import EvidenceInputs, appraise_raw
from .binding import binding_reasons, gpu_binding_reasons, gpu_nonce_for, report_data_for
from .errors import EvidenceFormatError
from .findings import Appraisal, Reason
from .policy import Policy

if TYPE_CHECKING:
    from .collateral import CollateralStore


def evidence_report_data(platform: str, evidence: bytes) -> bytes:
    """The 64-byte report_data field of raw CPU evidence (SNP report or TDX quote)."""
    if platform == "tdx":
        from .abi.tdx import parse_quote

        return parse_quote(evidence).body.report_data
    if platform == "sev-snp":
        from .abi.snp import parse_report

        return parse_report(evidence).report_data
    raise EvidenceFormatError(f"no report_data for platform {platform!r}")


#: The AMD CRL in the collateral map of an SEV-SNP bundle.
SNP_CRL_FILE = "amd-crl.der"


#: The warning of a bundle appraised with a collateral store while it carried collateral.
IGNORED_COLLATERAL_WARNING = "the bundle's own collateral was ignored; the verifier's was used"


def _cpu_inputs(bundle: EvidenceBundle, inputs: EvidenceInputs, store: "CollateralStore | None" = None) -> EvidenceInputs:
    """The bundle's certificates and collateral, after any the caller gives; with a
    collateral store, the certificates only (the store supplies the collateral)."""
    certificates = tuple(inputs.certificates) + tuple(bundle.certificates)
    if store is not None:
        return replace(inputs, certificates=certificates, nonce=None)
    collateral = inputs.tdx_collateral
    if collateral is None and bundle.platform == "tdx" and bundle.collateral:
        from .tdx import collateral_from_files, is_collateral_file_name

        unknown = sorted(name for name in bundle.collateral if not is_collateral_file_name(name))
        if unknown:
            raise EvidenceFormatError(f"bundle collateral: {', '.join(unknown)} is not a TDX collateral file name (see attestation.tdx)")
        collateral = collateral_from_files(bundle.collateral, where="bundle collateral")
    crl = inputs.snp_crl
    if crl is None and bundle.platform == "sev-snp":
        unknown = sorted(set(bundle.collateral) - {SNP_CRL_FILE})
        if unknown:
            raise EvidenceFormatError(f"bundle collateral: an SEV-SNP bundle carries only {SNP_CRL_FILE}, not {', '.join(unknown)}")
        crl = bundle.collateral.get(SNP_CRL_FILE)
    return replace(inputs, certificates=certificates, tdx_collateral=collateral, snp_crl=crl, nonce=None)


def appraise_bundle(
    data: bytes | EvidenceBundle,
    *,
    expected_nonce: bytes | None,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = EvidenceInputs(),
    collateral: "CollateralStore | None" = None,
) -> Appraisal:
    """Verify and appraise a bundle (bytes or decoded). ``expected_nonce`` is the nonce the
    verifier chose; ``None`` skips the freshness check and says so in a warning.

    ``collateral``: the verifier's :class:`~attestation.collateral.CollateralStore`. With it,
    the collateral the bundle carries (AMD CRL, TDX collateral) is **ignored** (a warning says
    so when the bundle carried some) and the store's is used: a site cannot strip its CRL or
    bring an old one. The certificates the bundle carries (VCEK/VLEK; the PCK chain travels in
    the quote) are still used: their chains are verified to the vendor root.

    Malformed bundles, evidence or collateral raise :class:`~attestation.errors.AttestationError`
    subclasses; everything that parses yields an :class:`Appraisal` with every failed check.
    """
    bundle = data if isinstance(data, EvidenceBundle) else parse_bundle(data)
    cpu = appraise_raw(bundle.evidence, policy=policy, at=at, inputs=_cpu_inputs(bundle, inputs, collateral), platform=bundle.platform,
                       collateral=collateral)
    reasons: list[Reason] = list(cpu.reasons)
    warnings: list[str] = list(cpu.warnings)
    if collateral is not None and bundle.collateral:
        warnings.append(IGNORED_COLLATERAL_WARNING)

    if expected_nonce is None:
        warnings.append("no expected nonce was given: the bundle's freshness was not checked")
    elif not hmac.compare_digest(bytes(expected_nonce), bundle.nonce):
        reasons.append(Reason("binding.nonce", f"the bundle was made for nonce {bundle.nonce.hex()}, not the expected {bytes(expected_nonce).hex()}"))

    report_data = evidence_report_data(bundle.platform, bundle.evidence)
    reasons.extend(binding_reasons(report_data, bundle.keys, bundle.nonce))

    claims: dict[str, Any] = dict(cpu.claims)
    claims["bundle"] = {
        "version": bundle.version,
        "nonce": bundle.nonce.hex(),
        "x25519": bundle.keys.x25519.hex(),
        "ed25519": bundle.keys.ed25519.hex(),
        "created": bundle.created.isoformat(),
        "gpu": bundle.gpu is not None,
    }
    if bundle.gpu is not None:
        from .nvidia import appraise_gpu

        gpu_nonce = gpu_nonce_for(report_data_for(bundle.keys, bundle.nonce))
        gpu_evidence = parse_gpu_evidence_any(bundle.gpu.evidence)
        reasons.extend(gpu_binding_reasons(gpu_evidence.nonce, report_data_for(bundle.keys, bundle.nonce)))
        gpu = appraise_gpu(bundle.gpu.evidence, certificates=bundle.gpu.certificates or None, expected_nonce=gpu_nonce, policy=policy, at=at)
        if "nvidia-gpu" not in policy.platforms:
            reasons.append(Reason("policy.platforms", "the bundle carries GPU evidence, but nvidia-gpu is not among the allowed platforms"))
        reasons.extend(gpu.reasons)
        warnings.extend(f"GPU: {w}" for w in gpu.warnings)
        claims["gpu"] = gpu.claims
    elif policy.require_gpu:
        reasons.append(Reason("policy.require_gpu", "the policy requires GPU evidence bound to the CPU evidence, and the bundle carries none"))
    return Appraisal(cpu.platform, claims, tuple(reasons), tuple(warnings))
