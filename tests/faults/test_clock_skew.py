"""Clocks disagree: the aggregator's clock runs ahead of the site's (libfaketime on the real
`attestfl serve` process). Within the tolerance the site joins; beyond it the site says
"clock skew", not "not signed by the attested aggregator key"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from federation import Deployment
from fedsite.client import ClockSkew

FAKETIME = shutil.which("faketime")


@pytest.mark.parametrize(("ahead", "joins"), [("+1s", True), ("+45s", True), ("+300s", False)])
def test_aggregator_clock_ahead_of_the_site(tmp_path: Path, ahead: str, joins: bool) -> None:
    assert FAKETIME, "Debian's faketime is installed by the README's test command"
    deployment = Deployment(tmp_path, tmp_path / "vendor", sites={"site-a": ""})
    aggregator = deployment.start(prefix=(FAKETIME, "-f", ahead))
    try:
        with deployment.client(aggregator.target, site_id="site-a") as client:  # tolerance: 60 s (the default)
            if joins:
                client.join()
                assert client.task().round == 1
            else:
                with pytest.raises(ClockSkew, match="clock skew") as skew:
                    client.join()
                assert "max_clock_skew" in str(skew.value)
    finally:
        aggregator.stop()
