"""SPDM GET_MEASUREMENTS evidence of an NVIDIA Hopper GPU: parsing, round trip, malformed input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation.abi.x509 import parse_certificates
from attestation.errors import EvidenceFormatError, EvidenceTooLargeError
from attestation.platforms.nvidia.abi import (
    FWID_EXTENSION_OID,
    REQUEST_SIZE,
    SIGNATURE_SIZE,
    GpuEvidence,
    MeasurementBlock,
    MeasurementRequest,
    MeasurementsResponse,
    OpaqueFieldType,
    build_evidence,
    decode_vbios_version,
    encode_fwid_extension,
    encode_text,
    encode_vbios_version,
    looks_like_gpu_evidence,
    opaque_fields,
    parse_fwid_extension,
    parse_gpu_evidence,
    parse_gpu_evidence_any,
    parse_gpu_evidence_hex,
)

HOPPER_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
HOPPER_FWID = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"


@pytest.fixture(scope="module")
def hopper_hex(vectors: Path) -> str:
    return (vectors / "nvidia-gpu" / "hopper-attestation-report.hex").read_text()


@pytest.fixture(scope="module")
def hopper(hopper_hex: str) -> GpuEvidence:
    return parse_gpu_evidence_hex(hopper_hex)


def test_request_fields(hopper: GpuEvidence) -> None:
    request = hopper.request
    assert (request.version, request.param1, request.param2, request.slot_id) == (0x11, 0x01, 0xFF, 0)
    assert request.signature_requested
    assert request.nonce.hex() == HOPPER_NONCE
    assert hopper.nonce == request.nonce


def test_response_fields(hopper: GpuEvidence) -> None:
    response = hopper.response
    assert (response.version, response.param1, response.param2, response.slot_id) == (0x11, 0, 0, 0)
    assert [b.index for b in response.blocks] == list(range(1, 65))
    assert all(b.value_type == 0x01 and not b.is_raw_bit_stream and len(b.value) == 48 for b in response.blocks)
    assert response.measurement(4).hex().startswith("73bbf35822549e28")
    assert response.measurement(65) is None
    assert response.responder_nonce.hex() == "b4b8a06aaaa35542839388e159d447a5d6f6194998fd86513e2d591ccf640985"
    assert len(response.signature) == SIGNATURE_SIZE


def test_opaque_fields(hopper: GpuEvidence) -> None:
    opaque = hopper.response.opaque
    assert opaque.driver_version == "550.90.07"
    assert opaque.vbios_version == "96.00.9f.00.01"
    assert opaque.fwid.hex() == HOPPER_FWID
    assert opaque.text(OpaqueFieldType.CHIP_SKU) == "882"
    assert opaque.text(OpaqueFieldType.PROJECT) == "1010"
    assert opaque.protected_pcie_status == b"\x55"
    assert opaque.raw(OpaqueFieldType.NVDEC0_STATUS) == b"\x55"
    counts = opaque.measurement_counts
    assert len(counts) == 64 and counts[11] == 130  # index 12 was extended 130 times
    assert [f.type_id for f in opaque.fields] == [6, 14, 15, 16, 17, 18, 19, 3, 4, 12, 13, 11, 20, 21]


def test_signed_bytes_are_request_and_response_without_signature(hopper: GpuEvidence) -> None:
    assert hopper.signed_bytes + hopper.signature == hopper.raw
    assert len(hopper.raw) == 4117
    assert hopper.signed_bytes[:REQUEST_SIZE] == hopper.request.to_bytes()


def test_round_trip_is_byte_exact(hopper: GpuEvidence, hopper_hex: str) -> None:
    assert hopper.to_bytes() == hopper.raw
    assert hopper.to_hex() == hopper_hex.strip()
    assert build_evidence(hopper.request, hopper.response) == hopper


def test_binary_hex_and_detection(hopper: GpuEvidence, hopper_hex: str) -> None:
    assert parse_gpu_evidence(hopper.raw) == hopper
    assert parse_gpu_evidence_any(hopper.raw) == hopper
    assert parse_gpu_evidence_any(hopper_hex) == hopper
    assert parse_gpu_evidence_any(hopper_hex.encode()) == hopper
    spaced = "\n".join(hopper_hex[i : i + 64] for i in range(0, len(hopper_hex.strip()), 64))
    assert parse_gpu_evidence_hex(spaced) == hopper
    assert looks_like_gpu_evidence(hopper.raw)
    assert looks_like_gpu_evidence(hopper_hex.encode())
    assert looks_like_gpu_evidence(hopper_hex)
    assert not looks_like_gpu_evidence(b"\x02\x00" + bytes(100))


def test_leaf_fwid_extension_is_a_dice_composite_device_id(vectors: Path, hopper: GpuEvidence) -> None:
    chain = parse_certificates((vectors / "nvidia-gpu" / "hopper-cert-chain.pem").read_bytes())
    leaf, brom = chain[0], chain[1]
    assert "FMC LF" in leaf.subject
    value = leaf.extension_value(FWID_EXTENSION_OID)
    fwid = parse_fwid_extension(value)
    assert (fwid.version, fwid.hash_name) == (1, "sha384")
    assert fwid.digest == hopper.response.opaque.fwid
    # NVIDIA's and trustee's verifiers take "the last 48 bytes": the same bytes.
    assert value[-48:] == fwid.digest
    # The DeviceID key in the extension is the GSP BROM key that issued the leaf.
    assert fwid.device_id_public_key_der == brom.public_key_der
    assert encode_fwid_extension(fwid.device_id_public_key_der, fwid.digest) == value


def test_vbios_version_codec() -> None:
    assert decode_vbios_version(bytes.fromhex("009f009601000000")) == "96.00.9f.00.01"
    assert encode_vbios_version("96.00.9F.00.01") == bytes.fromhex("009f009601000000")
    with pytest.raises(EvidenceFormatError, match="VBIOS"):
        encode_vbios_version("96.00.9f")


def _response(**changes) -> MeasurementsResponse:
    base = dict(
        version=0x11,
        param1=0,
        param2=0,
        blocks=(MeasurementBlock(1, 0x01, bytes(48)), MeasurementBlock(2, 0x01, b"\x01" * 48)),
        responder_nonce=bytes(32),
        opaque=opaque_fields([(OpaqueFieldType.DRIVER_VERSION, encode_text("550.90.07"))]),
        signature=bytes(96),
    )
    base.update(changes)
    return MeasurementsResponse(**base)


def _evidence_bytes(**changes) -> bytes:
    return MeasurementRequest.for_nonce(bytes(32)).to_bytes() + _response(**changes).to_bytes()


def test_built_evidence_parses_back() -> None:
    evidence = parse_gpu_evidence(_evidence_bytes())
    assert evidence.measurements() == {1: bytes(48), 2: b"\x01" * 48}
    assert evidence.response.opaque.driver_version == "550.90.07"


# --- malformed input: every failure is an EvidenceFormatError naming the field ---------------


def _patch(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:20], "GET_MEASUREMENTS request"),
        (lambda d: _patch(d, 0, b"\x12"), "request SPDMVersion"),
        (lambda d: _patch(d, 1, b"\xe1"), "request RequestResponseCode"),
        (lambda d: _patch(d, 2, b"\x00"), "signature-requested"),
        (lambda d: d[: REQUEST_SIZE + 5], "MEASUREMENTS response header"),
        (lambda d: _patch(d, REQUEST_SIZE, b"\x10"), "differs from the request"),
        (lambda d: _patch(d, REQUEST_SIZE + 1, b"\x61"), "response RequestResponseCode"),
        (lambda d: _patch(d, REQUEST_SIZE + 4, b"\x41"), "measurement block #65 header"),
        (lambda d: _patch(d, REQUEST_SIZE + 4, b"\x3f"), "MeasurementRecordLength"),
        (lambda d: _patch(d, REQUEST_SIZE + 5, b"\xff\xff\x00"), "MeasurementRecord"),
        (lambda d: _patch(d, REQUEST_SIZE + 8 + 1, b"\x02"), "MeasurementSpecification"),
        (lambda d: _patch(d, REQUEST_SIZE + 8 + 2, b"\x34"), "measurement block"),
        (lambda d: _patch(d, REQUEST_SIZE + 8 + 5, b"\x31"), "DMTFSpecMeasurementValueSize"),
        (lambda d: _patch(d, REQUEST_SIZE + 8 + 55, b"\x01"), "appears twice"),
        (lambda d: d[:-1], "Signature"),
        (lambda d: d[: REQUEST_SIZE + 8 + 3520 + 20], "response Nonce"),
        (lambda d: d[: REQUEST_SIZE + 8 + 3520 + 33], "OpaqueLength"),
        (lambda d: _patch(d, REQUEST_SIZE + 8 + 3520 + 32, b"\xff\xff"), "OpaqueData"),
    ],
)
def test_malformed_hopper_evidence(hopper: GpuEvidence, mutate, message: str) -> None:
    with pytest.raises(EvidenceFormatError, match=message):
        parse_gpu_evidence(mutate(hopper.raw))


def test_malformed_opaque_fields() -> None:
    def opaque(*items):
        return opaque_fields(items)

    cases = [
        ((OpaqueFieldType.DRIVER_VERSION, b"550\x00x\x00"), "NUL byte inside"),
        ((OpaqueFieldType.DRIVER_VERSION, "5é".encode()), "not ASCII"),
        ((OpaqueFieldType.CHIP_SKU, b"88\x07"), "control characters"),
        ((OpaqueFieldType.VBIOS_VERSION, b"\x00" * 7), "vbios_version"),
        ((OpaqueFieldType.MSRSCNT, b"\x00" * 6), "multiple of 4"),
        ((OpaqueFieldType.FWID, b"\x00" * 47), "fwid"),
        ((OpaqueFieldType.INVALID, b""), "INVALID"),
    ]
    for item, message in cases:
        with pytest.raises(EvidenceFormatError, match=message):
            opaque(item)
    with pytest.raises(EvidenceFormatError, match="appears twice"):
        opaque((3, encode_text("1")), (3, encode_text("2")))


def test_truncated_opaque_field_header_and_data() -> None:
    good = _evidence_bytes()
    opaque_at = REQUEST_SIZE + 8 + 2 * 55 + 32
    opaque_len = int.from_bytes(good[opaque_at : opaque_at + 2], "little")
    # Opaque data of 3 bytes: a truncated field header.
    short = good[:opaque_at] + (3).to_bytes(2, "little") + b"\x03\x00\x01" + bytes(96)
    with pytest.raises(EvidenceFormatError, match="opaque field header"):
        parse_gpu_evidence(short)
    # A field that claims more data than the opaque block holds.
    body = (3).to_bytes(2, "little") + (200).to_bytes(2, "little") + b"abc"
    bad = good[:opaque_at] + len(body).to_bytes(2, "little") + body + bytes(96)
    with pytest.raises(EvidenceFormatError, match="driver_version"):
        parse_gpu_evidence(bad)
    assert opaque_len > 0


def test_unknown_opaque_field_is_kept() -> None:
    evidence = parse_gpu_evidence(_evidence_bytes(opaque=opaque_fields([(200, b"\x01\x02")])))
    (item,) = evidence.response.opaque.fields
    assert (item.name, item.value) == ("opaque_field_200", b"\x01\x02")


def test_hex_errors_and_size_limits() -> None:
    with pytest.raises(EvidenceFormatError, match="not a hex digit"):
        parse_gpu_evidence_hex("11e0zz")
    with pytest.raises(EvidenceFormatError, match="odd number"):
        parse_gpu_evidence_hex("11e")
    with pytest.raises(EvidenceFormatError, match="non-ASCII"):
        parse_gpu_evidence_hex("11é0")
    with pytest.raises(EvidenceTooLargeError):
        parse_gpu_evidence(b"\x11\xe0" + bytes(70_000))
    with pytest.raises(EvidenceTooLargeError):
        parse_gpu_evidence_hex("00" * 70_000)
    with pytest.raises(EvidenceFormatError, match="must be bytes"):
        parse_gpu_evidence("11e0")  # type: ignore[arg-type]


def test_builder_rejects_impossible_values() -> None:
    with pytest.raises(EvidenceFormatError, match="nonce"):
        MeasurementRequest.for_nonce(bytes(31))
    with pytest.raises(EvidenceFormatError, match="slot"):
        MeasurementRequest.for_nonce(bytes(32), slot_id=9)
    with pytest.raises(EvidenceFormatError, match="signature"):
        _response(signature=bytes(95)).to_bytes()
    with pytest.raises(EvidenceFormatError, match="index"):
        MeasurementBlock(256, 1, b"").to_bytes()
    with pytest.raises(EvidenceFormatError, match="param2"):
        MeasurementRequest(0x11, 1, 300, bytes(32), 0).to_bytes()
    with pytest.raises(EvidenceFormatError, match="blocks"):
        _response(blocks=tuple(MeasurementBlock(i % 256, 1, b"") for i in range(256))).to_bytes()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_leak_other_exceptions(data: bytes) -> None:
    try:
        parse_gpu_evidence(b"\x11\xe0\x01\xff" + data)
    except EvidenceFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=4116), st.integers(min_value=1, max_value=255))
def test_corrupted_hopper_bytes_parse_or_raise_typed_error(vectors: Path, position: int, xor: int) -> None:
    raw = parse_gpu_evidence_hex((vectors / "nvidia-gpu" / "hopper-attestation-report.hex").read_text()).raw
    corrupted = raw[:position] + bytes([raw[position] ^ xor]) + raw[position + 1 :]
    try:
        parse_gpu_evidence(corrupted)
    except EvidenceFormatError:
        pass
