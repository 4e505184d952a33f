"""Every extension point at once, as a third party ships them: one distribution on PYTHONPATH
carries a platform (``tests/toy_platform.py``), a strategy and an admission check (the worked
examples of docs/extending.md), registered only by their entry points. The real ``attestfl
serve`` admits a site whose TEE is the toy platform beside a simulated SEV-SNP site, under the
installed check, aggregates with the installed strategy, and the audit log verifies. Nothing in
attestfl was edited."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import test_extensions
import test_platform_plugin
import toy_platform
from attestation.platforms import registry
from auditor.verify import verify_log
from enclave.simulated.attester import SimulatedSnpAttester
from federation import MODEL, Deployment, run_aggregator
from fedsite.client import AdmissionRefused
from protocol.tensors import ModelSpec
from toy_attester import ToyAttester

TOY_MEASUREMENT = hashlib.sha256(b"the toy site's code").digest()


@pytest.fixture
def distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """One directory as pip would leave it: the doc's strategy and check, and the toy platform,
    each with its ``*.dist-info/entry_points.txt``; importable here and in the processes started."""
    directory = test_extensions.write_distribution(tmp_path / "site-packages")
    test_platform_plugin.write_distribution(
        directory, f"[attestfl.platforms]\ntoy = {test_platform_plugin.MODULE}:PLATFORM\n"
    )
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(directory), os.environ.get("PYTHONPATH")])))
    registry.register(toy_platform.PLATFORM)  # this process is the sites': it encodes toy evidence
    try:
        yield directory
    finally:
        registry.unregister(toy_platform.NAME)
        for module in ("example_strategies", "example_checks", test_platform_plugin.MODULE):
            sys.modules.pop(module, None)


@dataclass
class ToyDeployment(Deployment):
    """The loopback deployment whose policy for sites also trusts the toy vendor's root."""

    toy_root: str = ""

    def write(self) -> Path:
        config = super().write()
        roots = ", ".join(f'"{fp}"' for fp in [*self.roots.values(), self.toy_root])
        platforms = ", ".join(f'"{name}"' for name in [*registry.builtin_names(), toy_platform.NAME])
        (self.directory / "site-policy.toml").write_text(
            f"platforms = [{platforms}]\ntrusted_simulated_roots = [{roots}]\n"
            f'[toy]\nmeasurement = ["{TOY_MEASUREMENT.hex()}"]\n'
        )
        return config


def test_a_toy_platform_site_joins_under_an_installed_check_and_strategy(distribution: Path, tmp_path: Path) -> None:
    toy = ToyAttester(tmp_path / "toy-vendor", TOY_MEASUREMENT)
    every_hour = ", ".join(str(h) for h in range(24))
    deployment = ToyDeployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        model=MODEL,
        sites={
            "toy-site": f'platforms = ["{toy_platform.NAME}"]\nchecks."example.hours".hours = [{every_hour}]',
            "snp-site": "",
        },
        task='rounds = 1\nmin_sites = 2\nround_deadline = "120s"\n'
        + test_extensions.doc_block("aggregator.toml", "Add a strategy"),
        toy_root=toy.vendor.root_fingerprint,
    )
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):
        toy_site = deployment.client(aggregator.target, site_id="toy-site", attester=toy)
        snp = SimulatedSnpAttester(tmp_path / "sim")
        snp_site = deployment.client(aggregator.target, site_id="snp-site", attester=snp)
        # The toy TEE may not claim the SNP site's rule (its platform is not the rule's).
        impostor = deployment.client(aggregator.target, site_id="snp-site", attester=toy)
        with impostor, pytest.raises(AdmissionRefused) as refused:
            impostor.join()
        assert [r.split(":")[0] for r in refused.value.reasons] == ["admission.platform"], refused.value.reasons
        for site in (toy_site, snp_site):
            site.join()
        spec = ModelSpec.from_json(toy_site.task().model_spec)
        before = toy_site.download_model(1, spec)
        toy_site.upload_update(1, test_extensions._update(0.25), weight=10)
        snp_site.upload_update(1, test_extensions._update(0.5), weight=1)
        test_extensions._wait_for_round(toy_site, 1)
        after = toy_site.download_model(2, spec)
        for name in MODEL:  # the doc's scaled_max (scale 2): 2 * max(0.25, 0.5) per coordinate
            np.testing.assert_allclose(after[name], before[name] + 1.0, rtol=0, atol=1e-6)
        for site in (toy_site, snp_site):
            site.close()

    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems]
    admitted = {a.site: a for a in result.admissions if a.admitted}
    assert set(admitted) == {"toy-site", "snp-site"}
    assert result.rounds[0].strategy == {"name": "scaled_max", "scale": 2.0}
