"""AMD SEV-SNP: verify an attestation report with its VCEK/VLEK chain and appraise it.

The report carries no certificates. The signing certificate comes from ``--cert`` (DER or
PEM; AMD KDS serves VCEKs as DER), from the extended report's certificate table, or from an
evidence bundle; ASK/ASVK and ARK may come along, otherwise the AMD chains shipped in the
package are used. See :mod:`attestation.verify.snp` for every check.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Sequence

from .abi.snp import SnpReport, parse_report
from .abi.x509 import Certificate, parse_certificates, parse_crl
from .errors import CertificateFormatError, EvidenceFormatError
from .findings import Appraisal, Reason
from .policy import Policy
from .timeutil import as_utc
from .validate.snp import validate_snp
from .verify.snp import SnpVerification, verify_snp_report

PLATFORM = "sev-snp"


def snp_claims(report: SnpReport, verification: SnpVerification) -> dict[str, Any]:
    """The claims of a report: the issue's keys (byte fields lowercase hex, TCBs as objects
    decoded with the product line's layout) plus a few more fields and ``simulated``."""
    product = verification.product

    def tcb(name: str) -> dict[str, int] | str:
        if product is None:  # layout unknown: give the raw bytes rather than guess
            return getattr(report, f"{name}_tcb_raw").hex()
        return report.tcb(name, product).components()

    claims: dict[str, Any] = {
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
        "simulated": verification.simulated,
    }
    if verification.product_name is not None:
        claims["product_name"] = verification.product_name
    return claims


def _certificates(blobs: Sequence[bytes]) -> tuple[list[Certificate], list[Reason]]:
    certs: list[Certificate] = []
    reasons: list[Reason] = []
    for index, blob in enumerate(blobs):
        try:
            certs.extend(parse_certificates(blob))
        except CertificateFormatError as exc:
            reasons.append(Reason("snp.cert.format", f"certificate input {index + 1} is not a DER or PEM certificate: {exc}"))
    return certs, reasons


def appraise_snp(
    report: bytes,
    *,
    certificates: Sequence[bytes] = (),
    crl: bytes | None = None,
    policy: Policy,
    at: datetime,
) -> Appraisal:
    """Parse, verify and appraise an SNP attestation report.

    ``certificates`` are DER or PEM blobs: the VCEK or VLEK and, optionally, the ASK/ASVK
    and ARK. Raises :class:`~attestation.errors.EvidenceFormatError` when the report bytes
    do not parse, or :class:`~attestation.errors.CertificateFormatError` for a CRL that
    does not decode; a certificate that does not decode is a failed check. Otherwise
    returns an :class:`Appraisal` listing every failed check, with the claims either way.
    """
    at = as_utc(at)
    parsed = parse_report(report)
    certs, reasons = _certificates(certificates)
    revocation_list = parse_crl(crl) if crl is not None else None
    verification = verify_snp_report(
        parsed, certificates=certs, crl=revocation_list, at=at, trusted_simulated_roots=policy.trusted_simulated_roots
    )
    reasons += list(verification.reasons) + validate_snp(parsed, verification, policy, at=at)
    return Appraisal(PLATFORM, snp_claims(parsed, verification), tuple(reasons), verification.warnings)


__all__ = ["PLATFORM", "EvidenceFormatError", "appraise_snp", "snp_claims"]
