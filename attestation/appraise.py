"""Raw evidence: recognise its platform from the bytes, then verify and appraise it through
that platform (:mod:`attestation.platforms.registry`).

Size is checked before anything is parsed; detection looks only at fixed header fields. The
platforms do the work; this module names none of them. Evidence bundles are appraised by
:mod:`attestation.bundle`, and :func:`attestation.evidence.appraise_evidence` takes either.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from .collateral import CollateralStore
from .errors import MAX_EVIDENCE_BYTES, CollateralError, EvidenceFormatError, EvidenceTooLargeError
from .findings import Appraisal, Reason
from .platforms import registry
from .platforms.base import NEUTRAL_CLAIMS, NO_INPUTS, EvidenceInputs, Platform
from .policy import Policy


def platform_choices() -> tuple[str, ...]:
    """What ``--platform`` accepts: ``auto`` (detect from the bytes) and every registered platform."""
    return ("auto", *registry.names())


def check_size(data: bytes) -> None:
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceTooLargeError(
            f"evidence is {len(data)} bytes; nothing larger than {MAX_EVIDENCE_BYTES} bytes is accepted"
        )


def _platform_allowed(appraisal: Appraisal, policy: Policy) -> Appraisal:
    if appraisal.platform in policy.platforms:
        return appraisal
    reason = Reason(
        "policy.platforms",
        f"platform {appraisal.platform} is not among the allowed platforms ({', '.join(sorted(policy.platforms))})",
    )
    return replace(appraisal, reasons=(reason,) + appraisal.reasons)


def _neutral(appraisal: Appraisal, platform: Platform) -> Appraisal:
    """The appraisal under the platform's registered name, its claims led by every neutral
    claim (None where the platform gave none): the registry's name is the one that counts."""
    claims: dict[str, Any] = {key: appraisal.claims.get(key) for key in NEUTRAL_CLAIMS}
    claims["platform"] = platform.name
    claims.update((key, value) for key, value in appraisal.claims.items() if key not in claims)
    return replace(appraisal, platform=platform.name, claims=claims)


def appraise_as(
    platform: Platform,
    data: bytes,
    *,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = NO_INPUTS,
    collateral: CollateralStore | None = None,
) -> Appraisal:
    """``platform``'s appraisal of ``data``, with the neutral claims in place (no size check,
    no ``platforms`` check: :func:`appraise_raw` does both)."""
    return _neutral(platform.appraise(data, policy=policy, at=at, inputs=inputs, collateral=collateral), platform)


def appraise_raw(
    data: bytes,
    *,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = NO_INPUTS,
    platform: str = "auto",
    collateral: CollateralStore | None = None,
) -> Appraisal:
    """Verify and appraise one piece of raw evidence of a registered platform (``auto``:
    recognised from its header fields).

    ``collateral``: the verifier's collateral store; it then supplies the platform's
    collateral (``inputs`` must carry none)."""
    check_size(data)
    if collateral is not None and inputs.gives_collateral:
        raise CollateralError(
            "collateral was given both as inputs (a CRL or a collateral directory) and as a collateral store; give one"
        )
    if platform == "auto":
        chosen = registry.detect(data)
    else:
        found = registry.find(platform) if isinstance(platform, str) else None
        if found is None:
            raise EvidenceFormatError(f"unknown platform {platform!r}; expected one of {', '.join(platform_choices())}")
        chosen = found
    result = _platform_allowed(
        appraise_as(chosen, data, policy=policy, at=at, inputs=inputs, collateral=collateral), policy
    )
    if inputs.extra_warnings:
        result = replace(result, warnings=result.warnings + inputs.extra_warnings)
    return result


__all__ = ["MAX_EVIDENCE_BYTES", "EvidenceInputs", "appraise_as", "appraise_raw", "check_size", "platform_choices"]
