"""The Prometheus endpoint (unauthenticated) binds where metrics_listen says, 127.0.0.1 when no
host is given, IPv6 in brackets; anything but loopback is logged as a warning."""

from __future__ import annotations

import logging
import socket
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.registry import CollectorRegistry

from aggregator.metrics import AggregatorCollector, metrics_endpoint, metrics_http_server, start_metrics_server


def _free_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _registry() -> CollectorRegistry:
    counters = SimpleNamespace(
        admitted=2, refused=1, by_reason={"policy.measurement": 1}, bytes_in=10, bytes_out=20, updates=3
    )
    service = SimpleNamespace(counters=counters, sessions={b"s": object()})
    driver = SimpleNamespace(history={}, round=4)
    registry = CollectorRegistry()
    registry.register(AggregatorCollector(service, driver))  # type: ignore[arg-type]
    return registry


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def warnings_logged():
    logger = logging.getLogger("attestfl.aggregator.metrics")
    handler = _Records()
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def test_no_host_binds_loopback(warnings_logged: list) -> None:
    port = _free_port()
    server = metrics_http_server(f":{port}", _registry())
    try:
        assert server.server_address[0] == "127.0.0.1" and server.server_port == port
        text = _scrape(f"http://127.0.0.1:{port}/metrics")
        assert "attestfl_sites_admitted_total 2.0" in text and "attestfl_round 4.0" in text
    finally:
        server.shutdown()
        server.server_close()
    assert not warnings_logged


def test_ipv6_loopback_in_brackets(warnings_logged: list) -> None:
    try:
        port = _free_port(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = metrics_http_server(f"[::1]:{port}", _registry())
    try:
        assert server.server_address[0] == "::1"
        assert "attestfl_live_sessions 1.0" in _scrape(f"http://[::1]:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
    assert not warnings_logged


def test_binding_beyond_loopback_is_logged_as_a_warning(warnings_logged: list) -> None:
    port = _free_port(host="0.0.0.0")
    server = metrics_http_server(f"0.0.0.0:{port}", _registry())
    server.shutdown()
    server.server_close()
    (record,) = warnings_logged
    assert record.levelno == logging.WARNING and record.getMessage() == "metrics exposed"
    assert record.fields["metrics_listen"] == f"0.0.0.0:{port}" and "unauthenticated" in record.fields["reason"]


def test_start_metrics_server_registers_the_collector() -> None:
    registry = CollectorRegistry()
    service = SimpleNamespace(
        counters=SimpleNamespace(admitted=0, refused=0, by_reason={}, bytes_in=0, bytes_out=0, updates=0), sessions={}
    )
    port = start_metrics_server(
        f"127.0.0.1:{_free_port()}", service, SimpleNamespace(history={}, round=1), registry=registry
    )  # type: ignore[arg-type]
    assert "attestfl_rounds_completed 0.0" in _scrape(f"http://127.0.0.1:{port}/metrics")


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "0.0.0.0:70000", "::1:9464", "localhost"])
def test_bad_addresses_are_refused(listen: str) -> None:
    with pytest.raises(ValueError):
        metrics_endpoint(listen)
