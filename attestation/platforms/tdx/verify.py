"""Verification of TDX DCAP quotes and Intel collateral.

What is checked (check ids in brackets; every failure is collected, none stops the rest):

Quote and quoting enclave
  * the attestation key is a valid P-256 point [tdx.quote.attestation_key] and signed the
    header and body (v5: with the body descriptor) with ECDSA P-256/SHA-256 [tdx.quote.signature];
  * the QE report is signed by the PCK leaf key [tdx.qe.report_signature];
  * QE report_data[0:32] = SHA-256(attestation key || QE authentication data) and
    report_data[32:64] is zero [tdx.qe.report_data].

PCK certificate chain (type 5 certification data nested in the type 6 QE report data)
  * it decodes and has the shape leaf -> PCK Platform/Processor CA -> root [tdx.pck.chain];
    a chain without its root is completed with the shipped Intel SGX Root CA;
  * signatures, CA flags and validity windows at the verification time
    [tdx.pck.signature, tdx.pck.ca, tdx.pck.validity];
  * the root is trusted by :func:`attestation.trust.trust_root`: the Intel SGX Root CA
    shipped in the package (exact DER), or a root marked simulated whose SHA-256
    fingerprint the policy lists in ``trusted_simulated_roots`` (with a warning) [tdx.pck.root];
  * the leaf is a PCK certificate with a P-256 key and Intel SGX extensions [tdx.pck.leaf];
  * neither the leaf (PCK CRL) nor the CA (root CA CRL) is revoked [tdx.pck.revoked].

Collateral (each part optional; see :class:`~attestation.platforms.tdx.collateral_abi.TdxCollateral`)
  * TCB info and QE identity: an issuer chain that verifies and ends at the trusted root of
    the PCK chain [tdx.collateral.<part>.chain.*, tdx.collateral.<part>.root], an ECDSA
    P-256 signature by its first certificate over the exact signed bytes
    [tdx.collateral.<part>.signature], issueDate <= time <= nextUpdate
    [tdx.collateral.<part>.validity], signing certificate not revoked by the root CA CRL
    [tdx.collateral.<part>.revoked];
  * the TCB info is the one for the PCK certificate's FMSPC, with the same PCE-ID
    [tdx.collateral.tcb_info.fmspc, tdx.collateral.tcb_info.pce_id];
  * PCK CRL issued by the PCK leaf's issuer [tdx.collateral.pck_crl.issuer], signed by it
    (certificate from the CRL issuer chain, which must verify up to the trusted root) and
    current [tdx.collateral.pck_crl.*]; root CA CRL signed by the root and current
    [tdx.collateral.root_ca_crl.*].

TCB and identity
  * the TDX module: MRSIGNERSEAM and SEAMATTRIBUTES match the TCB info's ``tdxModule``
    (or, when TEE_TCB_SVN[1] > 0, the ``tdxModuleIdentities`` entry ``TDX_<version>``)
    [tdx.tcb.module];
  * the QE report matches the TD_QE identity: MRSIGNER, ISVPRODID, MISCSELECT and
    ATTRIBUTES under their masks [tdx.qe.identity.*]; its TCB status comes from the first
    QE identity level whose ISVSVN <= the QE's ISVSVN ("NotSupported" when none);
  * the platform TCB status by Intel's TDX matching algorithm (Intel QVL ``checkTcbLevel``):
    the first TCB level whose 16 SGX TCB component SVNs and PCESVN are <= the PCK
    certificate's selects the SGX level; the first of those whose 16 TDX TCB components are
    <= the quote's TEE_TCB_SVN (the first two skipped when TEE_TCB_SVN[1] > 0, the TDX
    module version, whose status then comes from the TDX module identity's levels) selects
    the TDX level; no such level gives "NotSupported". The TDX level's status is converged
    with the TDX module's status, TD relaunch advice (TDX 1.5 bodies) and the QE's TCB
    status exactly as Intel's QVL does. Whether a status is acceptable is the policy's
    decision (:mod:`attestation.platforms.tdx.validate`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric import ec

from ...abi.x509 import Certificate, RevocationList, parse_certificates
from ...errors import CertificateFormatError
from ...findings import Reason
from ...timeutil import as_utc
from ...trust import trust_root
from ...verify.chain import (
    ChainLink,
    crl_reasons,
    load_public_key,
    memoised_raw_ecdsa_is_valid,
    raw_ecdsa_is_valid,
    revoked_reasons,
    verify_chain,
)
from .abi import (
    BODY_TYPE_TDX15,
    SgxExtensions,
    TdxQuote,
    pck_sgx_extensions,
)
from .collateral_abi import (
    QeIdentityDocument,
    TcbInfo,
    TcbInfoDocument,
    TcbLevel,
    TdxCollateral,
    TdxModuleIdentity,
)
from .roots import INTEL_ROOTS, intel_sgx_root_ca

UP_TO_DATE = "UpToDate"
SW_HARDENING_NEEDED = "SWHardeningNeeded"
CONFIGURATION_NEEDED = "ConfigurationNeeded"
CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE = "OutOfDate"
OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
TD_RELAUNCH_ADVISED = "TDRelaunchAdvised"
TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED = "TDRelaunchAdvisedConfigurationNeeded"
REVOKED = "Revoked"
#: No TCB level of the TCB info (or QE identity) matches: Intel's "TCB not supported".
NOT_SUPPORTED = "NotSupported"

#: Every platform TCB status this verifier reports.
TCB_STATUSES = (
    UP_TO_DATE,
    SW_HARDENING_NEEDED,
    CONFIGURATION_NEEDED,
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
    OUT_OF_DATE,
    OUT_OF_DATE_CONFIGURATION_NEEDED,
    TD_RELAUNCH_ADVISED,
    TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
    REVOKED,
    NOT_SUPPORTED,
)
#: Every QE TCB status this verifier reports.
QE_TCB_STATUSES = (UP_TO_DATE, OUT_OF_DATE, REVOKED, NOT_SUPPORTED)

_PCK_LEAF_CN_PHRASE = "SGX PCK Certificate"
_CONFIGURATION_STATUSES = frozenset(
    {
        CONFIGURATION_NEEDED,
        OUT_OF_DATE_CONFIGURATION_NEEDED,
        CONFIGURATION_AND_SW_HARDENING_NEEDED,
        TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED,
    }
)


# --- small helpers ----------------------------------------------------------------------


def _svn_list(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def _p256_key_from_raw(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def _raw_p256_signature_is_valid(key: ec.EllipticCurvePublicKey, signature: bytes, signed: bytes) -> bool:
    if not isinstance(key.curve, ec.SECP256R1) or len(signature) != 64:
        return False
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    return raw_ecdsa_is_valid(key, r, s, "sha256", signed)


@lru_cache(maxsize=64)
def _p256_key_of(cert: Certificate) -> ec.EllipticCurvePublicKey | None:
    try:
        key = load_public_key(cert)
    except CertificateFormatError:
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


@lru_cache(maxsize=64)
def _decode_pem_chain(pem: bytes) -> tuple[Certificate, ...]:
    return tuple(parse_certificates(pem))


def _mask(value: bytes, mask: bytes) -> bytes:
    return bytes(a & b for a, b in zip(value, mask, strict=True))


# --- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class PckChain:
    """The PCK certificate chain of a quote: leaf, PCK CA, root, and the leaf's SGX extensions."""

    leaf: Certificate
    intermediate: Certificate
    root: Certificate
    extensions: SgxExtensions | None

    @property
    def links(self) -> list[ChainLink]:
        return [
            ChainLink(self.leaf, "PCK leaf"),
            ChainLink(self.intermediate, "PCK CA"),
            ChainLink(self.root, "root CA"),
        ]


