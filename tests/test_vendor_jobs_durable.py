"""Vendor evaluation jobs against a real `attestfl serve`: a job submitted before an aggregator
restart is evaluated after it (its state sealed with the aggregator's sealing key, never the
model's plaintext on disk), and the report deadline ([task.vendors] report_deadline) produces
the report from the sites that reported, listing the others as missing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.vendor_state import VendorStateError, VendorStore
from attestfl.loopback import read_events
from attestfl.vendor import VendorClient, public_key
from auditor.verify import verify_log
from enclave.sealing import SimulatedSealingKey
from federation import Deployment, run_aggregator
from fedsite.vendor_eval import EvaluationData, fetch_jobs, run_vendor_jobs, send_metrics
from protocol.tensors import encode_tensors
from protocol.wire import federation_pb2 as pb

ENTRY = "fedsite.vendor_models:mlp"
FEATURES = 6


def _model(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_tensors(
        {
            "layers.0.weight": rng.normal(size=(64, FEATURES)).astype(np.float32),
            "layers.0.bias": rng.normal(size=64).astype(np.float32),
            "layers.1.weight": rng.normal(size=(2, 64)).astype(np.float32),
            "layers.1.bias": np.zeros(2, np.float32),
        }
    )


def _data(seed: int, n: int) -> EvaluationData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype(np.float32)
    return EvaluationData(x, (x[:, 0] > 0).astype(np.int64))


def _scan(directories: list[Path], needles: list[bytes]) -> list[str]:
    return [
        str(path)
        for directory in directories
        for path in directory.rglob("*")
        if path.is_file()
        for needle in needles
        if needle in path.read_bytes()
    ]


def _task(vendor_key: Ed25519PrivateKey, extra: str = "") -> str:
    return (
        'rounds = 1\nmin_sites = 1\n[task.vendors]\nsites = ["site-a", "site-b"]\nmin_examples = 5\n'
        f'bootstrap = 10\n{extra}[task.vendors.keys]\nacme = "{public_key(vendor_key).hex()}"\n'
    )


def test_a_pending_job_survives_an_aggregator_restart(tmp_path: Path) -> None:
    vendor_key = Ed25519PrivateKey.generate()
    deployment = Deployment(
        tmp_path / "deployment", tmp_path / "sim", sites={"site-a": "", "site-b": ""}, task=_task(vendor_key)
    )
    deployment.directory.mkdir()
    model = _model(1)
    needles = [model[offset : offset + 32] for offset in range(200, len(model) - 32, 300)]
    for aggregator in run_aggregator(deployment):
        with VendorClient(
            aggregator.target, vendor="acme", signing_key=vendor_key, policy=deployment.site_policy()
        ) as vendor:
            job = vendor.submit(model, name="m1", entry_point=ENTRY)
        with deployment.client(aggregator.target, site_id="site-a") as client:
            client.join()
            assert [j.job_id for j in fetch_jobs(client)] == [job]  # dispatched, not evaluated
    first_run = read_events(deployment.directory / "aggregator.stderr")
    state = deployment.directory / "state" / "vendor-jobs"
    assert sorted(p.name for p in state.iterdir()) == [f"{job}.artefact", f"{job}.sealed"]
    assert not _scan([deployment.directory, deployment.sim_dir], needles)
    for aggregator in run_aggregator(deployment):  # new enclave keys, the same measured code
        results = {}
        for index, site in enumerate(("site-a", "site-b")):
            with deployment.client(aggregator.target, site_id=site) as client:
                client.join()
                assert client.task().vendor_jobs == 1
                results[site] = run_vendor_jobs(client, _data(index, 30))
        with VendorClient(
            aggregator.target, vendor="acme", signing_key=vendor_key, policy=deployment.site_policy()
        ) as vendor:
            report = vendor.wait_report(job, timeout=30)
    events = read_events(deployment.directory / "aggregator.stderr")
    assert [e.get("message") for e in first_run].count("vendor_submission") == 1
    restored = [e for e in events if e.get("message") == "vendor_restored"]
    assert len(restored) == 1 and job in json.dumps(restored[0]) and "site-a" in json.dumps(restored[0])
    assert all(results[site][job]["refused"] == "" for site in results)
    assert report["pooled"]["examples"] == 60 and report["pooled"]["sites"] == 2
    network = json.loads((deployment.directory / "vendor-reports" / "network-report.json").read_text())
    assert [row["job"] for row in network["vendors"]] == [job] and network["vendors"][0]["missing"] == []
    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems][:5]
    assert not _scan([deployment.directory, deployment.sim_dir], needles)
    # The sealed state opens only under the same code's sealing key; an altered artefact is refused.
    with pytest.raises(VendorStateError, match="cannot be unsealed"):
        VendorStore(state, SimulatedSealingKey(deployment.sim_dir, b"\x02" * 48)).load()  # other code
    artefact = state / f"{job}.artefact"
    data = bytearray(artefact.read_bytes())
    data[-1] ^= 1
    artefact.write_bytes(bytes(data))
    restart = deployment.start  # an aggregator does not start on a job it cannot restore
    with pytest.raises(AssertionError, match="not the one the sealed state names"):
        restart(timeout=60)


def test_the_report_deadline_releases_what_the_sites_reported(tmp_path: Path) -> None:
    vendor_key = Ed25519PrivateKey.generate()
    deployment = Deployment(
        tmp_path / "deployment",
        tmp_path / "sim",
        sites={"site-a": "", "site-b": ""},
        task=_task(vendor_key, 'report_deadline = "6s"\n'),
    )
    deployment.directory.mkdir()
    for aggregator in run_aggregator(deployment):
        with (
            deployment.client(aggregator.target, site_id="site-a") as site_a,
            deployment.client(aggregator.target, site_id="site-b") as site_b,
            VendorClient(
                aggregator.target, vendor="acme", signing_key=vendor_key, policy=deployment.site_policy()
            ) as vendor,
        ):
            site_a.join()
            site_b.join()
            job = vendor.submit(_model(1), name="m1", entry_point=ENTRY)
            submitted = time.monotonic()
            run_vendor_jobs(site_a, _data(0, 30))
            [pending] = fetch_jobs(site_b)  # site-b fetched the job and never reports in time
            assert vendor.report(job) is None  # before the deadline: not yet
            report = vendor.wait_report(job, timeout=30)
            waited = time.monotonic() - submitted
            assert site_b.task().vendor_jobs == 0
            with pytest.raises(grpc.RpcError) as late:
                send_metrics(site_b, pb.VendorMetrics(job_id=pending.job_id, examples=30))
    assert waited >= 4.0, waited  # released at the deadline, not before
    assert report["pooled"]["sites"] == 1 and report["pooled"]["examples"] == 30
    assert report["missing"] == 1  # vendor_per_site = false: the vendor learns how many, not which
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "deadline" in (late.value.details() or "")
    network = json.loads((deployment.directory / "vendor-reports" / "network-report.json").read_text())
    [row] = network["vendors"]
    assert row["missing"] == ["site-b"] and list(row["sites"]) == ["site-a"]
    html_page = (deployment.directory / "vendor-reports" / "network-report.html").read_text()
    assert "not reported: site-b" in html_page
    events = read_events(deployment.directory / "aggregator.stderr")
    [deadline] = [e for e in events if e.get("message") == "vendor_deadline"]
    assert "site-b" in json.dumps(deadline) and job in json.dumps(deadline)
    kinds = [e.get("message") for e in events]
    assert kinds.index("vendor_deadline") < kinds.index("vendor_release")
    result = verify_log(deployment.directory / "audit-log", deployment.site_policy())
    assert result.valid, [str(p) for p in result.problems][:5]
