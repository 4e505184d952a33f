"""The simulated TDX platform: byte-exact v4 quotes verified through the same functions as
the real vectors, collateral included; the same policy checks bite; every bit counts."""

from __future__ import annotations

from datetime import timedelta

import pytest

from attestation.errors import EvidenceFormatError
from attestation.platforms.tdx.abi import INTEL_QE_VENDOR_ID, parse_quote
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.collateral import collateral_from_files
from attestation.platforms.tdx.validate import TdxPolicy
from attestation.platforms.tdx.verify import pck_chain_of, qe_report_signature_reasons, quote_signature_reasons
from attestation.policy import Policy
from enclave.measure import measure
from enclave.simulated.attester import SimulatedTdxAttester
from enclave.simulated.pki import load_or_create
from enclave_fixtures import MEASUREMENT, now, other_simulated_dir, shared_simulated_dir, trusting

REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def attester() -> SimulatedTdxAttester:
    return SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT)


@pytest.fixture(scope="module")
def quote(attester: SimulatedTdxAttester) -> bytes:
    return attester.evidence(REPORT_DATA).evidence


def checks(appraisal) -> set[str]:  # noqa: ANN001
    return {r.check for r in appraisal.reasons}


def appraise(attester: SimulatedTdxAttester, quote: bytes, policy: Policy):  # noqa: ANN201
    collateral = collateral_from_files(attester.collateral) if attester.collateral else None
    return appraise_tdx(quote, collateral=collateral, policy=policy, at=now())


def test_quote_is_a_byte_exact_v4_quote(quote: bytes) -> None:
    parsed = parse_quote(quote)
    assert parsed.to_bytes() == quote and parsed.trailing == b""
    assert (parsed.header.version, parsed.header.attestation_key_type, parsed.header.tee_type) == (4, 2, 0x81)
    assert parsed.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert len(parsed.signed_bytes()) == 48 + 584
    assert parsed.body.report_data == REPORT_DATA and parsed.body.mr_td == MEASUREMENT
    assert parsed.signature_data.qe_certification.certification_data.cert_type == 5


def test_verifies_with_collateral_through_the_hardware_path(attester: SimulatedTdxAttester, quote: bytes) -> None:
    appraisal = appraise(attester, quote, trusting(attester.pki, require_collateral=True))
    assert appraisal.accepted, appraisal.reasons
    claims = appraisal.claims
    assert claims["simulated"] is True
    assert claims["tcb_status"] == "UpToDate" and claims["qe_tcb_status"] == "UpToDate"
    assert claims["mr_td"] == MEASUREMENT.hex() and claims["debug"] is False
    assert any("simulated root trusted by the policy" in w for w in appraisal.warnings)


def test_default_measurement_is_the_running_code() -> None:
    quote = SimulatedTdxAttester(shared_simulated_dir(), collateral=False).evidence(REPORT_DATA).evidence
    assert parse_quote(quote).body.mr_td == measure().digest


def test_rejected_without_trust_in_the_simulated_root(attester: SimulatedTdxAttester, quote: bytes) -> None:
    appraisal = appraise(attester, quote, Policy())
    assert not appraisal.accepted
    root = [r for r in appraisal.reasons if r.check == "tdx.pck.root"]
    assert root and "simulated" in root[0].message and "does not trust" in root[0].message
    assert appraisal.claims["simulated"] is True


def test_rejected_when_another_simulated_root_is_trusted(attester: SimulatedTdxAttester, quote: bytes) -> None:
    other = load_or_create(other_simulated_dir())
    appraisal = appraise(attester, quote, trusting(other))
    assert "tdx.pck.root" in checks(appraisal)


def test_debug_bites() -> None:
    debug = SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT, debug=True)
    quote = debug.evidence(REPORT_DATA).evidence
    assert checks(appraise(debug, quote, trusting(debug.pki))) == {"tdx.policy.allow_debug"}
    assert appraise(debug, quote, trusting(debug.pki, allow_debug=True)).accepted


