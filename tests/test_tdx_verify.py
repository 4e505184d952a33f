"""TDX verification and appraisal on the real quotes and Intel collateral in tests/vectors/tdx."""

from __future__ import annotations

import shutil
import struct
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.abi.x509 import parse_certificates, parse_crl
from attestation.errors import CollateralFormatError, EvidenceFormatError, EvidenceTooLargeError
from attestation.findings import Appraisal
from attestation.platforms.base import NEUTRAL_CLAIMS
from attestation.platforms.tdx.abi import CertificationData, parse_quote
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.collateral import load_collateral_dir
from attestation.platforms.tdx.validate import TdxPolicy
from attestation.platforms.tdx.verify import (
    NOT_SUPPORTED,
    pck_chain_of,
    qe_report_signature_reasons,
    quote_signature_reasons,
    verify_tdx_quote,
)
from attestation.policy import Policy

V4_AT = datetime(2023, 7, 1, tzinfo=UTC)
V5_AT = datetime(2026, 2, 15, tzinfo=UTC)
V4_MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
CLAIM_KEYS = {
    "version", "tee_tcb_svn", "mr_seam", "mr_signer_seam", "seam_attributes", "td_attributes", "debug",
    "xfam", "mr_td", "mr_config_id", "mr_owner", "mr_owner_config", "rtmr0", "rtmr1", "rtmr2", "rtmr3",
    "report_data", "fmspc",
}  # fmt: skip


@pytest.fixture(scope="module")
def v4(vectors: Path) -> bytes:
    return (vectors / "tdx/spr-quote-v4.dat").read_bytes()


@pytest.fixture(scope="module")
def v5(vectors: Path) -> bytes:
    return (vectors / "tdx/quote-v5.dat").read_bytes()


@pytest.fixture(scope="module")
def collateral_dir(vectors: Path) -> Path:
    return vectors / "tdx/collateral"


@pytest.fixture(scope="module")
def collateral(collateral_dir: Path):  # noqa: ANN201
    return load_collateral_dir(collateral_dir)


def checks(appraisal: Appraisal) -> set[str]:
    return {reason.check for reason in appraisal.reasons}


# --- authentic quotes --------------------------------------------------------------------


def test_v4_verifies_without_collateral(v4: bytes) -> None:
    appraisal = appraise_tdx(v4, policy=Policy(), at=V4_AT)
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.platform == "tdx"
    assert set(appraisal.claims) == CLAIM_KEYS | set(NEUTRAL_CLAIMS)
    claims = appraisal.claims
    assert claims["platform"] == "tdx" and claims["measurement"] == V4_MRTD and claims["signing_key"] == "pck"
    assert claims["tcb_status"] is None  # no collateral: no TCB verdict
    assert claims["version"] == 4
    assert claims["mr_td"] == V4_MRTD
    assert claims["td_attributes"] == "0000004000000000"
    assert claims["debug"] is False
    assert claims["fmspc"] == "50806f000000"
    assert claims["simulated"] is False
    assert any("39 bytes after its signature data" in w for w in appraisal.warnings)


def test_v5_verifies_without_collateral(v5: bytes) -> None:
    appraisal = appraise_tdx(v5, policy=Policy(), at=V5_AT)
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["version"] == 5
    assert appraisal.claims["fmspc"] == "90c06f000000"
    assert appraisal.claims["td_attributes"] == "0000001000000000"
    assert appraisal.warnings == ()


def test_v5_pck_leaf_not_yet_valid_in_2023(v5: bytes) -> None:
    appraisal = appraise_tdx(v5, policy=Policy(), at=V4_AT)
    assert "tdx.pck.validity" in checks(appraisal)
    assert any("not valid before 2026-01-27" in r.message for r in appraisal.reasons)


