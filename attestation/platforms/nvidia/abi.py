"""NVIDIA GPU attestation evidence: SPDM 1.1 GET_MEASUREMENTS request + signed MEASUREMENTS response.

This module turns bytes into typed structures and back; it does no cryptography.

The evidence an NVIDIA Hopper GPU in confidential-computing mode returns (through
NVML's ``nvmlDeviceGetConfComputeGpuAttestationReport``, and as NVIDIA's local
verifier and confidential-containers/trustee read it) is the SPDM 1.1 (DMTF DSP0274)
``GET_MEASUREMENTS`` request the driver sent, immediately followed by the GPU's
``MEASUREMENTS`` response::

    request (37 bytes)
      0   SPDMVersion               1   0x11 (SPDM 1.1)
      1   RequestResponseCode       1   0xE0 GET_MEASUREMENTS
      2   Param1                    1   bit 0: signature requested (must be set)
      3   Param2                    1   measurement operation (0xFF = all blocks)
      4   Nonce                     32  chosen by the requester (the verifier's nonce)
      36  SlotIDParam               1   bits 3:0 certificate slot

    response
      0   SPDMVersion               1   0x11
      1   RequestResponseCode       1   0x60 MEASUREMENTS
      2   Param1                    1
      3   Param2                    1   bits 3:0 slot id
      4   NumberOfBlocks            1
      5   MeasurementRecordLength   3   little-endian
      8   MeasurementRecord         L1  NumberOfBlocks measurement blocks
      8+L1  Nonce                   32  responder nonce
      40+L1 OpaqueLength            2   little-endian
      42+L1 OpaqueData              L2  NVIDIA type-length-value fields
      42+L1+L2 Signature            96  ECDSA P-384 r || s, big-endian

    measurement block:  Index (1) | MeasurementSpecification (1, 0x01 = DMTF) |
                        MeasurementSize (2, LE) | DMTF measurement
    DMTF measurement:   DMTFSpecMeasurementValueType (1) | DMTFSpecMeasurementValueSize (2, LE) |
                        DMTFSpecMeasurementValue
    opaque field:       DataType (2, LE) | DataSize (2, LE) | Data

The signature covers the request and the response up to (not including) the
signature, hashed with SHA-384 (SPDM 1.1 has no signing-context prefix).

The response is parsed by its length fields (NumberOfBlocks, MeasurementRecordLength,
OpaqueLength, then the 96-byte signature), as NVIDIA's and Trustee's verifiers parse it:
bytes after the signature are outside the signed region; they are kept apart
(:attr:`GpuEvidence.trailing`) and the verifier warns that it ignored them.

The same module decodes the FWID extension NVIDIA puts in the attestation leaf
certificate (see :func:`parse_fwid_extension`): it is DER, so it is ABI too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

from asn1crypto import core, keys

from ...errors import MAX_EVIDENCE_BYTES, EvidenceFormatError, EvidenceTooLargeError

SPDM_VERSION_1_1 = 0x11
SUPPORTED_SPDM_VERSIONS = frozenset({SPDM_VERSION_1_1})
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
NONCE_SIZE = 32
REQUEST_SIZE = 37
#: Request Param1 bit 0: the requester asks for a signed response.
SIGNATURE_REQUESTED = 0x01
#: Request Param2: return every measurement block.
ALL_MEASUREMENTS = 0xFF
#: MeasurementSpecification bit 0: the block is a DMTF measurement.
DMTF_SPECIFICATION = 0x01
#: ECDSA P-384 signature, raw r || s.
SIGNATURE_SIZE = 96
RESPONSE_HEADER_SIZE = 8
BLOCK_HEADER_SIZE = 4
DMTF_HEADER_SIZE = 3

#: Refuse hex text larger than this (two digits a byte plus whitespace slack).
MAX_EVIDENCE_HEX_CHARS = 2 * MAX_EVIDENCE_BYTES + 4096


class OpaqueFieldType:
    """NVIDIA's opaque-data field identifiers (``OPAQUE_FIELD_ID_*`` in NVIDIA's verifier)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35
    FEATURE_FLAG = 36
    INVALID = 255


