"""Collateral of the simulated vendors: Intel-style collateral for the simulated TDX platform
(signed by the simulated TCB signer) and AMD-style CRLs for the simulated SEV-SNP platform.

The documents have the shape of Intel PCS responses (TCB info v3 with ``id: "TDX"``,
QE identity v2 with ``id: "TD_QE"``): the signature is ECDSA P-256, raw r||s in hex,
over the exact bytes of the ``tcbInfo`` / ``enclaveIdentity`` value as written.
:func:`simulated_collateral` gives files under the names
:func:`attestation.platforms.tdx.collateral.load_collateral_dir` reads (what a simulated TD
ships in its bundle); :func:`write_simulated_collateral` fills a
verifier's collateral cache directory (:mod:`attestation.collateral`) for the simulated SEV-SNP
and TDX platforms, optionally revoking simulated certificates.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from . import SimulatedTeeError
from .pki import SIM_FMSPC, SIM_PCEID, SIM_PCESVN, SIM_SGX_TCB_COMPONENTS, SimulatedPki, load_or_create

#: The simulated TDX module and quoting enclave identities.
SIM_TEE_TCB_SVN = bytes([5, 1, 3] + [0] * 13)
SIM_QE_MRSIGNER = bytes.fromhex("5a" * 32)
SIM_QE_ISVPRODID = 2
SIM_QE_ISVSVN = 8
SIM_QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
SIM_QE_MISCSELECT = 0
COLLATERAL_LIFETIME = dt.timedelta(days=30)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sign_body(key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def _document(field: str, body_obj: dict, key: ec.EllipticCurvePrivateKey) -> bytes:
    body = json.dumps(body_obj, separators=(",", ":")).encode()
    signature = _sign_body(key, body)
    return b'{"' + field.encode() + b'":' + body + b',"signature":"' + signature.encode() + b'"}'


def _svns(values) -> list[dict[str, int]]:
    return [{"svn": int(v)} for v in values]


def tcb_info_json(
    pki: SimulatedPki, issued: dt.datetime, status: str = "UpToDate", lifetime: dt.timedelta = COLLATERAL_LIFETIME
) -> bytes:
    """TCB info whose first level is exactly the simulated platform (status ``status``)."""
    date = _iso(issued - dt.timedelta(days=7))
    body = {
        "id": "TDX",
        "version": 3,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(issued + lifetime),
        "fmspc": SIM_FMSPC.hex(),
        "pceId": SIM_PCEID.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
        "tdxModuleIdentities": [
            {
                "id": f"TDX_{SIM_TEE_TCB_SVN[1]:02X}",
                "mrsigner": "00" * 48,
                "attributes": "0000000000000000",
                "attributesMask": "FFFFFFFFFFFFFFFF",
                "tcbLevels": [{"tcb": {"isvsvn": SIM_TEE_TCB_SVN[0]}, "tcbDate": date, "tcbStatus": "UpToDate"}],
            }
        ],
        "tcbLevels": [
            {
                "tcb": {
                    "sgxtcbcomponents": _svns(SIM_SGX_TCB_COMPONENTS),
                    "pcesvn": SIM_PCESVN,
                    "tdxtcbcomponents": _svns(SIM_TEE_TCB_SVN),
                },
                "tcbDate": date,
                "tcbStatus": status,
            },
            {
                "tcb": {"sgxtcbcomponents": _svns([0] * 16), "pcesvn": 0, "tdxtcbcomponents": _svns([0] * 16)},
                "tcbDate": _iso(issued - dt.timedelta(days=400)),
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["SIMULATED-SA-00001"],
            },
        ],
    }
    return _document("tcbInfo", body, pki.intel.tcb_signer.key)


def qe_identity_json(pki: SimulatedPki, issued: dt.datetime, lifetime: dt.timedelta = COLLATERAL_LIFETIME) -> bytes:
    body = {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(issued + lifetime),
        "tcbEvaluationDataNumber": 17,
        "miscselect": f"{SIM_QE_MISCSELECT:08X}",
        "miscselectMask": "FFFFFFFF",
        "attributes": SIM_QE_ATTRIBUTES.hex().upper(),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": SIM_QE_MRSIGNER.hex().upper(),
        "isvprodid": SIM_QE_ISVPRODID,
        "tcbLevels": [
            {"tcb": {"isvsvn": SIM_QE_ISVSVN}, "tcbDate": _iso(issued - dt.timedelta(days=7)), "tcbStatus": "UpToDate"}
        ],
    }
    return _document("enclaveIdentity", body, pki.intel.tcb_signer.key)


@dataclass(frozen=True)
class CollateralFiles:
    """File name -> bytes, as a collateral directory or an evidence bundle carries them."""

    files: dict[str, bytes]

    def write(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (directory / name).write_bytes(data)
        return directory


def simulated_collateral(
    pki: SimulatedPki, issued: dt.datetime | None = None, tcb_status: str = "UpToDate"
) -> CollateralFiles:
    """Fresh collateral for the simulated TDX platform, issued at ``issued`` (default an hour ago)."""
    # Published an hour ago, as a vendor's collateral is: a verifier whose clock is a little
    # behind the simulated TEE's still finds it valid.
    issued = issued or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    intel = pki.intel
    signer_chain = intel.tcb_signer.pem + intel.root.pem
    der = serialization.Encoding.DER
    return CollateralFiles(
        {
            f"tcb-info-fmspc-{SIM_FMSPC.hex()}.json": tcb_info_json(pki, issued, tcb_status),
            "qe-identity.json": qe_identity_json(pki, issued),
            "tcb-info-issuer-chain.pem": signer_chain,
            "qe-identity-issuer-chain.pem": signer_chain,
            "pck-platform-crl.der": intel.pck_crl.public_bytes(der),
            "pck-crl-issuer-chain.pem": intel.pck_ca.pem + intel.root.pem,
            "root-ca-crl.der": intel.root_crl.public_bytes(der),
        }
    )


#: The simulated SEV-SNP platform's product line (its reports and VCEK are Milan's).
SIM_AMD_PRODUCT = "milan"


def _intel_crl(
    issuer_cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    issued: dt.datetime,
    lifetime: dt.timedelta,
    revoked: Sequence[x509.Certificate],
) -> bytes:
    # Like Intel's: a CRL number and the issuer's key identifier (RFC 5280 section 5.2; strict
    # verifiers such as webpki refuse a CRL without them).
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(issued)
        .next_update(issued + lifetime)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    for cert in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(issued - dt.timedelta(minutes=1))
        )
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _load_certificate(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise SimulatedTeeError(f"not a certificate to revoke: {exc}") from exc


def simulated_collateral_files(
    pki: SimulatedPki,
    *,
    issued: dt.datetime | None = None,
    lifetime: dt.timedelta = COLLATERAL_LIFETIME,
    tcb_status: str = "UpToDate",
    revoked: Sequence[bytes | x509.Certificate] = (),
) -> dict[str, bytes]:
    """Cache-relative path -> bytes of everything a verifier's collateral cache holds for the
    simulated platforms (the layout of :mod:`attestation.collateral`), issued at ``issued``
    (default now) with next update ``lifetime`` later.

    ``revoked``: certificates of the simulated PKIs (DER, PEM or objects) to list as revoked:
    the VCEK or ASK (in the AMD CRL), the PCK leaf (in the PCK CRL), the PCK CA (in the root
    CA CRL). Anything else is a :class:`SimulatedTeeError`."""
    from .snp import simulated_amd_crl

    # Published an hour ago, as a vendor's collateral is: a verifier whose clock is a little
    # behind the simulated TEE's still finds it valid.
    issued = issued or dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    certs = [c if isinstance(c, x509.Certificate) else _load_certificate(bytes(c)) for c in revoked]
    amd, intel = pki.amd, pki.intel
    amd_revoked = [c for c in certs if c.issuer in (amd.ark.cert.subject, amd.ask.cert.subject)]
    pck_revoked = [c for c in certs if c.issuer == intel.pck_ca.cert.subject]
    root_revoked = [c for c in certs if c.issuer == intel.root.cert.subject]
    if len(amd_revoked) + len(pck_revoked) + len(root_revoked) != len(certs):
        stranger = next(c for c in certs if c not in amd_revoked + pck_revoked + root_revoked)
        raise SimulatedTeeError(
            f"{stranger.subject.rfc4514_string()} was not issued by the simulated vendors of {pki.directory}"
        )
    signer_chain = intel.tcb_signer.pem + intel.root.pem
    return {
        f"amd/{SIM_AMD_PRODUCT}/crl-vcek.der": simulated_amd_crl(pki, issued, revoked=amd_revoked, lifetime=lifetime),
        f"intel/tcb-info-fmspc-{SIM_FMSPC.hex()}.json": tcb_info_json(pki, issued, tcb_status, lifetime),
        "intel/tcb-info-issuer-chain.pem": signer_chain,
        "intel/qe-identity.json": qe_identity_json(pki, issued, lifetime),
        "intel/qe-identity-issuer-chain.pem": signer_chain,
        "intel/pck-platform-crl.der": _intel_crl(intel.pck_ca.cert, intel.pck_ca.key, issued, lifetime, pck_revoked),
        "intel/pck-platform-crl-issuer-chain.pem": intel.pck_ca.pem + intel.root.pem,
        "intel/root-ca-crl.der": _intel_crl(intel.root.cert, intel.root.key, issued, lifetime, root_revoked),
    }


def write_simulated_collateral(
    simulated_dir: str | Path,
    out_dir: str | Path,
    *,
    issued: dt.datetime | None = None,
    lifetime: dt.timedelta = COLLATERAL_LIFETIME,
    tcb_status: str = "UpToDate",
    revoked: Sequence[bytes | x509.Certificate] = (),
) -> list[Path]:
    """Fill the collateral cache directory ``out_dir`` (created if needed) with the simulated
    vendors' collateral for the simulated TEE of ``simulated_dir`` (see
    :func:`simulated_collateral_files`); returns the files written. Each file is replaced
    atomically, so a verifier reading the cache never sees half a file."""
    try:
        files = simulated_collateral_files(
            load_or_create(simulated_dir), issued=issued, lifetime=lifetime, tcb_status=tcb_status, revoked=revoked
        )
    except (OverflowError, ValueError) as exc:  # an issue time or lifetime past year 9999, or before 1950 for X.509
        raise SimulatedTeeError(f"cannot issue collateral at {issued} for {lifetime}: {exc}") from exc
    root = Path(out_dir)
    written = []
    try:
        for relative, data in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            temporary.write_bytes(data)
            os.replace(temporary, path)
            written.append(path)
    except OSError as exc:
        raise SimulatedTeeError(f"cannot write the collateral cache {root}: {exc.strerror or exc}") from exc
    return written
