"""The claims of an SEV-SNP appraisal."""

from __future__ import annotations

from typing import Any

from ..base import neutral_claims
from . import NAME
from .abi import SnpReport
from .verify import SnpVerification


def snp_claims(report: SnpReport, verification: SnpVerification) -> dict[str, Any]:
    """The claims of a report: the neutral claims (:data:`~attestation.platforms.base.NEUTRAL_CLAIMS`;
    ``measurement`` is MEASUREMENT, ``tcb_status`` None: AMD gives no TCB verdict, the policy's
    minimum TCB decides), then the report's fields (byte fields lowercase hex, TCBs as objects
    decoded with the product line's layout)."""
    product = verification.product

    def tcb(name: str) -> dict[str, int] | str:
        if product is None:  # layout unknown: give the raw bytes rather than guess
            raw: bytes = getattr(report, f"{name}_tcb_raw")
            return raw.hex()
        return report.tcb(name, product).components()

    claims = neutral_claims(
        NAME,
        measurement=report.measurement,
        debug=report.debug,
        simulated=verification.simulated,
        tcb_status=None,
        signing_key=report.signing_key,
    )
    claims.update(
        {
            "version": report.version,
            "guest_svn": report.guest_svn,
            "policy": f"{report.policy:#x}",
            "debug": report.debug,
            "vmpl": report.vmpl,
            "measurement": report.measurement.hex(),
            "report_data": report.report_data.hex(),
            "host_data": report.host_data.hex(),
            "id_key_digest": report.id_key_digest.hex(),
            "author_key_digest": report.author_key_digest.hex(),
            "chip_id": report.chip_id.hex(),
            "reported_tcb": tcb("reported"),
            "current_tcb": tcb("current"),
            "committed_tcb": tcb("committed"),
            "launch_tcb": tcb("launch"),
            "signing_key": report.signing_key,
            "product": product,
            "family_id": report.family_id.hex(),
            "image_id": report.image_id.hex(),
            "platform_info": f"{report.platform_info:#x}",
            "current_firmware": report.current_version,
            "committed_firmware": report.committed_version,
            "report_id": report.report_id.hex(),
        }
    )
    if verification.product_name is not None:
        claims["product_name"] = verification.product_name
    return claims
