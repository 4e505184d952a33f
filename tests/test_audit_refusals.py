"""Refusals logged before a peer proved an identity key (an unknown site id, a missing proof)
carry only digests and bounded fields; the log that holds them still verifies, and the auditor
sees each refusal as logged."""

from __future__ import annotations

from pathlib import Path

import pytest

from auditor.verify import verify_log
from enclave.identity import SiteIdentity
from federation import Deployment, run_aggregator
from fedsite.client import AdmissionRefused


def test_a_log_with_refusals_before_identity_verifies(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path / "run", tmp_path / "vendor", sites={"site-a": ""}, task="rounds = 1")
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):
        with deployment.client(aggregator.target, site_id="site-a") as site:
            site.join()
        # No admission rule names this site: refused before any identity proof is checked.
        stranger = deployment.client(aggregator.target, site_id="nobody", identity=SiteIdentity.generate("nobody"))
        with stranger, pytest.raises(AdmissionRefused) as refused:
            stranger.join()
        assert refused.value.reasons
    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems]
    decisions = {(a.site, a.admitted, a.confirmed) for a in result.admissions}
    assert ("site-a", True, True) in decisions and ("nobody", False, False) in decisions