#: Claim name of every known opaque field (the names NVIDIA's and trustee's verifiers use).
OPAQUE_FIELD_NAMES: Mapping[int, str] = MappingProxyType(
    {
        1: "cert_issuer_name",
        2: "cert_authority_key_identifier",
        3: "driver_version",
        4: "gpu_info",
        5: "sku",
        6: "vbios_version",
        7: "manufacturer_id",
        8: "tamper_detection",
        9: "smc",
        10: "vpr",
        11: "nvdec0_status",
        12: "measurement_count",
        13: "cpr_info",
        14: "board_id",
        15: "chip_sku",
        16: "chip_sku_mod",
        17: "project",
        18: "project_sku",
        19: "project_sku_mod",
        20: "fwid",
        21: "protected_pcie_status",
        22: "switch_pdi",
        23: "floorswept_ports",
        24: "position_id",
        25: "lock_switch_status",
        32: "gpu_link_conn",
        33: "sys_enable_status",
        34: "opaque_data_version",
        35: "chip_info",
        36: "feature_flag",
    }
)

#: Fields holding NUL-padded ASCII text.
TEXT_FIELDS = frozenset(
    {
        OpaqueFieldType.DRIVER_VERSION,
        OpaqueFieldType.CHIP_SKU,
        OpaqueFieldType.CHIP_SKU_MOD,
        OpaqueFieldType.PROJECT,
        OpaqueFieldType.PROJECT_SKU,
        OpaqueFieldType.CHIP_INFO,
    }
)

#: Status bytes NVIDIA uses for on/off fields (NVDEC0 status, protected PCIe status).
STATUS_ENABLED = 0xAA
STATUS_DISABLED = 0x55
FWID_SIZE = 48
MEASUREMENT_COUNT_SIZE = 4
VBIOS_VERSION_SIZE = 8


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def _header_bytes(what: str, **values: int) -> bytes:
    for name, value in values.items():
        if not 0 <= value <= 0xFF:
            raise EvidenceFormatError(f"{what} {name}: {value} is not a byte")
    return bytes(values.values())


def _need(data: bytes, offset: int, size: int, what: str) -> None:
    if offset + size > len(data):
        raise EvidenceFormatError(
            f"{what}: needs {size} bytes at offset {offset}, only {max(0, len(data) - offset)} remain"
        )


# --------------------------------------------------------------------------- request


@dataclass(frozen=True)
class MeasurementRequest:
    """The SPDM GET_MEASUREMENTS request the evidence begins with."""

    version: int
    param1: int
    param2: int
    nonce: bytes
    slot_id_param: int

    @property
    def signature_requested(self) -> bool:
        return bool(self.param1 & SIGNATURE_REQUESTED)

    @property
    def slot_id(self) -> int:
        return self.slot_id_param & 0x0F

    def to_bytes(self) -> bytes:
        if len(self.nonce) != NONCE_SIZE:
            raise EvidenceFormatError(f"request nonce: must be {NONCE_SIZE} bytes, got {len(self.nonce)}")
        header = _header_bytes(
            "request", version=self.version, code=GET_MEASUREMENTS, param1=self.param1, param2=self.param2
        )
        return header + self.nonce + _header_bytes("request", slot_id_param=self.slot_id_param)

    @classmethod
    def for_nonce(cls, nonce: bytes, *, slot_id: int = 0) -> MeasurementRequest:
        """The request NVIDIA's driver sends: SPDM 1.1, signed, all blocks, slot ``slot_id``."""
        if len(nonce) != NONCE_SIZE:
            raise EvidenceFormatError(f"request nonce: must be {NONCE_SIZE} bytes, got {len(nonce)}")
        if not 0 <= slot_id <= 7:
            raise EvidenceFormatError(f"request slot id: {slot_id} is not in 0..7")
        return cls(SPDM_VERSION_1_1, SIGNATURE_REQUESTED, ALL_MEASUREMENTS, bytes(nonce), slot_id)


