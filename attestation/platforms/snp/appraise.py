"""AMD SEV-SNP: verify an attestation report with its VCEK/VLEK chain and appraise it.

The report carries no certificates. The signing certificate comes from ``--cert`` (DER or
PEM; AMD KDS serves VCEKs as DER), from the extended report's certificate table, or from an
evidence bundle; ASK/ASVK and ARK may come along, otherwise the AMD chains shipped in the
package are used. See :mod:`attestation.platforms.snp.verify` for every check.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from ...abi.x509 import Certificate, parse_certificates, parse_crl
from ...collateral import CollateralStore, Lookup
from ...errors import CertificateFormatError, CollateralError
from ...findings import Appraisal, Reason
from ...timeutil import as_utc
from ..base import AppraisalPolicy
from . import NAME
from .abi import SnpReport, parse_report
from .claims import snp_claims
from .collateral import KDS_PRODUCTS, amd_crl, amd_vcek
from .validate import validate_snp
from .verify import verify_snp_report


def _certificates(blobs: Sequence[bytes]) -> tuple[list[Certificate], list[Reason]]:
    certs: list[Certificate] = []
    reasons: list[Reason] = []
    for index, blob in enumerate(blobs):
        try:
            certs.extend(parse_certificates(blob))
        except CertificateFormatError as exc:
            reasons.append(
                Reason("snp.cert.format", f"certificate input {index + 1} is not a DER or PEM certificate: {exc}")
            )
    return certs, reasons


def _store_vcek(parsed: SnpReport, store: CollateralStore, at: datetime) -> tuple[list[Certificate], list[str]]:
    """The VCEK for the report's chip and REPORTED_TCB from the verifier's store (cache or KDS)."""
    if parsed.signing_key != "vcek":
        return [], []
    if parsed.mask_chip_key:
        return [], ["the report masks its CHIP_ID, so no VCEK can be looked up for it"]
    product = parsed.product_from_cpuid
    notes: list[str] = []
    for candidate in [product] if product else list(KDS_PRODUCTS):
        tcb = parsed.tcb("reported", candidate).components()
        lookup = amd_vcek(store, candidate, parsed.chip_id, parsed.reported_tcb_raw, tcb, at=at)
        if lookup.value is not None:
            return [lookup.value], []
        notes.extend(lookup.notes)
    return [], notes


def appraise_snp(
    report: bytes,
    *,
    certificates: Sequence[bytes] = (),
    crl: bytes | None = None,
    policy: AppraisalPolicy,
    at: datetime,
    store: CollateralStore | None = None,
) -> Appraisal:
    """Parse, verify and appraise an SNP attestation report.

    ``certificates`` are DER or PEM blobs: the VCEK or VLEK and, optionally, the ASK/ASVK
    and ARK. ``crl``: an AMD CRL. ``store``: the verifier's collateral store
    (:class:`attestation.collateral.CollateralStore`); with it, the AMD CRL for the chain's
    product line comes from the store (``crl`` must then be None), and a VCEK not given is
    looked up there. Raises :class:`~attestation.errors.EvidenceFormatError` when the report
    bytes do not parse, or :class:`~attestation.errors.CertificateFormatError` for a CRL that
    does not decode; a certificate that does not decode is a failed check. Otherwise returns
    an :class:`Appraisal` listing every failed check, with the claims either way.
    """
    at = as_utc(at)
    if store is not None and crl is not None:
        raise CollateralError("an AMD CRL was given beside a collateral store: the store alone supplies collateral")
    parsed = parse_report(report)
    certs, reasons = _certificates(certificates)
    warnings: list[str] = []
    if store is not None and not any(not c.is_ca for c in certs):
        found, notes = _store_vcek(parsed, store, at)
        certs.extend(found)
        warnings.extend(f"collateral: {note}" for note in notes)
    revocation_list = parse_crl(crl) if crl is not None else None
    crl_source = None
    if store is not None:

        def crl_source(product: str, signing_key: str) -> Lookup:
            return amd_crl(store, product, signing_key, at=at, max_age=policy.max_collateral_age)

    verification = verify_snp_report(
        parsed,
        certificates=certs,
        crl=revocation_list,
        at=at,
        trusted_simulated_roots=policy.trusted_simulated_roots,
        crl_source=crl_source,
    )
    reasons += list(verification.reasons) + validate_snp(parsed, verification, policy, at=at)
    return Appraisal(NAME, snp_claims(parsed, verification), tuple(reasons), tuple(warnings) + verification.warnings)


__all__ = ["appraise_snp"]
