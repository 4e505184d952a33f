"""Simulated Intel TDX: byte-exact DCAP quotes, version 4, signed by the simulated PKI.

The quote has exactly the layout real hardware produces (see :mod:`attestation.platforms.tdx.abi`):
the 48-byte header (version 4, attestation key type 2 = ECDSA-256 with P-256, TEE type
0x81, Intel's QE vendor ID), the 584-byte TD report body, then the signature data: the
quote signature over header || body by the attestation key, the attestation key, and
certification data of type 6 carrying the simulated QE report (whose report_data[0:32]
is SHA-256(attestation key || QE authentication data)), its signature by the simulated
PCK leaf, the QE authentication data and the nested type-5 PEM chain PCK leaf -> PCK CA
-> root.

The quoting enclave's identity and the TDX module's TCB match
:mod:`enclave.simulated.collateral`, so with :func:`~enclave.simulated.collateral.simulated_collateral`
the TCB status is ``UpToDate`` and the QE identity matches.

The attestation key is created when a :class:`SimulatedTdxQuoter` is created (as a QE
creates one at start-up) and the QE report that certifies it is signed once; each quote
then costs one ECDSA P-256 signature.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, fields

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from attestation.platforms.tdx.abi import (
    ATTESTATION_KEY_TYPE_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    QUOTE_VERSION_4,
    TD_ATTRIBUTE_DEBUG,
    TD_ATTRIBUTE_SEPT_VE_DISABLE,
    TEE_TYPE_TDX,
    CertificationData,
    EnclaveReport,
    QeReportCertificationData,
    QuoteHeader,
    QuoteSignatureData,
    TdReportBody,
    TdxQuote,
)

from . import SimulatedTeeError
from .collateral import (
    SIM_QE_ATTRIBUTES,
    SIM_QE_ISVPRODID,
    SIM_QE_ISVSVN,
    SIM_QE_MISCSELECT,
    SIM_QE_MRSIGNER,
    SIM_TEE_TCB_SVN,
)
from .pki import SIM_PCESVN, SIM_SGX_TCB_COMPONENTS, SimulatedPki

#: The simulated TDX module's measurement (its signer is Intel's: zero, as in the TCB info).
SIM_MR_SEAM = hashlib.sha384(b"attestfl simulated TDX module").digest()
SIM_QE_MRENCLAVE = hashlib.sha256(b"attestfl simulated TD quoting enclave").digest()
#: XFAM of a typical TD (x87, SSE, AVX, AVX-512, PKRU, ...), as the quote stores it.
SIM_XFAM = (0x61AE7).to_bytes(8, "little")
SIM_QE_AUTH_DATA = bytes(range(32))


def _raw_p256_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class TdOptions:
    """What the simulated TD reports beside report_data; defaults are a production TD."""

    mr_td: bytes
    debug: bool = False
    rtmrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)
    tee_tcb_svn: bytes = SIM_TEE_TCB_SVN
    xfam: bytes = SIM_XFAM

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self) if f.name.startswith("mr_")):  # the 48-byte measurement registers
            if len(getattr(self, name)) != 48:
                raise SimulatedTeeError(f"{name} must be 48 bytes")
        if len(self.rtmrs) != 4 or any(len(r) != 48 for r in self.rtmrs):
            raise SimulatedTeeError("rtmrs must be four 48-byte values")
        if len(self.tee_tcb_svn) != 16 or len(self.xfam) != 8:
            raise SimulatedTeeError("tee_tcb_svn must be 16 bytes and xfam 8 bytes")

    @property
    def td_attributes(self) -> bytes:
        value = TD_ATTRIBUTE_SEPT_VE_DISABLE | (TD_ATTRIBUTE_DEBUG if self.debug else 0)
        return value.to_bytes(8, "little")


class SimulatedTdxQuoter:
    """The simulated TDX module + quoting enclave of one simulated platform."""

    def __init__(self, pki: SimulatedPki) -> None:
        self._pki = pki
        self._attestation_key = ec.generate_private_key(ec.SECP256R1())
        public = self._attestation_key.public_key().public_numbers()
        self.attestation_public_key = public.x.to_bytes(32, "big") + public.y.to_bytes(32, "big")
        qe_report = EnclaveReport(
            cpu_svn=bytes(SIM_SGX_TCB_COMPONENTS),
            misc_select=struct.pack("<I", SIM_QE_MISCSELECT),
            reserved1=bytes(12),
            isv_ext_prod_id=bytes(16),
            attributes=SIM_QE_ATTRIBUTES,
            mr_enclave=SIM_QE_MRENCLAVE,
            reserved2=bytes(32),
            mr_signer=SIM_QE_MRSIGNER,
            reserved3=bytes(32),
            config_id=bytes(64),
            isv_prod_id=SIM_QE_ISVPRODID,
            isv_svn=SIM_QE_ISVSVN,
            config_svn=0,
            reserved4=bytes(42),
            isv_family_id=bytes(16),
            report_data=hashlib.sha256(self.attestation_public_key + SIM_QE_AUTH_DATA).digest() + bytes(32),
        )
        intel = pki.intel
        chain = intel.pck_leaf.pem + intel.pck_ca.pem + intel.root.pem
        self._certification = QeReportCertificationData(
            qe_report=qe_report,
            qe_report_signature=_raw_p256_signature(intel.pck_leaf.key, qe_report.to_bytes()),
            qe_auth_data=SIM_QE_AUTH_DATA,
            certification_data=CertificationData(CERT_DATA_PCK_CHAIN, chain),
        )
        self._header = QuoteHeader(
            version=QUOTE_VERSION_4,
            attestation_key_type=ATTESTATION_KEY_TYPE_ECDSA_P256,
            tee_type=TEE_TYPE_TDX,
            qe_svn=SIM_QE_ISVSVN,
            pce_svn=SIM_PCESVN,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=bytes(20),
        )

    def quote(self, report_data: bytes, options: TdOptions) -> bytes:
        """A TDX v4 quote for a TD described by ``options`` carrying ``report_data`` (64 bytes)."""
        if len(report_data) != 64:
            raise SimulatedTeeError(f"report_data must be 64 bytes, got {len(report_data)}")
        body = TdReportBody(
            tee_tcb_svn=options.tee_tcb_svn,
            mr_seam=SIM_MR_SEAM,
            mr_signer_seam=bytes(48),
            seam_attributes=bytes(8),
            td_attributes=options.td_attributes,
            xfam=options.xfam,
            mr_td=options.mr_td,
            mr_config_id=options.mr_config_id,
            mr_owner=options.mr_owner,
            mr_owner_config=options.mr_owner_config,
            rtmr0=options.rtmrs[0],
            rtmr1=options.rtmrs[1],
            rtmr2=options.rtmrs[2],
            rtmr3=options.rtmrs[3],
            report_data=bytes(report_data),
        )
        signed = self._header.to_bytes() + body.to_bytes()
        signature = _raw_p256_signature(self._attestation_key, signed)
        quote = TdxQuote(
            self._header, body, QuoteSignatureData(signature, self.attestation_public_key, self._certification)
        )
        return quote.to_bytes()
