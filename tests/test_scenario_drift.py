"""``attestfl demo --scenario drift``, as a user runs it (separate processes on loopback): one
site's data shift at round 3, another site boosts its updates (x20). The alerts fire for
exactly those sites and rounds, the quarantine keeps the final accuracy within one point of the
clean run (the same federation with the booster honest), the contributor ranking puts the
booster last, and the audit log (alerts, quarantines, release) verifies offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from attestfl.demo import _site_ids
from attestfl.intelligence import print_intelligence
from attestfl.scenarios import load_scenario
from attestfl.scenarios.drift import SHIFT_ROUND, roles


def _start(directory: Path, *, clean: bool) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env.pop("ATTESTFL_DRIFT_CLEAN", None)
    if clean:
        env["ATTESTFL_DRIFT_CLEAN"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "attestfl.cli", "demo", "--scenario", "drift", "--json", "--dir", str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_drift_scenario(tmp_path: Path) -> None:
    runs = {"drift": _start(tmp_path / "drift", clean=False), "clean": _start(tmp_path / "clean", clean=True)}
    summaries = {}
    for name, process in runs.items():
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stderr[-3000:]
        summaries[name] = json.loads(stdout)
    sites = _site_ids(load_scenario("drift").sites)
    shifted, booster = roles(sites)
    drift, clean = summaries["drift"]["intelligence"], summaries["clean"]["intelligence"]

    alerts = {(a["site"], a["round"], a["rule"]) for a in drift["alerts"]}
    assert alerts == {(booster, r, "norm_ratio") for r in range(1, 6)} | {(shifted, SHIFT_ROUND, "metric_drop")}
    assert drift["quarantined"] == {str(r): [booster] for r in range(1, 6)}
    assert {(a["site"], a["round"], a["rule"]) for a in clean["alerts"]} == {(shifted, SHIFT_ROUND, "metric_drop")}
    assert clean["quarantined"] == {}

    assert abs(summaries["drift"]["final_accuracy"] - summaries["clean"]["final_accuracy"]) <= 0.01
    assert drift["contribution"]["ranking"][-1] == booster
    assert all(row["worst_site"] in sites for row in drift["rounds"])
    assert set(drift["recalibration"]) == set(sites)

    verdict = subprocess.run(
        [
            sys.executable,
            "-m",
            "attestfl.cli",
            "audit",
            "verify",
            summaries["drift"]["audit_log"],
            "--policy",
            str(tmp_path / "drift" / "site-policy.toml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verdict.returncode == 0, verdict.stdout[-3000:]
    assert json.loads(verdict.stdout)["valid"]

    lines: list[str] = []
    print_intelligence(drift, lines.append)
    table = "\n".join(lines)
    assert table.index("worst site") < table.index("drift alert") < table.index("contributor value")
    assert f"{booster}: norm_ratio" in table and "QUARANTINED" in table
