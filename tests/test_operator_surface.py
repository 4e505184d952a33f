"""What an operator and a GPU-requiring site see: Prometheus metrics, structured logs, GPU
evidence bound into the aggregator's bundle and required by a site's policy."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from enclave.simulated.attester import SimulatedSnpAttester
from enclave.simulated.gpu import load_or_create_gpu_pki
from federation import MODEL, Deployment, run_aggregator
from fedsite.client import AggregatorNotTrusted


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_metrics_logs_and_gpu_binding(tmp_path: Path) -> None:
    metrics_port = _free_port()
    deployment = Deployment(
        tmp_path,
        tmp_path / "vendor",
        sites={"site-a": ""},
        task="rounds = 1\nmin_sites = 1",
        aggregator_extra=f'gpu = "simulated"\nmetrics_listen = "127.0.0.1:{metrics_port}"',
    )
    gpu_root = load_or_create_gpu_pki(tmp_path / "vendor" / "gpu").root_fingerprint
    for aggregator in run_aggregator(deployment):
        policy = deployment.site_policy(require_gpu=True)
        policy = type(policy)(
            **{**policy.__dict__, "trusted_simulated_roots": policy.trusted_simulated_roots | {gpu_root}}
        )
        with deployment.client(
            aggregator.target, site_id="site-a", policy=policy, attester=SimulatedSnpAttester(deployment.sim_dir)
        ) as client:
            session = client.join()
            assert (
                session.aggregator_appraisal.claims["gpu"]["simulated"] is True
            )  # an attested (simulated) H100, bound to the CPU evidence
            client.upload_update(client.task().round, {k: np.zeros_like(v) for k, v in MODEL.items()}, 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        for name in (
            "attestfl_sites_admitted_total 1.0",
            "attestfl_updates_accepted_total 1.0",
            "attestfl_rounds_completed",
            "attestfl_bytes_received_total",
            "attestfl_live_sessions 1.0",
        ):
            assert name in text, name
    lines = [json.loads(line) for line in aggregator.stderr_path.read_text().splitlines() if line.startswith("{")]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["message"] == "admission" and line["admitted"] for line in lines)


def test_site_requiring_a_gpu_refuses_an_aggregator_without_one(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, tmp_path / "vendor", sites={"site-a": ""})
    for aggregator in run_aggregator(deployment):
        with deployment.client(
            aggregator.target,
            site_id="site-a",
            policy=deployment.site_policy(require_gpu=True),
            attester=SimulatedSnpAttester(deployment.sim_dir),
        ) as client:
            with pytest.raises(AggregatorNotTrusted) as refused:
                client.join()
            assert any(r.startswith("policy.require_gpu") for r in refused.value.reasons)
