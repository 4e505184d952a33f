"""The TDX :class:`~attestation.platforms.base.Platform`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ...collateral import CollateralStore
from ...errors import EvidenceFormatError
from ...findings import Appraisal
from ...trust import VendorRoots
from ..base import AppraisalPolicy, EvidenceInputs, MeasurementPin
from . import NAME
from .abi import looks_like_tdx_quote, parse_quote
from .appraise import appraise_tdx
from .collateral import (
    collateral_from_files,
    is_collateral_file_name,
    load_collateral_dir,
)
from .collateral_abi import TdxCollateral
from .roots import INTEL_ROOTS
from .validate import TdxPolicy


def _given_collateral(inputs: EvidenceInputs) -> TdxCollateral | None:
    """The Intel collateral the caller gave: its collateral directory, else the bundle's files
    (every one of which must be a collateral file name)."""
    if inputs.collateral_dir is not None:
        return load_collateral_dir(inputs.collateral_dir)
    if not inputs.collateral_files:
        return None
    unknown = sorted(name for name in inputs.collateral_files if not is_collateral_file_name(name))
    if unknown:
        raise EvidenceFormatError(
            f"bundle collateral: {', '.join(unknown)} is not a TDX collateral file name "
            "(see attestation.platforms.tdx.collateral)"
        )
    return collateral_from_files(inputs.collateral_files, where="bundle collateral")


@dataclass(frozen=True)
class TdxPlatform:
    name: str = NAME
    description: str = "a TDX DCAP quote (version 4 or 5)"
    roots: VendorRoots = INTEL_ROOTS
    binds_report_data: bool = True
    policy_key: str = NAME
    policy_attribute: str | None = "tdx"
    policy_section: type[TdxPolicy] = TdxPolicy
    measurement_pin: MeasurementPin | None = MeasurementPin("mr_td", f"[{NAME}] mr_td")

    def detect(self, data: bytes) -> bool:
        return looks_like_tdx_quote(data)

    def report_data(self, evidence: bytes) -> bytes:
        return parse_quote(evidence).body.report_data

    def appraise(
        self,
        evidence: bytes,
        *,
        policy: AppraisalPolicy,
        at: datetime,
        inputs: EvidenceInputs,
        collateral: CollateralStore | None,
    ) -> Appraisal:
        given = None if collateral is not None else _given_collateral(inputs)
        return appraise_tdx(evidence, collateral=given, policy=policy, at=at, store=collateral)


PLATFORM = TdxPlatform()
