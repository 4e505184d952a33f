"""Intel TDX: verify a DCAP quote (v4 or v5), with optional Intel collateral, and appraise it.

Collateral directory (``attestfl evidence verify --collateral DIR``), every file optional:

=================================  =========================================================
``tcb-info-fmspc-<fmspc>.json``    TDX TCB info v3 for one platform (FMSPC in lowercase or
                                   uppercase hex, 12 digits); several may be present, the one
                                   matching the PCK certificate's FMSPC is used
``tcb-info.json``                  a TCB info without the FMSPC in its name (used likewise)
``tcb-info-issuer-chain.pem``      TCB info signing certificate + Intel SGX Root CA (PEM)
``qe-identity.json``               TD_QE identity v2
``qe-identity-issuer-chain.pem``   QE identity signing certificate + root (PEM)
``pck-platform-crl.der``           PCK Platform CA CRL (DER or PEM)
``pck-processor-crl.der``          PCK Processor CA CRL (DER or PEM)
``pck-crl.der``                    a PCK CRL of either CA (DER or PEM)
``pck-crl-issuer-chain.pem``       the PCK CRL issuer (Platform/Processor CA) + root (PEM)
``root-ca-crl.der``                Intel SGX Root CA CRL (DER or PEM)
=================================  =========================================================

These are the bodies and the ``*-Issuer-Chain`` headers Intel PCS returns for
``/tdx/certification/v4/tcb``, ``/tdx/certification/v4/qe/identity``,
``/sgx/certification/v4/pckcrl`` and the root CA CRL. This module never fetches anything;
the verifier's collateral store (:mod:`attestation.collateral`, ``appraise_tdx(store=...)``)
chooses the collateral for a quote's FMSPC and PCK CA from its cache, and its optional
fetcher asks Intel PCS.
"""
from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .abi.tdx import TdxQuote, parse_quote
from .abi.tdx_collateral import (
    MAX_COLLATERAL_JSON_BYTES,
    TdxCollateral,
    TcbInfoDocument,
    parse_qe_identity,
    parse_tcb_info,
)
from .abi.x509 import MAX_CERT_INPUT_BYTES, Certificate, RevocationList, parse_certificates, parse_crl
from .errors import CertificateFormatError, CollateralFormatError
from .findings import Appraisal
from .policy import Policy
from .timeutil import as_utc
from .validate.tdx import validate_tdx
from .verify.tdx import TdxVerification, verify_tdx_quote

if TYPE_CHECKING:
    from .collateral import CollateralStore

PLATFORM = "tdx"

TCB_INFO_FILE = "tcb-info.json"
TCB_INFO_FMSPC_PATTERN = re.compile(r"tcb-info-fmspc-([0-9a-fA-F]{12})\.json")
TCB_INFO_ISSUER_CHAIN_FILE = "tcb-info-issuer-chain.pem"
QE_IDENTITY_FILE = "qe-identity.json"
QE_IDENTITY_ISSUER_CHAIN_FILE = "qe-identity-issuer-chain.pem"
PCK_CRL_FILES = ("pck-platform-crl.der", "pck-processor-crl.der", "pck-crl.der")
PCK_CRL_ISSUER_CHAIN_FILE = "pck-crl-issuer-chain.pem"
ROOT_CA_CRL_FILE = "root-ca-crl.der"
#: At most this many TCB info files are read from one directory.
MAX_TCB_INFO_FILES = 64
MAX_CRL_BYTES = 4 * MAX_CERT_INPUT_BYTES


def _read_limited(path: Path, limit: int) -> bytes:
    from .files import read_bounded

    return read_bounded(path, limit, "collateral file", CollateralFormatError)


def _limit_for(name: str) -> int:
    if name.endswith(".json"):
        return MAX_COLLATERAL_JSON_BYTES
    if name.endswith(".pem") and "chain" in name:
        return MAX_CERT_INPUT_BYTES
    return MAX_CRL_BYTES


