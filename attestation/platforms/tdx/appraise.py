"""Intel TDX: verify a DCAP quote (v4 or v5), with optional Intel collateral, and appraise it.

The collateral comes from the caller (:mod:`attestation.platforms.tdx.collateral`: a
directory, a bundle's files) or from the verifier's collateral store, which chooses it for the
quote's FMSPC and PCK CA. See :mod:`attestation.platforms.tdx.verify` for every check.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ...collateral import CollateralStore
from ...errors import CollateralError
from ...findings import Appraisal
from ...timeutil import as_utc
from ..base import AppraisalPolicy
from . import NAME
from .abi import parse_quote
from .claims import tdx_claims
from .collateral import pck_ca_kind, tdx_collateral
from .collateral_abi import TdxCollateral
from .validate import validate_tdx
from .verify import pck_chain_of, verify_tdx_quote


def appraise_tdx(
    quote: bytes,
    *,
    collateral: TdxCollateral | None = None,
    policy: AppraisalPolicy,
    at: datetime,
    store: CollateralStore | None = None,
) -> Appraisal:
    """Parse, verify and appraise a TDX quote.

    ``collateral``: Intel collateral given by the caller; ``store``: the verifier's collateral
    store (:class:`attestation.collateral.CollateralStore`), which then supplies the collateral
    for the quote's FMSPC and PCK CA (``collateral`` must be None). Raises
    :class:`~attestation.errors.EvidenceFormatError` (or ``EvidenceTooLargeError``) when the
    bytes are not a quote. Otherwise returns an :class:`Appraisal` listing every failed
    authenticity, collateral and policy check, with the claims either way.
    """
    at = as_utc(at)
    parsed = parse_quote(quote)
    notes: tuple[str, ...] = ()
    if store is not None:
        if collateral is not None:
            raise CollateralError(
                "TDX collateral was given beside a collateral store: the store alone supplies collateral"
            )
        pck, _ = pck_chain_of(parsed)
        if pck is not None and pck.extensions is not None:
            lookup = tdx_collateral(
                store, pck.extensions.fmspc, pck_ca_kind(pck.leaf.issuer), at=at, max_age=policy.max_collateral_age
            )
            collateral = None if lookup.collateral.is_empty else lookup.collateral
            notes = lookup.notes
        else:
            notes = ("the quote carries no usable PCK certificate, so no collateral could be chosen for it",)
    verification = verify_tdx_quote(
        parsed, collateral=collateral, at=at, trusted_simulated_roots=policy.trusted_simulated_roots
    )
    if notes:
        verification = replace(verification, collateral_notes=notes)
    reasons = list(verification.reasons) + validate_tdx(parsed, verification, policy, at=at)
    warnings = tuple(f"collateral: {note}" for note in notes) + verification.warnings
    return Appraisal(NAME, tdx_claims(parsed, verification), tuple(reasons), warnings)


__all__ = ["appraise_tdx"]
