"""Intel TDX DCAP quotes (versions 4 and 5) as typed structures; no cryptography here.

Layout (Intel TDX DCAP Quote Generation/Verification Library, appendix "Quote Format"):

* header, 48 bytes: version u16, attestation key type u16 (2 = ECDSA-256 with P-256),
  TEE type u32 (0x81 = TDX), QE SVN u16, PCE SVN u16 (both "reserved" in the v4 header
  definition), QE vendor ID (16), user data (20);
* v4: TD report body (TDX 1.0, 584 bytes);
  v5: body descriptor (type u16, size u32) and the body: type 2 = TDX 1.0 (584 bytes),
  type 3 = TDX 1.5 (648 bytes: adds TEE_TCB_SVN_2 and MRSERVICETD);
* signature data length u32 and the signature data: ECDSA signature (64 bytes, raw r||s,
  big-endian), attestation public key (64 bytes, raw x||y), certification data of type 6
  (QE report certification data: QE report (384-byte SGX enclave report), QE report
  signature (64, raw r||s), QE authentication data (u16 size + bytes) and a nested
  certification data, normally type 5 = PCK certificate chain, PEM).

All integers are little-endian. The signed region of the quote signature is the header
and the body (for v5 including the body descriptor): :meth:`TdxQuote.signed_bytes`.

Every length field is checked against the bytes that remain before it is used, so no
length in the input can cause work beyond the input; input over
:data:`MAX_QUOTE_BYTES` is refused before any parsing. Errors name the field.

The Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1: PPID, TCB,
PCE-ID, FMSPC, SGX type, ...) are decoded here as well (:func:`decode_sgx_extensions`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, Literal, overload

from asn1crypto import core

from ...abi.x509 import Certificate
from ...errors import CertificateFormatError, EvidenceFormatError, EvidenceTooLargeError

#: Refuse quotes larger than this before any parsing work.
MAX_QUOTE_BYTES = 64 * 1024

QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
SUPPORTED_QUOTE_VERSIONS = (QUOTE_VERSION_4, QUOTE_VERSION_5)
ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x81
#: v5 body descriptor types.
BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
#: Certification data types.
CERT_DATA_PCK_CHAIN = 5
CERT_DATA_QE_REPORT = 6
#: QE vendor ID of Intel's quoting enclave.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

HEADER_SIZE = 48
BODY_DESCRIPTOR_SIZE = 6
TD_REPORT10_SIZE = 584
TD_REPORT15_SIZE = 648
ENCLAVE_REPORT_SIZE = 384
ECDSA_SIGNATURE_SIZE = 64
ECDSA_PUBLIC_KEY_SIZE = 64
BODY_SIZE_BY_TYPE = {BODY_TYPE_TDX10: TD_REPORT10_SIZE, BODY_TYPE_TDX15: TD_REPORT15_SIZE}

#: TD attributes bits (TDX module ABI), numbered in the little-endian u64.
TD_ATTRIBUTE_DEBUG = 1 << 0
TD_ATTRIBUTE_SEPT_VE_DISABLE = 1 << 28
TD_ATTRIBUTE_PKS = 1 << 30
TD_ATTRIBUTE_KL = 1 << 31
TD_ATTRIBUTE_PERFMON = 1 << 63


def _require_length(value: bytes, length: int, name: str) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != length:
        got = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise EvidenceFormatError(f"{name}: expected {length} bytes, got {got}")


def _require_uint(value: int, bits: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << bits):
        raise EvidenceFormatError(f"{name}: expected an unsigned {bits}-bit integer, got {value!r}")


class _Reader:
    """Bounds-checked little-endian reader over one region of the input."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None, where: str = "quote") -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end
        self.where = where

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, size: int, name: str) -> bytes:
        if size < 0 or size > self.remaining:
            raise EvidenceFormatError(
                f"{self.where}: {name} needs {size} bytes at offset {self.pos}, "
                f"but only {max(self.remaining, 0)} remain"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self, name: str) -> int:
        value: int = struct.unpack("<H", self.take(2, name))[0]
        return value

    def u32(self, name: str) -> int:
        value: int = struct.unpack("<I", self.take(4, name))[0]
        return value