@dataclass(frozen=True)
class TcbEvaluation:
    """The platform TCB status of a quote against one TCB info (Intel's TDX algorithm).

    ``status`` is the converged status (TDX level, TDX module, TD relaunch advice, QE);
    ``detail`` explains it in words (used in policy reasons).
    """

    status: str
    sgx_level: TcbLevel | None
    tdx_level: TcbLevel | None
    tdx_module_status: str | None
    qe_status: str | None
    detail: str

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return self.tdx_level.advisory_ids if self.tdx_level is not None else ()


@dataclass(frozen=True)
class TdxVerification:
    """Everything verification established about one quote (authenticity reasons included)."""

    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...]
    simulated: bool
    pck: PckChain | None
    collateral_given: bool
    tcb_info: TcbInfoDocument | None = None
    qe_identity: QeIdentityDocument | None = None
    tcb: TcbEvaluation | None = None
    qe_tcb_status: str | None = None
    #: Parts of a full collateral set that were not given (for ``require_collateral``).
    missing_collateral: tuple[str, ...] = ()
    #: Why the verifier's collateral store gave no (fresh) part (absent, stale, fetch failed).
    collateral_notes: tuple[str, ...] = ()

    @property
    def fmspc(self) -> bytes | None:
        return None if self.pck is None or self.pck.extensions is None else self.pck.extensions.fmspc

    @property
    def tcb_status(self) -> str | None:
        return None if self.tcb is None else self.tcb.status

    @property
    def collateral_issue_dates(self) -> tuple[tuple[str, datetime], ...]:
        dates = []
        if self.tcb_info is not None:
            dates.append(("TCB info", self.tcb_info.tcb_info.issue_date))
        if self.qe_identity is not None:
            dates.append(("QE identity", self.qe_identity.identity.issue_date))
        return tuple(dates)


# --- quote and QE -----------------------------------------------------------------------


