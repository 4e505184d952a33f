"""TDX collateral ABI: TCB info v3 / QE identity v2 parsing and the exact signed bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attestation.errors import CollateralFormatError
from attestation.platforms.tdx.collateral_abi import (
    MAX_COLLATERAL_JSON_BYTES,
    TdxCollateral,
    parse_qe_identity,
    parse_tcb_info,
    top_level_value_bytes,
)


@pytest.fixture(scope="module")
def collateral_dir(vectors: Path) -> Path:
    return vectors / "tdx/collateral"


def test_tcb_info_v4_platform(collateral_dir: Path) -> None:
    raw = (collateral_dir / "tcb-info-fmspc-50806f000000.json").read_bytes()
    document = parse_tcb_info(raw)
    info = document.tcb_info
    assert (info.id, info.version, info.fmspc.hex(), info.pce_id) == ("TDX", 3, "50806f000000", b"\x00\x00")
    assert info.issue_date.isoformat() == "2023-06-18T08:42:58+00:00"
    assert info.next_update.isoformat() == "2023-07-18T08:42:58+00:00"
    assert info.tdx_module_identities is None
    assert [level.tcb_status for level in info.tcb_levels] == ["UpToDate", "OutOfDate"]
    assert info.tcb_levels[0].sgx_svns == (5, 5, 2, 2, 3, 1, 0, 3) + (0,) * 8
    assert info.tcb_levels[0].tdx_svns == (3, 0, 5) + (0,) * 13
    assert info.tcb_levels[0].pce_svn == 11
    assert "INTEL-SA-00106" in info.tcb_levels[1].advisory_ids
    assert len(document.signature) == 64
    # the signed bytes are exactly the raw text of the tcbInfo value
    start = raw.index(b'{"id":"TDX"')
    assert document.signed_bytes == raw[start : raw.index(b',"signature"')]


def test_tcb_info_v5_platform_module_identities(collateral_dir: Path) -> None:
    info = parse_tcb_info((collateral_dir / "tcb-info-fmspc-90c06f000000.json").read_bytes()).tcb_info
    assert info.tdx_module_identities is not None
    assert [identity.id for identity in info.tdx_module_identities] == ["TDX_03", "TDX_01"]
    assert [level.isvsvn for level in info.tdx_module_identities[1].tcb_levels] == [6, 4, 2]


def test_qe_identity(collateral_dir: Path) -> None:
    raw = (collateral_dir / "qe-identity.json").read_bytes()
    document = parse_qe_identity(raw)
    identity = document.identity
    assert (identity.id, identity.version, identity.isvprodid) == ("TD_QE", 2, 2)
    assert identity.mrsigner.hex() == "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
    assert identity.miscselect_mask == b"\xff" * 4
    assert [(level.isvsvn, level.tcb_status) for level in identity.tcb_levels] == [(4, "UpToDate")]
    assert document.signed_bytes.startswith(b'{"id":"TD_QE"') and document.signed_bytes.endswith(b"}]}")


def test_whitespace_is_kept_in_signed_bytes(collateral_dir: Path) -> None:
    raw = (collateral_dir / "qe-identity.json").read_bytes()
    spaced = raw.replace(b'"version":2', b'"version" :  2', 1).replace(
        b'{"enclaveIdentity":', b'{ "enclaveIdentity" :\n ', 1
    )
    document = parse_qe_identity(spaced)
    assert b'"version" :  2' in document.signed_bytes
    assert document.identity == parse_qe_identity(raw).identity


def test_scanner_handles_strings_and_nesting() -> None:
    raw = b' { "a" : [1, {"b": "x\\"}]"}] , "tcbInfo"  :  {"k": "v\\\\", "n": [[]]}  ,"z":null}'
    json.loads(raw)
    assert top_level_value_bytes(raw, "tcbInfo") == b'{"k": "v\\\\", "n": [[]]}'
    assert top_level_value_bytes(raw, "z") == b"null"
    # an escaped key still names the member
    assert top_level_value_bytes(b'{"tcb\\u0049nfo": 5}', "tcbInfo") == b"5"
    with pytest.raises(CollateralFormatError):
        top_level_value_bytes(b'{"a": 1}', "tcbInfo")
    for broken in (b"", b"{", b'{"tcbInfo"', b'{"tcbInfo": {', b'{"tcbInfo": "abc', b'{"tcbInfo": 1,'):
        with pytest.raises(CollateralFormatError):
            top_level_value_bytes(broken, "tcbInfo")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda raw: raw[:-5], "not valid JSON"),
        (lambda raw: b"\xff" + raw, "not UTF-8"),
        (lambda raw: b"[]", "JSON object"),
        (lambda raw: raw.replace(b'"id":"TDX"', b'"id":"SGX"'), "not a TDX TCB info"),
        (lambda raw: raw.replace(b'"version":3', b'"version":2'), "version"),
        (lambda raw: raw.replace(b'"fmspc":"50806f000000"', b'"fmspc":"50806f00"'), "fmspc"),
        (lambda raw: raw.replace(b'"pcesvn":11', b'"pcesvn":-1'), "pcesvn"),
        (lambda raw: raw.replace(b'"pcesvn":11', b'"pcesvn":true'), "pcesvn"),
        (lambda raw: raw.replace(b'"tcbStatus":"UpToDate"', b'"tcbStatus":"Fine"'), "unknown TCB status"),
        (lambda raw: raw.replace(b'"issueDate":"2023-06-18T08:42:58Z"', b'"issueDate":"yesterday"'), "issueDate"),
        (lambda raw: raw.replace(b'{"svn":0},{"svn":0}]', b'{"svn":0}]', 1), "16 components"),
        (lambda raw: raw.replace(b'"signature":"f6', b'"signature":"'), "signature"),
        (lambda raw: raw.replace(b'{"tcbInfo":', b'{"tcbInfo":{},"tcbInfo":'), "duplicate JSON key"),
        (lambda raw: raw.replace(b'"fmspc":', b'"fmspc":"00","fmspc":'), "duplicate JSON key"),
        (lambda raw: raw.replace(b'{"tcbInfo":', b'{"extra":1,"tcbInfo":'), "unexpected top-level"),
        (lambda raw: b"[" * 200000, "not valid JSON"),
        (lambda raw: raw + b" " * MAX_COLLATERAL_JSON_BYTES, "limit"),
    ],
)
def test_malformed_tcb_info(collateral_dir: Path, mutate, match: str) -> None:  # noqa: ANN001
    raw = (collateral_dir / "tcb-info-fmspc-50806f000000.json").read_bytes()
    with pytest.raises(CollateralFormatError, match=match):
        parse_tcb_info(mutate(raw))


def test_malformed_qe_identity(collateral_dir: Path) -> None:
    raw = (collateral_dir / "qe-identity.json").read_bytes()
    with pytest.raises(CollateralFormatError, match="TD quoting enclave"):
        parse_qe_identity(raw.replace(b'"id":"TD_QE"', b'"id":"QE"'))
    with pytest.raises(CollateralFormatError, match="mrsigner"):
        parse_qe_identity(raw.replace(b'"mrsigner":"DC', b'"mrsigner":"'))
    with pytest.raises(CollateralFormatError, match="unexpected top-level member"):
        parse_qe_identity((collateral_dir / "tcb-info-fmspc-50806f000000.json").read_bytes())


def test_collateral_selects_tcb_info_by_fmspc(collateral_dir: Path) -> None:
    documents = tuple(parse_tcb_info(p.read_bytes()) for p in sorted(collateral_dir.glob("tcb-info-*.json")))
    collateral = TdxCollateral(tcb_infos=documents)
    assert collateral.tcb_info_for(bytes.fromhex("90c06f000000")) is documents[1]
    assert collateral.tcb_info_for(bytes.fromhex("50806f000000")) is documents[0]
    assert collateral.tcb_info_for(bytes(6)) is None
    assert TdxCollateral().is_empty and not collateral.is_empty
