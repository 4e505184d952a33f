"""The auditor's journey on a real log: `attestfl demo` (aggregator and sites in separate processes
on loopback, small settings), then every shell block of docs/auditors.md's "four questions"
section run as written, the verdicts (SIMULATED, authentic but not trusted, tampered), `audit
show`, `audit prove` with a digest prefix, and the HTML report in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aggregator.audit.log import ENTRIES_FILE, scan_records
from attestation.errors import EXIT_NOT_TRUSTED, EXIT_REFUSED, EXIT_UNUSABLE
from auditor.verify import verify_log
from enclave.identity import fingerprint

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "auditors.md"
SECTION = "## The four questions, on the demo's output"


def doc_blocks() -> list[str]:
    """The ```sh blocks of the section, in order."""
    section = DOC.read_text(encoding="utf-8").split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def attestfl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", *args], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=300
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("journey")
    blocks = doc_blocks()
    assert blocks and blocks[0].startswith("attestfl demo "), blocks[:1]
    run = sh(blocks[0], base)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    directory = base / "demo"
    return {
        "base": base,
        "dir": directory,
        "log": directory / "audit-log",
        "policy": directory / "aggregator-policy.toml",
        "stdout": run.stdout,
        "blocks": blocks,
    }


def test_the_demo_says_how_to_verify_its_own_log(demo: dict[str, Any]) -> None:
    (line,) = [line for line in demo["stdout"].splitlines() if line.startswith("verify it: ")]
    command = line.removeprefix("verify it: ")
    assert command == f"attestfl audit verify {demo['log']} --policy {demo['policy']}"
    run = sh(command, demo["base"])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("SIMULATED: the log is intact and verifies under your policy")


def test_every_block_of_the_four_questions_runs_as_written(demo: dict[str, Any]) -> None:
    outputs = []
    for block in demo["blocks"][1:]:
        run = sh(block, demo["base"])
        assert run.returncode == 0, (block, run.stdout[-2000:], run.stderr[-2000:])
        outputs.append(run.stdout)
    text = "\n".join(outputs)
    assert "exit status 4" in text and "AUTHENTIC, NOT TRUSTED BY YOUR POLICY: simulated root" in text
    assert re.search(r"site rogue-clinic: REFUSED \(offline re-run: confirmed\)", text)
    assert re.search(r"site hospital-a: ADMITTED \(offline re-run: confirmed\)", text)
    assert "trusted_simulated_roots" in text and "participant       hospital-b" in text
    assert (demo["dir"] / "report.html").stat().st_size > 10_000
    assert re.search(r"included: entry \d+ \(update [0-9a-f]{64}\) is included", text)


def test_verdicts_separate_tampered_from_not_trusted(demo: dict[str, Any], tmp_path: Path) -> None:
    log, policy = demo["log"], demo["policy"]
    result = verify_log(log)  # the default policy: real vendor roots only
    assert result.verdict == "not_trusted" and not result.tampered and result.simulated
    roots = re.findall(r'"([0-9a-f]{64})"', policy.read_text())
    (item,) = result.not_trusted
    assert re.fullmatch(r"simulated root ([0-9a-f]{64}) \(entry 0, aggregator_start\)", item)
    assert item.split()[2] in roots

    run = attestfl("audit", "verify", str(log), "--json")
    assert run.returncode == EXIT_NOT_TRUSTED
    report = json.loads(run.stdout)
    assert report["verdict"] == "not_trusted" and report["valid"] is False
    assert report["problems"][0]["class"] == "not_trusted"

    # trusting the simulated root but pinning another measurement: still authentic, still not trusted
    (tmp_path / "other.toml").write_text(
        policy.read_text().replace(re.search(r'measurement = \["([0-9a-f]+)"\]', policy.read_text())[1], "ab" * 48)
    )
    run = attestfl("audit", "verify", str(log), "--policy", str(tmp_path / "other.toml"))
    assert run.returncode == EXIT_NOT_TRUSTED and "snp.policy.measurement" in run.stdout, run.stdout
    assert "simulated root" not in run.stdout  # that root is trusted now: only the measurement is not

    # an altered entry is tampering, whatever the policy
    copy = tmp_path / "log"
    shutil.copytree(log, copy)
    data = bytearray((copy / ENTRIES_FILE).read_bytes())
    record = scan_records(bytes(data)).records[5]
    data[record.offset + 4 + len(record.payload) // 2] ^= 0x01
    (copy / ENTRIES_FILE).write_bytes(bytes(data))
    for args in ([], ["--policy", str(policy)]):
        run = attestfl("audit", "verify", str(copy), *args)
        assert run.returncode == EXIT_REFUSED and run.stdout.startswith("INVALID: first bad entry 5"), run.stdout
        assert json.loads(attestfl("audit", "verify", str(copy), *args, "--json").stdout)["verdict"] == "invalid"


def test_audit_show_decodes_every_admission(demo: dict[str, Any]) -> None:
    run = attestfl("audit", "show", str(demo["log"]), "--policy", str(demo["policy"]), "--kind", "admission", "--json")
    assert run.returncode == 0, run.stderr
    assert "SIMULATED" in run.stderr  # the verdict goes to stderr with --json
    views = [json.loads(line) for line in run.stdout.splitlines()]
    result = verify_log(demo["log"], verify_policy(demo["policy"]))
    entries = {e.index: e for e in result.entries}
    assert [v["index"] for v in views] == [a.index for a in result.admissions] and len(views) == 3
    measurement = re.search(r'"([0-9a-f]{96})"', (demo["dir"] / "aggregator.toml").read_text())[1]
    for view in views:
        fields = entries[view["index"]].fields
        evidence = view["evidence"]
        assert evidence["sha256"] == hashlib.sha256(fields["evidence"]).hexdigest() == fields["evidence_sha256"]
        assert evidence["platform"] == "sev-snp" and evidence["simulated"] is True and evidence["debug"] is False
        assert re.fullmatch(r"[0-9a-f]{128}", evidence["chip_id"]) and "snp=" in evidence["tcb"]
        assert view["identity_key"]["fingerprint"] == fingerprint(fields["identity_public"])
        assert view["session_keys"] == {"x25519": fields["x25519"].hex(), "ed25519": fields["ed25519"].hex()}
        assert view["rerun"] == "confirmed" and view["claims_from"] == "offline re-run"
        assert "trusted_simulated_roots" in view["policy"]["attestation_policy"]
        assert view["policy"]["site_rule"]["identity_keys"] == [fields["identity_public"].hex()]
        if view["site"] == "rogue-clinic":
            assert not view["admitted"] and evidence["measurement"] != measurement
            assert any(r.startswith("admission.measurement") for r in view["reasons"])
        else:
            assert view["admitted"] and evidence["measurement"] == measurement and view["reasons"] == []

    every = attestfl("audit", "show", str(demo["log"]), "--policy", str(demo["policy"]), "--json")
    kinds = [json.loads(line)["kind"] for line in every.stdout.splitlines()]
    assert len(kinds) == result.records and kinds[0] == "aggregator_start" and "round" in kinds

    text = attestfl("audit", "show", str(demo["log"]), "--kind", "admission")  # no policy: not trusted, still shown
    assert text.returncode == EXIT_NOT_TRUSTED and text.stdout.startswith("AUTHENTIC, NOT TRUSTED BY YOUR POLICY")
    assert text.stdout.count("(SIMULATED: proves nothing about hardware)") == 3
    assert text.stdout.count("attestation policy file:") == 1 and text.stdout.count("(text shown above)") == 2


def verify_policy(path: Path) -> Any:
    from attestation.policy import Policy

    return Policy.from_toml(path.read_text())


def test_audit_prove_takes_a_unique_prefix(demo: dict[str, Any], tmp_path: Path) -> None:
    result = verify_log(demo["log"], verify_policy(demo["policy"]))
    update = next(e for e in result.entries if e.kind == "update_accepted")
    site, number, digest = update.fields["site"], str(update.fields["round"]), update.fields["update_sha256"]
    base = ["audit", "prove", str(demo["log"]), "--site", site, "--round", number, "--update-sha256"]
    for given in (digest, digest[:12], digest[:8], digest.upper()):
        run = attestfl(*base, given, "--json")
        assert run.returncode == 0, (given, run.stdout, run.stderr)
        assert json.loads(run.stdout)["index"] == update.index
    run = attestfl(*base, digest[:12])
    assert run.stdout.startswith(f"included: entry {update.index} (update {digest})")
    other = "0" * 12 if not digest.startswith("0" * 12) else "f" * 12
    assert attestfl(*base, other).returncode == EXIT_REFUSED  # no such update: NOT INCLUDED
    for bad in (digest[:7], "xyz" + digest[3:12], digest + "00"):
        run = attestfl(*base, bad)
        assert run.returncode == EXIT_UNUSABLE and "--update-sha256" in run.stderr and "Traceback" not in run.stderr


def test_an_ambiguous_prefix_lists_the_candidates(tmp_path: Path) -> None:
    from aggregator.audit.synthetic import SyntheticFederation

    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["a"])
    fed.admit("a")
    assert fed.log is not None
    digests = ["abcdef012345" + "0" * 52, "abcdef012345" + "1" * 52]
    for digest in digests:  # two accepted updates of one site in one round (e.g. two attempts)
        fed.log.record("update_accepted", site="a", round=1, update_sha256=digest, weight=1.0)
    fed.close()
    base = ["audit", "prove", str(tmp_path / "log"), "--site", "a", "--round", "1", "--update-sha256"]
    run = attestfl(*base, "abcdef012345")
    assert run.returncode == EXIT_UNUSABLE and "Traceback" not in run.stderr
    assert "prefix of 2 accepted updates" in run.stderr and all(d in run.stderr for d in digests)
    assert attestfl(*base, "abcdef0123451").returncode == 0


def test_the_report_in_a_browser(demo: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    output = tmp_path / "report.html"
    run = attestfl("audit", "report", str(demo["log"]), "--policy", str(demo["policy"]), "-o", str(output))
    assert run.returncode == 0 and run.stdout.startswith("SIMULATED: report written"), run.stdout + run.stderr
    page_html = output.read_text()
    assert "http://" not in page_html and "https://" not in page_html and "<script" not in page_html
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(output.as_uri())
            assert page.inner_text("#verdict").startswith("SIMULATED")
            assert "SIMULATED" in page.title()
            about = page.inner_text("#about")
            assert "attestfl" in about and str(demo["policy"]) in about
            assert page.locator("#attestfl-version").inner_text() not in ("", "unknown (not installed)")
            assert "does not prove" in page.inner_text("#not-proven")
            assert "trusted_simulated_roots" in page.inner_text("#policy")

            # charts: points with values, from the log
            metrics = page.locator("#chart-metrics circle.point")
            assert metrics.count() == 3 * 4  # 2 sites + the weighted line, models 0..3
            accuracy = [float(v) for v in metrics.evaluate_all("els => els.map(e => e.dataset.y)")]
            assert all(0.0 <= a <= 1.0 for a in accuracy)
            epsilon = page.locator("#chart-epsilon circle.point")
            assert epsilon.count() == 3
            values = [float(v) for v in epsilon.evaluate_all("els => els.map(e => e.dataset.y)")]
            assert values == sorted(values) and values[0] > 0
            bars = page.locator("#chart-participants rect.point")
            assert bars.count() == 3 and bars.evaluate_all("els => els.map(e => e.dataset.y)") == ["2", "2", "2"]

            # an admission's evidence expands
            details = page.locator("#admissions details.evidence").first
            assert details.get_attribute("open") is None
            assert not details.locator("table.facts").is_visible()
            details.locator("summary").click()
            assert details.get_attribute("open") is not None
            facts = details.locator("table.facts")
            assert facts.is_visible() and "chip id" in facts.inner_text()
            assert "identity key fingerprint" in facts.inner_text()
            page.screenshot(path=str(tmp_path / "audit-report.png"), full_page=True)
            assert requests == [output.as_uri()]  # nothing fetched beyond the page itself
        finally:
            browser.close()
    assert (tmp_path / "audit-report.png").stat().st_size > 20_000