def quote_signature_reasons(quote: TdxQuote) -> list[Reason]:
    """The attestation key signed the header and body [tdx.quote.attestation_key, tdx.quote.signature]."""
    key = _p256_key_from_raw(quote.signature_data.attestation_key)
    if key is None:
        return [
            Reason(
                "tdx.quote.attestation_key",
                "the attestation key is not a valid P-256 public key; the quote signature cannot be checked",
            )
        ]
    if not _raw_p256_signature_is_valid(key, quote.signature_data.signature, quote.signed_bytes()):
        return [
            Reason(
                "tdx.quote.signature",
                "the quote signature (ECDSA P-256/SHA-256 by the attestation key over header and body) is invalid",
            )
        ]
    return []


def qe_report_binding_reasons(quote: TdxQuote) -> list[Reason]:
    """QE report_data = SHA-256(attestation key || QE auth data) || 32 zero bytes [tdx.qe.report_data]."""
    certification = quote.signature_data.qe_certification
    expected = hashlib.sha256(quote.signature_data.attestation_key + certification.qe_auth_data).digest()
    report_data = certification.qe_report.report_data
    reasons = []
    if report_data[:32] != expected:
        reasons.append(
            Reason(
                "tdx.qe.report_data",
                "QE report_data[0:32] is not SHA-256(attestation key || QE authentication data): "
                "the attestation key is not bound to the QE",
            )
        )
    if report_data[32:] != bytes(32):
        reasons.append(Reason("tdx.qe.report_data", "QE report_data[32:64] is not zero"))
    return reasons


def qe_report_signature_reasons(quote: TdxQuote, pck_leaf: Certificate) -> list[Reason]:
    """The PCK leaf key signed the QE report (ECDSA P-256/SHA-256, raw r||s) [tdx.qe.report_signature]."""
    key = _p256_key_of(pck_leaf)
    if key is None:
        return [
            Reason(
                "tdx.qe.report_signature", "the PCK leaf has no P-256 key; the QE report signature cannot be checked"
            )
        ]
    certification = quote.signature_data.qe_certification
    if not _raw_p256_signature_is_valid(key, certification.qe_report_signature, certification.qe_report.to_bytes()):
        return [Reason("tdx.qe.report_signature", "the QE report signature by the PCK leaf key is invalid")]
    return []


# --- PCK chain --------------------------------------------------------------------------


def root_trust(
    root: Certificate, trusted_simulated_roots: frozenset[str], check: str, what: str
) -> tuple[bool, bool, list[Reason], list[str]]:
    """(trusted, simulated, reasons, warnings) by the trust rule of :func:`attestation.trust.trust_root`."""
    trust = trust_root(root, trusted_simulated_roots, vendor=INTEL_ROOTS, what=what)
    reasons = [Reason(check, trust.reason)] if trust.reason is not None else []
    warnings = [trust.warning] if trust.warning is not None else []
    return trust.trusted, trust.simulated, reasons, warnings


def _complete_with_intel_root(certs: list[Certificate]) -> list[Certificate]:
    last = certs[-1]
    root = intel_sgx_root_ca()
    if last.subject_der != last.issuer_der and last.issuer_der == root.subject_der:
        return certs + [root]
    return certs


def pck_chain_of(quote: TdxQuote) -> tuple[PckChain | None, list[Reason]]:
    """Decode the PCK chain the quote carries [tdx.pck.chain, tdx.pck.leaf]."""
    pem = quote.signature_data.qe_certification.pck_chain_pem
    if pem is None:
        cert_type = quote.signature_data.qe_certification.certification_data.cert_type
        return None, [
            Reason(
                "tdx.pck.chain",
                f"the quote carries certification data of type {cert_type}, not a PCK certificate chain (type 5)",
            )
        ]
    try:
        certs = list(_decode_pem_chain(pem.rstrip(b"\x00")))
    except CertificateFormatError as exc:
        return None, [Reason("tdx.pck.chain", f"the PCK certificate chain in the quote is malformed: {exc}")]
    certs = _complete_with_intel_root(certs)
    if len(certs) != 3:
        return None, [
            Reason(
                "tdx.pck.chain",
                f"expected a PCK chain of leaf, PCK CA and root certificates, got {len(certs)} certificates",
            )
        ]
    leaf, intermediate, root = certs
    reasons = []
    if _PCK_LEAF_CN_PHRASE not in leaf.subject:
        reasons.append(Reason("tdx.pck.leaf", f"the leaf certificate {leaf.subject!r} is not an SGX PCK certificate"))
    extensions = None
    try:
        extensions = pck_sgx_extensions(leaf)
    except CertificateFormatError as exc:
        reasons.append(Reason("tdx.pck.leaf", f"the PCK leaf's SGX extensions are unusable: {exc}"))
    if _p256_key_of(leaf) is None:
        reasons.append(Reason("tdx.pck.leaf", "the PCK leaf's public key is not an ECDSA P-256 key"))
    return PckChain(leaf, intermediate, root, extensions), reasons


