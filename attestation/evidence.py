"""One entry point for every kind of evidence: an evidence bundle (recognised by its CBOR
self-describe tag, :mod:`attestation.bundle`) or raw evidence of a registered platform
(:mod:`attestation.appraise`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from .appraise import appraise_raw, check_size
from .bundle import appraise_bundle
from .bundle_abi import looks_like_bundle
from .collateral import CollateralStore
from .findings import Appraisal
from .platforms.base import NO_INPUTS, EvidenceInputs
from .policy import Policy


def appraise_evidence(
    data: bytes,
    *,
    policy: Policy,
    at: datetime,
    inputs: EvidenceInputs = NO_INPUTS,
    platform: str = "auto",
    collateral: CollateralStore | None = None,
) -> Appraisal:
    """Appraise an evidence bundle (``inputs.nonce`` is then the verifier's nonce, see
    :func:`attestation.bundle.appraise_bundle`) or raw evidence
    (:func:`attestation.appraise.appraise_raw`); ``collateral`` is the verifier's collateral store."""
    check_size(data)
    if looks_like_bundle(data):
        return appraise_bundle(
            data,
            expected_nonce=inputs.nonce,
            policy=policy,
            at=at,
            inputs=replace(inputs, nonce=None),
            collateral=collateral,
        )
    return appraise_raw(data, policy=policy, at=at, inputs=inputs, platform=platform, collateral=collateral)


__all__ = ["appraise_evidence"]
