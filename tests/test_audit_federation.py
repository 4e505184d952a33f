"""The audit log of a real federation: `attestfl serve` in its own process on loopback, sites
joining (one refused), two rounds, a restart (handover); then `attestfl audit verify`,
`prove`, `head` and `report` (opened in headless Chromium) on what it wrote."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aggregator.audit.log import ENTRIES_FILE, scan_records
from auditor.verify import verify_log
from enclave.simulated.attester import SimulatedSnpAttester
from federation import MODEL, Deployment, run_aggregator
from fedsite.client import AdmissionRefused

ROOT = Path(__file__).resolve().parent.parent


def _update(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(array.shape, value, np.float32) for name, array in MODEL.items()}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("audited")
    deployment = Deployment(
        base / "deployment",
        base / "sim",
        sites={"hospital-a": "", "hospital-b": ""},
        task='rounds = 2\nmin_sites = 2\nround_deadline = "120s"',
    )
    deployment.directory.mkdir()
    receipts = []
    for aggregator in run_aggregator(deployment):
        clients = [
            deployment.client(
                aggregator.target,
                site_id=s,
                policy=deployment.site_policy(),
                attester=SimulatedSnpAttester(deployment.sim_dir),
            )
            for s in ("hospital-a", "hospital-b")
        ]
        for client in clients:
            client.join()
        rogue = deployment.client(
            aggregator.target,
            site_id="hospital-b",
            policy=deployment.site_policy(),
            attester=SimulatedSnpAttester(deployment.sim_dir, debug=True),
        )
        with pytest.raises(AdmissionRefused):
            rogue.join()
        rogue.close()
        for round_number in (1, 2):
            for weight, client in enumerate(clients, start=1):
                assert client.task().round == round_number
                receipts.append(client.upload_update(round_number, _update(0.1 * weight), weight=weight))
            deadline = time.time() + 30
            while clients[0].task().round == round_number and not clients[0].task().finished and time.time() < deadline:
                time.sleep(0.05)
        for client in clients:
            client.close()
    for aggregator in run_aggregator(deployment):  # a restart continues the same log
        with deployment.client(
            aggregator.target,
            site_id="hospital-a",
            policy=deployment.site_policy(),
            attester=SimulatedSnpAttester(deployment.sim_dir),
        ) as client:
            client.join()
    return {
        "log": deployment.directory / "audit-log",
        "policy": deployment.directory / "site-policy.toml",
        "receipts": receipts,
        "deployment": deployment,
    }


def attestfl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "attestfl.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def test_the_federation_log_verifies(federation: dict) -> None:
    run = attestfl("audit", "verify", str(federation["log"]), "--policy", str(federation["policy"]), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["valid"] and report["first_problem"] is None
    assert [r["kind"] for r in report["aggregator_runs"]] == ["aggregator_start", "handover"]
    assert report["admissions"] == {"admitted": 3, "refused": 1} and report["rounds"] == 2
    result = verify_log(federation["log"], federation["deployment"].site_policy())
    kinds = [e.kind for e in result.entries]
    assert {
        "aggregator_start",
        "config",
        "admission",
        "session",
        "update_accepted",
        "round",
        "training_finished",
        "handover",
    } <= set(kinds)
    refused = next(a for a in result.admissions if not a.admitted)
    assert refused.confirmed and any("allow_debug" in r for r in refused.reasons)
    measured = federation["deployment"].measurement().hex()
    assert result.runs[0].claims["measurement"] == measured  # the aggregator's code and aggregator.toml


def test_verify_exit_codes(federation: dict, tmp_path: Path) -> None:
    run = attestfl("audit", "verify", str(federation["log"]))  # default policy: real vendor roots only
    assert run.returncode == 4, run.stdout + run.stderr  # authentic, but the simulated root is not trusted
    assert run.stdout.startswith("AUTHENTIC, NOT TRUSTED BY YOUR POLICY: simulated root ")
    assert "Traceback" not in run.stderr
    assert attestfl("audit", "verify", str(tmp_path / "nothing")).returncode == 2
    (tmp_path / "bad.toml").write_text("allow_debug = 3\n")
    run = attestfl("audit", "verify", str(federation["log"]), "--policy", str(tmp_path / "bad.toml"))
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_every_entry_of_the_federation_log_is_tamper_evident(federation: dict, tmp_path: Path) -> None:
    copy = tmp_path / "log"
    shutil.copytree(federation["log"], copy)
    original = (copy / ENTRIES_FILE).read_bytes()
    policy = federation["deployment"].site_policy()
    records = scan_records(original).records
    for index, record in enumerate(records):
        tampered = bytearray(original)
        tampered[record.offset + 4 + len(record.payload) // 2] ^= 0x80
        (copy / ENTRIES_FILE).write_bytes(bytes(tampered))
        result = verify_log(copy, policy)
        assert not result.valid and result.first_problem.index == index, (index, str(result.first_problem))
    (copy / ENTRIES_FILE).write_bytes(original)
    run = attestfl("audit", "verify", str(copy), "--policy", str(federation["policy"]))
    assert run.returncode == 0, run.stdout


def test_a_site_proves_its_receipt_is_in_the_log(federation: dict, tmp_path: Path) -> None:
    head = attestfl("audit", "head", str(federation["log"]))
    assert head.returncode == 0
    (tmp_path / "head.json").write_text(head.stdout)
    receipt = federation["receipts"][0]
    args = [
        "audit",
        "prove",
        str(federation["log"]),
        "--site",
        receipt.site_id,
        "--round",
        str(receipt.round),
        "--update-sha256",
        receipt.update_sha256.hex(),
    ]
    run = attestfl(*args, "--head", str(tmp_path / "head.json"), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    proof = json.loads(run.stdout)
    assert proof["included"] and proof["path"] and proof["head"]["tree_size"] == json.loads(head.stdout)["tree_size"]
    assert attestfl(*args[:-1], "00" * 32).returncode == 1  # an update the aggregator never acknowledged
    # a head from before the restart (signed by the first run's key) still proves it, and the latest is consistent
    verified = verify_log(federation["log"], federation["deployment"].site_policy())
    handover = next(e.index for e in verified.entries if e.kind == "handover")
    first_run_head = [h for h in verified.heads if h.tree_size <= handover][-1]
    (tmp_path / "old.json").write_text(json.dumps(first_run_head.to_json()))
    assert first_run_head.tree_size > proof["index"]
    run = attestfl(*args, "--head", str(tmp_path / "old.json"), "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["consistency"]["consistent"]
    forged = dict(json.loads(head.stdout), root_hash="11" * 32)
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    assert attestfl(*args, "--head", str(tmp_path / "forged.json")).returncode == 1


def test_the_html_report_in_a_browser(federation: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    output = tmp_path / "report.html"
    run = attestfl("audit", "report", str(federation["log"]), "--policy", str(federation["policy"]), "-o", str(output))
    assert run.returncode == 0, run.stdout + run.stderr
    page_html = output.read_text()
    assert "http://" not in page_html and "https://" not in page_html and "<script" not in page_html  # self-contained
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(output.as_uri())
            assert page.inner_text("#verdict").startswith("SIMULATED")
            aggregator = page.inner_text("#aggregator")
            assert federation["deployment"].measurement().hex() in aggregator and "handover" in aggregator
            admissions = page.inner_text("#admissions")
            assert "hospital-a" in admissions and "refused" in admissions and "allow_debug" in admissions
            assert page.locator("#rounds tbody tr").count() == 2
            assert federation["receipts"][0].update_sha256.hex() in page.inner_text("#rounds")
            assert page.locator("#timeline tbody tr").count() == len(
                verify_log(federation["log"], federation["deployment"].site_policy()).entries
            )
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
            assert requests == [output.as_uri()]  # nothing fetched beyond the page itself
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_the_report_escapes_what_sites_and_operators_log(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from aggregator.audit.synthetic import SyntheticFederation

    fed = SyntheticFederation(tmp_path / "log", tmp_path / "sim", sites=["site-1"])
    fed.admit("site-1")
    fed.log.record("update_refused", site="site-1", reason='<img src=x onerror="document.title=1"><b>bold</b>')
    fed.close()
    output = tmp_path / "report.html"
    run = attestfl("audit", "report", str(tmp_path / "log"), "-o", str(output))
    assert run.returncode == 4  # simulated evidence under the default policy: authentic, not trusted
    assert "<img" not in output.read_text() and "&lt;img src=x" in output.read_text()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page()
            page.goto(output.as_uri())
            assert page.inner_text("#verdict").startswith("AUTHENTIC, NOT TRUSTED BY YOUR POLICY")
            assert page.locator("img").count() == 0 and page.locator("#timeline b").count() == 0
            assert '<img src=x onerror="document.title=1">' in page.inner_text("#timeline")
            page.screenshot(path=str(tmp_path / "escaped.png"), full_page=True)
        finally:
            browser.close()
