"""The NVIDIA GPU :class:`~attestation.platforms.base.Platform`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ...collateral import CollateralStore
from ...findings import Appraisal
from ...trust import VendorRoots
from ..base import AppraisalPolicy, EvidenceInputs, MeasurementPin
from . import NAME
from .abi import looks_like_gpu_evidence, parse_gpu_evidence_any
from .appraise import appraise_gpu
from .roots import NVIDIA_ROOTS
from .validate import GpuPolicy


@dataclass(frozen=True)
class GpuPlatform:
    name: str = NAME
    description: str = "NVIDIA SPDM evidence"
    roots: VendorRoots = NVIDIA_ROOTS
    binds_report_data: bool = False
    policy_key: str = NAME
    policy_attribute: str | None = "gpu"
    policy_section: type[GpuPolicy] = GpuPolicy
    measurement_pin: MeasurementPin | None = None

    def detect(self, data: bytes) -> bool:
        return looks_like_gpu_evidence(data)

    def report_data(self, evidence: bytes) -> bytes:
        """The SPDM request nonce: what binds GPU evidence to the verifier (and, in a bundle,
        to the CPU evidence, see :func:`attestation.binding.gpu_nonce_for`)."""
        return parse_gpu_evidence_any(evidence).nonce

    def appraise(
        self,
        evidence: bytes,
        *,
        policy: AppraisalPolicy,
        at: datetime,
        inputs: EvidenceInputs,
        collateral: CollateralStore | None,
    ) -> Appraisal:
        chain = b"".join(inputs.certificates) if inputs.certificates else None
        return appraise_gpu(evidence, certificates=chain, expected_nonce=inputs.nonce, policy=policy, at=at)


PLATFORM = GpuPlatform()