@dataclass(frozen=True)
class QuoteHeader:
    """The 48-byte quote header."""

    version: int
    attestation_key_type: int
    tee_type: int
    #: Bytes 8-9: QE SVN (a reserved field in Intel's v4 header definition).
    qe_svn: int
    #: Bytes 10-11: PCE SVN (a reserved field in Intel's v4 header definition).
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    SIZE: ClassVar[int] = HEADER_SIZE

    def __post_init__(self) -> None:
        _require_uint(self.version, 16, "header.version")
        _require_uint(self.attestation_key_type, 16, "header.attestation_key_type")
        _require_uint(self.tee_type, 32, "header.tee_type")
        _require_uint(self.qe_svn, 16, "header.qe_svn")
        _require_uint(self.pce_svn, 16, "header.pce_svn")
        _require_length(self.qe_vendor_id, 16, "header.qe_vendor_id")
        _require_length(self.user_data, 20, "header.user_data")

    def to_bytes(self) -> bytes:
        return (
            struct.pack("<HHIHH", self.version, self.attestation_key_type, self.tee_type, self.qe_svn, self.pce_svn)
            + self.qe_vendor_id
            + self.user_data
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> QuoteHeader:
        _require_length(data, HEADER_SIZE, "header")
        version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
        return cls(version, key_type, tee_type, qe_svn, pce_svn, bytes(data[12:28]), bytes(data[28:48]))


_TD_REPORT10_FIELDS: tuple[tuple[str, int], ...] = (
    ("tee_tcb_svn", 16),
    ("mr_seam", 48),
    ("mr_signer_seam", 48),
    ("seam_attributes", 8),
    ("td_attributes", 8),
    ("xfam", 8),
    ("mr_td", 48),
    ("mr_config_id", 48),
    ("mr_owner", 48),
    ("mr_owner_config", 48),
    ("rtmr0", 48),
    ("rtmr1", 48),
    ("rtmr2", 48),
    ("rtmr3", 48),
    ("report_data", 64),
)
_TD_REPORT15_EXTRA_FIELDS: tuple[tuple[str, int], ...] = (("tee_tcb_svn2", 16), ("mr_servicetd", 48))


@dataclass(frozen=True)
class TdReportBody:
    """The TD quote body: TD report of TDX 1.0 (584 bytes) or TDX 1.5 (648 bytes).

    Byte fields are kept exactly as they appear in the quote (``td_attributes``, ``xfam``
    and ``seam_attributes`` are little-endian u64 values; see :attr:`td_attributes_value`).
    ``tee_tcb_svn2`` and ``mr_servicetd`` are present only in a TDX 1.5 body.
    """

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    def __post_init__(self) -> None:
        for name, size in _TD_REPORT10_FIELDS:
            _require_length(getattr(self, name), size, f"body.{name}")
        if (self.tee_tcb_svn2 is None) != (self.mr_servicetd is None):
            raise EvidenceFormatError(
                "body: tee_tcb_svn2 and mr_servicetd are both present (TDX 1.5) or both absent (TDX 1.0)"
            )
        if self.tee_tcb_svn2 is not None:
            for name, size in _TD_REPORT15_EXTRA_FIELDS:
                _require_length(getattr(self, name), size, f"body.{name}")

    @property
    def is_tdx15(self) -> bool:
        return self.tee_tcb_svn2 is not None

    @property
    def size(self) -> int:
        return TD_REPORT15_SIZE if self.is_tdx15 else TD_REPORT10_SIZE

    @property
    def body_type(self) -> int:
        """The v5 body descriptor type of this body (2 = TDX 1.0, 3 = TDX 1.5)."""
        return BODY_TYPE_TDX15 if self.is_tdx15 else BODY_TYPE_TDX10

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)

    @property
    def td_attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def xfam_value(self) -> int:
        return int.from_bytes(self.xfam, "little")

    @property
    def debug(self) -> bool:
        """TD attributes bit 0 (TUD.DEBUG): the TD runs in debug mode, its state is not confidential."""
        return bool(self.td_attributes_value & TD_ATTRIBUTE_DEBUG)

    def to_bytes(self) -> bytes:
        fields = _TD_REPORT10_FIELDS + (_TD_REPORT15_EXTRA_FIELDS if self.is_tdx15 else ())
        return b"".join(getattr(self, name) for name, _size in fields)

    @classmethod
    def from_bytes(cls, data: bytes) -> TdReportBody:
        if len(data) not in (TD_REPORT10_SIZE, TD_REPORT15_SIZE):
            raise EvidenceFormatError(f"body: expected {TD_REPORT10_SIZE} or {TD_REPORT15_SIZE} bytes, got {len(data)}")
        fields = _TD_REPORT10_FIELDS + (_TD_REPORT15_EXTRA_FIELDS if len(data) == TD_REPORT15_SIZE else ())
        values: dict[str, bytes] = {}
        offset = 0
        for name, size in fields:
            values[name] = bytes(data[offset : offset + size])
            offset += size
        return cls(**values)


