"""Appraisal of an evidence bundle: CPU evidence, its binding, optional GPU evidence.

:func:`appraise_bundle` decodes the bundle (:mod:`attestation.bundle_abi`), then

1. verifies and appraises the CPU evidence through :func:`attestation.appraise.appraise_raw`
   under the bundle's platform, exactly as raw evidence, with the certificates the bundle
   carries (plus any the caller gives) and the verifier's collateral store when one is given
   (the bundle's own collateral is then ignored), else the collateral the bundle carries
   (its files, which the platform reads);
2. checks the binding [binding.report_data]: the evidence's report_data (which the platform
   finds in it) is SHA-512 over the label, the bundle's X25519 and Ed25519 keys and the
   bundle's nonce (:mod:`attestation.binding`);
3. checks freshness [binding.nonce]: the bundle's nonce is the one the verifier chose;
4. appraises GPU evidence, when present, through its platform
   (:data:`attestation.bundle_abi.GPU_PLATFORM`) with the request nonce derived from the
   binding, and checks that derivation [binding.gpu_nonce]; a policy with
   ``require_gpu = true`` rejects a bundle without GPU evidence [policy.require_gpu].

Every failed check of every part is listed in one :class:`~attestation.findings.Appraisal`
whose platform is the CPU platform; the GPU's claims are under ``claims["gpu"]`` and the
bundle's under ``claims["bundle"]``.
"""

from __future__ import annotations

import hmac
from dataclasses import replace
from datetime import datetime
from typing import Any

from .appraise import appraise_as, appraise_raw
from .binding import (
    binding_reasons,
    gpu_binding_reasons,
    gpu_nonce_for,
    report_data_for,
)
from .bundle_abi import GPU_PLATFORM, EvidenceBundle, GpuPart, parse_bundle
from .collateral import CollateralStore
from .findings import Appraisal, Reason
from .platforms import registry
from .platforms.base import NO_INPUTS, EvidenceInputs
from .policy import Policy


def evidence_report_data(platform: str, evidence: bytes) -> bytes:
    """The report_data field of raw evidence of ``platform`` (for CPU evidence, 64 bytes)."""
    return registry.get(platform).report_data(evidence)


#: The warning of a bundle appraised with a collateral store while it carried collateral.
IGNORED_COLLATERAL_WARNING = "the bundle's own collateral was ignored; the verifier's was used"


def _cpu_inputs(bundle: EvidenceBundle, inputs: EvidenceInputs, store: CollateralStore | None = None) -> EvidenceInputs:
    """The bundle's certificates after any the caller gives, and its collateral files (the
    caller's own collateral, when given, takes precedence in the platform); with a collateral
    store, the certificates only (the store supplies the collateral)."""
    certificates = tuple(inputs.certificates) + tuple(bundle.certificates)
    files = {} if store is not None else dict(bundle.collateral)
    return replace(inputs, certificates=certificates, collateral_files=files, nonce=None)


def _freshness_reasons(bundle: EvidenceBundle, expected_nonce: bytes | None, warnings: list[str]) -> list[Reason]:
    """The bundle's nonce against the verifier's (a warning when the verifier gave none)."""
    if expected_nonce is None:
        warnings.append("no expected nonce was given: the bundle's freshness was not checked")
        return []
    if hmac.compare_digest(bytes(expected_nonce), bundle.nonce):
        return []
    return [
        Reason(
            "binding.nonce",
            f"the bundle was made for nonce {bundle.nonce.hex()}, not the expected {bytes(expected_nonce).hex()}",
        )
    ]


def _appraise_gpu(
    bundle: EvidenceBundle,
    gpu_evidence: GpuPart,
    policy: Policy,
    at: datetime,
    reasons: list[Reason],
    warnings: list[str],
) -> dict[str, Any]:
    """The GPU evidence a bundle carries: bound to the bundle's keys and nonce, appraised, and
    allowed by the policy; adds to ``reasons`` and ``warnings``, returns the GPU's claims."""
    gpu_platform = registry.get(GPU_PLATFORM)
    bound = report_data_for(bundle.keys, bundle.nonce)
    reasons.extend(gpu_binding_reasons(gpu_platform.report_data(gpu_evidence.evidence), bound))
    gpu_inputs = EvidenceInputs(
        certificates=(gpu_evidence.certificates,) if gpu_evidence.certificates else (), nonce=gpu_nonce_for(bound)
    )
    gpu = appraise_as(gpu_platform, gpu_evidence.evidence, policy=policy, at=at, inputs=gpu_inputs)
    if gpu_platform.name not in policy.platforms:
        reasons.append(
            Reason(
                "policy.platforms",
                f"the bundle carries GPU evidence, but {gpu_platform.name} is not among the allowed platforms",
            )
        )
    reasons.extend(gpu.reasons)
    warnings.extend(f"GPU: {w}" for w in gpu.warnings)
    return dict(gpu.claims)


def appraise_bundle(
    data: bytes | EvidenceBundle,
    *,
    expected_nonce: bytes | None,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = NO_INPUTS,
    collateral: CollateralStore | None = None,
) -> Appraisal:
    """Verify and appraise a bundle (bytes or decoded). ``expected_nonce`` is the nonce the
    verifier chose; ``None`` skips the freshness check and says so in a warning.

    ``collateral``: the verifier's :class:`~attestation.collateral.CollateralStore`. With it,
    the collateral the bundle carries (AMD CRL, TDX collateral) is **ignored** (a warning says
    so when the bundle carried some) and the store's is used: a site cannot strip its CRL or
    bring an old one. The certificates the bundle carries (SEV-SNP: VCEK/VLEK; the TDX PCK
    chain travels in the quote) are still used: their chains are verified to the vendor root.

    Malformed bundles, evidence or collateral raise :class:`~attestation.errors.AttestationError`
    subclasses; everything that parses yields an :class:`Appraisal` with every failed check.
    """
    bundle = data if isinstance(data, EvidenceBundle) else parse_bundle(data)
    cpu = appraise_raw(
        bundle.evidence,
        policy=policy,
        at=at,
        inputs=_cpu_inputs(bundle, inputs, collateral),
        platform=bundle.platform,
        collateral=collateral,
    )
    reasons: list[Reason] = list(cpu.reasons)
    warnings: list[str] = list(cpu.warnings)
    if collateral is not None and bundle.collateral:
        warnings.append(IGNORED_COLLATERAL_WARNING)

    reasons += _freshness_reasons(bundle, expected_nonce, warnings)
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
        claims["gpu"] = _appraise_gpu(bundle, bundle.gpu, policy, at, reasons, warnings)
    elif policy.require_gpu:
        reasons.append(
            Reason(
                "policy.require_gpu",
                "the policy requires GPU evidence bound to the CPU evidence, and the bundle carries none",
            )
        )
    return Appraisal(cpu.platform, claims, tuple(reasons), tuple(warnings))


__all__ = ["IGNORED_COLLATERAL_WARNING", "appraise_bundle", "evidence_report_data"]
