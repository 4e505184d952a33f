"""The intelligence metrics on the aggregator's Prometheus endpoint, and the shipped alerting
rules name only metrics the aggregator exports."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from aggregator.metrics import AggregatorCollector
from aggregator.rounds import RoundDriver, TaskConfig
from aggregator.surveillance import DriftRules

ROOT = Path(__file__).resolve().parent.parent
MODEL = {"w": np.zeros(8, np.float32)}


def _exported() -> str:
    config = TaskConfig(initial_model=MODEL, rounds=2, min_sites=3, drift=DriftRules(norm_ratio=4.0, quarantine=True))
    driver = RoundDriver(config)
    for site, scale in (("a", 1.0), ("b", 1.1), ("c", 30.0)):
        receipt = {"site": site, "round": 1}
        driver.accept_update(site, 1, 1, {"w": np.full(8, 0.1 * scale, np.float32)}, 1.0, b"\0" * 32, receipt)
    driver.close_if_complete()
    driver.report_metrics("a", 2, {"accuracy": 0.9, "accuracy[sex=F]": 0.95, "accuracy[sex=M]": 0.7}, 10)
    counters = SimpleNamespace(admitted=3, refused=0, by_reason={}, bytes_in=0, bytes_out=0, updates=3)
    registry = CollectorRegistry()
    registry.register(AggregatorCollector(SimpleNamespace(counters=counters, sessions={}), driver))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_alerts_quarantines_norms_and_risk_are_exported() -> None:
    text = _exported()
    assert 'attestfl_drift_alerts_total{rule="norm_ratio"} 1.0' in text
    assert "attestfl_quarantined_updates_total 1.0" in text
    assert 'attestfl_site_update_norm{site="c"}' in text
    assert "attestfl_worst_site_accuracy 0.9" in text
    assert "attestfl_largest_subgroup_gap 0.25" in text


def test_the_shipped_alerting_rules_use_exported_metrics() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "attestfl-alerts.yml").read_text())
    exported = set(re.findall(r"^(attestfl_[a-z_]+)", _exported(), re.MULTILINE))
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(expressions) == 4
    for expression in expressions:
        names = set(re.findall(r"attestfl_[a-z_]+", expression))
        assert names and names <= exported, expression