# --- collateral -------------------------------------------------------------------------


def _issuer_chain_links(chain: Sequence[Certificate], first_role: str) -> list[ChainLink]:
    certs = _complete_with_intel_root(list(chain))
    last = len(certs) - 1
    return [
        ChainLink(cert, first_role if i == 0 else "root CA" if i == last else "intermediate CA")
        for i, cert in enumerate(certs)
    ]


def _issuer_chain_reasons(
    links: list[ChainLink],
    *,
    prefix: str,
    what: str,
    at: datetime,
    trusted_simulated_roots: frozenset[str],
    expected_root: Certificate | None,
) -> list[Reason]:
    reasons = verify_chain(links, at=at, check_prefix=f"{prefix}.chain")
    root = links[-1].cert
    if root.subject_der != root.issuer_der:
        reasons.append(Reason(f"{prefix}.chain", f"the {what} issuer chain does not end at a self-signed root"))
    _trusted, _simulated, root_reasons, _warnings = root_trust(
        root, trusted_simulated_roots, f"{prefix}.root", f"the {what} issuer chain"
    )
    reasons.extend(root_reasons)
    if expected_root is not None and root.der != expected_root.der:
        reasons.append(Reason(f"{prefix}.root", f"the {what} issuer chain ends at a different root than the PCK chain"))
    return reasons


def _signed_document_reasons(
    *,
    prefix: str,
    what: str,
    signed_bytes: bytes,
    signature: bytes,
    issue_date: datetime,
    next_update: datetime,
    issuer_chain: Sequence[Certificate],
    at: datetime,
    trusted_simulated_roots: frozenset[str],
    expected_root: Certificate | None,
    root_crl: RevocationList | None,
) -> list[Reason]:
    reasons: list[Reason] = []
    if not issuer_chain:
        reasons.append(
            Reason(f"{prefix}.chain", f"no issuer chain was given for the {what}; its signature cannot be checked")
        )
    else:
        links = _issuer_chain_links(issuer_chain, f"{what} signing")
        reasons.extend(
            _issuer_chain_reasons(
                links,
                prefix=prefix,
                what=what,
                at=at,
                trusted_simulated_roots=trusted_simulated_roots,
                expected_root=expected_root,
            )
        )
        key = _p256_key_of(links[0].cert)
        if key is None or not memoised_raw_ecdsa_is_valid(links[0].cert, signature, "sha256", signed_bytes):
            reasons.append(
                Reason(
                    f"{prefix}.signature",
                    f"the {what} signature over its exact signed bytes is invalid (signer {links[0].cert.subject!r})",
                )
            )
        if root_crl is not None:
            reasons.extend(revoked_reasons(root_crl, links[:-1], f"{prefix}.revoked"))
    if at < issue_date:
        reasons.append(
            Reason(
                f"{prefix}.validity",
                f"the {what} is not valid before its issueDate {issue_date.isoformat()} "
                f"(verification time {at.isoformat()})",
            )
        )
    elif at > next_update:
        reasons.append(
            Reason(
                f"{prefix}.validity",
                f"the {what} expired at its nextUpdate {next_update.isoformat()} (verification time {at.isoformat()})",
            )
        )
    return reasons


def _pck_crl_reasons(
    collateral: TdxCollateral,
    pck: PckChain | None,
    *,
    at: datetime,
    trusted_simulated_roots: frozenset[str],
) -> list[Reason]:
    prefix = "tdx.collateral.pck_crl"
    if pck is None:
        crls = list(collateral.pck_crls)
    else:
        crls = [crl for crl in collateral.pck_crls if crl.issuer_der == pck.leaf.issuer_der]
        if not crls:
            issuers = ", ".join(repr(crl.issuer) for crl in collateral.pck_crls)
            return [
                Reason(
                    f"{prefix}.issuer",
                    f"no PCK CRL was issued by the PCK leaf's issuer {pck.leaf.issuer!r} (given: {issuers})",
                )
            ]
    reasons: list[Reason] = []
    for crl in crls:
        issuer_index = next(
            (i for i, c in enumerate(collateral.pck_crl_issuer_chain) if c.subject_der == crl.issuer_der), None
        )
        if issuer_index is None:
            reasons.append(
                Reason(
                    f"{prefix}.chain", f"the PCK CRL issuer chain has no certificate for the CRL issuer {crl.issuer!r}"
                )
            )
            continue
        links = _issuer_chain_links(collateral.pck_crl_issuer_chain[issuer_index:], "PCK CRL issuer")
        reasons.extend(
            _issuer_chain_reasons(
                links,
                prefix=prefix,
                what="PCK CRL",
                at=at,
                trusted_simulated_roots=trusted_simulated_roots,
                expected_root=None if pck is None else pck.root,
            )
        )
        reasons.extend(crl_reasons(crl, links[0].cert, at=at, check_prefix=prefix, name="the PCK CRL"))
        if collateral.root_ca_crl is not None:
            reasons.extend(revoked_reasons(collateral.root_ca_crl, links[:-1], f"{prefix}.revoked"))
        if pck is not None:
            reasons.extend(revoked_reasons(crl, [ChainLink(pck.leaf, "PCK leaf")], "tdx.pck.revoked"))
    return reasons


