"""The claims of a TDX appraisal."""

from __future__ import annotations

from typing import Any

from ..base import neutral_claims
from . import NAME
from .abi import TdxQuote
from .verify import TdxVerification

#: What a TDX quote is signed with, as the neutral ``signing_key`` claim names it: the
#: quoting enclave's attestation key, certified through the PCK certificate.
SIGNING_KEY = "pck"


def tdx_claims(quote: TdxQuote, verification: TdxVerification) -> dict[str, Any]:
    """The claims of a quote: the neutral claims (:data:`~attestation.platforms.base.NEUTRAL_CLAIMS`;
    ``measurement`` is MRTD, ``tcb_status`` Intel's platform TCB status when collateral was
    given), then the quote's fields (byte fields as lowercase hex) and, when collateral is
    given, ``qe_tcb_status``."""
    body = quote.body
    fmspc = verification.fmspc
    claims = neutral_claims(
        NAME,
        measurement=body.mr_td,
        debug=body.debug,
        simulated=verification.simulated,
        tcb_status=verification.tcb_status if verification.collateral_given else None,
        signing_key=SIGNING_KEY,
    )
    claims.update(
        {
            "version": quote.version,
            "tee_tcb_svn": body.tee_tcb_svn.hex(),
            "mr_seam": body.mr_seam.hex(),
            "mr_signer_seam": body.mr_signer_seam.hex(),
            "seam_attributes": body.seam_attributes.hex(),
            "td_attributes": body.td_attributes.hex(),
            "xfam": body.xfam.hex(),
            "mr_td": body.mr_td.hex(),
            "mr_config_id": body.mr_config_id.hex(),
            "mr_owner": body.mr_owner.hex(),
            "mr_owner_config": body.mr_owner_config.hex(),
            "rtmr0": body.rtmr0.hex(),
            "rtmr1": body.rtmr1.hex(),
            "rtmr2": body.rtmr2.hex(),
            "rtmr3": body.rtmr3.hex(),
            "report_data": body.report_data.hex(),
            "fmspc": None if fmspc is None else fmspc.hex(),
        }
    )
    if verification.collateral_given:
        claims["qe_tcb_status"] = verification.qe_tcb_status
    return claims