def test_v4_facts_with_collateral(v4: bytes, collateral) -> None:  # noqa: ANN001
    quote = parse_quote(v4)
    verification = verify_tdx_quote(quote, collateral=collateral, at=V4_AT)
    # every signature valid (quote, QE report, PCK chain, TCB info, QE identity, both CRLs),
    # the PCK leaf not revoked, the QE matching the TD_QE identity: no authenticity reason.
    assert verification.reasons == ()
    assert verification.missing_collateral == ()
    assert verification.qe_tcb_status == "UpToDate"
    assert quote.qe_report.isv_svn == 4 and quote.qe_report.isv_prod_id == 2
    assert verification.tcb_info is not None and verification.tcb_info.tcb_info.fmspc.hex() == "50806f000000"
    assert verification.tcb is not None
    assert verification.tcb.status == NOT_SUPPORTED
    assert verification.tcb.sgx_level is None
    assert "3,3,2,2,2,1,0,2" in verification.tcb.detail and "PCESVN 11" in verification.tcb.detail
    assert "TEE TCB SVN 3,0,4,0" in verification.tcb.detail
    assert verification.pck is not None
    pck_crl = collateral.pck_crls[0]
    assert verification.pck.leaf.serial_number not in pck_crl.revoked_serials
    assert len(pck_crl.revoked_serials) == 44


def test_v4_with_collateral_is_rejected_for_its_tcb(v4: bytes, collateral) -> None:  # noqa: ANN001
    policy = Policy(tdx=TdxPolicy(allowed_tcb_statuses=frozenset({"UpToDate"})))
    appraisal = appraise_tdx(v4, collateral=collateral, policy=policy, at=V4_AT)
    assert not appraisal.accepted
    assert [r.check for r in appraisal.reasons] == ["tdx.policy.allowed_tcb_statuses"]
    message = appraisal.reasons[0].message
    assert "NotSupported" in message and "not supported" in message and "FMSPC 50806f000000" in message
    assert appraisal.claims["tcb_status"] == "NotSupported"
    assert appraisal.claims["qe_tcb_status"] == "UpToDate"
    assert set(appraisal.claims) == CLAIM_KEYS | set(NEUTRAL_CLAIMS) | {"qe_tcb_status"}
    # the default policy rejects it as well (NotSupported is never acceptable)
    default = appraise_tdx(v4, collateral=collateral, policy=Policy(), at=V4_AT)
    assert checks(default) == {"tdx.policy.allowed_tcb_statuses"}