def test_measurement_bites(attester: SimulatedTdxAttester, quote: bytes) -> None:
    pinned = trusting(attester.pki, tdx=TdxPolicy(mr_td=frozenset({MEASUREMENT})))
    assert appraise(attester, quote, pinned).accepted
    other = trusting(attester.pki, tdx=TdxPolicy(mr_td=frozenset({bytes(48)})))
    assert checks(appraise(attester, quote, other)) == {"tdx.policy.mr_td"}


def test_tcb_bites() -> None:
    out_of_date = SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT, tcb_status="OutOfDate")
    appraisal = appraise(out_of_date, out_of_date.evidence(REPORT_DATA).evidence, trusting(out_of_date.pki))
    assert appraisal.claims["tcb_status"] == "OutOfDate"
    assert checks(appraisal) == {"tdx.policy.allowed_tcb_statuses"}
    old_module = SimulatedTdxAttester(
        shared_simulated_dir(), measurement=MEASUREMENT, tee_tcb_svn=bytes([5, 1, 2] + [0] * 13)
    )
    appraisal = appraise(old_module, old_module.evidence(REPORT_DATA).evidence, trusting(old_module.pki))
    assert appraisal.claims["tcb_status"] == "OutOfDate"
    assert "tdx.policy.allowed_tcb_statuses" in checks(appraisal)


def test_collateral_age_and_presence_bite(attester: SimulatedTdxAttester) -> None:
    stale = SimulatedTdxAttester(
        shared_simulated_dir(), measurement=MEASUREMENT, collateral_issued=now() - timedelta(days=20)
    )
    quote = stale.evidence(REPORT_DATA).evidence
    assert appraise(stale, quote, trusting(stale.pki)).accepted
    policy = trusting(stale.pki, max_collateral_age=timedelta(days=7))
    assert checks(appraise(stale, quote, policy)) == {"tdx.policy.max_collateral_age"}
    bare = SimulatedTdxAttester(shared_simulated_dir(), measurement=MEASUREMENT, collateral=False)
    appraisal = appraise(bare, bare.evidence(REPORT_DATA).evidence, trusting(bare.pki, require_collateral=True))
    assert checks(appraisal) == {"tdx.policy.require_collateral"}


def _flips(data: bytes, start: int, end: int):  # noqa: ANN202
    for index in range(start, end):
        for bit in range(8):
            yield index, bit, data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def test_every_bit_flip_of_header_and_body_is_rejected(quote: bytes) -> None:
    signed_end = len(parse_quote(quote).signed_bytes())
    accepted, tried = [], 0
    for index, bit, flipped in _flips(quote, 0, signed_end):
        try:
            parsed = parse_quote(flipped)
        except EvidenceFormatError:
            continue  # unusable input: refused, not accepted
        tried += 1
        if not quote_signature_reasons(parsed):
            accepted.append((index, bit))
    assert accepted == []
    assert tried > 0.95 * signed_end * 8


def test_every_bit_flip_of_the_qe_report_is_rejected(quote: bytes) -> None:
    parsed = parse_quote(quote)
    pck, _ = pck_chain_of(parsed)
    assert pck is not None
    start = len(parsed.signed_bytes()) + 4 + 64 + 64 + 6
    assert quote[start : start + 384] == parsed.qe_report.to_bytes()
    accepted = [
        (i, b)
        for i, b, flipped in _flips(quote, start, start + 384)
        if not qe_report_signature_reasons(parse_quote(flipped), pck.leaf)
    ]
    assert accepted == []


def test_bit_flips_through_appraise(attester: SimulatedTdxAttester, quote: bytes) -> None:
    parsed = parse_quote(quote)
    qe_start = len(parsed.signed_bytes()) + 4 + 128 + 6
    positions = list(range(0, len(parsed.signed_bytes()), 31)) + list(range(qe_start, qe_start + 384, 31))
    policy = trusting(attester.pki)
    for index in positions:
        flipped = quote[:index] + bytes([quote[index] ^ 0x08]) + quote[index + 1 :]
        try:
            appraisal = appraise(attester, flipped, policy)
        except EvidenceFormatError:
            continue
        assert not appraisal.accepted, index
        assert checks(appraisal) & {"tdx.quote.signature", "tdx.qe.report_signature"}, index