# --- TCB status -------------------------------------------------------------------------


def _module_identity(identities: tuple[TdxModuleIdentity, ...] | None, version: int) -> TdxModuleIdentity | None:
    wanted = f"TDX_{version:02X}"
    for identity in identities or ():
        if identity.id.upper() == wanted:
            return identity
    return None


def _tdx_module_status(tcb_info: TcbInfo, tee_tcb_svn: bytes) -> tuple[str | None, str]:
    """Status of the TDX module from ``tdxModuleIdentities`` (None: no identity for its version)."""
    version, isvsvn = tee_tcb_svn[1], tee_tcb_svn[0]
    if version == 0:
        return UP_TO_DATE, "TDX module version 0: status from the TCB level"
    identity = _module_identity(tcb_info.tdx_module_identities, version)
    if identity is None:
        return None, f"the TCB info has no TDX module identity TDX_{version:02X}"
    for level in identity.tcb_levels:
        if isvsvn >= level.isvsvn:
            return (
                level.tcb_status,
                f"TDX module {identity.id} ISVSVN {isvsvn} matches level ISVSVN {level.isvsvn} ({level.tcb_status})",
            )
    return NOT_SUPPORTED, f"TDX module {identity.id} ISVSVN {isvsvn} is below every level of its identity"


def tdx_module_reasons(tcb_info: TcbInfo, quote: TdxQuote) -> list[Reason]:
    """MRSIGNERSEAM and SEAMATTRIBUTES against the TCB info's TDX module [tdx.tcb.module]."""
    body = quote.body
    version = body.tee_tcb_svn[1]
    mrsigner, attributes, mask = (
        tcb_info.tdx_module.mrsigner,
        tcb_info.tdx_module.attributes,
        tcb_info.tdx_module.attributes_mask,
    )
    source = "tdxModule"
    if version > 0:
        identity = _module_identity(tcb_info.tdx_module_identities, version)
        if identity is None:
            return [
                Reason(
                    "tdx.tcb.module",
                    f"the TDX module has version {version}, "
                    f"but the TCB info has no TDX module identity TDX_{version:02X}",
                )
            ]
        mrsigner, attributes, mask, source = (
            identity.mrsigner,
            identity.attributes,
            identity.attributes_mask,
            f"TDX module identity {identity.id}",
        )
    reasons = []
    if body.mr_signer_seam != mrsigner:
        reasons.append(
            Reason(
                "tdx.tcb.module",
                f"MRSIGNERSEAM {body.mr_signer_seam.hex()} differs from the {source} MRSIGNER {mrsigner.hex()}",
            )
        )
    if _mask(body.seam_attributes, mask) != attributes:
        reasons.append(
            Reason(
                "tdx.tcb.module",
                f"SEAMATTRIBUTES {body.seam_attributes.hex()} do not match the {source} attributes {attributes.hex()} "
                f"under mask {mask.hex()}",
            )
        )
    return reasons


def _at_least(have: Sequence[int], need: Sequence[int], start: int = 0) -> bool:
    return all(have[i] >= need[i] for i in range(start, len(need)))


def _converge_with_module(level_status: str, module_status: str) -> str:
    if module_status == OUT_OF_DATE:
        if level_status in (UP_TO_DATE, SW_HARDENING_NEEDED):
            return OUT_OF_DATE
        if level_status in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return OUT_OF_DATE_CONFIGURATION_NEEDED
    if module_status == REVOKED:
        return REVOKED
    return level_status


def _converge_with_qe(level_status: str, qe_status: str) -> str:
    if qe_status == OUT_OF_DATE:
        if level_status in (UP_TO_DATE, SW_HARDENING_NEEDED):
            return OUT_OF_DATE
        if level_status in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return OUT_OF_DATE_CONFIGURATION_NEEDED
    if qe_status == REVOKED:
        return REVOKED
    if qe_status == NOT_SUPPORTED:
        return NOT_SUPPORTED
    return level_status