def parse_request(data: bytes) -> MeasurementRequest:
    """Decode the 37-byte GET_MEASUREMENTS request."""
    _need(data, 0, REQUEST_SIZE, "GET_MEASUREMENTS request")
    version, code, param1, param2 = data[0], data[1], data[2], data[3]
    if version not in SUPPORTED_SPDM_VERSIONS:
        raise EvidenceFormatError(f"request SPDMVersion: {version:#04x} is not supported (only SPDM 1.1, 0x11)")
    if code != GET_MEASUREMENTS:
        raise EvidenceFormatError(f"request RequestResponseCode: {code:#04x} is not GET_MEASUREMENTS (0xe0)")
    if not param1 & SIGNATURE_REQUESTED:
        raise EvidenceFormatError("request Param1: the signature-requested bit is clear, so the response is unsigned")
    return MeasurementRequest(version, param1, param2, bytes(data[4:36]), data[36])


# --------------------------------------------------------------------------- measurement blocks


@dataclass(frozen=True)
class MeasurementBlock:
    """One SPDM measurement block in DMTF format."""

    index: int
    value_type: int  # DMTFSpecMeasurementValueType (bit 7: raw bit stream instead of a digest)
    value: bytes
    specification: int = DMTF_SPECIFICATION

    @property
    def is_raw_bit_stream(self) -> bool:
        return bool(self.value_type & 0x80)

    def to_bytes(self) -> bytes:
        _header_bytes(
            "measurement block", index=self.index, specification=self.specification, value_type=self.value_type
        )
        dmtf = bytes([self.value_type]) + len(self.value).to_bytes(2, "little") + self.value
        if len(dmtf) > 0xFFFF:
            raise EvidenceFormatError(f"measurement block {self.index}: value of {len(self.value)} bytes is too long")
        return bytes([self.index, self.specification]) + len(dmtf).to_bytes(2, "little") + dmtf


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    offset = 0
    for number in range(count):
        where = f"measurement block #{number + 1}"
        _need(record, offset, BLOCK_HEADER_SIZE, f"{where} header")
        index, specification, size = record[offset], record[offset + 1], _u16(record, offset + 2)
        offset += BLOCK_HEADER_SIZE
        if specification != DMTF_SPECIFICATION:
            raise EvidenceFormatError(
                f"{where} (index {index}) MeasurementSpecification: {specification:#04x} is not DMTF (0x01)"
            )
        if index in seen:
            raise EvidenceFormatError(f"{where}: index {index} appears twice")
        seen.add(index)
        _need(record, offset, size, f"{where} (index {index}) measurement")
        measurement = record[offset : offset + size]
        offset += size
        if size < DMTF_HEADER_SIZE:
            raise EvidenceFormatError(
                f"{where} (index {index}) MeasurementSize: {size} is smaller than the 3-byte DMTF header"
            )
        value_type, value_size = measurement[0], _u16(measurement, 1)
        if value_size != size - DMTF_HEADER_SIZE:
            raise EvidenceFormatError(
                f"{where} (index {index}) DMTFSpecMeasurementValueSize: {value_size} "
                f"does not match MeasurementSize {size} - 3"
            )
        blocks.append(MeasurementBlock(index, value_type, bytes(measurement[DMTF_HEADER_SIZE:]), specification))
    if offset != len(record):
        raise EvidenceFormatError(f"MeasurementRecordLength: {len(record)} bytes, but {count} blocks use {offset}")
    return tuple(blocks)


# --------------------------------------------------------------------------- opaque data


