"""Intel-style collateral for the simulated TDX platform, signed by the simulated TCB signer.

The documents have the shape of Intel PCS responses (TCB info v3 with ``id: "TDX"``,
QE identity v2 with ``id: "TD_QE"``): the signature is ECDSA P-256, raw r||s in hex,
over the exact bytes of the ``tcbInfo`` / ``enclaveIdentity`` value as written.
Files are written under the names :func:`attestation.tdx.load_collateral_dir` reads.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from .pki import SIM_FMSPC, SIM_PCEID, SIM_PCESVN, SIM_SGX_TCB_COMPONENTS, SimulatedPki

#: The simulated TDX module and quoting enclave identities.
SIM_TEE_TCB_SVN = bytes([5, 1, 3] + [0] * 13)
SIM_QE_MRSIGNER = bytes.fromhex("5a" * 32)
SIM_QE_ISVPRODID = 2
SIM_QE_ISVSVN = 8
SIM_QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")
SIM_QE_MISCSELECT = 0
COLLATERAL_LIFETIME = dt.timedelta(days=30)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sign_body(key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    return (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()


def _document(field: str, body_obj: dict, key: ec.EllipticCurvePrivateKey) -> bytes:
    body = json.dumps(body_obj, separators=(",", ":")).encode()
    signature = _sign_body(key, body)
    return b'{"' + field.encode() + b'":' + body + b',"signature":"' + signature.encode() + b'"}'


def _svns(values) -> list[dict[str, int]]:
    return [{"svn": int(v)} for v in values]


def tcb_info_json(pki: SimulatedPki, issued: dt.datetime, status: str = "UpToDate") -> bytes:
    """TCB info whose first level is exactly the simulated platform (status ``status``)."""
    date = _iso(issued - dt.timedelta(days=7))
    body = {
        "id": "TDX",
        "version": 3,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(issued + COLLATERAL_LIFETIME),
        "fmspc": SIM_FMSPC.hex(),
        "pceId": SIM_PCEID.hex(),
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": {"mrsigner": "00" * 48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"},
        "tdxModuleIdentities": [{
            "id": f"TDX_{SIM_TEE_TCB_SVN[1]:02X}",
            "mrsigner": "00" * 48,
            "attributes": "0000000000000000",
            "attributesMask": "FFFFFFFFFFFFFFFF",
            "tcbLevels": [{"tcb": {"isvsvn": SIM_TEE_TCB_SVN[0]}, "tcbDate": date, "tcbStatus": "UpToDate"}],
        }],
        "tcbLevels": [
            {
                "tcb": {"sgxtcbcomponents": _svns(SIM_SGX_TCB_COMPONENTS), "pcesvn": SIM_PCESVN, "tdxtcbcomponents": _svns(SIM_TEE_TCB_SVN)},
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


def qe_identity_json(pki: SimulatedPki, issued: dt.datetime) -> bytes:
    body = {
        "id": "TD_QE",
        "version": 2,
        "issueDate": _iso(issued),
        "nextUpdate": _iso(issued + COLLATERAL_LIFETIME),
        "tcbEvaluationDataNumber": 17,
        "miscselect": f"{SIM_QE_MISCSELECT:08X}",
        "miscselectMask": "FFFFFFFF",
        "attributes": SIM_QE_ATTRIBUTES.hex().upper(),
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": SIM_QE_MRSIGNER.hex().upper(),
        "isvprodid": SIM_QE_ISVPRODID,
        "tcbLevels": [{"tcb": {"isvsvn": SIM_QE_ISVSVN}, "tcbDate": _iso(issued - dt.timedelta(days=7)), "tcbStatus": "UpToDate"}],
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


def simulated_collateral(pki: SimulatedPki, issued: dt.datetime | None = None, tcb_status: str = "UpToDate") -> CollateralFiles:
    """Fresh collateral for the simulated TDX platform, issued at ``issued`` (default now)."""
    issued = issued or dt.datetime.now(dt.timezone.utc)
    intel = pki.intel
    signer_chain = intel.tcb_signer.pem + intel.root.pem
    der = serialization.Encoding.DER
    return CollateralFiles({
        f"tcb-info-fmspc-{SIM_FMSPC.hex()}.json": tcb_info_json(pki, issued, tcb_status),
        "qe-identity.json": qe_identity_json(pki, issued),
        "tcb-info-issuer-chain.pem": signer_chain,
        "qe-identity-issuer-chain.pem": signer_chain,
        "pck-platform-crl.der": intel.pck_crl.public_bytes(der),
        "pck-crl-issuer-chain.pem": intel.pck_ca.pem + intel.root.pem,
        "root-ca-crl.der": intel.root_crl.public_bytes(der),
    })
