"""TDX quote ABI: parsing the real v4/v5 quotes, byte-exact round trips, malformed input."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from attestation.abi.x509 import parse_certificates
from attestation.errors import CertificateFormatError, EvidenceFormatError, EvidenceTooLargeError
from attestation.platforms.tdx.abi import (
    BODY_TYPE_TDX15,
    CERT_DATA_PCK_CHAIN,
    INTEL_QE_VENDOR_ID,
    MAX_QUOTE_BYTES,
    SGX_EXTENSIONS_OID,
    CertificationData,
    SgxExtensions,
    TdxQuote,
    decode_sgx_extensions,
    encode_sgx_extensions,
    looks_like_tdx_quote,
    parse_quote,
    pck_sgx_extensions,
)

V4_MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"


@pytest.fixture(scope="module")
def v4_bytes(vectors: Path) -> bytes:
    return (vectors / "tdx/spr-quote-v4.dat").read_bytes()


@pytest.fixture(scope="module")
def v5_bytes(vectors: Path) -> bytes:
    return (vectors / "tdx/quote-v5.dat").read_bytes()


def test_v4_quote_fields(v4_bytes: bytes) -> None:
    quote = parse_quote(v4_bytes)
    assert quote.version == 4
    assert quote.body_type is None
    assert quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert quote.body.mr_td.hex() == V4_MRTD
    assert quote.body.td_attributes.hex() == "0000004000000000"
    assert not quote.body.debug
    assert quote.body.tee_tcb_svn.hex() == "03000400000000000000000000000000"
    assert not quote.body.is_tdx15 and quote.body.tee_tcb_svn2 is None
    qe = quote.qe_report
    assert (qe.isv_prod_id, qe.isv_svn) == (2, 4)
    assert qe.mr_signer.hex() == "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
    cert_data = quote.signature_data.qe_certification.certification_data
    assert cert_data.cert_type == CERT_DATA_PCK_CHAIN
    assert b"BEGIN CERTIFICATE" in cert_data.data
    # go-tdx-guest appended unsigned test bytes after the signature data: kept, byte-exact.
    assert quote.trailing == b"\nextra bytes(only for testing purpose)\n"


def test_v5_quote_fields(v5_bytes: bytes) -> None:
    quote = parse_quote(v5_bytes)
    assert quote.version == 5
    assert quote.body_type == BODY_TYPE_TDX15
    assert quote.body.is_tdx15 and quote.body.size == 648
    assert quote.body.tee_tcb_svn2 is not None and len(quote.body.tee_tcb_svn2) == 16
    assert quote.body.mr_servicetd is not None and len(quote.body.mr_servicetd) == 48
    assert quote.trailing == b""
    # the v5 signed region includes the body descriptor (type 3, size 648)
    assert quote.signed_bytes()[48:54] == struct.pack("<HI", 3, 648)
    assert quote.signed_bytes() == v5_bytes[: 48 + 6 + 648]


@pytest.mark.parametrize("name", ["spr-quote-v4.dat", "quote-v5.dat"])
def test_round_trip_is_byte_exact(vectors: Path, name: str) -> None:
    data = (vectors / "tdx" / name).read_bytes()
    quote = parse_quote(data)
    assert quote.to_bytes() == data
    assert looks_like_tdx_quote(data)


def test_v4_quote_can_be_built_from_fields(v4_bytes: bytes) -> None:
    quote = parse_quote(v4_bytes)
    rebuilt = TdxQuote(quote.header, quote.body, quote.signature_data)
    assert rebuilt.to_bytes() == v4_bytes[: len(v4_bytes) - len(quote.trailing)]
    assert parse_quote(rebuilt.to_bytes()) == rebuilt


def test_constructors_check_field_sizes(v4_bytes: bytes) -> None:
    quote = parse_quote(v4_bytes)
    with pytest.raises(EvidenceFormatError, match=r"body\.mr_td"):
        replace(quote.body, mr_td=b"\x00" * 47)
    with pytest.raises(EvidenceFormatError, match=r"header\.qe_vendor_id"):
        replace(quote.header, qe_vendor_id=b"")
    with pytest.raises(EvidenceFormatError, match=r"TDX 1\.5 bodies need version 5"):
        replace(quote, body=replace(quote.body, tee_tcb_svn2=bytes(16), mr_servicetd=bytes(48)))


def test_looks_like_tdx_quote_rejects_other_input(vectors: Path) -> None:
    assert not looks_like_tdx_quote(b"")
    assert not looks_like_tdx_quote((vectors / "sev-snp/milan-report-v2.bin").read_bytes())
    assert not looks_like_tdx_quote(b"\x03\x00\x02\x00" + bytes(44))


def test_pck_sgx_extensions(v4_bytes: bytes, v5_bytes: bytes) -> None:
    for data, fmspc, comps, pcesvn in (
        (v4_bytes, "50806f000000", (3, 3, 2, 2, 2, 1, 0, 2) + (0,) * 8, 11),
        (v5_bytes, "90c06f000000", (4, 4, 2, 2, 4, 1, 0, 5) + (0,) * 8, 13),
    ):
        pem = parse_quote(data).signature_data.qe_certification.pck_chain_pem
        assert pem is not None
        leaf = parse_certificates(pem.rstrip(b"\x00"))[0]
        ext = pck_sgx_extensions(leaf)
        assert ext.fmspc.hex() == fmspc
        assert ext.tcb.sgx_tcb_components == comps
        assert ext.tcb.pce_svn == pcesvn
        assert ext.tcb.cpu_svn == bytes(comps)
        assert ext.pce_id == b"\x00\x00"
        assert ext.sgx_type_name == "Scalable"
        assert len(ext.ppid) == 16
        # encoding the decoded value reproduces Intel's DER exactly
        assert encode_sgx_extensions(ext) == leaf.extension_value(SGX_EXTENSIONS_OID)
        assert decode_sgx_extensions(encode_sgx_extensions(ext)) == ext


def test_sgx_extensions_errors(v4_bytes: bytes) -> None:
    pem = parse_quote(v4_bytes).signature_data.qe_certification.pck_chain_pem
    assert pem is not None
    leaf, intermediate, _root = parse_certificates(pem.rstrip(b"\x00"))
    with pytest.raises(CertificateFormatError, match="no Intel SGX extensions"):
        pck_sgx_extensions(intermediate)
    with pytest.raises(CertificateFormatError):
        decode_sgx_extensions(b"\x30\x03\x02\x01")
    ext = pck_sgx_extensions(leaf)
    short = replace(ext, fmspc=b"\x01\x02")
    with pytest.raises(CertificateFormatError, match="FMSPC"):
        decode_sgx_extensions(encode_sgx_extensions(short))
    assert isinstance(ext, SgxExtensions)


# --- malformed input -----------------------------------------------------------------


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(EvidenceTooLargeError):
        parse_quote(b"\x04" * (MAX_QUOTE_BYTES + 1))


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 100, 631, 632, 635, 636, 700, 1100, 1200, 4934])
def test_truncated_v4_is_a_format_error(v4_bytes: bytes, cut: int) -> None:
    with pytest.raises(EvidenceFormatError):
        parse_quote(v4_bytes[:cut])


def test_every_truncation_of_v5_is_a_format_error(v5_bytes: bytes) -> None:
    for cut in range(len(v5_bytes)):
        with pytest.raises(EvidenceFormatError):
            parse_quote(v5_bytes[:cut])


@pytest.mark.parametrize("version", [0, 1, 3, 6, 0xFFFF])
def test_wrong_version(v4_bytes: bytes, version: int) -> None:
    data = struct.pack("<H", version) + v4_bytes[2:]
    with pytest.raises(EvidenceFormatError, match=r"header\.version"):
        parse_quote(data)


def test_wrong_key_type_and_tee_type(v4_bytes: bytes) -> None:
    with pytest.raises(EvidenceFormatError, match="attestation_key_type"):
        parse_quote(v4_bytes[:2] + struct.pack("<H", 3) + v4_bytes[4:])
    with pytest.raises(EvidenceFormatError, match="tee_type"):
        parse_quote(v4_bytes[:4] + struct.pack("<I", 0) + v4_bytes[8:])


def _patch(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    return data[:offset] + struct.pack(fmt, value) + data[offset + struct.calcsize(fmt) :]


def test_lengths_pointing_past_the_end(v4_bytes: bytes, v5_bytes: bytes) -> None:
    with pytest.raises(EvidenceFormatError, match="signature_data_len"):
        parse_quote(_patch(v4_bytes, 632, "<I", 0xFFFFFFFF))
    with pytest.raises(EvidenceFormatError, match="signature_data_len"):
        parse_quote(_patch(v4_bytes, 632, "<I", len(v4_bytes)))
    # certification data size larger than its region
    with pytest.raises(EvidenceFormatError, match=r"certification_data\.size"):
        parse_quote(_patch(v4_bytes, 636 + 128 + 2, "<I", 0xFFFF0000))
    # QE auth data size past the end of the certification data
    auth_offset = 636 + 128 + 6 + 384 + 64
    with pytest.raises(EvidenceFormatError, match="qe_auth_data"):
        parse_quote(_patch(v4_bytes, auth_offset, "<H", 0xFFFF))
    # nested certification data size past the end
    nested = auth_offset + 2 + 32 + 2
    with pytest.raises(EvidenceFormatError, match=r"certification_data\.size"):
        parse_quote(_patch(v4_bytes, nested, "<I", 0x7FFFFFFF))
    # v5 body descriptor: unknown type, size that does not match the type
    with pytest.raises(EvidenceFormatError, match=r"body_descriptor\.type"):
        parse_quote(_patch(v5_bytes, 48, "<H", 1))
    with pytest.raises(EvidenceFormatError, match=r"body_descriptor\.size"):
        parse_quote(_patch(v5_bytes, 50, "<I", 0xFFFFFFFF))


def test_signature_data_must_be_fully_consumed(v4_bytes: bytes) -> None:
    quote = parse_quote(v4_bytes)
    sig = quote.signature_data.to_bytes()
    # declared signature data longer than its content: an extra byte inside the region
    padded = quote.signed_bytes() + struct.pack("<I", len(sig) + 1) + sig + b"\x00"
    with pytest.raises(EvidenceFormatError, match=r"certification_data\.size"):
        parse_quote(padded)
    with pytest.raises(EvidenceFormatError, match=r"certification_data\.type"):
        parse_quote(_patch(v4_bytes, 636 + 128, "<H", 5))


def test_non_bytes_input() -> None:
    with pytest.raises(EvidenceFormatError):
        parse_quote("not bytes")  # type: ignore[arg-type]


def test_certification_data_type_preserved(v4_bytes: bytes) -> None:
    quote = parse_quote(v4_bytes)
    other = replace(
        quote.signature_data,
        qe_certification=replace(
            quote.signature_data.qe_certification, certification_data=CertificationData(3, b"\x01" * 8)
        ),
    )
    rebuilt = replace(quote, signature_data=other, trailing=b"")
    parsed = parse_quote(rebuilt.to_bytes())
    assert parsed.signature_data.qe_certification.certification_data == CertificationData(3, b"\x01" * 8)
    assert parsed.signature_data.qe_certification.pck_chain_pem is None