@dataclass(frozen=True)
class OpaqueField:
    """One NVIDIA opaque-data type-length-value field, kept as raw bytes."""

    type_id: int
    value: bytes

    @property
    def name(self) -> str:
        return OPAQUE_FIELD_NAMES.get(self.type_id, f"opaque_field_{self.type_id}")

    def to_bytes(self) -> bytes:
        if not 0 <= self.type_id <= 0xFFFF or len(self.value) > 0xFFFF:
            raise EvidenceFormatError(f"opaque field {self.type_id}: type or length does not fit 16 bits")
        return self.type_id.to_bytes(2, "little") + len(self.value).to_bytes(2, "little") + self.value


def decode_text(value: bytes, what: str) -> str:
    """NUL-padded ASCII text (driver version, chip SKU, project, ...)."""
    text = value.rstrip(b"\x00")
    if b"\x00" in text:
        raise EvidenceFormatError(f"opaque {what}: NUL byte inside the text")
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EvidenceFormatError(f"opaque {what}: not ASCII text") from exc
    if not decoded.isprintable():
        raise EvidenceFormatError(f"opaque {what}: contains control characters")
    return decoded


def encode_text(text: str, size: int | None = None) -> bytes:
    """Encode text as NVIDIA does: ASCII, NUL-terminated, NUL-padded to ``size`` when given."""
    raw = text.encode("ascii") + b"\x00"
    if size is not None:
        if len(raw) > size:
            raise EvidenceFormatError(f"text {text!r} does not fit {size} bytes")
        raw = raw.ljust(size, b"\x00")
    return raw


def decode_vbios_version(value: bytes) -> str:
    """NVIDIA's VBIOS version rendering: the first half reversed, then the first byte of the second half.

    ``00 9f 00 96 01 00 00 00`` -> ``96.00.9f.00.01``.
    """
    if len(value) != VBIOS_VERSION_SIZE:
        raise EvidenceFormatError(f"opaque vbios_version: expected {VBIOS_VERSION_SIZE} bytes, got {len(value)}")
    half = len(value) // 2
    return ".".join(f"{b:02x}" for b in reversed(value[:half])) + f".{value[half]:02x}"


_VBIOS_TEXT = re.compile(r"^([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})\.([0-9a-fA-F]{2})$")


def encode_vbios_version(text: str) -> bytes:
    """Inverse of :func:`decode_vbios_version`."""
    match = _VBIOS_TEXT.match(text)
    if not match:
        raise EvidenceFormatError(f"VBIOS version {text!r} is not five dot-separated hex bytes like 96.00.9f.00.01")
    parts = [int(p, 16) for p in match.groups()]
    return bytes(reversed(parts[:4])) + bytes([parts[4], 0, 0, 0])


def decode_measurement_counts(value: bytes) -> tuple[int, ...]:
    """Little-endian 32-bit counters, one per measurement index, starting at index 1."""
    if len(value) % MEASUREMENT_COUNT_SIZE:
        raise EvidenceFormatError(f"opaque measurement_count: {len(value)} bytes is not a multiple of 4")
    return tuple(
        int.from_bytes(value[i : i + MEASUREMENT_COUNT_SIZE], "little")
        for i in range(0, len(value), MEASUREMENT_COUNT_SIZE)
    )