def test_v5_tcb_info_signature_and_status(v5: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    # The v5 platform's TCB info (valid February 2026) is signed with the TCB signing key of
    # the shipped issuer chain, whose certificate expired 2025-05-21: the signature verifies,
    # the status is UpToDate (TDX module TDX_01 at ISVSVN 11), only the expired signer fails.
    for name in ("tcb-info-fmspc-90c06f000000.json", "tcb-info-issuer-chain.pem"):
        shutil.copy(collateral_dir / name, tmp_path / name)
    collateral = load_collateral_dir(tmp_path)
    verification = verify_tdx_quote(parse_quote(v5), collateral=collateral, at=V5_AT)
    assert [r.check for r in verification.reasons] == ["tdx.collateral.tcb_info.chain.validity"]
    assert "expired at 2025-05-21" in verification.reasons[0].message
    assert verification.tcb is not None and verification.tcb.status == "UpToDate"
    assert verification.tcb.tdx_module_status == "UpToDate"
    assert "TDX_01" in verification.tcb.detail
    assert set(verification.missing_collateral) == {"QE identity", "PCK CRL", "root CA CRL"}
    # a policy requiring full collateral says what is missing
    appraisal = appraise_tdx(v5, collateral=collateral, policy=Policy(require_collateral=True), at=V5_AT)
    assert "tdx.policy.require_collateral" in checks(appraisal)


def test_v4_collateral_for_another_platform(v4: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    for name in ("tcb-info-fmspc-90c06f000000.json", "tcb-info-issuer-chain.pem"):
        shutil.copy(collateral_dir / name, tmp_path / name)
    appraisal = appraise_tdx(v4, collateral=load_collateral_dir(tmp_path), policy=Policy(), at=V4_AT)
    assert "tdx.collateral.tcb_info.fmspc" in checks(appraisal)
    assert appraisal.claims["tcb_status"] is None


# --- expiry ------------------------------------------------------------------------------


def test_expired_collateral_is_rejected(v4: bytes, collateral) -> None:  # noqa: ANN001
    later = datetime(2023, 8, 1, tzinfo=UTC)
    appraisal = appraise_tdx(v4, collateral=collateral, policy=Policy(), at=later)
    found = checks(appraisal)
    assert {
        "tdx.collateral.tcb_info.validity",
        "tdx.collateral.qe_identity.validity",
        "tdx.collateral.pck_crl.validity",
    } <= found
    assert any("TCB info expired at its nextUpdate 2023-07-18T08:42:58" in r.message for r in appraisal.reasons)
    assert any("QE identity expired at its nextUpdate 2023-07-08T07:24:59" in r.message for r in appraisal.reasons)
    # the claims are still reported
    assert appraisal.claims["mr_td"] == V4_MRTD


def test_collateral_not_yet_valid(v4: bytes, collateral) -> None:  # noqa: ANN001
    earlier = datetime(2023, 6, 1, tzinfo=UTC)
    found = checks(appraise_tdx(v4, collateral=collateral, policy=Policy(), at=earlier))
    assert {
        "tdx.collateral.tcb_info.validity",
        "tdx.collateral.qe_identity.validity",
        "tdx.collateral.pck_crl.validity",
    } <= found


def test_max_collateral_age(v4: bytes, collateral) -> None:  # noqa: ANN001
    from datetime import timedelta

    policy = Policy(max_collateral_age=timedelta(days=14), tdx=TdxPolicy(allowed_tcb_statuses=frozenset({"UpToDate"})))
    appraisal = appraise_tdx(v4, collateral=collateral, policy=policy, at=V4_AT)
    ages = [r for r in appraisal.reasons if r.check == "tdx.policy.max_collateral_age"]
    # the QE identity (issued 2023-06-08) is 23 days old; the TCB info (2023-06-18) 13 days.
    assert len(ages) == 1 and "QE identity" in ages[0].message


def test_pck_chain_expired_far_in_the_future(v4: bytes) -> None:
    appraisal = appraise_tdx(v4, policy=Policy(), at=datetime(2030, 1, 1, tzinfo=UTC))
    assert "tdx.pck.validity" in checks(appraisal)
    assert any("expired at 2029-09-20" in r.message for r in appraisal.reasons)


# --- bit flips ---------------------------------------------------------------------------


def _flips(data: bytes, start: int, end: int):  # noqa: ANN202
    for index in range(start, end):
        for bit in range(8):
            yield index, bit, data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


@pytest.mark.parametrize("name", ["v4", "v5"])
def test_every_bit_flip_of_header_and_body_is_rejected(name: str, request: pytest.FixtureRequest) -> None:
    data: bytes = request.getfixturevalue(name)
    signed_end = len(parse_quote(data).signed_bytes())
    accepted = []
    for index, bit, flipped in _flips(data, 0, signed_end):
        try:
            quote = parse_quote(flipped)
        except EvidenceFormatError:
            continue
        if not quote_signature_reasons(quote):
            accepted.append((index, bit))
    assert accepted == []


@pytest.mark.parametrize("name", ["v4", "v5"])
def test_every_bit_flip_of_the_qe_report_is_rejected(name: str, request: pytest.FixtureRequest) -> None:
    data: bytes = request.getfixturevalue(name)
    quote = parse_quote(data)
    pck, _reasons = pck_chain_of(quote)
    assert pck is not None
    start = len(quote.signed_bytes()) + 4 + 64 + 64 + 6
    assert data[start : start + 384] == quote.qe_report.to_bytes()
    accepted = []
    for index, bit, flipped in _flips(data, start, start + 384):
        if not qe_report_signature_reasons(parse_quote(flipped), pck.leaf):
            accepted.append((index, bit))
    assert accepted == []


def test_bit_flips_through_appraise(v4: bytes, v5: bytes, collateral) -> None:  # noqa: ANN001
    for data, at, stride in ((v4, V4_AT, 37), (v5, V5_AT, 41)):
        quote = parse_quote(data)
        qe_start = len(quote.signed_bytes()) + 4 + 128 + 6
        positions = list(range(0, len(quote.signed_bytes()), stride)) + list(range(qe_start, qe_start + 384, stride))
        for index in positions:
            flipped = data[:index] + bytes([data[index] ^ 0x10]) + data[index + 1 :]
            try:
                appraisal = appraise_tdx(flipped, collateral=collateral if data is v4 else None, policy=Policy(), at=at)
            except EvidenceFormatError:
                continue
            assert not appraisal.accepted, index
            assert checks(appraisal) & {"tdx.quote.signature", "tdx.qe.report_signature"}, (index, appraisal.reasons)


def test_attestation_key_and_auth_data_are_bound(v4: bytes) -> None:
    quote = parse_quote(v4)
    certification = quote.signature_data.qe_certification
    other_auth = replace(
        quote,
        signature_data=replace(
            quote.signature_data, qe_certification=replace(certification, qe_auth_data=b"\x00" * 32)
        ),
    )
    appraisal = appraise_tdx(other_auth.to_bytes(), policy=Policy(), at=V4_AT)
    assert checks(appraisal) == {"tdx.qe.report_data"}
    key = bytearray(quote.signature_data.attestation_key)
    key[5] ^= 1
    other_key = replace(quote, signature_data=replace(quote.signature_data, attestation_key=bytes(key)))
    found = checks(appraise_tdx(other_key.to_bytes(), policy=Policy(), at=V4_AT))
    assert "tdx.qe.report_data" in found
    assert found & {"tdx.quote.signature", "tdx.quote.attestation_key"}


# --- chains ------------------------------------------------------------------------------


def _with_certification(data: bytes, certification: CertificationData) -> bytes:
    quote = parse_quote(data)
    qe = replace(quote.signature_data.qe_certification, certification_data=certification)
    return replace(quote, signature_data=replace(quote.signature_data, qe_certification=qe)).to_bytes()


def test_swapped_pck_chains_are_rejected(v4: bytes, v5: bytes) -> None:
    v4_chain = parse_quote(v4).signature_data.qe_certification.certification_data
    v5_chain = parse_quote(v5).signature_data.qe_certification.certification_data
    for data, chain, at in ((v4, v5_chain, V5_AT), (v5, v4_chain, V5_AT)):
        appraisal = appraise_tdx(_with_certification(data, chain), policy=Policy(), at=at)
        assert "tdx.qe.report_signature" in checks(appraisal)


def test_chain_from_another_root_is_rejected(v4: bytes, vectors: Path) -> None:
    quote = parse_quote(v4)
    pem = quote.signature_data.qe_certification.pck_chain_pem
    assert pem is not None
    leaf, intermediate, _root = parse_certificates(pem.rstrip(b"\x00"))
    amd_root = parse_certificates((vectors / "sev-snp/amd-roots/milan-vcek-chain.pem").read_bytes())[-1]
    from attestation.abi.x509 import pem_encode_certificates

    chain = pem_encode_certificates([leaf, intermediate, amd_root])
    appraisal = appraise_tdx(_with_certification(v4, CertificationData(5, chain)), policy=Policy(), at=V4_AT)
    found = checks(appraisal)
    assert "tdx.pck.root" in found and "tdx.pck.signature" in found
    assert any("which is not the Intel SGX Root CA" in r.message for r in appraisal.reasons)
    # a chain with only leaf and CA is completed with the shipped Intel root and verifies
    short = pem_encode_certificates([leaf, intermediate])
    assert appraise_tdx(_with_certification(v4, CertificationData(5, short)), policy=Policy(), at=V4_AT).accepted


def test_unusable_certification_data_is_a_reason(v4: bytes) -> None:
    for certification, message in (
        (CertificationData(3, b"\x00" * 16), "type 3"),
        (CertificationData(5, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "malformed"),
    ):
        appraisal = appraise_tdx(_with_certification(v4, certification), policy=Policy(), at=V4_AT)
        assert {"tdx.pck.chain", "tdx.qe.report_signature"} <= checks(appraisal)
        assert any(message in r.message for r in appraisal.reasons)
        assert appraisal.claims["fmspc"] is None and appraisal.claims["mr_td"] == V4_MRTD


def test_collateral_issuer_chain_from_another_root(
    v4: bytes, collateral_dir: Path, vectors: Path, tmp_path: Path
) -> None:
    shutil.copy(collateral_dir / "tcb-info-fmspc-50806f000000.json", tmp_path)
    shutil.copy(vectors / "sev-snp/amd-roots/milan-vcek-chain.pem", tmp_path / "tcb-info-issuer-chain.pem")
    appraisal = appraise_tdx(v4, collateral=load_collateral_dir(tmp_path), policy=Policy(), at=V4_AT)
    found = checks(appraisal)
    assert {"tdx.collateral.tcb_info.signature", "tdx.collateral.tcb_info.root"} <= found


def test_wrong_crls_are_rejected(v4: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    for name in ("pck-crl-issuer-chain.pem", "tcb-info-issuer-chain.pem"):
        shutil.copy(collateral_dir / name, tmp_path / name)
    # the root CA CRL given as the PCK CRL: issued by the wrong CA
    shutil.copy(collateral_dir / "root-ca-crl.der", tmp_path / "pck-crl.der")
    # the PCK CRL given as the root CA CRL: not signed by the root
    shutil.copy(collateral_dir / "pck-platform-crl.der", tmp_path / "root-ca-crl.der")
    found = checks(appraise_tdx(v4, collateral=load_collateral_dir(tmp_path), policy=Policy(), at=V4_AT))
    assert {"tdx.collateral.pck_crl.issuer", "tdx.collateral.root_ca_crl.signature"} <= found


# --- tampered collateral -----------------------------------------------------------------


def _collateral_copy(collateral_dir: Path, tmp_path: Path, name: str, old: bytes, new: bytes) -> Path:
    for entry in collateral_dir.iterdir():
        shutil.copy(entry, tmp_path / entry.name)
    raw = (collateral_dir / name).read_bytes()
    assert raw.count(old) >= 1
    (tmp_path / name).write_bytes(raw.replace(old, new, 1))
    return tmp_path


def test_tampered_tcb_info_byte(v4: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    directory = _collateral_copy(
        collateral_dir,
        tmp_path,
        "tcb-info-fmspc-50806f000000.json",
        b'"tcbEvaluationDataNumber":15',
        b'"tcbEvaluationDataNumber":16',
    )
    verification = verify_tdx_quote(parse_quote(v4), collateral=load_collateral_dir(directory), at=V4_AT)
    assert [r.check for r in verification.reasons] == ["tdx.collateral.tcb_info.signature"]


def test_tampered_qe_identity_byte(v4: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    directory = _collateral_copy(collateral_dir, tmp_path, "qe-identity.json", b'"isvsvn":4', b'"isvsvn":3')
    verification = verify_tdx_quote(parse_quote(v4), collateral=load_collateral_dir(directory), at=V4_AT)
    assert [r.check for r in verification.reasons] == ["tdx.collateral.qe_identity.signature"]


def test_reserialization_trap_whitespace(v4: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    # Same JSON content, different bytes: a verifier that re-serializes would accept it.
    directory = _collateral_copy(
        collateral_dir, tmp_path, "tcb-info-fmspc-50806f000000.json", b'"pceId":"0000",', b'"pceId": "0000", '
    )
    collateral = load_collateral_dir(directory)
    original = load_collateral_dir(collateral_dir)
    assert collateral.tcb_infos[0].tcb_info == original.tcb_infos[0].tcb_info
    verification = verify_tdx_quote(parse_quote(v4), collateral=collateral, at=V4_AT)
    assert [r.check for r in verification.reasons] == ["tdx.collateral.tcb_info.signature"]
    # whitespace outside the signed value does not matter
    directory2 = tmp_path / "outside"
    directory2.mkdir()
    for entry in collateral_dir.iterdir():
        shutil.copy(entry, directory2 / entry.name)
    raw = (collateral_dir / "qe-identity.json").read_bytes()
    (directory2 / "qe-identity.json").write_bytes(
        raw.replace(b'{"enclaveIdentity":', b'{\n  "enclaveIdentity" : ', 1) + b"\n"
    )
    assert verify_tdx_quote(parse_quote(v4), collateral=load_collateral_dir(directory2), at=V4_AT).reasons == ()


# --- bad input ---------------------------------------------------------------------------


def test_bad_quote_input_raises(v4: bytes) -> None:
    with pytest.raises(EvidenceTooLargeError):
        appraise_tdx(v4 + bytes(64 * 1024), policy=Policy(), at=V4_AT)
    with pytest.raises(EvidenceFormatError, match="shorter than the 48-byte header"):
        appraise_tdx(v4[:20], policy=Policy(), at=V4_AT)
    with pytest.raises(EvidenceFormatError, match=r"header\.version"):
        appraise_tdx(struct.pack("<H", 3) + v4[2:], policy=Policy(), at=V4_AT)
    with pytest.raises(EvidenceFormatError, match="signature_data_len"):
        appraise_tdx(v4[:632] + struct.pack("<I", 1 << 30) + v4[636:], policy=Policy(), at=V4_AT)
    with pytest.raises(EvidenceFormatError):
        appraise_tdx(v4[:1000], policy=Policy(), at=V4_AT)


def test_load_collateral_dir_errors(collateral_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CollateralFormatError, match="not a directory"):
        load_collateral_dir(tmp_path / "missing")
    with pytest.raises(CollateralFormatError, match="no collateral files"):
        load_collateral_dir(tmp_path)
    (tmp_path / "qe-identity.json").write_bytes(b"{not json")
    with pytest.raises(CollateralFormatError, match=r"qe-identity\.json.*not valid JSON"):
        load_collateral_dir(tmp_path)
    (tmp_path / "qe-identity.json").unlink()
    (tmp_path / "root-ca-crl.der").write_bytes(b"\x30\x03garbage")
    with pytest.raises(CollateralFormatError, match=r"root-ca-crl\.der: not a CRL"):
        load_collateral_dir(tmp_path)
    (tmp_path / "root-ca-crl.der").unlink()
    (tmp_path / "tcb-info-issuer-chain.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(CollateralFormatError, match="not a certificate chain"):
        load_collateral_dir(tmp_path)
    (tmp_path / "tcb-info-issuer-chain.pem").unlink()
    shutil.copy(collateral_dir / "tcb-info-fmspc-50806f000000.json", tmp_path / "tcb-info-fmspc-90c06f000000.json")
    with pytest.raises(CollateralFormatError, match="not the one its name says"):
        load_collateral_dir(tmp_path)
    (tmp_path / "tcb-info-fmspc-90c06f000000.json").unlink()
    shutil.copy(collateral_dir / "tcb-info-fmspc-50806f000000.json", tmp_path / "tcb-info-fmspc-50806F000000.json")
    shutil.copy(collateral_dir / "tcb-info-fmspc-50806f000000.json", tmp_path / "tcb-info.json")
    with pytest.raises(CollateralFormatError, match="more than one TCB info"):
        load_collateral_dir(tmp_path)
    (tmp_path / "tcb-info.json").unlink()
    (tmp_path / "qe-identity.json").write_bytes(b" " * (300 * 1024))
    with pytest.raises(CollateralFormatError, match="limit"):
        load_collateral_dir(tmp_path)


def test_load_collateral_dir_reads_the_vectors(collateral) -> None:  # noqa: ANN001
    assert sorted(d.tcb_info.fmspc.hex() for d in collateral.tcb_infos) == ["50806f000000", "90c06f000000"]
    assert collateral.qe_identity is not None
    assert len(collateral.tcb_info_issuer_chain) == 2 and len(collateral.pck_crl_issuer_chain) == 2
    assert len(collateral.pck_crls) == 1 and collateral.root_ca_crl is not None


def test_crl_as_pem_is_accepted(v4: bytes, collateral_dir: Path, tmp_path: Path) -> None:
    from asn1crypto import pem

    for entry in collateral_dir.iterdir():
        shutil.copy(entry, tmp_path / entry.name)
    der = (collateral_dir / "root-ca-crl.der").read_bytes()
    (tmp_path / "root-ca-crl.der").write_bytes(pem.armor("X509 CRL", der))
    collateral = load_collateral_dir(tmp_path)
    assert collateral.root_ca_crl == parse_crl(der)
    assert verify_tdx_quote(parse_quote(v4), collateral=collateral, at=V4_AT).reasons == ()