_ENCLAVE_REPORT_FIELDS: tuple[tuple[str, int], ...] = (
    ("cpu_svn", 16),
    ("misc_select", 4),
    ("reserved1", 12),
    ("isv_ext_prod_id", 16),
    ("attributes", 16),
    ("mr_enclave", 32),
    ("reserved2", 32),
    ("mr_signer", 32),
    ("reserved3", 32),
    ("config_id", 64),
    ("isv_prod_id", 2),
    ("isv_svn", 2),
    ("config_svn", 2),
    ("reserved4", 42),
    ("isv_family_id", 16),
    ("report_data", 64),
)


@dataclass(frozen=True)
class EnclaveReport:
    """An SGX enclave report body (384 bytes): here, the quoting enclave's report.

    ``misc_select`` and ``attributes`` are the raw bytes (compared byte-wise under the
    QE identity's masks); ``isv_prod_id``, ``isv_svn`` and ``config_svn`` are u16.
    """

    cpu_svn: bytes
    misc_select: bytes
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes

    SIZE: ClassVar[int] = ENCLAVE_REPORT_SIZE

    def __post_init__(self) -> None:
        for name, size in _ENCLAVE_REPORT_FIELDS:
            if size == 2:
                _require_uint(getattr(self, name), 16, f"qe_report.{name}")
            else:
                _require_length(getattr(self, name), size, f"qe_report.{name}")

    def to_bytes(self) -> bytes:
        parts = []
        for name, size in _ENCLAVE_REPORT_FIELDS:
            value = getattr(self, name)
            parts.append(struct.pack("<H", value) if size == 2 else value)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> EnclaveReport:
        _require_length(data, ENCLAVE_REPORT_SIZE, "qe_report")
        values: dict[str, bytes | int] = {}
        offset = 0
        for name, size in _ENCLAVE_REPORT_FIELDS:
            chunk = bytes(data[offset : offset + size])
            values[name] = struct.unpack("<H", chunk)[0] if size == 2 else chunk
            offset += size
        return cls(**values)  # type: ignore[arg-type]  # each field's value as the layout table types it


@dataclass(frozen=True)
class CertificationData:
    """Certification data: a type (u16) and its bytes (type 5: PCK certificate chain, PEM)."""

    cert_type: int
    data: bytes

    def __post_init__(self) -> None:
        _require_uint(self.cert_type, 16, "certification_data.type")
        if not isinstance(self.data, (bytes, bytearray)) or len(self.data) >= 1 << 32:
            raise EvidenceFormatError("certification_data.data: expected bytes shorter than 2^32")

    def to_bytes(self) -> bytes:
        return struct.pack("<HI", self.cert_type, len(self.data)) + self.data


@dataclass(frozen=True)
class QeReportCertificationData:
    """Certification data of type 6: the QE report, its signature by the PCK key, the
    QE authentication data and the nested certification data (the PCK chain)."""

    qe_report: EnclaveReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    certification_data: CertificationData

    def __post_init__(self) -> None:
        _require_length(self.qe_report_signature, ECDSA_SIGNATURE_SIZE, "qe_report_signature")
        if not isinstance(self.qe_auth_data, (bytes, bytearray)) or len(self.qe_auth_data) > 0xFFFF:
            raise EvidenceFormatError("qe_auth_data: expected at most 65535 bytes")

    @property
    def pck_chain_pem(self) -> bytes | None:
        """The PEM chain of the nested type-5 certification data, or None for another type."""
        if self.certification_data.cert_type != CERT_DATA_PCK_CHAIN:
            return None
        return self.certification_data.data

    def to_bytes(self) -> bytes:
        return (
            self.qe_report.to_bytes()
            + self.qe_report_signature
            + struct.pack("<H", len(self.qe_auth_data))
            + self.qe_auth_data
            + self.certification_data.to_bytes()
        )