def is_collateral_file_name(name: str) -> bool:
    """True for the file names of a collateral directory (this module's docstring)."""
    known = {QE_IDENTITY_FILE, TCB_INFO_ISSUER_CHAIN_FILE, QE_IDENTITY_ISSUER_CHAIN_FILE, PCK_CRL_ISSUER_CHAIN_FILE, ROOT_CA_CRL_FILE, TCB_INFO_FILE, *PCK_CRL_FILES}
    return name in known or TCB_INFO_FMSPC_PATTERN.fullmatch(name) is not None


def _certificates(where: str, data: bytes) -> tuple[Certificate, ...]:
    try:
        return tuple(parse_certificates(data))
    except CertificateFormatError as exc:
        raise CollateralFormatError(f"{where}: not a certificate chain: {exc}") from exc


def _crl(where: str, data: bytes) -> RevocationList:
    try:
        return parse_crl(data)
    except CertificateFormatError as exc:
        raise CollateralFormatError(f"{where}: not a CRL: {exc}") from exc


def _json(where: str, data: bytes, parse: Any) -> Any:
    try:
        return parse(data)
    except CollateralFormatError as exc:
        raise CollateralFormatError(f"{where}: {exc}") from exc


def load_collateral_dir(path: str | Path) -> TdxCollateral:
    """Load Intel collateral from a directory, by the file names in this module's docstring.

    Raises :class:`CollateralFormatError` for a missing directory, a directory with none
    of the documented files, an oversized or malformed file, or a TCB info whose FMSPC
    differs from its file name.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise CollateralFormatError(f"{directory}: not a directory of collateral files")
    try:
        names = sorted(entry.name for entry in directory.iterdir())
    except OSError as exc:
        raise CollateralFormatError(f"{directory}: cannot list: {exc.strerror or exc}") from exc
    tcb_info_files = [n for n in names if n == TCB_INFO_FILE or TCB_INFO_FMSPC_PATTERN.fullmatch(n)]
    if len(tcb_info_files) > MAX_TCB_INFO_FILES:
        raise CollateralFormatError(f"{directory}: {len(tcb_info_files)} TCB info files, more than {MAX_TCB_INFO_FILES}")
    files = {name: _read_limited(directory / name, _limit_for(name)) for name in names if is_collateral_file_name(name)}
    return collateral_from_files(files, where=str(directory))


def collateral_from_files(files: Mapping[str, bytes], *, where: str = "collateral") -> TdxCollateral:
    """Collateral from file name -> bytes, named as in a collateral directory (e.g. the
    ``collateral`` map of an evidence bundle); names that are not collateral are ignored.
    Raises :class:`CollateralFormatError` as :func:`load_collateral_dir` does."""
    names = sorted(files)
    for name in names:
        if is_collateral_file_name(name) and len(files[name]) > _limit_for(name):
            raise CollateralFormatError(f"{where}/{name}: over the {_limit_for(name)}-byte limit for this collateral file")

    tcb_infos: list[TcbInfoDocument] = []
    tcb_info_files = [n for n in names if n == TCB_INFO_FILE or TCB_INFO_FMSPC_PATTERN.fullmatch(n)]
    if len(tcb_info_files) > MAX_TCB_INFO_FILES:
        raise CollateralFormatError(f"{where}: {len(tcb_info_files)} TCB info files, more than {MAX_TCB_INFO_FILES}")
    for name in tcb_info_files:
        document: TcbInfoDocument = _json(f"{where}/{name}", files[name], parse_tcb_info)
        match = TCB_INFO_FMSPC_PATTERN.fullmatch(name)
        fmspc = document.tcb_info.fmspc
        if match and bytes.fromhex(match.group(1)) != fmspc:
            raise CollateralFormatError(f"{where}/{name}: the TCB info is for FMSPC {fmspc.hex()}, not the one its name says")
        if any(other.tcb_info.fmspc == fmspc for other in tcb_infos):
            raise CollateralFormatError(f"{where}: more than one TCB info for FMSPC {fmspc.hex()}")
        tcb_infos.append(document)

    def optional(name: str, load: Any) -> Any:
        return load(f"{where}/{name}", files[name]) if name in files else None

    qe_identity = optional(QE_IDENTITY_FILE, lambda w, d: _json(w, d, parse_qe_identity))
    pck_crls = tuple(_crl(f"{where}/{name}", files[name]) for name in PCK_CRL_FILES if name in files)
    collateral = TdxCollateral(
        tcb_infos=tuple(tcb_infos),
        tcb_info_issuer_chain=optional(TCB_INFO_ISSUER_CHAIN_FILE, _certificates) or (),
        qe_identity=qe_identity,
        qe_identity_issuer_chain=optional(QE_IDENTITY_ISSUER_CHAIN_FILE, _certificates) or (),
        pck_crls=pck_crls,
        pck_crl_issuer_chain=optional(PCK_CRL_ISSUER_CHAIN_FILE, _certificates) or (),
        root_ca_crl=optional(ROOT_CA_CRL_FILE, _crl),
    )
    if collateral.is_empty and not (collateral.tcb_info_issuer_chain or collateral.qe_identity_issuer_chain or collateral.pck_crl_issuer_chain):
        expected = [TCB_INFO_FILE, "tcb-info-fmspc-<fmspc>.json", QE_IDENTITY_FILE, *PCK_CRL_FILES, ROOT_CA_CRL_FILE]
        raise CollateralFormatError(f"{where}: no collateral files found (expected some of: {', '.join(expected)})")
    return collateral


def tdx_claims(quote: TdxQuote, verification: TdxVerification) -> dict[str, Any]:
    """The claims of a quote: the issue's keys (byte fields as lowercase hex) plus
    ``simulated`` and, when collateral is given, ``tcb_status`` and ``qe_tcb_status``."""
    body = quote.body
    fmspc = verification.fmspc
    claims: dict[str, Any] = {
        "version": quote.version,
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "mr_seam": body.mr_seam.hex(),
        "mr_signer_seam": body.mr_signer_seam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "td_attributes": body.td_attributes.hex(),
        "debug": body.debug,
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
    if verification.collateral_given:
        claims["tcb_status"] = verification.tcb_status
        claims["qe_tcb_status"] = verification.qe_tcb_status
    claims["simulated"] = verification.simulated
    return claims


def appraise_tdx(
    quote: bytes,
    *,
    collateral: TdxCollateral | None = None,
    policy: Policy,
    at: datetime,
    store: "CollateralStore | None" = None,
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
        from .collateral import pck_ca_kind
        from .errors import CollateralError
        from .verify.tdx import pck_chain_of

        if collateral is not None:
            raise CollateralError("TDX collateral was given beside a collateral store: the store alone supplies collateral")
        pck, _ = pck_chain_of(parsed)
        if pck is not None and pck.extensions is not None:
            lookup = store.tdx_collateral(pck.extensions.fmspc, pck_ca_kind(pck.leaf.issuer), at=at, max_age=policy.max_collateral_age)
            collateral = None if lookup.collateral.is_empty else lookup.collateral
            notes = lookup.notes
        else:
            notes = ("the quote carries no usable PCK certificate, so no collateral could be chosen for it",)
    verification = verify_tdx_quote(parsed, collateral=collateral, at=at, trusted_simulated_roots=policy.trusted_simulated_roots)
    if notes:
        verification = replace(verification, collateral_notes=notes)
    reasons = list(verification.reasons) + validate_tdx(parsed, verification, policy, at=at)
    warnings = tuple(f"collateral: {note}" for note in notes) + verification.warnings
    return Appraisal(PLATFORM, tdx_claims(parsed, verification), tuple(reasons), warnings)
