"""The auditor's verdict on real simulated-TEE logs (SEV-SNP and TDX aggregator evidence): authentic
but not trusted (exit 4) is told apart from tampered (exit 1) on every platform, whatever the
policy checks that fail; a log that verifies under a policy trusting the simulated roots is
SIMULATED, never a plain VALID; and the SVG charts escape what sites name."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.audit.synthetic import SyntheticFederation
from attestation.errors import EXIT_NOT_TRUSTED, KINDS, AttestflError
from attestation.platforms.snp import NAME as SNP
from attestation.platforms.tdx import NAME as TDX
from attestation.policy import Policy
from auditor.charts import bar_chart, line_chart
from auditor.show import render_text, views
from auditor.verdict import exit_code, headline
from auditor.verify import verify_log
from enclave.simulated.attester import SimulatedTdxAttester
from enclave.simulated.pki import load_or_create

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_platforms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A log begun on simulated SEV-SNP, continued (handover) on simulated TDX."""
    base = tmp_path_factory.mktemp("verdict")
    fed = SyntheticFederation(base / "log", base / "sim", sites=["a"])
    fed.admit("a")
    fed.round(1, epsilon=0.5)
    fed.close()
    fed.aggregator_attester = SimulatedTdxAttester(fed.sim_dir, config=fed.config_raw)
    fed.start()  # a handover with TDX evidence
    fed.admit("a")
    fed.site_attester = SimulatedTdxAttester(fed.sim_dir)
    assert fed.admit("a")  # the site on TDX too
    fed.close()
    (base / "policy.toml").write_bytes(fed.policy_text)
    return {"log": base / "log", "fed": fed, "roots": load_or_create(fed.sim_dir).trusted_root_fingerprints()}


def test_a_simulated_log_is_not_trusted_by_the_default_policy_on_every_platform(two_platforms: dict) -> None:
    result = verify_log(two_platforms["log"])
    roots = two_platforms["roots"]
    assert [r.kind for r in result.runs] == ["aggregator_start", "handover"]
    assert [r.platform for r in result.runs] == [SNP, TDX]
    assert result.verdict == "not_trusted" and not result.tampered and exit_code(result) == EXIT_NOT_TRUSTED
    # TDX: the PCK chain and every collateral issuer chain end at the simulated Intel root (one root, named once)
    assert result.not_trusted == [
        f"simulated root {roots[SNP]} (entry 0, aggregator_start)",
        f"simulated root {roots[TDX]} (entry {result.runs[1].index}, handover)",
    ]
    assert all(p.untrusted and p.check == "aggregator.evidence" for p in result.problems)
    assert headline(result).startswith(f"AUTHENTIC, NOT TRUSTED BY YOUR POLICY: simulated root {roots[SNP]}")


def test_trusting_one_platform_only(two_platforms: dict) -> None:
    roots = two_platforms["roots"]
    result = verify_log(two_platforms["log"], Policy(trusted_simulated_roots=frozenset({roots[SNP]})))
    assert result.verdict == "not_trusted"
    assert result.not_trusted == [f"simulated root {roots[TDX]} (entry {result.runs[1].index}, handover)"]
    snp_only = Policy(trusted_simulated_roots=frozenset(roots.values()), platforms=frozenset({SNP}))
    result = verify_log(two_platforms["log"], snp_only)
    assert result.verdict == "not_trusted"
    (item,) = result.not_trusted
    assert item.startswith("policy.platforms: platform tdx is not among the allowed platforms")


def test_policy_checks_of_authentic_evidence_are_not_tampering(two_platforms: dict) -> None:
    trusting = two_platforms["fed"].auditor_policy()
    strict = dataclasses.replace(trusting, allow_debug=False, report_data=b"\x01" * 64)
    result = verify_log(two_platforms["log"], strict)
    assert result.verdict == "not_trusted"
    assert any("snp.policy.report_data" in item for item in result.not_trusted)
    assert any("tdx.policy.report_data" in item for item in result.not_trusted)


def test_trusted_simulated_roots_give_simulated_never_valid(two_platforms: dict) -> None:
    result = verify_log(two_platforms["log"], two_platforms["fed"].auditor_policy())
    assert result.valid and result.verdict == "simulated" and exit_code(result) == 0
    assert headline(result).startswith("SIMULATED: ")
    run = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "audit", "verify", str(two_platforms["log"]), "--policy"]
        + [str(two_platforms["log"].parent / "policy.toml"), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert run.returncode == 0 and json.loads(run.stdout)["verdict"] == "simulated"


def test_the_new_exit_status_has_a_stable_kind() -> None:
    class NotTrusted(AttestflError):
        exit_code = EXIT_NOT_TRUSTED

    assert EXIT_NOT_TRUSTED == 4 and KINDS[EXIT_NOT_TRUSTED] == "not_trusted" and NotTrusted("x").kind == "not_trusted"


def test_charts_escape_labels_and_carry_their_points() -> None:
    svg = line_chart(
        {'<img src=x onerror="alert(1)">': [(0, 0.5), (1, 0.75)], "b": [(0, float("nan")), (1, 0.25)]},
        chart_id="c",
        title="t & <u>",
        x_label="round",
        y_label="accuracy",
        y_range=(0.0, 1.0),
    )
    assert "<img" not in svg and "&lt;img src=x" in svg and "<u>" not in svg
    points = re.findall(r'<circle class="point"[^>]*data-x="([^"]+)" data-y="([^"]+)"', svg)
    assert points == [("0", "0.5"), ("1", "0.75"), ("1", "0.25")]  # a NaN is left out
    bars = bar_chart([(1, 2), (2, 3)], chart_id="p", title="participants", x_label="round", y_label="participants")
    assert re.findall(r'<rect class="point"[^>]*data-x="([^"]+)" data-y="([^"]+)"', bars) == [("1", "2"), ("2", "3")]
    assert line_chart({}, chart_id="e", title="empty", x_label="x", y_label="y").startswith('<svg id="e"')


def test_show_names_the_evidence_of_each_platform(two_platforms: dict) -> None:
    result = verify_log(two_platforms["log"], two_platforms["fed"].auditor_policy())
    shown = list(views(result, frozenset({"admission", "aggregator_start", "handover"})))
    starts = [v for v in shown if v["kind"] in ("aggregator_start", "handover")]
    assert [v["aggregator_evidence"]["platform"] for v in starts] == [SNP, TDX]
    assert all(v["aggregator_evidence"]["auditor_policy"] == "accepted" for v in starts)
    admissions = [v for v in shown if v["kind"] == "admission"]
    assert [v["evidence"]["platform"] for v in admissions] == [SNP, SNP, TDX]
    snp, tdx = admissions[0]["evidence"], admissions[-1]["evidence"]
    assert re.fullmatch(r"[0-9a-f]{128}", snp["chip_id"]) and snp["ppid"] is None
    assert re.fullmatch(r"[0-9a-f]{32}", tdx["ppid"]) and tdx["chip_id"] is None
    assert re.fullmatch(r"[0-9a-f]{96}", tdx["measurement"]) and tdx["tcb"] and tdx["fmspc"]
    text = "\n".join(render_text(v, set()) for v in shown)
    assert f"PPID              {tdx['ppid']}" in text and f"chip id           {snp['chip_id']}" in text