@dataclass(frozen=True)
class QuoteSignatureData:
    """ECDSA-256 quote signature data: the quote signature, the attestation key and the
    type-6 certification data that binds the key to the platform."""

    signature: bytes
    attestation_key: bytes
    qe_certification: QeReportCertificationData

    def __post_init__(self) -> None:
        _require_length(self.signature, ECDSA_SIGNATURE_SIZE, "signature")
        _require_length(self.attestation_key, ECDSA_PUBLIC_KEY_SIZE, "attestation_key")

    def to_bytes(self) -> bytes:
        inner = self.qe_certification.to_bytes()
        return self.signature + self.attestation_key + struct.pack("<HI", CERT_DATA_QE_REPORT, len(inner)) + inner


@dataclass(frozen=True)
class TdxQuote:
    """A TDX DCAP quote, version 4 or 5.

    ``trailing`` holds bytes after the signature data: they are not covered by any
    signature, are kept only so that :meth:`to_bytes` reproduces the input exactly, and a
    verifier should warn about them.
    """

    header: QuoteHeader
    body: TdReportBody
    signature_data: QuoteSignatureData
    trailing: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if self.header.version not in SUPPORTED_QUOTE_VERSIONS:
            raise EvidenceFormatError(
                f"header.version: {self.header.version} is not a supported TDX quote version (4 or 5)"
            )
        if self.header.version == QUOTE_VERSION_4 and self.body.is_tdx15:
            raise EvidenceFormatError(
                "body: a version 4 quote carries a TDX 1.0 body (584 bytes); TDX 1.5 bodies need version 5"
            )

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def body_type(self) -> int | None:
        """The v5 body descriptor type, None for a v4 quote."""
        return self.body.body_type if self.header.version == QUOTE_VERSION_5 else None

    @property
    def qe_report(self) -> EnclaveReport:
        return self.signature_data.qe_certification.qe_report

    def signed_bytes(self) -> bytes:
        """Header and body (v5: with the body descriptor): what the attestation key signs."""
        descriptor = b""
        if self.header.version == QUOTE_VERSION_5:
            descriptor = struct.pack("<HI", self.body.body_type, self.body.size)
        return self.header.to_bytes() + descriptor + self.body.to_bytes()

    def to_bytes(self) -> bytes:
        signature_data = self.signature_data.to_bytes()
        return self.signed_bytes() + struct.pack("<I", len(signature_data)) + signature_data + self.trailing


def _parse_certification_data(reader: _Reader, name: str) -> CertificationData:
    cert_type = reader.u16(f"{name}.type")
    size = reader.u32(f"{name}.size")
    if size > reader.remaining:
        raise EvidenceFormatError(
            f"{reader.where}: {name}.size {size} points past the end of its region ({reader.remaining} bytes remain)"
        )
    return CertificationData(cert_type, reader.take(size, f"{name}.data"))


def _parse_signature_data(data: bytes, start: int, end: int) -> QuoteSignatureData:
    reader = _Reader(data, start, end, "signature data")
    signature = reader.take(ECDSA_SIGNATURE_SIZE, "signature")
    attestation_key = reader.take(ECDSA_PUBLIC_KEY_SIZE, "attestation_key")
    cert_type = reader.u16("certification_data.type")
    if cert_type != CERT_DATA_QE_REPORT:
        raise EvidenceFormatError(
            f"signature data: certification_data.type is {cert_type}; a TDX quote carries type "
            f"{CERT_DATA_QE_REPORT} (QE report certification data)"
        )
    size = reader.u32("certification_data.size")
    if size != reader.remaining:
        raise EvidenceFormatError(
            f"signature data: certification_data.size is {size}, but {reader.remaining} bytes of signature data remain"
        )
    inner = _Reader(data, reader.pos, reader.end, "QE report certification data")
    qe_report = EnclaveReport.from_bytes(inner.take(ENCLAVE_REPORT_SIZE, "qe_report"))
    qe_report_signature = inner.take(ECDSA_SIGNATURE_SIZE, "qe_report_signature")
    auth_size = inner.u16("qe_auth_data.size")
    qe_auth_data = inner.take(auth_size, "qe_auth_data")
    nested = _parse_certification_data(inner, "certification_data")
    if inner.remaining:
        raise EvidenceFormatError(
            f"QE report certification data: {inner.remaining} unparsed bytes after the nested certification data"
        )
    return QuoteSignatureData(
        signature=signature,
        attestation_key=attestation_key,
        qe_certification=QeReportCertificationData(qe_report, qe_report_signature, qe_auth_data, nested),
    )


