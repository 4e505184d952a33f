"""Intel TDX collateral: given by the caller (a directory, an evidence bundle's files) or chosen
by the verifier's collateral store for a quote's FMSPC and PCK CA (fetched from Intel PCS).

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
``/sgx/certification/v4/pckcrl`` and the root CA CRL. An evidence bundle carries the same
names in its collateral map.

The verifier's collateral store (:mod:`attestation.collateral`, :func:`tdx_collateral`)
chooses the collateral for a quote's FMSPC and PCK CA from its cache directory, laid out as
(names lowercase)::

    intel/tcb-info-fmspc-<fmspc>.json             TDX TCB info (PCS /tdx/certification/v4/tcb?fmspc=)
    intel/tcb-info-issuer-chain.pem               its TCB-Info-Issuer-Chain header
    intel/qe-identity.json                        TD_QE identity (PCS /tdx/certification/v4/qe/identity)
    intel/qe-identity-issuer-chain.pem            its SGX-Enclave-Identity-Issuer-Chain header
    intel/pck-<ca>-crl.der                        PCK CRL, <ca> platform or processor
                                                  (PCS /sgx/certification/v4/pckcrl?ca=<ca>&encoding=der)
    intel/pck-<ca>-crl-issuer-chain.pem           its SGX-PCK-CRL-Issuer-Chain header
    intel/root-ca-crl.der                         Intel SGX Root CA CRL

and, with a fetcher, asks Intel PCS for what is missing or stale.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from ...abi.x509 import (
    MAX_CERT_INPUT_BYTES,
    Certificate,
    RevocationList,
    parse_certificates,
    parse_crl,
)
from ...collateral import (
    MAX_CRL_BYTES,
    CollateralError,
    CollateralFetcher,
    CollateralItem,
    CollateralStore,
    FetchConfig,
    crl_fresh,
    document_fresh,
    parse_crl_file,
)
from ...errors import CertificateFormatError, CollateralFormatError
from ...timeutil import as_utc
from .collateral_abi import (
    MAX_COLLATERAL_JSON_BYTES,
    TcbInfoDocument,
    TdxCollateral,
    parse_qe_identity,
    parse_tcb_info,
)

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


def _read_limited(path: Path, limit: int) -> bytes:
    from ...files import read_bounded

    return read_bounded(path, limit, "collateral file", CollateralFormatError)


def _limit_for(name: str) -> int:
    if name.endswith(".json"):
        return MAX_COLLATERAL_JSON_BYTES
    if name.endswith(".pem") and "chain" in name:
        return MAX_CERT_INPUT_BYTES
    return MAX_CRL_BYTES


def is_collateral_file_name(name: str) -> bool:
    """True for the file names of a collateral directory (this module's docstring)."""
    known = {
        QE_IDENTITY_FILE,
        TCB_INFO_ISSUER_CHAIN_FILE,
        QE_IDENTITY_ISSUER_CHAIN_FILE,
        PCK_CRL_ISSUER_CHAIN_FILE,
        ROOT_CA_CRL_FILE,
        TCB_INFO_FILE,
        *PCK_CRL_FILES,
    }
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
        raise CollateralFormatError(
            f"{directory}: {len(tcb_info_files)} TCB info files, more than {MAX_TCB_INFO_FILES}"
        )
    files = {name: _read_limited(directory / name, _limit_for(name)) for name in names if is_collateral_file_name(name)}
    return collateral_from_files(files, where=str(directory))


def collateral_from_files(files: Mapping[str, bytes], *, where: str = "collateral") -> TdxCollateral:
    """Collateral from file name -> bytes, named as in a collateral directory (e.g. the
    ``collateral`` map of an evidence bundle); names that are not collateral are ignored.
    Raises :class:`CollateralFormatError` as :func:`load_collateral_dir` does."""
    names = sorted(files)
    for name in names:
        if is_collateral_file_name(name) and len(files[name]) > _limit_for(name):
            raise CollateralFormatError(
                f"{where}/{name}: over the {_limit_for(name)}-byte limit for this collateral file"
            )

    tcb_infos: list[TcbInfoDocument] = []
    tcb_info_files = [n for n in names if n == TCB_INFO_FILE or TCB_INFO_FMSPC_PATTERN.fullmatch(n)]
    if len(tcb_info_files) > MAX_TCB_INFO_FILES:
        raise CollateralFormatError(f"{where}: {len(tcb_info_files)} TCB info files, more than {MAX_TCB_INFO_FILES}")
    for name in tcb_info_files:
        document: TcbInfoDocument = _json(f"{where}/{name}", files[name], parse_tcb_info)
        match = TCB_INFO_FMSPC_PATTERN.fullmatch(name)
        fmspc = document.tcb_info.fmspc
        if match and bytes.fromhex(match.group(1)) != fmspc:
            raise CollateralFormatError(
                f"{where}/{name}: the TCB info is for FMSPC {fmspc.hex()}, not the one its name says"
            )
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
    if collateral.is_empty and not (
        collateral.tcb_info_issuer_chain or collateral.qe_identity_issuer_chain or collateral.pck_crl_issuer_chain
    ):
        expected = [TCB_INFO_FILE, "tcb-info-fmspc-<fmspc>.json", QE_IDENTITY_FILE, *PCK_CRL_FILES, ROOT_CA_CRL_FILE]
        raise CollateralFormatError(f"{where}: no collateral files found (expected some of: {', '.join(expected)})")
    return collateral


# --- the verifier's collateral store (cache layout in the module docstring) ---------------

PCK_CAS = ("platform", "processor")


def pck_ca_kind(issuer: str) -> str:
    """ "processor" when a PCK leaf's issuer name says Processor CA, else "platform"."""
    return "processor" if "processor" in issuer.lower() else "platform"


def intel_tcb_info_url(config: FetchConfig, fmspc: bytes) -> str:
    return f"{config.intel_base_url.rstrip('/')}/tdx/certification/v4/tcb?fmspc={fmspc.hex()}"


def intel_qe_identity_url(config: FetchConfig) -> str:
    return f"{config.intel_base_url.rstrip('/')}/tdx/certification/v4/qe/identity"


def intel_pck_crl_url(config: FetchConfig, ca: str) -> str:
    return f"{config.intel_base_url.rstrip('/')}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"


@dataclass(frozen=True)
class TdxLookup:
    """The Intel collateral the store holds for one platform (FMSPC and PCK CA), every fresh
    part of it, and why any part is missing."""

    collateral: TdxCollateral
    notes: tuple[str, ...] = ()


def _tdx_items(fmspc: bytes, ca: str) -> dict[str, CollateralItem]:
    """The four Intel documents a TDX quote of FMSPC ``fmspc`` under PCK ``ca`` needs: where each
    lives in the cache, how it is parsed and judged fresh, and how it is fetched."""
    fmspc_hex = bytes(fmspc).hex()

    def with_chain(
        url: Callable[[CollateralFetcher], str], path: str, chain: str, header: str
    ) -> Callable[[CollateralFetcher], dict[str, bytes]]:
        def fetch(fetcher: CollateralFetcher) -> dict[str, bytes]:
            response = fetcher.get(url(fetcher))
            return {path: response.body, chain: response.issuer_chain(header)}

        return fetch

    def parse_tcb_info_for_fmspc(data: bytes) -> TcbInfoDocument:
        document = parse_tcb_info(data)
        if document.tcb_info.fmspc != bytes(fmspc):
            raise CollateralFormatError(f"the TCB info is for FMSPC {document.tcb_info.fmspc.hex()}, not {fmspc_hex}")
        return document

    tcb_path, tcb_chain = f"intel/tcb-info-fmspc-{fmspc_hex}.json", "intel/tcb-info-issuer-chain.pem"
    qe_path, qe_chain = "intel/qe-identity.json", "intel/qe-identity-issuer-chain.pem"
    crl_path, crl_chain = f"intel/pck-{ca}-crl.der", f"intel/pck-{ca}-crl-issuer-chain.pem"
    root_path = "intel/root-ca-crl.der"
    return {
        "tcb_info": CollateralItem(
            tcb_path,
            f"TCB info for FMSPC {fmspc_hex}",
            MAX_COLLATERAL_JSON_BYTES,
            parse_tcb_info_for_fmspc,
            document_fresh(f"TCB info for FMSPC {fmspc_hex}", "tcb_info"),
            with_chain(
                lambda f: intel_tcb_info_url(f.config, bytes(fmspc)), tcb_path, tcb_chain, "TCB-Info-Issuer-Chain"
            ),
            tcb_chain,
        ),
        "qe_identity": CollateralItem(
            qe_path,
            "QE identity",
            MAX_COLLATERAL_JSON_BYTES,
            parse_qe_identity,
            document_fresh("QE identity", "identity"),
            with_chain(
                lambda f: intel_qe_identity_url(f.config), qe_path, qe_chain, "SGX-Enclave-Identity-Issuer-Chain"
            ),
            qe_chain,
        ),
        "pck_crl": CollateralItem(
            crl_path,
            f"PCK {ca.title()} CA CRL",
            MAX_CRL_BYTES,
            parse_crl_file,
            crl_fresh(f"PCK {ca.title()} CA CRL"),
            with_chain(lambda f: intel_pck_crl_url(f.config, ca), crl_path, crl_chain, "SGX-PCK-CRL-Issuer-Chain"),
            crl_chain,
        ),
        "root_ca_crl": CollateralItem(
            root_path,
            "Intel SGX Root CA CRL",
            MAX_CRL_BYTES,
            parse_crl_file,
            crl_fresh("Intel SGX Root CA CRL"),
            lambda f: {root_path: f.get(f.config.intel_root_ca_crl_url).body},
        ),
    }


def tdx_collateral(
    store: CollateralStore, fmspc: bytes, ca: str, *, at: datetime, max_age: timedelta | None = None
) -> TdxLookup:
    """Every fresh part of the Intel collateral for a platform of FMSPC ``fmspc`` whose PCK
    certificate was issued by the PCK ``ca`` ("platform" or "processor")."""
    at = as_utc(at)
    if ca not in PCK_CAS:
        raise CollateralError(f"unknown PCK CA {ca!r}; expected platform or processor")
    items = _tdx_items(bytes(fmspc), ca)
    found = {name: store.lookup(item, at, max_age) for name, item in items.items()}
    notes = tuple(note for lookup in found.values() for note in lookup.notes)
    tcb = found["tcb_info"].value
    qe = found["qe_identity"].value
    crl = found["pck_crl"].value
    collateral = TdxCollateral(
        tcb_infos=(tcb[0],) if tcb else (),
        tcb_info_issuer_chain=tcb[1] if tcb else (),
        qe_identity=qe[0] if qe else None,
        qe_identity_issuer_chain=qe[1] if qe else (),
        pck_crls=(crl[0],) if crl else (),
        pck_crl_issuer_chain=crl[1] if crl else (),
        root_ca_crl=found["root_ca_crl"].value,
    )
    return TdxLookup(collateral, notes)