def _relaunch_status(
    tee_tcb_svn2: bytes, tcb_info: TcbInfo, sgx_status: str, tdx_status: str, module_status: str, qe_status: str | None
) -> str:
    """Intel's TD relaunch advice for TDX 1.5 bodies (the TD could be relaunched on a newer module)."""
    if qe_status in (OUT_OF_DATE, REVOKED, NOT_SUPPORTED):
        return tdx_status
    if sgx_status not in (UP_TO_DATE, SW_HARDENING_NEEDED, CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
        return tdx_status
    if tdx_status not in (OUT_OF_DATE, OUT_OF_DATE_CONFIGURATION_NEEDED) or module_status != OUT_OF_DATE:
        return tdx_status
    latest = tcb_info.tcb_levels[0]
    if tee_tcb_svn2[1] == 0:
        module_ok = tee_tcb_svn2[0] >= latest.tdx_svns[0]
    else:
        identity = _module_identity(tcb_info.tdx_module_identities, tee_tcb_svn2[1])
        if identity is None or not identity.tcb_levels:
            return NOT_SUPPORTED
        module_ok = tee_tcb_svn2[0] >= identity.tcb_levels[0].isvsvn
    if module_ok and tee_tcb_svn2[2] >= latest.tdx_svns[2]:
        if sgx_status in _CONFIGURATION_STATUSES or tdx_status in _CONFIGURATION_STATUSES:
            return TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
        return TD_RELAUNCH_ADVISED
    return tdx_status


def evaluate_tcb(tcb_info: TcbInfo, extensions: SgxExtensions, quote: TdxQuote, qe_status: str | None) -> TcbEvaluation:
    """The platform TCB status by Intel's TDX matching algorithm (see the module docstring)."""
    pck_svns = extensions.tcb.sgx_tcb_components
    pce_svn = extensions.tcb.pce_svn
    tee_tcb_svn = quote.body.tee_tcb_svn
    skip = 2 if tee_tcb_svn[1] > 0 else 0
    platform = f"PCK SGX TCB components {_svn_list(pck_svns)}, PCESVN {pce_svn}; TEE TCB SVN {_svn_list(tee_tcb_svn)}"
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None
    for level in tcb_info.tcb_levels:
        if _at_least(pck_svns, level.sgx_svns) and pce_svn >= level.pce_svn:
            if sgx_level is None:
                sgx_level = level
            if _at_least(tee_tcb_svn, level.tdx_svns, skip):
                tdx_level = level
                break
    fmspc = tcb_info.fmspc.hex()
    if sgx_level is None:
        detail = (
            f"TCB not supported: no TCB level of the TCB info for FMSPC {fmspc} "
            f"matches the platform's SGX TCB ({platform})"
        )
        return TcbEvaluation(NOT_SUPPORTED, None, None, None, qe_status, detail)
    if tdx_level is None:
        detail = (
            f"TCB not supported: no TCB level of the TCB info for FMSPC {fmspc} "
            f"matches the platform's TDX TCB ({platform})"
        )
        return TcbEvaluation(NOT_SUPPORTED, sgx_level, None, None, qe_status, detail)
    module_status, module_detail = _tdx_module_status(tcb_info, tee_tcb_svn)
    if module_status is None or module_status == NOT_SUPPORTED:
        detail = f"TCB not supported: {module_detail} ({platform})"
        return TcbEvaluation(NOT_SUPPORTED, sgx_level, tdx_level, module_status, qe_status, detail)
    status = _converge_with_module(tdx_level.tcb_status, module_status)
    if status != REVOKED and quote.body_type == BODY_TYPE_TDX15 and quote.body.tee_tcb_svn2 is not None:
        status = _relaunch_status(
            quote.body.tee_tcb_svn2, tcb_info, sgx_level.tcb_status, status, module_status, qe_status
        )
    if qe_status is not None:
        status = _converge_with_qe(status, qe_status)
    detail = (
        f"TCB level of {tdx_level.tcb_date.date().isoformat()} ({tdx_level.tcb_status}) matches ({platform}); "
        f"{module_detail}" + (f"; QE TCB {qe_status}" if qe_status is not None else "")
    )
    if tdx_level.advisory_ids:
        detail += f"; advisories {', '.join(tdx_level.advisory_ids)}"
    return TcbEvaluation(status, sgx_level, tdx_level, module_status, qe_status, detail)


def qe_identity_reasons(document: QeIdentityDocument, quote: TdxQuote) -> list[Reason]:
    """The QE report against the TD_QE identity [tdx.qe.identity.*]."""
    identity = document.identity
    report = quote.qe_report
    reasons = []
    if report.mr_signer != identity.mrsigner:
        reasons.append(
            Reason(
                "tdx.qe.identity.mrsigner",
                f"QE MRSIGNER {report.mr_signer.hex()} differs from the TD_QE identity's {identity.mrsigner.hex()}",
            )
        )
    if report.isv_prod_id != identity.isvprodid:
        reasons.append(
            Reason(
                "tdx.qe.identity.isvprodid",
                f"QE ISVPRODID {report.isv_prod_id} differs from the TD_QE identity's {identity.isvprodid}",
            )
        )
    if _mask(report.misc_select, identity.miscselect_mask) != identity.miscselect:
        reasons.append(
            Reason(
                "tdx.qe.identity.miscselect",
                f"QE MISCSELECT {report.misc_select.hex()} under mask {identity.miscselect_mask.hex()} differs from "
                f"{identity.miscselect.hex()}",
            )
        )
    if _mask(report.attributes, identity.attributes_mask) != identity.attributes:
        reasons.append(
            Reason(
                "tdx.qe.identity.attributes",
                f"QE ATTRIBUTES {report.attributes.hex()} under mask {identity.attributes_mask.hex()} differ from "
                f"{identity.attributes.hex()}",
            )
        )
    return reasons


def qe_tcb_status(document: QeIdentityDocument, isv_svn: int) -> str:
    """The status of the first QE identity level whose ISVSVN <= the QE's ("NotSupported" when none)."""
    for level in document.identity.tcb_levels:
        if level.isvsvn <= isv_svn:
            return level.tcb_status
    return NOT_SUPPORTED


# --- everything -------------------------------------------------------------------------


@dataclass(frozen=True)
class _PckFindings:
    """What the PCK chain step established."""

    pck: PckChain | None
    trusted_root: Certificate | None
    simulated: bool
    reasons: tuple[Reason, ...]
    warnings: tuple[str, ...]


def _verify_pck(quote: TdxQuote, at: datetime, trusted_simulated_roots: frozenset[str]) -> _PckFindings:
    """The PCK chain the quote carries, the QE report's signature by its leaf, and its root
    by the trust rule [tdx.pck.*, tdx.qe.report_signature]."""
    pck, pck_reasons = pck_chain_of(quote)
    if pck is None:
        missing = Reason(
            "tdx.qe.report_signature", "the QE report signature cannot be checked without a PCK certificate"
        )
        return _PckFindings(None, None, False, (missing, *pck_reasons), ())
    reasons = qe_report_signature_reasons(quote, pck.leaf) + verify_chain(pck.links, at=at, check_prefix="tdx.pck")
    trusted, simulated, root_reasons, root_warnings = root_trust(
        pck.root, trusted_simulated_roots, "tdx.pck.root", "the PCK certificate chain"
    )
    reasons += root_reasons + pck_reasons
    return _PckFindings(pck, pck.root if trusted else None, simulated, tuple(reasons), tuple(root_warnings))


@dataclass(frozen=True)
class _CollateralCheck:
    """What every collateral step shares: the time, the policy's simulated roots, the PCK
    chain's root (every issuer chain must end there) and the root CA CRL."""

    at: datetime
    trusted_simulated_roots: frozenset[str]
    expected_root: Certificate | None
    root_crl: RevocationList | None

    def document_reasons(
        self,
        *,
        prefix: str,
        what: str,
        signed_bytes: bytes,
        signature: bytes,
        issue_date: datetime,
        next_update: datetime,
        issuer_chain: Sequence[Certificate],
    ) -> list[Reason]:
        return _signed_document_reasons(
            prefix=prefix,
            what=what,
            signed_bytes=signed_bytes,
            signature=signature,
            issue_date=issue_date,
            next_update=next_update,
            issuer_chain=issuer_chain,
            at=self.at,
            trusted_simulated_roots=self.trusted_simulated_roots,
            expected_root=self.expected_root,
            root_crl=self.root_crl,
        )


def _root_ca_crl_reasons(check: _CollateralCheck, findings: _PckFindings) -> list[Reason]:
    """The root CA CRL: signed by the (trusted) root; it revokes PCK CAs and signing certificates."""
    if check.root_crl is None:
        return []
    signer = findings.trusted_root if findings.trusted_root is not None else intel_sgx_root_ca()
    reasons = crl_reasons(
        check.root_crl, signer, at=check.at, check_prefix="tdx.collateral.root_ca_crl", name="the root CA CRL"
    )
    if findings.pck is not None:
        reasons += revoked_reasons(check.root_crl, [ChainLink(findings.pck.intermediate, "PCK CA")], "tdx.pck.revoked")
    return reasons


def _qe_identity_reasons(
    check: _CollateralCheck, collateral: TdxCollateral, quote: TdxQuote
) -> tuple[list[Reason], str | None]:
    """The QE identity: its signature and validity, the QE report against it, and the QE's TCB status."""
    document = collateral.qe_identity
    if document is None:
        return [], None
    identity = document.identity
    reasons = check.document_reasons(
        prefix="tdx.collateral.qe_identity",
        what="QE identity",
        signed_bytes=document.signed_bytes,
        signature=document.signature,
        issue_date=identity.issue_date,
        next_update=identity.next_update,
        issuer_chain=collateral.qe_identity_issuer_chain,
    )
    reasons += qe_identity_reasons(document, quote)
    return reasons, qe_tcb_status(document, quote.qe_report.isv_svn)


def _tcb_info_for(
    collateral: TdxCollateral, extensions: SgxExtensions | None
) -> tuple[TcbInfoDocument | None, list[Reason]]:
    """The TCB info selected by the PCK certificate's FMSPC [tdx.collateral.tcb_info.fmspc]."""
    if not collateral.tcb_infos:
        return None, []
    if extensions is None:
        return None, [
            Reason(
                "tdx.collateral.tcb_info.fmspc",
                "the platform's FMSPC is unknown (no usable PCK certificate); no TCB info can be selected",
            )
        ]
    document = collateral.tcb_info_for(extensions.fmspc)
    if document is None:
        given = ", ".join(d.tcb_info.fmspc.hex() for d in collateral.tcb_infos)
        return None, [
            Reason(
                "tdx.collateral.tcb_info.fmspc",
                f"no TCB info for the PCK certificate's FMSPC {extensions.fmspc.hex()} (given: {given})",
            )
        ]
    return document, []


def _tcb_reasons(
    check: _CollateralCheck,
    collateral: TdxCollateral,
    document: TcbInfoDocument,
    extensions: SgxExtensions,
    quote: TdxQuote,
    qe_status: str | None,
) -> tuple[list[Reason], TcbEvaluation]:
    """The TCB info's signature and validity, its PCE-ID, the TDX module, and the platform's TCB status."""
    info = document.tcb_info
    reasons = check.document_reasons(
        prefix="tdx.collateral.tcb_info",
        what="TCB info",
        signed_bytes=document.signed_bytes,
        signature=document.signature,
        issue_date=info.issue_date,
        next_update=info.next_update,
        issuer_chain=collateral.tcb_info_issuer_chain,
    )
    if info.pce_id != extensions.pce_id:
        reasons.append(
            Reason(
                "tdx.collateral.tcb_info.pce_id",
                f"the TCB info's PCE-ID {info.pce_id.hex()} differs from the PCK certificate's "
                f"{extensions.pce_id.hex()}",
            )
        )
    reasons += tdx_module_reasons(info, quote)
    return reasons, evaluate_tcb(info, extensions, quote, qe_status)


#: The parts of a full collateral set, as ``missing_collateral`` names them.
COLLATERAL_PARTS = ("TCB info", "QE identity", "PCK CRL", "root CA CRL")


def verify_tdx_quote(
    quote: TdxQuote,
    *,
    collateral: TdxCollateral | None,
    at: datetime,
    trusted_simulated_roots: frozenset[str] = frozenset(),
) -> TdxVerification:
    """Run every authenticity, chain and collateral check on a parsed quote."""
    at = as_utc(at)
    warnings: list[str] = []
    if quote.trailing:
        warnings.append(
            f"the quote has {len(quote.trailing)} bytes after its signature data; "
            "no signature covers them and they were ignored"
        )

    # Quote and quoting enclave; PCK chain.
    reasons = quote_signature_reasons(quote) + qe_report_binding_reasons(quote)
    found = _verify_pck(quote, at, trusted_simulated_roots)
    reasons += found.reasons
    warnings += found.warnings
    pck = found.pck
    if collateral is None:
        return TdxVerification(
            tuple(reasons), tuple(warnings), found.simulated, pck, False, missing_collateral=COLLATERAL_PARTS
        )

    check = _CollateralCheck(at, trusted_simulated_roots, pck.root if pck is not None else None, collateral.root_ca_crl)
    # Root CA CRL and PCK CRL.
    reasons += _root_ca_crl_reasons(check, found)
    if collateral.pck_crls:
        reasons += _pck_crl_reasons(collateral, pck, at=at, trusted_simulated_roots=trusted_simulated_roots)
    # QE identity.
    qe_reasons, qe_status = _qe_identity_reasons(check, collateral, quote)
    reasons += qe_reasons
    # TCB info, selected by the PCK certificate's FMSPC.
    extensions = pck.extensions if pck is not None else None
    tcb_document, selection_reasons = _tcb_info_for(collateral, extensions)
    reasons += selection_reasons
    evaluation: TcbEvaluation | None = None
    if tcb_document is not None and extensions is not None:
        tcb_reasons, evaluation = _tcb_reasons(check, collateral, tcb_document, extensions, quote, qe_status)
        reasons += tcb_reasons

    given = {
        "TCB info": bool(collateral.tcb_infos),
        "QE identity": collateral.qe_identity is not None,
        "PCK CRL": bool(collateral.pck_crls),
        "root CA CRL": collateral.root_ca_crl is not None,
    }
    return TdxVerification(
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        simulated=found.simulated,
        pck=pck,
        collateral_given=True,
        tcb_info=tcb_document,
        qe_identity=collateral.qe_identity,
        tcb=evaluation,
        qe_tcb_status=qe_status,
        missing_collateral=tuple(
            part for part in ("root CA CRL", "PCK CRL", "QE identity", "TCB info") if not given[part]
        ),
    )
