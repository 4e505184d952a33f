"""`attestfl evidence verify`: exit codes, --json shape, bad input without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from attestfl.cli import main

SNP_AT = "2024-01-01T00:00:00Z"
TDX_AT = "2023-07-01T00:00:00Z"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["evidence", "verify", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code, out, _err = run(capsys, *argv, "--json")
    assert out.count("\n") == 1, out  # exactly one object
    return code, json.loads(out)


@pytest.fixture(scope="module")
def snp(vectors: Path) -> tuple[str, str]:
    return str(vectors / "sev-snp/milan-report-v2.bin"), str(vectors / "sev-snp/milan-report-v2.vcek.der")


def test_example_is_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--example")
    assert code == 0, err
    assert out.startswith("ACCEPTED: sev-snp evidence") and "b07af962" in out


def test_snp_default_policy_rejects_debug(capsys: pytest.CaptureFixture[str], snp: tuple[str, str]) -> None:
    code, result = run_json(capsys, snp[0], "--cert", snp[1], "--at", SNP_AT)
    assert code == 1
    assert set(result) == {"accepted", "platform", "claims", "reasons", "warnings"}
    assert result["accepted"] is False and result["platform"] == "sev-snp"
    assert (
        result["reasons"] == [r for r in result["reasons"] if r.startswith("snp.policy.allow_debug")]
        and result["reasons"]
    )
    assert result["claims"]["reported_tcb"] == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}


def test_snp_policy_allowing_debug_accepts(
    capsys: pytest.CaptureFixture[str], snp: tuple[str, str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_debug = true\n")
    code, result = run_json(capsys, snp[0], "--cert", snp[1], "--at", SNP_AT, "--policy", str(policy))
    assert code == 0 and result["accepted"] is True


def test_snp_past_expiry_is_rejected_with_that_reason(
    capsys: pytest.CaptureFixture[str], snp: tuple[str, str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("allow_debug = true\n")
    code, result = run_json(capsys, snp[0], "--cert", snp[1], "--at", "2030-01-01T00:00:00Z", "--policy", str(policy))
    assert code == 1
    assert any(r.startswith("snp.chain.validity") and "expired" in r for r in result["reasons"])


def test_tdx_not_supported_tcb_is_rejected_by_uptodate_policy(
    capsys: pytest.CaptureFixture[str], vectors: Path, tmp_path: Path
) -> None:
    quote = str(vectors / "tdx/spr-quote-v4.dat")
    collateral = str(vectors / "tdx/collateral")
    code, result = run_json(capsys, quote, "--collateral", collateral, "--at", TDX_AT)
    assert result["platform"] == "tdx" and result["claims"]["tcb_status"] == "NotSupported"
    assert result["claims"]["mr_td"].startswith("6363b804")
    policy = tmp_path / "policy.toml"
    policy.write_text('[tdx]\nallowed_tcb_statuses = ["UpToDate"]\n')
    code, result = run_json(capsys, quote, "--collateral", collateral, "--at", TDX_AT, "--policy", str(policy))
    assert code == 1
    assert any(r.startswith("tdx.policy.allowed_tcb_statuses") and "NotSupported" in r for r in result["reasons"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "unrecognised evidence"),
        (b"\x02\x00\x00\x00" + bytes(100), "unrecognised evidence"),
        (bytes(70 * 1024), "larger than 65536 bytes"),
    ],
)
def test_unusable_evidence_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "evidence.bin"
    path.write_bytes(content)
    code, out, err = run(capsys, str(path))
    assert code == 2 and message in err and "Traceback" not in err + out
    code, result = run_json(capsys, str(path))
    assert code == 2 and result["accepted"] is False and message in result["error"]


def test_truncated_snp_report(capsys: pytest.CaptureFixture[str], snp: tuple[str, str], tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(Path(snp[0]).read_bytes()[:1000])
    code, _out, err = run(capsys, str(path), "--platform", "sev-snp")
    assert code == 2 and "1184 bytes" in err


def test_garbage_certificate_is_a_failed_check(
    capsys: pytest.CaptureFixture[str], snp: tuple[str, str], tmp_path: Path
) -> None:
    cert = tmp_path / "vcek.der"
    cert.write_bytes(b"\x30\x82garbage")
    code, result = run_json(capsys, snp[0], "--cert", str(cert), "--at", SNP_AT)
    assert code == 1 and any(r.startswith("snp.cert.format") for r in result["reasons"])


def test_missing_files_and_bad_time(capsys: pytest.CaptureFixture[str], snp: tuple[str, str]) -> None:
    assert run(capsys, "/nonexistent/evidence.bin")[0] == 2
    assert run(capsys, snp[0], "--cert", "/nonexistent/vcek.der")[0] == 2
    code, _out, err = run(capsys, snp[0], "--at", "yesterday")
    assert code == 2 and "ISO-8601" in err
    assert run(capsys)[0] == 2


def test_console_script_in_a_separate_process(snp: tuple[str, str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "attestfl.cli",
            "evidence",
            "verify",
            snp[0],
            "--cert",
            snp[1],
            "--at",
            SNP_AT,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["claims"]["product"] == "milan"


def test_gpu_evidence_with_chain_and_nonce(capsys: pytest.CaptureFixture[str], vectors: Path) -> None:
    from attestation.platforms.nvidia.abi import parse_gpu_evidence_any

    report = vectors / "nvidia-gpu/hopper-attestation-report.hex"
    chain = str(vectors / "nvidia-gpu/hopper-cert-chain.pem")
    nonce = parse_gpu_evidence_any(report.read_text()).nonce
    code, result = run_json(capsys, str(report), "--platform", "nvidia-gpu", "--cert", chain, "--nonce", nonce.hex())
    assert code == 0 and result["claims"]["driver_version"] == "550.90.07"
    wrong = bytes([nonce[0] ^ 1]) + nonce[1:]
    code, result = run_json(capsys, str(report), "--cert", chain, "--nonce", wrong.hex())
    assert code == 1 and any(r.startswith("gpu.nonce") for r in result["reasons"])
