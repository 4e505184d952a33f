"""`attestfl demo` with its defaults, as a user runs it: separate processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from attestfl.demo import ROGUE_SITE
from attestfl.loopback import read_events


def test_demo_defaults(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "attestfl.cli", "demo", "--json", "--dir", "demo"],  # relative, as a user types it
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    tmp_path = tmp_path / "demo"
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert set(summary) == {"final_accuracy", "rounds", "refused", "audit_log", "intelligence"}
    assert summary["final_accuracy"] >= 0.93
    # round r's model is the one before round r's training; round 6 is the final model (as in serve's table,
    # the sites' metrics.csv and the audit log's metrics entries)
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3, 4, 5, 6]
    assert summary["rounds"][-1]["accuracy"] == summary["final_accuracy"]
    assert all(
        set(r) == {"round", "accuracy", "per_site", "epsilon"} and len(r["per_site"]) == 4 for r in summary["rounds"]
    )
    (refusal,) = summary["refused"]
    assert refusal["site"] == ROGUE_SITE and any(r.startswith("admission.measurement") for r in refusal["reasons"])
    assert "training rounds" in result.stderr  # the progress bar

    # From the aggregator's own records: nothing from a refused or unadmitted site entered a model.
    events = read_events(tmp_path / "aggregator.stderr")
    admitted = {e["site"] for e in events if e["message"] == "admission" and e["admitted"]}
    assert ROGUE_SITE not in admitted and len(admitted) == 4
    accepted = {e["site"] for e in events if e["message"] == "update_accepted"}
    participants = {site for e in events if e["message"] == "round" for site in e["participants"]}
    assert accepted <= admitted and participants <= admitted
    assert len([e for e in events if e["message"] == "round"]) == 5
    logged: dict[int, dict[str, float]] = {}
    for e in events:
        if e["message"] == "metrics":
            logged.setdefault(e["round"], {})[e["site"]] = e["metrics"]["accuracy"]
    assert {row["round"]: row["per_site"] for row in summary["rounds"]} == logged  # round r: round r's metrics

    # The demo's tamper-evident audit log verifies offline (the simulated vendor's roots pinned).
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "attestfl.cli",
            "audit",
            "verify",
            summary["audit_log"],
            "--policy",
            str(tmp_path / "site-policy.toml"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stdout[-3000:]
    verdict = json.loads(audit.stdout)
    assert verdict["valid"] and verdict["rounds"] == 5 and verdict["admissions"]["refused"] >= 1
