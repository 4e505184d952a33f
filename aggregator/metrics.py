"""Prometheus metrics of the aggregator (``[aggregator] metrics_listen``).

Exported: ``attestfl_rounds_completed``, ``attestfl_round`` (the open round),
``attestfl_sites_admitted_total``, ``attestfl_sites_refused_total``,
``attestfl_refusal_reasons_total{check}``, ``attestfl_live_sessions``,
``attestfl_bytes_received_total``, ``attestfl_bytes_sent_total``,
``attestfl_updates_accepted_total``, ``attestfl_aggregation_seconds{round}`` and
``attestfl_epsilon`` (central DP, when on); drift alerts, quarantines, per-site update norms,
the worst site and the largest subgroup gap (:mod:`aggregator.surveillance_metrics`).

The endpoint is plain, unauthenticated HTTP. It is off unless ``metrics_listen`` is set, and a
``metrics_listen`` without a host (``":9464"``) binds 127.0.0.1; binding anything but
loopback is logged as a warning. Scrape it from inside the pod (a sidecar), through
``kubectl port-forward`` (not into a Kata guest), or behind an authenticating proxy
(deploy/kubernetes/README.md, "Metrics").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from aggregator.config import DEFAULT_METRICS_HOST
from aggregator.rounds import RoundDriver
from aggregator.service import FederationService
from aggregator.surveillance_metrics import surveillance_metrics
from protocol.config import Endpoint, parse_endpoint

LOG = logging.getLogger("attestfl.aggregator.metrics")


class AggregatorCollector(Collector):
    def __init__(self, service: FederationService, driver: RoundDriver) -> None:
        self.service = service
        self.driver = driver

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        counters = self.service.counters
        completed = [r for r in self.driver.history.values() if r.model_sha256 is not None]
        yield GaugeMetricFamily("attestfl_rounds_completed", "Rounds aggregated so far", value=len(completed))
        yield GaugeMetricFamily("attestfl_round", "The open round", value=self.driver.round)
        yield CounterMetricFamily("attestfl_sites_admitted", "Sites admitted", value=counters.admitted)
        yield CounterMetricFamily("attestfl_sites_refused", "Sites refused admission", value=counters.refused)
        reasons = CounterMetricFamily("attestfl_refusal_reasons", "Failed admission checks", labels=["check"])
        for check, count in sorted(counters.by_reason.items()):
            reasons.add_metric([check], count)
        yield reasons
        yield GaugeMetricFamily("attestfl_live_sessions", "Live site sessions", value=len(self.service.sessions))
        yield CounterMetricFamily("attestfl_bytes_received", "Sealed bytes received", value=counters.bytes_in)
        yield CounterMetricFamily("attestfl_bytes_sent", "Sealed bytes sent", value=counters.bytes_out)
        yield CounterMetricFamily("attestfl_updates_accepted", "Updates accepted", value=counters.updates)
        seconds = GaugeMetricFamily("attestfl_aggregation_seconds", "Aggregation time per round", labels=["round"])
        for record in completed:
            seconds.add_metric([str(record.round)], record.aggregation_seconds)
        yield seconds
        epsilons = [r.epsilon for r in completed if r.epsilon is not None]
        if epsilons:
            yield GaugeMetricFamily("attestfl_epsilon", "Central DP epsilon spent so far", value=epsilons[-1])
        yield from surveillance_metrics(getattr(self.driver, "surveillance", None))


def metrics_endpoint(listen: str) -> Endpoint:
    """``metrics_listen`` parsed: host:port, IPv6 in brackets; no host binds 127.0.0.1."""
    return parse_endpoint(listen, default_host=DEFAULT_METRICS_HOST)


def metrics_http_server(listen: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """An HTTP server of ``registry`` on ``listen`` (a daemon thread; ``shutdown()`` stops it).
    The endpoint has no authentication: bound anywhere but loopback it is logged as a warning
    (scrape it through a sidecar or an authenticating proxy instead)."""
    endpoint = metrics_endpoint(listen)
    if not endpoint.is_loopback:
        LOG.warning(
            "metrics exposed",
            extra={
                "fields": {
                    "metrics_listen": str(endpoint),
                    "reason": "Prometheus metrics are unauthenticated: bind them to 127.0.0.1 and scrape them "
                    "through a sidecar or an authenticating proxy",
                }
            },
        )
    server, _thread = start_http_server(endpoint.port, addr=endpoint.host, registry=registry)
    return server


def start_metrics_server(
    listen: str, service: FederationService, driver: RoundDriver, *, registry: CollectorRegistry = REGISTRY
) -> int:
    """Export the aggregator's metrics on ``listen`` (``metrics_listen``); the bound port."""
    registry.register(AggregatorCollector(service, driver))
    return metrics_http_server(listen, registry).server_port
