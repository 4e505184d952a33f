"""The simulated SEV-SNP platform: byte-exact version-3 reports verified through the same
functions as the real vectors, AMD CRL included; the same policy checks bite; every bit counts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from attestation.abi.x509 import parse_certificate
from attestation.errors import EvidenceFormatError
from attestation.platforms.snp.abi import SIGNED_SIZE, parse_cert_table, parse_report
from attestation.platforms.snp.appraise import appraise_snp
from attestation.platforms.snp.validate import MinimumTcb, SnpPolicy
from attestation.platforms.snp.verify import verify_snp_report
from attestation.policy import Policy
from enclave.measure import measure
from enclave.simulated.attester import SimulatedSnpAttester
from enclave.simulated.pki import SIM_SNP_TCB, load_or_create
from enclave.simulated.snp import AMD_CRL_FILE
from enclave_fixtures import MEASUREMENT, now, other_simulated_dir, shared_simulated_dir, trusting

REPORT_DATA = bytes(range(64, 128))


@pytest.fixture(scope="module")
def attester() -> SimulatedSnpAttester:
    return SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def report(attester: SimulatedSnpAttester) -> bytes:
    return attester.evidence(REPORT_DATA).evidence


def checks(appraisal) -> set[str]:  # noqa: ANN001
    return {r.check for r in appraisal.reasons}


def appraise(attester: SimulatedSnpAttester, report: bytes, policy: Policy):  # noqa: ANN201
    return appraise_snp(
        report,
        certificates=attester.firmware.certificates,
        crl=attester.collateral.get(AMD_CRL_FILE),
        policy=policy,
        at=now(),
    )


def test_report_is_byte_exact_version_3(attester: SimulatedSnpAttester, report: bytes) -> None:
    parsed = parse_report(report)
    assert len(report) == 1184 and parsed.version == 3
    assert parsed.report_data == REPORT_DATA and parsed.measurement == MEASUREMENT
    assert parsed.chip_id == attester.pki.amd.chip_id and parsed.signing_key == "vcek"
    for name in ("reported", "current", "committed", "launch"):
        assert parsed.tcb(name, "milan").components() == SIM_SNP_TCB
    table = parse_cert_table(attester.firmware.cert_table)
    assert table == {
        "vcek": attester.pki.amd.vcek.der,
        "ask": attester.pki.amd.ask.der,
        "ark": attester.pki.amd.ark.der,
    }


def test_verifies_with_crl_through_the_hardware_path(attester: SimulatedSnpAttester, report: bytes) -> None:
    appraisal = appraise(attester, report, trusting(attester.pki, require_collateral=True))
    assert appraisal.accepted, appraisal.reasons
    assert appraisal.claims["simulated"] is True
    assert appraisal.claims["measurement"] == MEASUREMENT.hex()
    assert appraisal.claims["product"] == "milan"


def test_default_measurement_is_the_running_code() -> None:
    report = SimulatedSnpAttester(shared_simulated_dir(), crl=False).evidence(REPORT_DATA).evidence
    assert parse_report(report).measurement == measure().digest


def test_rejected_without_trust_or_with_another_simulated_root(attester: SimulatedSnpAttester, report: bytes) -> None:
    untrusted = appraise(attester, report, Policy())
    root = [r for r in untrusted.reasons if r.check == "snp.chain.root"]
    assert root and "simulated" in root[0].message
    assert untrusted.claims["simulated"] is True
    other = appraise(attester, report, trusting(load_or_create(other_simulated_dir())))
    assert "snp.chain.root" in checks(other)


def test_debug_bites() -> None:
    debug = SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT, debug=True)
    report = debug.evidence(REPORT_DATA).evidence
    assert parse_report(report).debug
    assert checks(appraise(debug, report, trusting(debug.pki))) == {"snp.policy.allow_debug"}
    assert appraise(debug, report, trusting(debug.pki, allow_debug=True)).accepted


def test_measurement_bites(attester: SimulatedSnpAttester, report: bytes) -> None:
    assert appraise(
        attester, report, trusting(attester.pki, snp=SnpPolicy(measurement=frozenset({MEASUREMENT})))
    ).accepted
    other = trusting(attester.pki, snp=SnpPolicy(measurement=frozenset({bytes(48)})))
    assert checks(appraise(attester, report, other)) == {"snp.policy.measurement"}


def test_tcb_bites(attester: SimulatedSnpAttester, report: bytes) -> None:
    newer = dict(SIM_SNP_TCB, snp=SIM_SNP_TCB["snp"] + 1)
    policy = trusting(attester.pki, snp=SnpPolicy(minimum_tcb=MinimumTcb(**newer)))
    assert "snp.policy.minimum_tcb" in checks(appraise(attester, report, policy))
    # a report claiming a TCB the VCEK does not certify fails authenticity
    lying = SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT, tcb=newer)
    assert "snp.cert.tcb" in checks(appraise(lying, lying.evidence(REPORT_DATA).evidence, trusting(lying.pki)))


def test_collateral_age_and_presence_bite() -> None:
    stale = SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT, crl_issued=now() - timedelta(days=20))
    report = stale.evidence(REPORT_DATA).evidence
    assert appraise(stale, report, trusting(stale.pki)).accepted
    assert checks(appraise(stale, report, trusting(stale.pki, max_collateral_age=timedelta(days=7)))) == {
        "snp.policy.max_collateral_age"
    }
    bare = SimulatedSnpAttester(shared_simulated_dir(), measurement=MEASUREMENT, crl=False)
    assert checks(appraise(bare, bare.evidence(REPORT_DATA).evidence, trusting(bare.pki, require_collateral=True))) == {
        "snp.policy.require_collateral"
    }


def test_every_bit_flip_of_the_signed_region_and_signature_is_rejected(
    attester: SimulatedSnpAttester, report: bytes
) -> None:
    certificates = [parse_certificate(attester.pki.amd.vcek.der)]
    accepted, tried = [], 0
    for index in list(range(SIGNED_SIZE)) + list(range(SIGNED_SIZE, SIGNED_SIZE + 144)):
        for bit in range(8):
            flipped = report[:index] + bytes([report[index] ^ (1 << bit)]) + report[index + 1 :]
            try:
                parsed = parse_report(flipped)
            except EvidenceFormatError:
                continue  # unusable input: refused, not accepted
            tried += 1
            verification = verify_snp_report(parsed, certificates=certificates, crl=None, at=now())
            if not any(
                r.check in ("snp.report.signature", "snp.report.signature_algo", "snp.report.signing_key")
                for r in verification.reasons
            ):
                accepted.append((index, bit))
    assert accepted == []
    assert tried > 0.9 * (SIGNED_SIZE + 144) * 8


def test_bit_flips_through_appraise(attester: SimulatedSnpAttester, report: bytes) -> None:
    policy = trusting(attester.pki)
    for index in range(0, SIGNED_SIZE, 23):
        flipped = report[:index] + bytes([report[index] ^ 0x20]) + report[index + 1 :]
        try:
            appraisal = appraise(attester, flipped, policy)
        except EvidenceFormatError:
            continue
        assert not appraisal.accepted, index
