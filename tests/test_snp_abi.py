"""SEV-SNP report ABI: every field of the real Milan vector, versions, TCB layouts, certificate table."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from attestation.errors import EvidenceFormatError, EvidenceTooLargeError
from attestation.platforms import registry
from attestation.platforms.snp.abi import (
    REPORT_SIZE,
    SIGNED_SIZE,
    TcbVersion,
    build_cert_table,
    encode_report,
    encode_signature,
    flags_word,
    new_report,
    parse_cert_table,
    parse_report,
    product_from_cpuid,
)

MEASUREMENT = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"


@pytest.fixture(scope="module")
def milan(vectors: Path) -> bytes:
    return (vectors / "sev-snp/milan-report-v2.bin").read_bytes()


def test_milan_vector_facts(milan: bytes) -> None:
    report = parse_report(milan)
    assert report.version == 2
    assert report.policy == 0xB0000
    assert report.debug  # bit 19
    assert report.measurement.hex() == MEASUREMENT
    assert report.reported_tcb_raw.hex() == "0200000000000544"
    assert report.tcb("reported", "milan") == TcbVersion(bootloader=2, tee=0, snp=5, microcode=0x44)
    assert report.signing_key == "vcek"
    assert report.signature_algo == 1
    assert report.signed_bytes == milan[:0x2A0]
    assert report.signature_r == int.from_bytes(milan[0x2A0:0x2E8], "little")
    assert report.signature_s == int.from_bytes(milan[0x2E8:0x330], "little")
    assert report.product_from_cpuid is None  # version 2 has no CPUID fields
    assert report.current_version == report.committed_version == "1.49.3"


def test_encoding_is_byte_exact(milan: bytes) -> None:
    assert encode_report(parse_report(milan)) == milan


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 4096])
def test_wrong_sizes_are_refused(milan: bytes, size: int) -> None:
    data = (milan * 4)[:size]
    with pytest.raises(EvidenceFormatError, match="1184 bytes"):
        parse_report(data)


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(EvidenceTooLargeError):
        parse_report(bytes(65 * 1024))


@pytest.mark.parametrize("version", [0, 1, 4, 6, 0xFFFFFFFF])
def test_unsupported_versions_are_refused(milan: bytes, version: int) -> None:
    data = struct.pack("<I", version) + milan[4:]
    with pytest.raises(EvidenceFormatError, match=f"version {version} is not supported"):
        parse_report(data)


def test_platform_detection(milan: bytes) -> None:
    assert registry.detect(milan).name == "sev-snp"
    with pytest.raises(EvidenceFormatError, match="unrecognised evidence"):
        registry.detect(b"\x07" + milan[1:])


def test_turin_tcb_layout_has_fmc() -> None:
    raw = bytes([9, 3, 0, 24, 0, 0, 0, 0xD5])
    tcb = TcbVersion.from_bytes(raw, "turin")
    assert tcb == TcbVersion(bootloader=3, tee=0, snp=24, microcode=0xD5, fmc=9)
    assert tcb.to_bytes("turin") == raw
    assert tcb.components() == {"bootloader": 3, "tee": 0, "snp": 24, "microcode": 0xD5, "fmc": 9}
    milan = TcbVersion.from_bytes(raw, "milan")
    assert milan.fmc is None and milan.bootloader == 9 and milan.snp == 0
    with pytest.raises(EvidenceFormatError, match="no FMC"):
        tcb.to_bytes("genoa")


@pytest.mark.parametrize(
    ("family", "model", "product"),
    [
        (0x19, 0x01, "milan"),
        (0x19, 0x11, "genoa"),
        (0x19, 0xA0, "genoa"),
        (0x1A, 0x02, "turin"),
        (0x17, 0x31, None),
        (0x19, 0x50, None),
    ],
)
def test_product_from_cpuid(family: int, model: int, product: str | None) -> None:
    assert product_from_cpuid(family, model) == product


def test_version_3_and_5_fields_round_trip() -> None:
    v3 = new_report(version=3, cpuid_fam_id=0x19, cpuid_mod_id=0x11, cpuid_step=1, launch_mit_vector=7)
    parsed3 = parse_report(encode_report(v3))
    assert parsed3.product_from_cpuid == "genoa"
    assert parsed3.launch_mit_vector == 0  # not a field before version 5
    v5 = new_report(
        version=5,
        cpuid_fam_id=0x1A,
        cpuid_mod_id=0x02,
        launch_mit_vector=7,
        current_mit_vector=3,
        flags=flags_word(mask_chip_key=True, signing_key="vlek"),
    )
    parsed5 = parse_report(encode_report(v5))
    assert (parsed5.product_from_cpuid, parsed5.launch_mit_vector, parsed5.current_mit_vector) == ("turin", 7, 3)
    assert parsed5.signing_key == "vlek" and parsed5.mask_chip_key and not parsed5.author_key_en
    assert len(encode_report(v5)) == REPORT_SIZE


def test_signature_field_layout() -> None:
    field = encode_signature(0x0102, 0x0304)
    assert len(field) == 512 and field[:2] == b"\x02\x01" and field[72:74] == b"\x04\x03" and not any(field[144:])
    assert SIGNED_SIZE == 0x2A0


def test_certificate_table_round_trip_and_errors() -> None:
    table = build_cert_table({"vcek": b"V" * 10, "ask": b"A" * 3, "ark": b"R" * 5})
    assert parse_cert_table(table) == {"vcek": b"V" * 10, "ask": b"A" * 3, "ark": b"R" * 5}
    # GUID of the VCEK entry as AMD defines it, little-endian UUID bytes.
    assert table[:16].hex() == "8d75da6364e66445adc5f4b93be8accd"
    with pytest.raises(EvidenceFormatError, match="truncated"):
        parse_cert_table(table[:20])
    bad = bytearray(table)
    struct.pack_into("<I", bad, 16 + 4, 10_000)  # length beyond the table
    with pytest.raises(EvidenceFormatError, match="outside the table"):
        parse_cert_table(bytes(bad))
    with pytest.raises(EvidenceFormatError, match="more than one VCEK"):
        parse_cert_table(build_cert_table({"vcek": b"x"})[:24] + build_cert_table({"vcek": b"x"}))
    with pytest.raises(EvidenceTooLargeError):
        parse_cert_table(bytes(70_000))
