"""SEV-SNP verification on the real Milan vector and on reports signed by the simulated AMD PKI."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from asn1crypto.pem import armor
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from attestation.abi.x509 import parse_certificate
from attestation.errors import CertificateFormatError, EvidenceFormatError
from attestation.findings import Appraisal
from attestation.platforms.snp.abi import SIGNED_SIZE, flags_word, parse_report
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.snp.verify import verify_snp_report
from attestation.policy import Policy
from attestation.timeutil import parse_time
from enclave.simulated.pki import SIM_SNP_TCB, SimulatedPki, load_or_create
from snp_factory import sign_report, sim_chain, tcb_bytes, trusting

AT = parse_time("2024-01-01T00:00:00Z")
DEBUG_OK = Policy(allow_debug=True)


@pytest.fixture(scope="module")
def milan(vectors: Path) -> bytes:
    return (vectors / "sev-snp/milan-report-v2.bin").read_bytes()


@pytest.fixture(scope="module")
def vcek(vectors: Path) -> bytes:
    return (vectors / "sev-snp/milan-report-v2.vcek.der").read_bytes()


def checks(appraisal: Appraisal) -> set[str]:
    return {r.check for r in appraisal.reasons}


# --- the real vector ---------------------------------------------------------------------


def test_real_report_is_authentic_and_rejected_by_default_for_debug(milan: bytes, vcek: bytes) -> None:
    default = appraise_snp(milan, certificates=(vcek,), policy=Policy(), at=AT)
    assert not default.accepted
    assert checks(default) == {"snp.policy.allow_debug"}
    assert "DEBUG" in default.reasons[0].message
    allowed = appraise_snp(milan, certificates=(vcek,), policy=DEBUG_OK, at=AT)
    assert allowed.accepted, allowed.reasons
    claims = allowed.claims
    assert claims["policy"] == "0xb0000" and claims["debug"] is True
    assert (
        claims["measurement"]
        == "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"
    )
    assert claims["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}
    assert claims["reported_tcb"] == claims["current_tcb"] == claims["committed_tcb"] == claims["launch_tcb"]
    assert claims["signing_key"] == "vcek" and claims["product"] == "milan" and claims["product_name"] == "Milan-B0"
    assert claims["simulated"] is False
    assert {
        "version",
        "guest_svn",
        "vmpl",
        "report_data",
        "host_data",
        "id_key_digest",
        "author_key_digest",
        "chip_id",
    } <= set(claims)


def test_vcek_as_pem_and_with_its_chain(milan: bytes, vcek: bytes, vectors: Path) -> None:
    pem = armor("CERTIFICATE", vcek)  # not via cryptography: the zero serial is deprecated there
    assert appraise_snp(milan, certificates=(pem,), policy=DEBUG_OK, at=AT).accepted
    chain = (vectors / "sev-snp/amd-roots/milan-vcek-chain.pem").read_bytes()
    assert appraise_snp(milan, certificates=(vcek, chain), policy=DEBUG_OK, at=AT).accepted


def test_verification_time_window(milan: bytes, vcek: bytes) -> None:
    late = appraise_snp(milan, certificates=(vcek,), policy=DEBUG_OK, at=parse_time("2029-09-25T00:00:00Z"))
    assert checks(late) == {"snp.chain.validity"}
    assert "expired at 2029-09-24" in late.reasons[0].message
    early = appraise_snp(milan, certificates=(vcek,), policy=DEBUG_OK, at=parse_time("2022-01-01T00:00:00Z"))
    assert "snp.chain.validity" in checks(early) and "not valid before" in str(early.reasons)


def test_missing_or_unusable_certificate(milan: bytes, vcek: bytes) -> None:
    missing = appraise_snp(milan, policy=DEBUG_OK, at=AT)
    assert checks(missing) == {"snp.cert.missing"}
    assert missing.claims["measurement"]  # claims reported for rejected evidence too
    garbage = appraise_snp(milan, certificates=(b"not a certificate",), policy=DEBUG_OK, at=AT)
    assert {"snp.cert.format", "snp.cert.missing"} <= checks(garbage)


@pytest.mark.parametrize("product", ["genoa", "turin"])
def test_chain_of_another_product_is_rejected(milan: bytes, vcek: bytes, vectors: Path, product: str) -> None:
    chain = (vectors / f"sev-snp/amd-roots/{product}-vcek-chain.pem").read_bytes()
    appraisal = appraise_snp(milan, certificates=(vcek, chain), policy=DEBUG_OK, at=AT)
    assert "snp.chain.issuer" in checks(appraisal)


def test_vlek_chain_for_a_vcek_is_rejected(milan: bytes, vcek: bytes, vectors: Path) -> None:
    chain = (vectors / "sev-snp/amd-roots/milan-vlek-chain.pem").read_bytes()
    assert "snp.chain.issuer" in checks(appraise_snp(milan, certificates=(vcek, chain), policy=DEBUG_OK, at=AT))


def test_report_claiming_a_vlek_signature_is_rejected(milan: bytes, vcek: bytes) -> None:
    flags = parse_report(milan).flags | flags_word(signing_key="vlek")
    data = milan[:0x48] + flags.to_bytes(4, "little") + milan[0x4C:]
    found = checks(appraise_snp(data, certificates=(vcek,), policy=DEBUG_OK, at=AT))
    assert "snp.cert.kind" in found and "snp.report.signature" in found


def test_every_bit_flip_of_the_signed_region_and_signature_is_rejected(milan: bytes, vcek: bytes) -> None:
    certificates = [parse_certificate(vcek)]
    accepted = []
    for index in list(range(SIGNED_SIZE)) + list(range(SIGNED_SIZE, SIGNED_SIZE + 144)):
        for bit in range(8):
            flipped = milan[:index] + bytes([milan[index] ^ (1 << bit)]) + milan[index + 1 :]
            try:
                report = parse_report(flipped)
            except EvidenceFormatError:
                continue  # refused as unusable input: not accepted
            verification = verify_snp_report(report, certificates=certificates, crl=None, at=AT)
            if not any(
                r.check in ("snp.report.signature", "snp.report.signature_algo", "snp.report.signing_key")
                for r in verification.reasons
            ):
                accepted.append((index, bit))
    assert accepted == []


def test_bit_flips_through_appraise(milan: bytes, vcek: bytes) -> None:
    for index in range(0, SIGNED_SIZE, 29):
        flipped = milan[:index] + bytes([milan[index] ^ 0x04]) + milan[index + 1 :]
        try:
            appraisal = appraise_snp(flipped, certificates=(vcek,), policy=DEBUG_OK, at=AT)
        except EvidenceFormatError:
            continue
        assert not appraisal.accepted, index


# --- simulated AMD PKI: signed reports with any field -------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimulatedPki:
    return load_or_create(tmp_path_factory.mktemp("sim-tee"))


def test_simulated_report_needs_its_root_trusted(pki: SimulatedPki, tmp_path: Path) -> None:
    report = sign_report(pki)
    now = dt.datetime.now(dt.UTC)
    untrusted = appraise_snp(report, certificates=sim_chain(pki), policy=Policy(), at=now)
    assert checks(untrusted) == {"snp.chain.root"}
    assert "simulated" in untrusted.reasons[0].message and "does not trust" in untrusted.reasons[0].message
    assert untrusted.claims["simulated"] is True
    trusted = appraise_snp(report, certificates=sim_chain(pki), policy=trusting(pki), at=now)
    assert trusted.accepted, trusted.reasons
    assert trusted.claims["product"] == "milan" and trusted.claims["version"] == 3
    other = load_or_create(tmp_path / "other")
    assert checks(appraise_snp(report, certificates=sim_chain(pki), policy=trusting(other), at=now)) == {
        "snp.chain.root"
    }


def test_simulated_vcek_without_its_chain_is_not_an_amd_vcek(pki: SimulatedPki) -> None:
    now = dt.datetime.now(dt.UTC)
    found = checks(appraise_snp(sign_report(pki), certificates=(pki.amd.vcek.der,), policy=trusting(pki), at=now))
    assert found == {"snp.chain.issuer"}


def test_real_vcek_does_not_verify_a_simulated_report(pki: SimulatedPki, vcek: bytes) -> None:
    found = checks(appraise_snp(sign_report(pki), certificates=(vcek,), policy=trusting(pki), at=AT))
    assert {"snp.report.signature", "snp.cert.hwid", "snp.cert.tcb"} <= found


def test_tcb_and_chip_id_must_match_the_vcek(pki: SimulatedPki) -> None:
    now = dt.datetime.now(dt.UTC)
    lower = dict(SIM_SNP_TCB, snp=SIM_SNP_TCB["snp"] - 1)
    report = sign_report(pki, reported_tcb_raw=tcb_bytes(lower), chip_id=bytes(range(64)))
    appraisal = appraise_snp(report, certificates=sim_chain(pki), policy=trusting(pki), at=now)
    assert checks(appraisal) == {"snp.cert.tcb", "snp.cert.hwid"}
    masked = sign_report(pki, chip_id=bytes(64), flags=flags_word(mask_chip_key=True))
    assert appraise_snp(masked, certificates=sim_chain(pki), policy=trusting(pki), at=now).accepted


def test_cpuid_product_must_match_the_chain(pki: SimulatedPki) -> None:
    now = dt.datetime.now(dt.UTC)
    genoa = sign_report(pki, cpuid_fam_id=0x19, cpuid_mod_id=0x11)
    assert "snp.report.product" in checks(
        appraise_snp(genoa, certificates=sim_chain(pki), policy=trusting(pki), at=now)
    )


def _crl(pki: SimulatedPki, revoked: int | None = None, last_update: dt.datetime | None = None) -> bytes:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.amd.ark.cert.subject)
        .last_update(last_update or now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=7))
    )
    if revoked is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoked).revocation_date(now - dt.timedelta(hours=1)).build()
        )
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return builder.sign(pki.amd.ark.key, hashes.SHA384(), rsa_padding=pss).public_bytes(serialization.Encoding.DER)


def test_amd_crl(pki: SimulatedPki) -> None:
    now = dt.datetime.now(dt.UTC)
    report = sign_report(pki)
    clean = appraise_snp(report, certificates=sim_chain(pki), crl=_crl(pki), policy=trusting(pki), at=now)
    # the simulated root's warning is the only one: revocation was checked
    assert clean.accepted and len(clean.warnings) == 1 and "simulated root trusted by the policy" in clean.warnings[0]
    revoked = appraise_snp(
        report, certificates=sim_chain(pki), crl=_crl(pki, pki.amd.ask.cert.serial_number), policy=trusting(pki), at=now
    )
    assert checks(revoked) == {"snp.crl.revoked"} and "ASK" in revoked.reasons[0].message
    stale = _crl(pki, last_update=now - dt.timedelta(days=20))
    aged = appraise_snp(
        report,
        certificates=sim_chain(pki),
        crl=stale,
        policy=trusting(pki, max_collateral_age=dt.timedelta(days=7)),
        at=now,
    )
    assert checks(aged) == {"snp.policy.max_collateral_age"}
    assert checks(
        appraise_snp(report, certificates=sim_chain(pki), policy=trusting(pki, require_collateral=True), at=now)
    ) == {"snp.policy.require_collateral"}
    forged = bytearray(_crl(pki))
    forged[-5] ^= 1
    assert "snp.crl.signature" in checks(
        appraise_snp(report, certificates=sim_chain(pki), crl=bytes(forged), policy=trusting(pki), at=now)
    )
    with pytest.raises(CertificateFormatError):
        appraise_snp(report, certificates=sim_chain(pki), crl=b"garbage", policy=trusting(pki), at=now)
