"""Verification of AMD SEV-SNP attestation reports: signature, certificate chain, VCEK/VLEK
extensions, CRL.

What is checked (check ids in brackets; every failure is collected, none stops the rest):

Report
  * SIGNATURE_ALGO is 1, ECDSA P-384/SHA-384 [snp.report.signature_algo];
  * SIGNING_KEY names the VCEK or the VLEK (not "none" or reserved) [snp.report.signing_key];
  * the signature (R, S little-endian at 0x2A0) verifies with the signing certificate's
    P-384 key over bytes 0x000..0x29F [snp.report.signature];
  * for reports of version 3+, the product line named by CPUID_FAM_ID/CPUID_MOD_ID is the
    product line of the certificate chain [snp.report.product].

Signing certificate (VCEK or VLEK, given with ``--cert`` or carried by a bundle)
  * present, and of the kind the report names (CN ``SEV-VCEK`` / ``SEV-VLEK``)
    [snp.cert.missing, snp.cert.kind];
  * its AMD extensions: bootloader/TEE/SNP/microcode SPLs (and FMC on Turin) equal the
    report's REPORTED_TCB [snp.cert.tcb]; the hwID equals the report's CHIP_ID unless the
    report masks the chip ID (MASK_CHIP_KEY) [snp.cert.hwid]; the product name agrees with
    the chain's product line [snp.cert.product].

Chain: VCEK -> ASK -> ARK, or VLEK -> ASVK -> ARK (RSA-PSS/SHA-384)
  * the intermediate and root come from the given certificates when given, otherwise from
    the AMD chains shipped in the package, picked by the signing certificate's issuer
    [snp.chain.issuer]; the intermediate is an ASK for a VCEK and an ASVK for a VLEK
    [snp.chain.kind];
  * signatures, CA flags and validity windows at the verification time
    [snp.chain.signature, snp.chain.ca, snp.chain.validity];
  * the root is trusted by :func:`attestation.trust.trust_root`: an AMD ARK shipped in the
    package (exact DER), or a root marked simulated whose SHA-256 fingerprint the policy
    lists (with a warning) [snp.chain.root];
  * an AMD CRL (given, or chosen by product line from the verifier's collateral store) is
    signed by that ARK and current, and revokes neither the intermediate nor the signing
    certificate (an indirect CRL may name the ASK/ASVK as an entry's issuer)
    [snp.crl.signature, snp.crl.validity, snp.crl.revoked].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ...abi.x509 import Certificate, RevocationList, decode_der_integer
from ...errors import CertificateFormatError
from ...findings import Reason
from ...trust import trust_root
from ...verify.chain import (
    ChainLink,
    crl_reasons,
    load_public_key,
    raw_ecdsa_is_valid,
    revoked_reasons,
    verify_chain,
)
from .abi import PRODUCTS, SIGNATURE_ALGO_ECDSA_P384_SHA384, SnpReport
from .roots import AMD_ROOTS, amd_root_chains

AMD_OID = "1.3.6.1.4.1.3704.1"
OID_PRODUCT_NAME = f"{AMD_OID}.2"
OID_HWID = f"{AMD_OID}.4"
#: VCEK/VLEK extension OIDs of each TCB component's SPL.
TCB_COMPONENT_OIDS = {
    "bootloader": f"{AMD_OID}.3.1",
    "tee": f"{AMD_OID}.3.2",
    "snp": f"{AMD_OID}.3.3",
    "microcode": f"{AMD_OID}.3.8",
    "fmc": f"{AMD_OID}.3.9",
}

_INTERMEDIATE_ROLE = {"vcek": "ASK", "vlek": "ASVK"}


@dataclass(frozen=True)
class SnpVerification:
    """The authenticity part of an SNP appraisal."""

    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...]
    #: Product line ("milan", "genoa", "turin") of the chain, else of the report's CPUID.
    product: str | None
    #: The signing certificate's product name extension, e.g. "Milan-B0".
    product_name: str | None
    #: True when the chain ends at a simulated root (trusted or not).
    simulated: bool
    #: The AMD CRL's thisUpdate, when a CRL was given.
    crl_issued: datetime | None
    #: Why the verifier's collateral store gave no AMD CRL (absent, stale, fetch failed).
    collateral_notes: tuple[str, ...] = ()


def _common_name(cert: Certificate) -> str:
    for part in cert.subject.split(","):
        key, _, value = part.strip().partition(":")
        if key.strip().lower() == "common name":
            return value.strip()
    return cert.subject


def product_of_name(name: str) -> str | None:
    """The product line named in an AMD certificate name or product string ("SEV-Milan", "Genoa-B1")."""
    lowered = name.lower()
    found = [p for p in PRODUCTS if p in lowered]
    return found[0] if len(found) == 1 else None


def _signing_certificate(
    certificates: Sequence[Certificate], signing_key: str, reasons: list[Reason]
) -> Certificate | None:
    leaves = [c for c in certificates if not c.is_ca]
    if not leaves:
        reasons.append(
            Reason(
                "snp.cert.missing",
                f"no {signing_key.upper()} certificate was given; "
                "pass it with --cert (DER or PEM) or use an evidence bundle",
            )
        )
        return None
    wanted = f"SEV-{signing_key.upper()}"
    matching = [c for c in leaves if _common_name(c).upper().startswith(wanted)]
    if matching:
        return matching[0]
    leaf = leaves[0]
    reasons.append(
        Reason(
            "snp.cert.kind",
            f"the report is signed by a {signing_key.upper()}, but the certificate given is {_common_name(leaf)!r}",
        )
    )
    return leaf


def _find_chain(
    leaf: Certificate, certificates: Sequence[Certificate], signing_key: str, reasons: list[Reason]
) -> tuple[Certificate, Certificate, str | None] | None:
    """(intermediate, root, product of the shipped chain or None) for ``leaf``."""
    given_cas = [c for c in certificates if c.is_ca]
    shipped = amd_root_chains()
    if given_cas:
        intermediates = [c for c in given_cas if c.subject_der == leaf.issuer_der and c.issuer_der != c.subject_der]
        if not intermediates:
            names = ", ".join(repr(_common_name(c)) for c in given_cas)
            reasons.append(
                Reason(
                    "snp.chain.issuer",
                    f"the {signing_key.upper()} was issued by {leaf.issuer!r}, "
                    f"but the given chain ({names}) does not contain that issuer",
                )
            )
            return None
        intermediate = intermediates[0]
        roots = [c for c in given_cas if c.subject_der == intermediate.issuer_der and c.issuer_der == c.subject_der]
        if not roots:
            roots = [chain.root for chain in shipped if chain.root.subject_der == intermediate.issuer_der]
        if not roots:
            reasons.append(
                Reason("snp.chain.issuer", f"no root certificate named {intermediate.issuer!r} was given or is shipped")
            )
            return None
        root = roots[0]
    else:
        candidates = [chain for chain in shipped if chain.intermediate.subject_der == leaf.issuer_der]
        if not candidates:
            reasons.append(
                Reason(
                    "snp.chain.issuer",
                    f"the {signing_key.upper()} was issued by {leaf.issuer!r}, "
                    "which is no AMD ASK or ASVK shipped in the package; give the chain with --cert",
                )
            )
            return None
        intermediate, root = candidates[0].intermediate, candidates[0].root
    product = next((chain.product for chain in shipped if chain.root.der == root.der), None)
    return intermediate, root, product


def _extension_reasons(leaf: Certificate, report: SnpReport, product: str | None, signing_key: str) -> list[Reason]:
    reasons: list[Reason] = []
    label = signing_key.upper()
    if product is None:
        reasons.append(
            Reason(
                "snp.cert.tcb",
                f"the product line is unknown, so the {label}'s TCB cannot be compared with the report's",
            )
        )
        return reasons
    reported = report.tcb("reported", product).components()
    for component, value in reported.items():
        raw = leaf.extension_value(TCB_COMPONENT_OIDS[component])
        if raw is None:
            reasons.append(
                Reason(
                    "snp.cert.tcb", f"the {label} lacks the {component} SPL extension ({TCB_COMPONENT_OIDS[component]})"
                )
            )
            continue
        try:
            certified = decode_der_integer(raw)
        except CertificateFormatError:
            reasons.append(Reason("snp.cert.tcb", f"the {label}'s {component} SPL extension is not a DER INTEGER"))
            continue
        if certified != value:
            reasons.append(
                Reason("snp.cert.tcb", f"REPORTED_TCB {component} SPL {value} differs from the {label}'s {certified}")
            )
    if signing_key == "vcek" and not report.mask_chip_key:
        # AMD puts the 64 hwID bytes directly in the extension value (no inner OCTET STRING).
        hwid = leaf.extension_value(OID_HWID)
        if hwid is None or len(hwid) != 64:
            reasons.append(Reason("snp.cert.hwid", "the VCEK has no 64-byte hwID extension"))
        elif hwid != report.chip_id:
            reasons.append(
                Reason("snp.cert.hwid", f"CHIP_ID {report.chip_id.hex()} differs from the VCEK's hwID {hwid.hex()}")
            )
    return reasons


def _product_name(leaf: Certificate) -> str | None:
    raw = leaf.extension_value(OID_PRODUCT_NAME)
    if raw is None:
        return None
    # An IA5String; decode leniently (printable ASCII) since it is informational.
    text = raw[2:] if len(raw) >= 2 and raw[0] == 0x16 else raw
    return text.decode("ascii", "replace")


@dataclass(frozen=True)
class _ChainFindings:
    """What the chain step established: the product line, whether the root is simulated, the
    CRL used (given or from the store), and why the store gave none."""

    product: str | None
    simulated: bool
    crl: RevocationList | None
    notes: tuple[str, ...]


def _verify_chain(
    leaf: Certificate,
    found: tuple[Certificate, Certificate, str | None],
    signing_key: str,
    *,
    crl: RevocationList | None,
    at: datetime,
    trusted_simulated_roots: frozenset[str],
    crl_source: Callable[[str, str], Any] | None,
    reasons: list[Reason],
    warnings: list[str],
) -> _ChainFindings:
    """VCEK -> ASK -> ARK (or VLEK -> ASVK -> ARK): kind, signatures, trust, CRL
    [snp.chain.*, snp.crl.*]."""
    intermediate, root, product = found
    role = _INTERMEDIATE_ROLE[signing_key]
    is_asvk = _common_name(intermediate).upper().startswith("SEV-VLEK")
    if is_asvk != (signing_key == "vlek"):
        reasons.append(
            Reason(
                "snp.chain.kind",
                f"a {signing_key.upper()} must be issued by an {role}, not by {_common_name(intermediate)!r}",
            )
        )
    links = [ChainLink(leaf, signing_key.upper()), ChainLink(intermediate, role), ChainLink(root, "ARK")]
    reasons.extend(verify_chain(links, at=at, check_prefix="snp.chain"))
    trust = trust_root(
        root, trusted_simulated_roots, vendor=AMD_ROOTS, what=f"the {signing_key.upper()} certificate chain"
    )
    if trust.reason is not None:
        reasons.append(Reason("snp.chain.root", trust.reason))
    if trust.warning is not None:
        warnings.append(trust.warning)
    if product is None:  # a simulated or unknown root: the product line is in the names
        product = product_of_name(_common_name(intermediate))
    notes: list[str] = []
    if crl is None and crl_source is not None:
        if product is None:
            notes.append("the chain's product line is unknown, so no AMD CRL could be chosen")
        else:
            lookup = crl_source(product, signing_key)
            crl = lookup.value
            notes.extend(lookup.notes)
    if crl is not None:
        reasons.extend(crl_reasons(crl, root, at=at, check_prefix="snp.crl", name="the AMD CRL"))
        reasons.extend(revoked_reasons(crl, links[:2], "snp.crl.revoked"))
    else:
        why = f" ({'; '.join(notes)})" if notes else ""
        warnings.append(
            f"no AMD CRL was given: revocation of the {role} and the {signing_key.upper()} was not checked{why}"
        )
    return _ChainFindings(product, trust.simulated, crl, tuple(notes))


def _signature_reasons(leaf: Certificate, report: SnpReport, signing_key: str) -> list[Reason]:
    """The report's signature by the signing certificate's P-384 key [snp.report.signature]."""
    try:
        key = load_public_key(leaf)
    except CertificateFormatError as exc:
        return [Reason("snp.report.signature", f"the {signing_key.upper()} key is unusable: {exc}")]
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        return [Reason("snp.report.signature", f"the {signing_key.upper()} key is not an ECDSA P-384 key")]
    if not raw_ecdsa_is_valid(key, report.signature_r, report.signature_s, "sha384", report.signed_bytes):
        return [
            Reason("snp.report.signature", f"the report signature does not verify with the {signing_key.upper()} key")
        ]
    return []


def _product_reasons(
    report: SnpReport, product: str | None, product_name: str | None, signing_key: str
) -> tuple[str | None, list[Reason]]:
    """The product line of the chain, the report's CPUID and the certificate agree
    [snp.report.product, snp.cert.product]; returns the product line (the CPUID's when the
    chain names none)."""
    reasons = []
    cpuid_product = report.product_from_cpuid
    if product is not None and cpuid_product is not None and cpuid_product != product:
        reasons.append(
            Reason(
                "snp.report.product",
                f"the report's CPUID names a {cpuid_product.title()} processor, "
                f"but the certificate chain is {product.title()}'s",
            )
        )
    if product is None:
        product = cpuid_product
    if product_name is not None and product is not None and product_of_name(product_name) not in (None, product):
        reasons.append(
            Reason(
                "snp.cert.product",
                f"the {signing_key.upper()} is for {product_name!r}, but the chain is {product.title()}'s",
            )
        )
    return product, reasons


def verify_snp_report(
    report: SnpReport,
    *,
    certificates: Sequence[Certificate],
    crl: RevocationList | None,
    at: datetime,
    trusted_simulated_roots: frozenset[str] = frozenset(),
    crl_source: Callable[[str, str], Any] | None = None,
) -> SnpVerification:
    """Every authenticity check of the module docstring; never raises on a bad report or chain.

    ``crl_source(product, signing_key)`` (the verifier's collateral store, see
    :func:`attestation.platforms.snp.collateral.amd_crl`) gives the AMD CRL for the chain's
    product line when ``crl`` is None; it returns a lookup with ``value`` and ``notes``."""
    reasons: list[Reason] = []
    warnings: list[str] = []
    # Report.
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        reasons.append(
            Reason(
                "snp.report.signature_algo", f"SIGNATURE_ALGO {report.signature_algo} is not 1 (ECDSA P-384/SHA-384)"
            )
        )
    signing_key = report.signing_key
    if signing_key not in ("vcek", "vlek"):
        reasons.append(
            Reason(
                "snp.report.signing_key", f"SIGNING_KEY is {signing_key}: the report is not signed by a VCEK or VLEK"
            )
        )
        return SnpVerification(tuple(reasons), (), report.product_from_cpuid, None, False, None)

    # Signing certificate and chain.
    chain = _ChainFindings(None, False, crl, ())
    leaf = _signing_certificate(certificates, signing_key, reasons)
    found = _find_chain(leaf, certificates, signing_key, reasons) if leaf is not None else None
    product_name = _product_name(leaf) if leaf is not None else None
    if found is not None and leaf is not None:
        chain = _verify_chain(
            leaf,
            found,
            signing_key,
            crl=crl,
            at=at,
            trusted_simulated_roots=trusted_simulated_roots,
            crl_source=crl_source,
            reasons=reasons,
            warnings=warnings,
        )

    # Product line, signature, certificate extensions.
    product, product_reasons = _product_reasons(report, chain.product, product_name, signing_key)
    reasons.extend(product_reasons)
    if leaf is not None:
        reasons.extend(_signature_reasons(leaf, report, signing_key))
        reasons.extend(_extension_reasons(leaf, report, product, signing_key))
    crl_issued = None if chain.crl is None else chain.crl.this_update
    return SnpVerification(
        tuple(reasons), tuple(warnings), product, product_name, chain.simulated, crl_issued, chain.notes
    )
