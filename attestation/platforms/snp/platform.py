"""The SEV-SNP :class:`~attestation.platforms.base.Platform`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ...collateral import MAX_CRL_BYTES, CollateralStore
from ...errors import CollateralFormatError, EvidenceFormatError
from ...files import read_bounded
from ...findings import Appraisal
from ...trust import VendorRoots
from ..base import AppraisalPolicy, EvidenceInputs, MeasurementPin
from . import NAME
from .abi import looks_like_snp_report, parse_report
from .appraise import appraise_snp
from .collateral import CRL_FILE
from .roots import AMD_ROOTS
from .validate import SnpPolicy


def _given_crl(inputs: EvidenceInputs) -> bytes | None:
    """The AMD CRL the caller gave: ``crl``, else ``amd-crl.der`` in the collateral directory,
    else the bundle's (which may carry that file only)."""
    if inputs.crl is not None:
        return inputs.crl
    if inputs.collateral_dir is not None:
        path = inputs.collateral_dir / CRL_FILE
        return read_bounded(path, MAX_CRL_BYTES, "AMD CRL", CollateralFormatError) if path.exists() else None
    unknown = sorted(set(inputs.collateral_files) - {CRL_FILE})
    if unknown:
        raise EvidenceFormatError(
            f"bundle collateral: an SEV-SNP bundle carries only {CRL_FILE}, not {', '.join(unknown)}"
        )
    return inputs.collateral_files.get(CRL_FILE)


@dataclass(frozen=True)
class SnpPlatform:
    name: str = NAME
    description: str = "an SEV-SNP attestation report (1184 bytes, version 2, 3 or 5)"
    roots: VendorRoots = AMD_ROOTS
    binds_report_data: bool = True
    policy_key: str = NAME
    policy_attribute: str | None = "snp"
    policy_section: type[SnpPolicy] = SnpPolicy
    measurement_pin: MeasurementPin | None = MeasurementPin("measurement", f"[{NAME}] measurement")

    def detect(self, data: bytes) -> bool:
        return looks_like_snp_report(data)

    def report_data(self, evidence: bytes) -> bytes:
        return parse_report(evidence).report_data

    def appraise(
        self,
        evidence: bytes,
        *,
        policy: AppraisalPolicy,
        at: datetime,
        inputs: EvidenceInputs,
        collateral: CollateralStore | None,
    ) -> Appraisal:
        crl = None if collateral is not None else _given_crl(inputs)
        return appraise_snp(
            evidence, certificates=tuple(inputs.certificates), crl=crl, policy=policy, at=at, store=collateral
        )


PLATFORM = SnpPlatform()
