"""``attestfl serve --dashboard``: the read-only live page, in headless Chromium (a screenshot
is kept), updating while the federation runs; values from sites are shown as text, never HTML."""

from __future__ import annotations

import hashlib
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from aggregator.commands import add_serve_command
from aggregator.dashboard import start_dashboard
from aggregator.rounds import RoundDriver, TaskConfig
from aggregator.surveillance import ContributionPolicy, DriftRules

MODEL = {"w": np.zeros(16, np.float32)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _submit(driver: RoundDriver, site: str, scale: float) -> None:
    digest = hashlib.sha256(site.encode()).digest()
    update = {"w": np.full(16, 0.1 * scale, np.float32)}
    driver.accept_update(site, driver.round, 1, update, 1.0, digest, {"site": site, "round": driver.round})
    driver.close_if_complete()


def test_the_live_page_leads_with_the_worst_site_and_updates(tmp_path: Path) -> None:
    import playwright.sync_api as playwright  # the test extra installs it

    config = TaskConfig(
        initial_model=MODEL,
        rounds=2,
        min_sites=3,
        drift=DriftRules(norm_ratio=4.0, quarantine=True),
        contribution=ContributionPolicy(release="round"),
    )
    driver = RoundDriver(config)
    server = start_dashboard(f"127.0.0.1:{_free_port()}", driver)
    url = f"http://127.0.0.1:{server.server_port}/"
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#status:has-text('round 1 of 2')")  # (the page's CSP forbids eval)
            assert page.text_content("#risk") == "no evaluation yet"
            # the federation runs on: a round with a boosting site, then the sites' evaluations
            for site, scale in (("a", 1.0), ("b", 1.2), ("c", 40.0)):
                _submit(driver, site, scale)
            driver.report_metrics("a", 2, {"accuracy": 0.9, "accuracy[sex=F]": 0.95, "accuracy[sex=M]": 0.7}, 10)
            driver.report_metrics("<b>x</b>", 2, {"accuracy": 0.6, "auroc": 0.7}, 10)
            page.wait_for_selector("#risk:has-text('Worst site')")
            page.wait_for_selector("#quarantined:has-text('1 update')")
            risk = page.text_content("#risk") or ""
            assert "Worst site: <b>x</b> (accuracy 0.6000" in risk and "gap 0.2500 at a (sex)" in risk
            assert page.locator("#risk b").count() == 0  # shown as text
            assert "norm_ratio" in (page.text_content("#alerts") or "")
            assert "1 update(s) quarantined" in (page.text_content("#quarantined") or "")
            assert "c" in (page.text_content("#contribution") or "")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            browser.close()
        assert (tmp_path / "dashboard.png").stat().st_size > 5000
        state = json.loads(urllib.request.urlopen(url + "state.json", timeout=10).read())
        assert state["risk"]["worst_site"] == "<b>x</b>" and state["rounds"][0]["participants"] == 2
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(url + "audit-log", timeout=10)
    finally:
        server.shutdown()


def test_serve_takes_a_dashboard_address() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers())
    args = parser.parse_args(["serve", "--config", "a.toml", "--dashboard", "127.0.0.1:8080"])
    assert args.dashboard == "127.0.0.1:8080"