@dataclass(frozen=True)
class OpaqueData:
    """The NVIDIA opaque data of a MEASUREMENTS response, fields in wire order."""

    fields: tuple[OpaqueField, ...]
    _by_type: Mapping[int, bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_type: dict[int, bytes] = {}
        for item in self.fields:
            if item.type_id in by_type:
                raise EvidenceFormatError(f"opaque data: field {item.name} ({item.type_id}) appears twice")
            if item.type_id == OpaqueFieldType.INVALID:
                raise EvidenceFormatError("opaque data: field type 255 (OPAQUE_FIELD_ID_INVALID)")
            by_type[item.type_id] = item.value
        object.__setattr__(self, "_by_type", MappingProxyType(by_type))
        # Decode the typed fields once, so that malformed ones fail at parse time.
        if OpaqueFieldType.DRIVER_VERSION in by_type:
            decode_text(by_type[OpaqueFieldType.DRIVER_VERSION], "driver_version")
        if OpaqueFieldType.VBIOS_VERSION in by_type:
            decode_vbios_version(by_type[OpaqueFieldType.VBIOS_VERSION])
        if OpaqueFieldType.MSRSCNT in by_type:
            decode_measurement_counts(by_type[OpaqueFieldType.MSRSCNT])
        if OpaqueFieldType.FWID in by_type and len(by_type[OpaqueFieldType.FWID]) != FWID_SIZE:
            raise EvidenceFormatError(
                f"opaque fwid: expected {FWID_SIZE} bytes, got {len(by_type[OpaqueFieldType.FWID])}"
            )
        for type_id in TEXT_FIELDS & by_type.keys():
            decode_text(by_type[type_id], OPAQUE_FIELD_NAMES[type_id])

    def raw(self, type_id: int) -> bytes | None:
        return self._by_type.get(type_id)

    def __contains__(self, type_id: object) -> bool:
        return type_id in self._by_type

    @property
    def driver_version(self) -> str | None:
        raw = self.raw(OpaqueFieldType.DRIVER_VERSION)
        return None if raw is None else decode_text(raw, "driver_version")

    @property
    def vbios_version(self) -> str | None:
        raw = self.raw(OpaqueFieldType.VBIOS_VERSION)
        return None if raw is None else decode_vbios_version(raw)

    @property
    def fwid(self) -> bytes | None:
        return self.raw(OpaqueFieldType.FWID)

    @property
    def measurement_counts(self) -> tuple[int, ...] | None:
        raw = self.raw(OpaqueFieldType.MSRSCNT)
        return None if raw is None else decode_measurement_counts(raw)

    @property
    def protected_pcie_status(self) -> bytes | None:
        return self.raw(OpaqueFieldType.PROTECTED_PCIE_STATUS)

    def text(self, type_id: int) -> str | None:
        raw = self.raw(type_id)
        return None if raw is None else decode_text(raw, OPAQUE_FIELD_NAMES.get(type_id, str(type_id)))

    def to_bytes(self) -> bytes:
        return b"".join(item.to_bytes() for item in self.fields)


def _parse_opaque(data: bytes) -> OpaqueData:
    items: list[OpaqueField] = []
    offset = 0
    while offset < len(data):
        _need(data, offset, 4, f"opaque field header at opaque offset {offset}")
        type_id, size = _u16(data, offset), _u16(data, offset + 2)
        offset += 4
        name = OPAQUE_FIELD_NAMES.get(type_id, f"opaque_field_{type_id}")
        _need(data, offset, size, f"opaque field {name} ({type_id}) data")
        items.append(OpaqueField(type_id, bytes(data[offset : offset + size])))
        offset += size
    return OpaqueData(tuple(items))


# --------------------------------------------------------------------------- response


@dataclass(frozen=True)
class MeasurementsResponse:
    """The signed SPDM MEASUREMENTS response."""

    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: OpaqueData
    signature: bytes

    @property
    def slot_id(self) -> int:
        return self.param2 & 0x0F

    def measurement(self, index: int) -> bytes | None:
        for block in self.blocks:
            if block.index == index:
                return block.value
        return None

    def unsigned_bytes(self) -> bytes:
        """The response without its signature: what is signed, after the request."""
        if len(self.blocks) > 0xFF:
            raise EvidenceFormatError(f"NumberOfBlocks: {len(self.blocks)} blocks do not fit one byte")
        if len(self.responder_nonce) != NONCE_SIZE:
            raise EvidenceFormatError(f"responder nonce: must be {NONCE_SIZE} bytes, got {len(self.responder_nonce)}")
        record = b"".join(block.to_bytes() for block in self.blocks)
        if len(record) > 0xFFFFFF:
            raise EvidenceFormatError("MeasurementRecordLength: record does not fit 24 bits")
        opaque = self.opaque.to_bytes()
        if len(opaque) > 0xFFFF:
            raise EvidenceFormatError("OpaqueLength: opaque data does not fit 16 bits")
        return (
            _header_bytes(
                "response",
                version=self.version,
                code=MEASUREMENTS,
                param1=self.param1,
                param2=self.param2,
                blocks=len(self.blocks),
            )
            + len(record).to_bytes(3, "little")
            + record
            + self.responder_nonce
            + len(opaque).to_bytes(2, "little")
            + opaque
        )

    def to_bytes(self) -> bytes:
        if len(self.signature) != SIGNATURE_SIZE:
            raise EvidenceFormatError(f"signature: must be {SIGNATURE_SIZE} bytes, got {len(self.signature)}")
        return self.unsigned_bytes() + self.signature


def parse_response_prefix(data: bytes) -> tuple[MeasurementsResponse, int]:
    """Decode the signed MEASUREMENTS response at the start of ``data`` by its length fields
    (NumberOfBlocks, MeasurementRecordLength, OpaqueLength; the signature is 96 bytes), and
    the number of bytes it spans; whatever follows is not looked at."""
    _need(data, 0, RESPONSE_HEADER_SIZE, "MEASUREMENTS response header")
    version, code, param1, param2, count = data[0], data[1], data[2], data[3], data[4]
    if version not in SUPPORTED_SPDM_VERSIONS:
        raise EvidenceFormatError(f"response SPDMVersion: {version:#04x} is not supported (only SPDM 1.1, 0x11)")
    if code != MEASUREMENTS:
        raise EvidenceFormatError(f"response RequestResponseCode: {code:#04x} is not MEASUREMENTS (0x60)")
    record_length = int.from_bytes(data[5:8], "little")
    offset = RESPONSE_HEADER_SIZE
    _need(data, offset, record_length, "MeasurementRecord")
    blocks = _parse_blocks(bytes(data[offset : offset + record_length]), count)
    offset += record_length
    _need(data, offset, NONCE_SIZE, "response Nonce")
    responder_nonce = bytes(data[offset : offset + NONCE_SIZE])
    offset += NONCE_SIZE
    _need(data, offset, 2, "OpaqueLength")
    opaque_length = _u16(data, offset)
    offset += 2
    _need(data, offset, opaque_length, "OpaqueData")
    opaque = _parse_opaque(bytes(data[offset : offset + opaque_length]))
    offset += opaque_length
    _need(data, offset, SIGNATURE_SIZE, "Signature")
    signature = bytes(data[offset : offset + SIGNATURE_SIZE])
    offset += SIGNATURE_SIZE
    return MeasurementsResponse(version, param1, param2, blocks, responder_nonce, opaque, signature), offset


def parse_response(data: bytes) -> MeasurementsResponse:
    """Decode a signed MEASUREMENTS response that is exactly ``data`` (no bytes after the signature)."""
    response, end = parse_response_prefix(data)
    if end != len(data):
        raise EvidenceFormatError(f"response: {len(data) - end} unexpected bytes after the signature")
    return response


# --------------------------------------------------------------------------- evidence


@dataclass(frozen=True)
class GpuEvidence:
    """Request + response, and the exact bytes they were decoded from.

    ``trailing`` holds the bytes after the response's signature, when the input had any:
    the response is parsed by its length fields (as NVIDIA's and Trustee's verifiers do), so
    such bytes are outside the signed region; the verifier ignores them and says so."""

    request: MeasurementRequest
    response: MeasurementsResponse
    raw: bytes = field(repr=False)
    trailing: bytes = field(default=b"", repr=False)

    @property
    def signed_bytes(self) -> bytes:
        """Request || response without the signature: the bytes the GPU signed."""
        return self.raw[: len(self.raw) - len(self.trailing) - SIGNATURE_SIZE]

    @property
    def signature(self) -> bytes:
        return self.response.signature

    @property
    def nonce(self) -> bytes:
        """The requester's nonce (the one a verifier chooses)."""
        return self.request.nonce

    def measurements(self) -> dict[int, bytes]:
        return {block.index: block.value for block in self.response.blocks}

    def to_bytes(self) -> bytes:
        return self.request.to_bytes() + self.response.to_bytes()

    def to_hex(self) -> str:
        return self.raw.hex()


def build_evidence(request: MeasurementRequest, response: MeasurementsResponse) -> GpuEvidence:
    """Assemble evidence from its parts (the response must already carry its signature)."""
    raw = request.to_bytes() + response.to_bytes()
    return parse_gpu_evidence(raw)


def parse_gpu_evidence(data: bytes) -> GpuEvidence:
    """Decode binary evidence: a 37-byte GET_MEASUREMENTS request followed by the signed
    response, parsed by its length fields; bytes after the signature are kept in
    :attr:`GpuEvidence.trailing` (outside the signed region)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EvidenceFormatError(f"GPU evidence must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceTooLargeError(f"GPU evidence is {len(data)} bytes, over the {MAX_EVIDENCE_BYTES}-byte limit")
    request = parse_request(data)
    if data[REQUEST_SIZE : REQUEST_SIZE + 1] and data[REQUEST_SIZE] != request.version:
        raise EvidenceFormatError(
            f"response SPDMVersion {data[REQUEST_SIZE]:#04x} differs from the request's {request.version:#04x}"
        )
    response, length = parse_response_prefix(data[REQUEST_SIZE:])
    return GpuEvidence(request, response, data, data[REQUEST_SIZE + length :])


_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_WHITESPACE = frozenset(b" \t\r\n")


def parse_gpu_evidence_hex(text: str | bytes) -> GpuEvidence:
    """Decode evidence given as hex text (the format of NVIDIA's and trustee's sample files).

    Whitespace (spaces, tabs, line breaks) anywhere is ignored; anything else that is not
    a hex digit is an error.
    """
    if isinstance(text, str):
        try:
            raw_text = text.encode("ascii")
        except UnicodeEncodeError as exc:
            raise EvidenceFormatError("GPU evidence hex: contains non-ASCII characters") from exc
    elif isinstance(text, (bytes, bytearray, memoryview)):
        raw_text = bytes(text)
    else:
        raise EvidenceFormatError(f"GPU evidence hex must be str or bytes, got {type(text).__name__}")
    if len(raw_text) > MAX_EVIDENCE_HEX_CHARS:
        raise EvidenceTooLargeError(
            f"GPU evidence hex is {len(raw_text)} characters, over the {MAX_EVIDENCE_HEX_CHARS}-character limit"
        )
    digits = bytes(b for b in raw_text if b not in _WHITESPACE)
    for position, char in enumerate(digits):
        if char not in _HEX_DIGITS:
            raise EvidenceFormatError(f"GPU evidence hex: {chr(char)!r} at digit {position} is not a hex digit")
    if len(digits) % 2:
        raise EvidenceFormatError(f"GPU evidence hex: odd number of hex digits ({len(digits)})")
    return parse_gpu_evidence(bytes.fromhex(digits.decode("ascii")))


def is_hex_text(data: bytes | str) -> bool:
    """True when the input looks like hex text rather than binary SPDM (which starts with 0x10..0x1f)."""
    if isinstance(data, str):
        return True
    head = bytes(data[:64]).lstrip(b" \t\r\n")
    return bool(head) and head[0] in _HEX_DIGITS


def parse_gpu_evidence_any(data: bytes | str) -> GpuEvidence:
    """Binary evidence, or hex text given as ``str`` or as ASCII bytes."""
    if isinstance(data, str) or is_hex_text(data):
        return parse_gpu_evidence_hex(data)
    return parse_gpu_evidence(data)


def looks_like_gpu_evidence(data: bytes) -> bool:
    """Header-only detection (for platform auto-detection): binary or hex SPDM 1.1 GET_MEASUREMENTS."""
    if isinstance(data, str):
        return data[:64].lstrip().lower().startswith("11e0")
    if is_hex_text(data):
        return bytes(data[:64]).lstrip(b" \t\r\n").lower().startswith(b"11e0")
    return len(data) >= REQUEST_SIZE and data[0] in SUPPORTED_SPDM_VERSIONS and data[1] == GET_MEASUREMENTS


# --------------------------------------------------------------------------- leaf certificate FWID

#: The DICE extension NVIDIA's attestation leaf certificates carry the firmware ID in.
FWID_EXTENSION_OID = "2.23.133.5.4.1"


class _Fwid(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped: its base classes are Any
    _fields: ClassVar[list[tuple[str, Any]]] = [("hash_alg", core.ObjectIdentifier), ("digest", core.OctetString)]


class _CompositeDeviceId(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped: its base classes are Any
    """TCG DICE / RIoT ``CompositeDeviceID``: version, the DeviceID public key, one FWID."""

    _fields: ClassVar[list[tuple[str, Any]]] = [
        ("version", core.Integer),
        ("device_id", keys.PublicKeyInfo),
        ("fwid", _Fwid),
    ]


_HASH_NAMES = {
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
}


@dataclass(frozen=True)
class CertificateFwid:
    """The FWID NVIDIA certifies in the attestation leaf (extension 2.23.133.5.4.1)."""

    version: int
    device_id_public_key_der: bytes  # SubjectPublicKeyInfo of the DICE DeviceID (the GSP BROM key)
    hash_name: str  # "sha384" on Hopper
    digest: bytes


def parse_fwid_extension(value: bytes) -> CertificateFwid:
    """Decode the 2.23.133.5.4.1 extension value of an NVIDIA attestation leaf.

    NVIDIA stores the TCG DICE (Microsoft RIoT) CompositeDeviceID there::

        SEQUENCE { INTEGER 1, SubjectPublicKeyInfo (DeviceID), SEQUENCE { OID hashAlg, OCTET STRING fwid } }

    NVIDIA's and trustee's verifiers take "the last 48 bytes" of the extension; decoding the
    structure finds the same bytes and rejects anything else.
    """
    try:
        parsed = _CompositeDeviceId.load(bytes(value), strict=True)
        version = int(parsed["version"].native)
        device_id = parsed["device_id"].dump()
        hash_oid = parsed["fwid"]["hash_alg"].dotted
        digest = bytes(parsed["fwid"]["digest"].native)
    except (ValueError, TypeError, KeyError) as exc:
        raise EvidenceFormatError(f"FWID extension {FWID_EXTENSION_OID}: not a DICE CompositeDeviceID: {exc}") from exc
    hash_name = _HASH_NAMES.get(hash_oid)
    if hash_name is None:
        raise EvidenceFormatError(f"FWID extension {FWID_EXTENSION_OID}: unsupported hash algorithm {hash_oid}")
    return CertificateFwid(version, device_id, hash_name, digest)


def encode_fwid_extension(device_id_public_key_der: bytes, digest: bytes, *, hash_name: str = "sha384") -> bytes:
    """Build the extension value NVIDIA uses (for the simulated GPU PKI)."""
    oid = {name: oid for oid, name in _HASH_NAMES.items()}[hash_name]
    encoded = _CompositeDeviceId(
        {
            "version": 1,
            "device_id": keys.PublicKeyInfo.load(device_id_public_key_der),
            "fwid": _Fwid({"hash_alg": oid, "digest": digest}),
        }
    ).dump()
    return bytes(encoded)


def opaque_fields(items: Iterable[tuple[int, bytes]]) -> OpaqueData:
    """Build :class:`OpaqueData` from (type, raw value) pairs, in the given order."""
    return OpaqueData(tuple(OpaqueField(type_id, bytes(value)) for type_id, value in items))
