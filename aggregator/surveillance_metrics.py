"""Prometheus metrics of the federation's intelligence (aggregator/surveillance.py), added to
the aggregator's collector (aggregator/metrics.py); alerting rules on them ship in
deploy/prometheus/attestfl-alerts.yml.

Exported: ``attestfl_drift_alerts_total{rule}``, ``attestfl_quarantined_updates_total``,
``attestfl_site_update_norm{site}`` (the last surveilled round), ``attestfl_worst_site_accuracy``,
``attestfl_largest_subgroup_gap`` (the current round's model, as reported so far) and
``attestfl_contribution_seconds`` (the last round's contributor-value estimate). Site labels
are bounded by the admitted sites; nothing here is a released contributor value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

RULES = ("norm_ratio", "norm_z", "min_cosine", "metric_drop")


def surveillance_metrics(surveillance: Any) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    if surveillance is None:
        return
    counts = dict(surveillance.alerts)  # a copy: the round driver updates it from another thread
    alerts = CounterMetricFamily("attestfl_drift_alerts", "Drift alerts raised, by rule", labels=["rule"])
    for rule in sorted(set(RULES) | set(counts)):
        alerts.add_metric([rule], counts.get(rule, 0))
    yield alerts
    yield CounterMetricFamily(
        "attestfl_quarantined_updates",
        "Updates excluded from aggregation by quarantine",
        value=surveillance.quarantined,
    )
    norms = GaugeMetricFamily("attestfl_site_update_norm", "L2 norm of each site's last update", labels=["site"])
    for site, norm in sorted(surveillance.norms.items()):
        norms.add_metric([site], norm)
    yield norms
    risk = surveillance.risk
    if risk.get("worst_accuracy") is not None:
        yield GaugeMetricFamily(
            "attestfl_worst_site_accuracy",
            "Accuracy of the worst site on the current model",
            value=risk["worst_accuracy"],
        )
    gap = risk.get("largest_subgroup_gap")
    if gap:
        yield GaugeMetricFamily(
            "attestfl_largest_subgroup_gap", "Largest subgroup accuracy gap at any site", value=gap["gap"]
        )
    if surveillance.contribution is not None:
        yield GaugeMetricFamily(
            "attestfl_contribution_seconds",
            "Seconds of the last round's contributor-value estimate",
            value=surveillance.contribution_seconds,
        )
