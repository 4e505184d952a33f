"""``attestfl audit verify`` checks the federation-intelligence entries it can check: a quarantine
logged for a round is applied (the round aggregated none of its sites), alerts and contributor
values name admitted sites, a released ranking is the released values in order."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from aggregator.audit.synthetic import SyntheticFederation
from auditor.report import render_report
from auditor.verify import verify_log


def _federation(base: Path, *, aggregate_quarantined: bool, ranking: list[str] | None = None) -> SyntheticFederation:
    fed = SyntheticFederation(base / "log", base / "sim", sites=["a", "b", "c"])
    for site in fed.sites:
        fed.admit(site)
    assert fed.log is not None
    uploads = {site: fed.upload(site, 1) for site in fed.sites}
    fed.log.record(
        "evaluation",
        round=1,
        worst_site="b<script>",
        worst_accuracy=0.61,
        largest_subgroup_gap={"site": "a", "attribute": "sex", "metric": "accuracy", "gap": 0.3},
        per_site={},
        weighted={},
        sites=3,
    )
    fed.log.record(
        "drift_alert", round=1, attempt=1, site="c", rule="norm_ratio", value=31.9, threshold=10.0, quarantined=True
    )
    fed.log.record(
        "drift_alert", round=1, site="ghost", rule="metric_drop", value=0.5, threshold=0.2, quarantined=False
    )
    fed.log.record("quarantine", round=1, attempt=1, sites=["c"], reasons={"c": "norm_ratio 31.9 (threshold 10)"})
    participants = uploads if aggregate_quarantined else {s: uploads[s] for s in ("a", "b")}
    fed.log.record(
        "round",
        round=1,
        attempt=1,
        participants=participants,
        model_sha256=hashlib.sha256(os.urandom(8)).hexdigest(),
        strategy="fedavg",
        clip_norm=None,
        dp=None,
        epsilon=None,
        aggregation_seconds=0.001,
    )
    values = {"a": 0.6, "b": 0.5, "c": -1.0}
    fed.log.record("contribution_release", rounds=1, values=values, ranking=ranking or ["a", "b", "c"], epsilon=None)
    fed.close()
    return fed


def test_an_applied_quarantine_verifies_and_an_alert_for_an_unknown_site_is_named(tmp_path: Path) -> None:
    fed = _federation(tmp_path, aggregate_quarantined=False)
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    assert [p.check for p in result.problems] == ["drift_alert.site"]  # the "ghost" alert


def test_a_quarantined_update_in_the_aggregate_and_a_false_ranking_are_problems(tmp_path: Path) -> None:
    fed = _federation(tmp_path, aggregate_quarantined=True, ranking=["c", "a", "b"])
    result = verify_log(tmp_path / "log", fed.auditor_policy())
    checks = {p.check for p in result.problems}
    assert {"round.quarantine", "contribution_release.ranking"} <= checks and not result.valid


def test_the_audit_report_leads_its_intelligence_with_the_worst_site(tmp_path: Path) -> None:
    fed = _federation(tmp_path, aggregate_quarantined=False)
    page = render_report(verify_log(tmp_path / "log", fed.auditor_policy()))
    risk = page.index("Federation risk (worst site first)")
    assert risk < page.index("Drift alerts and quarantines") < page.index("Contributor value (as released)")
    assert "b&lt;script&gt;" in page and "<script>" not in page  # site ids are escaped
    assert "0.3000 (a, sex)" in page and "norm_ratio" in page