def parse_quote(data: bytes) -> TdxQuote:
    """Decode a TDX DCAP quote (version 4 or 5).

    Raises :class:`EvidenceTooLargeError` above :data:`MAX_QUOTE_BYTES` (nothing is
    parsed) and :class:`EvidenceFormatError`, naming the field, for anything malformed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"quote: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_QUOTE_BYTES:
        raise EvidenceTooLargeError(
            f"quote is {len(data)} bytes; nothing larger than {MAX_QUOTE_BYTES} bytes is accepted"
        )
    data = bytes(data)
    reader = _Reader(data)
    if len(data) < HEADER_SIZE:
        raise EvidenceFormatError(f"quote is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    header = QuoteHeader.from_bytes(reader.take(HEADER_SIZE, "header"))
    if header.version not in SUPPORTED_QUOTE_VERSIONS:
        raise EvidenceFormatError(f"header.version: {header.version} is not a supported TDX quote version (4 or 5)")
    if header.attestation_key_type != ATTESTATION_KEY_TYPE_ECDSA_P256:
        raise EvidenceFormatError(
            f"header.attestation_key_type: {header.attestation_key_type} is not supported "
            f"(expected {ATTESTATION_KEY_TYPE_ECDSA_P256}, ECDSA-256 with P-256)"
        )
    if header.tee_type != TEE_TYPE_TDX:
        raise EvidenceFormatError(f"header.tee_type: {header.tee_type:#x} is not TDX ({TEE_TYPE_TDX:#x})")
    if header.version == QUOTE_VERSION_4:
        body_bytes = reader.take(TD_REPORT10_SIZE, "body")
    else:
        body_type = reader.u16("body_descriptor.type")
        body_size = reader.u32("body_descriptor.size")
        expected = BODY_SIZE_BY_TYPE.get(body_type)
        if expected is None:
            raise EvidenceFormatError(
                f"body_descriptor.type: {body_type} is not a TD report body "
                f"({BODY_TYPE_TDX10} = TDX 1.0, {BODY_TYPE_TDX15} = TDX 1.5)"
            )
        if body_size != expected:
            raise EvidenceFormatError(
                f"body_descriptor.size: {body_size} does not match body type {body_type} ({expected} bytes)"
            )
        body_bytes = reader.take(body_size, "body")
    body = TdReportBody.from_bytes(body_bytes)
    signature_size = reader.u32("signature_data_len")
    if signature_size > reader.remaining:
        raise EvidenceFormatError(
            f"signature_data_len {signature_size} points past the end of the quote ({reader.remaining} bytes remain)"
        )
    start = reader.pos
    reader.take(signature_size, "signature data")
    signature_data = _parse_signature_data(data, start, start + signature_size)
    return TdxQuote(header, body, signature_data, trailing=data[reader.pos :])


def looks_like_tdx_quote(data: bytes) -> bool:
    """True when the fixed header fields say "TDX DCAP quote, version 4 or 5, ECDSA P-256"."""
    if len(data) < HEADER_SIZE:
        return False
    version, key_type, tee_type = struct.unpack_from("<HHI", data, 0)
    return (
        version in SUPPORTED_QUOTE_VERSIONS and key_type == ATTESTATION_KEY_TYPE_ECDSA_P256 and tee_type == TEE_TYPE_TDX
    )


# --- Intel SGX extensions of PCK certificates -------------------------------------------

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_OID_PPID = SGX_EXTENSIONS_OID + ".1"
_OID_TCB = SGX_EXTENSIONS_OID + ".2"
_OID_PCE_ID = SGX_EXTENSIONS_OID + ".3"
_OID_FMSPC = SGX_EXTENSIONS_OID + ".4"
_OID_SGX_TYPE = SGX_EXTENSIONS_OID + ".5"
_OID_PLATFORM_INSTANCE_ID = SGX_EXTENSIONS_OID + ".6"
_OID_CONFIGURATION = SGX_EXTENSIONS_OID + ".7"
_OID_PCESVN = _OID_TCB + ".17"
_OID_CPUSVN = _OID_TCB + ".18"
_CONFIGURATION_OIDS = {
    _OID_CONFIGURATION + ".1": "dynamic_platform",
    _OID_CONFIGURATION + ".2": "cached_keys",
    _OID_CONFIGURATION + ".3": "smt_enabled",
}

SGX_TYPES = {0: "Standard", 1: "Scalable", 2: "ScalableWithIntegrity"}


class _ExtensionEntry(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped: its base classes are Any
    _fields: ClassVar[list[tuple[str, Any]]] = [("oid", core.ObjectIdentifier), ("value", core.Any)]


class _ExtensionEntries(core.SequenceOf):  # type: ignore[misc]  # asn1crypto is untyped: its base classes are Any
    _child_spec = _ExtensionEntry


class _Enumerated(core.Integer):  # type: ignore[misc]  # asn1crypto is untyped: its base classes are Any
    """ENUMERATED read as a plain integer (asn1crypto's Enumerated needs a name map)."""

    tag = 10


@dataclass(frozen=True)
class PckTcb:
    """The TCB of a PCK certificate: 16 SGX TCB component SVNs, PCESVN and CPUSVN."""

    sgx_tcb_components: tuple[int, ...]
    pce_svn: int
    cpu_svn: bytes


@dataclass(frozen=True)
class PlatformConfiguration:
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None


@dataclass(frozen=True)
class SgxExtensions:
    """Intel SGX extensions of a PCK certificate (OID 1.2.840.113741.1.13.1)."""

    ppid: bytes
    tcb: PckTcb
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None = None
    configuration: PlatformConfiguration | None = None

    @property
    def sgx_type_name(self) -> str:
        return SGX_TYPES.get(self.sgx_type, f"unknown ({self.sgx_type})")


def _entries(der: bytes, where: str) -> dict[str, core.Any]:
    """OID -> value of a SEQUENCE OF (OID, ANY). Every value is parsed here (asn1crypto
    parses ANY lazily, and a malformed one would otherwise raise later, untyped)."""
    try:
        parsed = _ExtensionEntries.load(der, strict=True)
        result: dict[str, core.Any] = {}
        for entry in parsed:
            oid = entry["oid"].dotted
            if oid in result:
                raise CertificateFormatError(f"{where}: duplicate entry {oid}")
            value = entry["value"]
            value.dump()  # forces the lazy parse of the ANY value
            result[oid] = value
        return result
    except CertificateFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise CertificateFormatError(f"{where}: not a SEQUENCE of (OID, value) entries: {exc}") from exc


def _typed(value: Any, spec: Any, where: str) -> Any:
    """``value`` re-read as the asn1crypto type ``spec``, as a native Python value."""
    try:
        return spec.load(value.dump(), strict=True).native
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise CertificateFormatError(f"{where}: expected {spec.__name__}: {exc}") from exc


@overload
def _octets(
    entries: dict[str, core.Any], oid: str, name: str, size: int | None, *, required: Literal[True] = True
) -> bytes: ...
@overload
def _octets(entries: dict[str, core.Any], oid: str, name: str, size: int | None, *, required: bool) -> bytes | None: ...
def _octets(
    entries: dict[str, core.Any], oid: str, name: str, size: int | None, *, required: bool = True
) -> bytes | None:
    if oid not in entries:
        if required:
            raise CertificateFormatError(f"SGX extensions: {name} ({oid}) is missing")
        return None
    value = bytes(_typed(entries[oid], core.OctetString, f"SGX extensions {name}"))
    if size is not None and len(value) != size:
        raise CertificateFormatError(f"SGX extensions: {name} is {len(value)} bytes, expected {size}")
    return value


def _integer(value: Any, name: str, bits: int, spec: Any = core.Integer) -> int:
    number = _typed(value, spec, f"SGX extensions {name}")
    if not isinstance(number, int) or not 0 <= number < (1 << bits):
        raise CertificateFormatError(f"SGX extensions: {name} = {number!r} is out of range")
    return number


@lru_cache(maxsize=256)
def decode_sgx_extensions(value_der: bytes) -> SgxExtensions:
    """Decode the DER value of the SGX extensions (the extension's extnValue content).

    A pure function of the bytes, so results are kept (a platform's PCK certificate comes
    with every quote it makes); malformed input raises every time."""
    entries = _entries(value_der, "SGX extensions")
    if _OID_TCB not in entries:
        raise CertificateFormatError(f"SGX extensions: TCB ({_OID_TCB}) is missing")
    tcb_entries = _entries(entries[_OID_TCB].dump(), "SGX extensions TCB")
    components = []
    for index in range(1, 17):
        oid = f"{_OID_TCB}.{index}"
        if oid not in tcb_entries:
            raise CertificateFormatError(f"SGX extensions: TCB component {index} ({oid}) is missing")
        components.append(_integer(tcb_entries[oid], f"SGX TCB comp{index:02d} SVN", 8))
    if _OID_PCESVN not in tcb_entries:
        raise CertificateFormatError(f"SGX extensions: PCESVN ({_OID_PCESVN}) is missing")
    pce_svn = _integer(tcb_entries[_OID_PCESVN], "PCESVN", 16)
    cpu_svn = _octets(tcb_entries, _OID_CPUSVN, "CPUSVN", 16)
    if _OID_SGX_TYPE not in entries:
        raise CertificateFormatError(f"SGX extensions: SGX type ({_OID_SGX_TYPE}) is missing")
    sgx_type = _integer(entries[_OID_SGX_TYPE], "SGX type", 8, _Enumerated)
    configuration = None
    if _OID_CONFIGURATION in entries:
        config_entries = _entries(entries[_OID_CONFIGURATION].dump(), "SGX extensions configuration")
        flags: dict[str, bool | None] = {name: None for name in _CONFIGURATION_OIDS.values()}
        for oid, name in _CONFIGURATION_OIDS.items():
            if oid in config_entries:
                flags[name] = bool(_typed(config_entries[oid], core.Boolean, f"SGX extensions {name}"))
        configuration = PlatformConfiguration(**flags)
    return SgxExtensions(
        ppid=_octets(entries, _OID_PPID, "PPID", 16),
        tcb=PckTcb(tuple(components), pce_svn, cpu_svn),
        pce_id=_octets(entries, _OID_PCE_ID, "PCE-ID", 2),
        fmspc=_octets(entries, _OID_FMSPC, "FMSPC", 6),
        sgx_type=sgx_type,
        platform_instance_id=_octets(entries, _OID_PLATFORM_INSTANCE_ID, "PlatformInstanceID", 16, required=False),
        configuration=configuration,
    )


def pck_sgx_extensions(cert: Certificate) -> SgxExtensions:
    """The SGX extensions of a PCK leaf certificate (CertificateFormatError when absent or malformed)."""
    value = cert.extension_value(SGX_EXTENSIONS_OID)
    if value is None:
        raise CertificateFormatError(f"certificate {cert.subject!r} has no Intel SGX extensions ({SGX_EXTENSIONS_OID})")
    return decode_sgx_extensions(value)


def encode_sgx_extensions(extensions: SgxExtensions) -> bytes:
    """DER of the SGX extensions value (for building PCK certificates, e.g. the simulated TEE)."""

    def entry(oid: str, value: core.Asn1Value) -> _ExtensionEntry:
        return _ExtensionEntry({"oid": oid, "value": core.Any.load(value.dump())})

    tcb = [entry(f"{_OID_TCB}.{i + 1}", core.Integer(svn)) for i, svn in enumerate(extensions.tcb.sgx_tcb_components)]
    tcb.append(entry(_OID_PCESVN, core.Integer(extensions.tcb.pce_svn)))
    tcb.append(entry(_OID_CPUSVN, core.OctetString(extensions.tcb.cpu_svn)))
    items = [
        entry(_OID_PPID, core.OctetString(extensions.ppid)),
        entry(_OID_TCB, _ExtensionEntries(tcb)),
        entry(_OID_PCE_ID, core.OctetString(extensions.pce_id)),
        entry(_OID_FMSPC, core.OctetString(extensions.fmspc)),
        entry(_OID_SGX_TYPE, _Enumerated(extensions.sgx_type)),
    ]
    if extensions.platform_instance_id is not None:
        items.append(entry(_OID_PLATFORM_INSTANCE_ID, core.OctetString(extensions.platform_instance_id)))
    if extensions.configuration is not None:
        config = [
            entry(oid, core.Boolean(getattr(extensions.configuration, name)))
            for oid, name in _CONFIGURATION_OIDS.items()
            if getattr(extensions.configuration, name) is not None
        ]
        items.append(entry(_OID_CONFIGURATION, _ExtensionEntries(config)))
    return bytes(_ExtensionEntries(items).dump())
