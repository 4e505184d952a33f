"""The [tdx] policy section: parsing and one check per field, every failure reported."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attestation.errors import PolicyError
from attestation.platforms.tdx.abi import parse_quote
from attestation.platforms.tdx.appraise import appraise_tdx
from attestation.platforms.tdx.collateral import load_collateral_dir
from attestation.platforms.tdx.validate import DEFAULT_TCB_STATUSES, TdxPolicy
from attestation.policy import Policy

V4_AT = datetime(2023, 7, 1, tzinfo=UTC)
V5_AT = datetime(2026, 2, 15, tzinfo=UTC)
V4_MRTD = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
OTHER48 = "ab" * 48

EXAMPLE = f"""
platforms = ["tdx"]
allow_debug = false
require_collateral = true
max_collateral_age = "30d"

[tdx]
mr_td = ["{V4_MRTD}"]
rtmr0 = ["{"00" * 48}", "{"11" * 48}"]
mr_config_id = "{"00" * 48}"
minimum_tee_tcb_svn = "03000400000000000000000000000000"
allowed_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
allowed_qe_tcb_statuses = ["UpToDate"]
td_attributes_forbidden = "0100000000000080"
allow_perfmon = false
require_sept_ve_disable = true
xfam = ["e71a060000000000"]
fmspc = ["50806f000000"]
minimum_quote_version = 4
qe_vendor_id = "939a7233f79c4ca9940a0db3957f0607"
"""


@pytest.fixture(scope="module")
def v4(vectors: Path) -> bytes:
    return (vectors / "tdx/spr-quote-v4.dat").read_bytes()


@pytest.fixture(scope="module")
def v5(vectors: Path) -> bytes:
    return (vectors / "tdx/quote-v5.dat").read_bytes()


def test_example_policy_parses() -> None:
    policy = Policy.from_toml(EXAMPLE)
    tdx = policy.tdx
    assert tdx.mr_td == frozenset({bytes.fromhex(V4_MRTD)})
    assert len(tdx.rtmr0) == 2 and tdx.mr_config_id == frozenset({bytes(48)})
    assert tdx.minimum_tee_tcb_svn == bytes.fromhex("03000400000000000000000000000000")
    assert tdx.allowed_tcb_statuses == frozenset({"UpToDate", "SWHardeningNeeded"})
    assert tdx.allowed_qe_tcb_statuses == frozenset({"UpToDate"})
    assert tdx.td_attributes_forbidden == bytes.fromhex("0100000000000080")
    assert tdx.allow_perfmon is False and tdx.require_sept_ve_disable is True
    assert tdx.fmspc == frozenset({bytes.fromhex("50806f000000")})
    assert tdx.minimum_quote_version == 4


def test_default_section_adds_no_constraint() -> None:
    assert TdxPolicy.from_table({}) == TdxPolicy()
    assert Policy.from_toml("").tdx == TdxPolicy()


@pytest.mark.parametrize(
    "table, match",
    [
        ({"mrtd": []}, "unknown key"),
        ({"mr_td": ["00"]}, "48 bytes"),
        ({"rtmr3": "zz"}, "not a hex string"),
        ({"minimum_tee_tcb_svn": "00" * 15}, "16 bytes"),
        ({"allowed_tcb_statuses": ["NotSupported"]}, "unknown value"),
        ({"allowed_tcb_statuses": ["Revoked"]}, "unknown value"),
        ({"allowed_tcb_statuses": []}, "empty"),
        ({"allowed_qe_tcb_statuses": ["Revoked"]}, "unknown value"),
        ({"allow_perfmon": "yes"}, "true or false"),
        ({"fmspc": ["50806f"]}, "6 bytes"),
        ({"minimum_quote_version": 3}, "out of range"),
        ({"qe_vendor_id": "00"}, "16 bytes"),
        ({"xfam_forbidden": "00"}, "8 bytes"),
    ],
)
def test_bad_tables(table: dict, match: str) -> None:
    with pytest.raises(PolicyError, match=match):
        TdxPolicy.from_table(table)


def test_direct_construction_is_checked() -> None:
    with pytest.raises(PolicyError, match="NotSupported"):
        TdxPolicy(allowed_tcb_statuses=frozenset({"NotSupported"}))
    with pytest.raises(PolicyError, match="minimum_quote_version"):
        TdxPolicy(minimum_quote_version=6)


def reasons_of(v4: bytes, policy: Policy, collateral=None) -> dict[str, str]:  # noqa: ANN001
    appraisal = appraise_tdx(v4, collateral=collateral, policy=policy, at=V4_AT)
    return {reason.check: reason.message for reason in appraisal.reasons}


def test_matching_policy_accepts(v4: bytes) -> None:
    quote = parse_quote(v4)
    body = quote.body
    tdx = TdxPolicy(
        mr_td=frozenset({body.mr_td}),
        rtmr0=frozenset({body.rtmr0}),
        rtmr1=frozenset({body.rtmr1}),
        rtmr2=frozenset({body.rtmr2}),
        rtmr3=frozenset({body.rtmr3}),
        mr_config_id=frozenset({body.mr_config_id}),
        mr_owner=frozenset({body.mr_owner}),
        mr_owner_config=frozenset({body.mr_owner_config}),
        mr_seam=frozenset({body.mr_seam}),
        mr_signer_seam=frozenset({body.mr_signer_seam}),
        minimum_tee_tcb_svn=body.tee_tcb_svn,
        td_attributes=frozenset({body.td_attributes}),
        td_attributes_forbidden=bytes.fromhex("01000000000000ff"),
        allow_perfmon=False,
        xfam=frozenset({body.xfam}),
        xfam_forbidden=bytes.fromhex("0000000000000080"),
        fmspc=frozenset({bytes.fromhex("50806f000000")}),
        minimum_quote_version=4,
        qe_vendor_id=quote.header.qe_vendor_id,
    )
    assert reasons_of(v4, Policy(report_data=body.report_data, tdx=tdx)) == {}


def test_every_failed_field_is_reported(v4: bytes) -> None:
    other = bytes.fromhex(OTHER48)
    tdx = TdxPolicy(
        mr_td=frozenset({other}),
        rtmr0=frozenset({other}),
        rtmr1=frozenset({other}),
        rtmr2=frozenset({other}),
        rtmr3=frozenset({other}),
        mr_config_id=frozenset({other}),
        mr_owner=frozenset({other}),
        mr_owner_config=frozenset({other}),
        mr_seam=frozenset({other}),
        mr_signer_seam=frozenset({other}),
        minimum_tee_tcb_svn=bytes.fromhex("03000500000000000000000000000000"),
        allowed_tcb_statuses=frozenset({"UpToDate"}),
        allowed_qe_tcb_statuses=frozenset({"UpToDate"}),
        td_attributes=frozenset({bytes(8)}),
        td_attributes_forbidden=bytes.fromhex("0000004000000000"),
        require_sept_ve_disable=True,
        xfam=frozenset({bytes(8)}),
        xfam_forbidden=bytes.fromhex("0100000000000000"),
        fmspc=frozenset({bytes(6)}),
        minimum_quote_version=5,
        qe_vendor_id=bytes(16),
    )
    found = reasons_of(v4, Policy(report_data=bytes(64), require_collateral=True, tdx=tdx))
    expected = {
        f"tdx.policy.{key}"
        for key in (
            "mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_owner_config", "mr_seam",
            "mr_signer_seam", "minimum_tee_tcb_svn", "allowed_tcb_statuses", "allowed_qe_tcb_statuses", "td_attributes",
            "td_attributes_forbidden", "require_sept_ve_disable", "xfam", "xfam_forbidden", "fmspc",
            "minimum_quote_version", "qe_vendor_id", "report_data", "require_collateral",
        )
    }  # fmt: skip
    assert set(found) == expected
    assert "component(s) 2" in found["tdx.policy.minimum_tee_tcb_svn"]
    assert "bit(s) 30" in found["tdx.policy.td_attributes_forbidden"]
    assert "bit(s) 0" in found["tdx.policy.xfam_forbidden"]
    assert V4_MRTD in found["tdx.policy.mr_td"]
    assert "no TCB info" in found["tdx.policy.allowed_tcb_statuses"]
    assert (
        "TCB info" in found["tdx.policy.require_collateral"] and "root CA CRL" in found["tdx.policy.require_collateral"]
    )


def test_debug_bit_uses_the_common_allow_debug(v4: bytes) -> None:
    quote = parse_quote(v4)
    debug_attributes = bytes([quote.body.td_attributes[0] | 1]) + quote.body.td_attributes[1:]
    debug_quote = replace(quote, body=replace(quote.body, td_attributes=debug_attributes)).to_bytes()
    appraisal = appraise_tdx(debug_quote, policy=Policy(), at=V4_AT)
    # the edited quote is not authentic, and the debug check fires independently
    assert {r.check for r in appraisal.reasons} == {"tdx.quote.signature", "tdx.policy.allow_debug"}
    assert appraisal.claims["debug"] is True
    allowed = appraise_tdx(debug_quote, policy=Policy(allow_debug=True), at=V4_AT)
    assert {r.check for r in allowed.reasons} == {"tdx.quote.signature"}


def test_perfmon_and_sept_ve_disable(v4: bytes, v5: bytes) -> None:
    # v5: TD attributes 0000001000000000 = bit 28 (SEPT_VE_DISABLE) set
    policy = Policy(tdx=TdxPolicy(require_sept_ve_disable=True, allow_perfmon=False))
    assert appraise_tdx(v5, policy=policy, at=V5_AT).accepted
    quote = parse_quote(v4)
    perfmon = quote.body.td_attributes[:7] + bytes([quote.body.td_attributes[7] | 0x80])
    edited = replace(quote, body=replace(quote.body, td_attributes=perfmon)).to_bytes()
    found = {r.check for r in appraise_tdx(edited, policy=policy, at=V4_AT).reasons}
    assert {"tdx.policy.allow_perfmon", "tdx.policy.require_sept_ve_disable"} <= found


def test_tcb_status_defaults_apply_only_with_collateral(v4: bytes, vectors: Path) -> None:
    assert "UpToDate" in DEFAULT_TCB_STATUSES and "OutOfDate" not in DEFAULT_TCB_STATUSES
    assert reasons_of(v4, Policy()) == {}
    collateral = load_collateral_dir(vectors / "tdx/collateral")
    found = reasons_of(v4, Policy(), collateral)
    assert set(found) == {"tdx.policy.allowed_tcb_statuses"}
    # even a permissive explicit list cannot accept "not supported"
    permissive = TdxPolicy(allowed_tcb_statuses=frozenset({"UpToDate", "OutOfDate", "OutOfDateConfigurationNeeded"}))
    assert set(reasons_of(v4, Policy(tdx=permissive), collateral)) == {"tdx.policy.allowed_tcb_statuses"}


def test_report_data_binding(v4: bytes) -> None:
    report_data = parse_quote(v4).body.report_data
    assert reasons_of(v4, Policy(report_data=report_data)) == {}
    assert set(reasons_of(v4, Policy(report_data=bytes(64)))) == {"tdx.policy.report_data"}
