"""A full disk at each append point of a real `attestfl serve`: the write fails for real (the
server process gets a file-size limit, RLIMIT_FSIZE, just below the next entry: EFBIG, the
same failure as a full disk for the code that appends), the aggregator stops before applying
anything (exit 3), and once the limit is gone ("space returns") it restarts, its log verifies,
nothing is applied twice or without its receipt, and training ends with the correct model."""

from __future__ import annotations

import hashlib
import resource
import time
from pathlib import Path

import cbor2
import grpc
import numpy as np
import pytest

from aggregator.audit.log import ENTRIES_FILE, scan_records
from attestation.policy import Policy
from auditor.verify import verify_log
from federation import MODEL, Aggregator, Deployment
from protocol.tensors import encode_tensors


def _const(value: float) -> dict[str, np.ndarray]:
    return {name: np.full(array.shape, value, np.float32) for name, array in MODEL.items()}


def _entries(deployment: Deployment) -> list[dict]:
    data = (deployment.directory / "audit-log" / ENTRIES_FILE).read_bytes()
    return [cbor2.loads(record.payload) for record in scan_records(data).records]


def _limit_next_append(aggregator: Aggregator, deployment: Deployment) -> None:
    """No file of the server may grow past the audit log's current end (+ a few bytes): its
    next entry cannot be written."""
    size = (deployment.directory / "audit-log" / ENTRIES_FILE).stat().st_size + 16
    resource.prlimit(aggregator.process.pid, resource.RLIMIT_FSIZE, (size, size))


def _stopped(aggregator: Aggregator) -> int:
    try:
        return aggregator.process.wait(timeout=60)
    finally:
        aggregator.process.kill()


def _train(deployment: Deployment, aggregator: Aggregator, sites: list[str], rounds: int) -> None:
    clients = [deployment.client(aggregator.target, site_id=site) for site in sites]
    try:
        for client in clients:
            client.join()
        for _ in range(rounds):
            task = clients[0].task()
            if task.finished:
                break
            for value, client in zip((0.1, 0.3), clients, strict=True):
                client.upload_update(task.round, _const(value), 1.0, attempt=task.attempt)
            deadline = time.time() + 30
            while clients[0].task().round == task.round and time.time() < deadline:
                time.sleep(0.05)
    finally:
        for client in clients:
            client.close()


def _expected_final(rounds: int) -> str:
    """The final model of the same task and updates with no fault (the round driver in process)."""
    from aggregator.rounds import RoundDriver, TaskConfig

    class Quiet:
        def record(self, kind: str, **fields: object) -> None:
            pass

    driver = RoundDriver(TaskConfig(initial_model=dict(MODEL), rounds=rounds, min_sites=2), events=Quiet())
    for _ in range(rounds):
        for site, value in (("site-a", 0.1), ("site-b", 0.3)):
            digest = hashlib.sha256(site.encode()).digest()
            driver.accept_update(site, driver.round, driver.attempt, _const(value), 1.0, digest, {})
        driver.close_if_complete()
    return hashlib.sha256(encode_tensors(driver.final_model())).hexdigest()


def _verified(deployment: Deployment) -> None:
    policy = Policy.from_toml((deployment.directory / "site-policy.toml").read_text())
    result = verify_log(deployment.directory / "audit-log", policy)
    assert result.valid, [str(p) for p in result.problems]


@pytest.mark.parametrize("point", ["admission", "update_accepted", "metrics", "round"])
def test_disk_full_at_each_append_point(tmp_path: Path, point: str, record_property) -> None:
    deployment = Deployment(
        tmp_path,
        tmp_path / "vendor",
        sites={"site-a": "", "site-b": "", "site-c": ""},
        task='rounds = 2\nmin_sites = 2\nround_deadline = "4s"',
    )
    first = deployment.start()
    a = deployment.client(first.target, site_id="site-a")
    b = deployment.client(first.target, site_id="site-b")
    c = deployment.client(first.target, site_id="site-c")  # a third live site: the round closes at the deadline
    try:
        if point == "admission":
            _limit_next_append(first, deployment)
            with pytest.raises(grpc.RpcError) as refused:
                a.join()
        else:
            for client in (a, b, c):
                client.join()
            task = a.task()
            if point == "update_accepted":
                _limit_next_append(first, deployment)
                with pytest.raises(grpc.RpcError) as refused:
                    a.upload_update(task.round, _const(0.1), 1.0, attempt=task.attempt)
            elif point == "metrics":
                _limit_next_append(first, deployment)
                with pytest.raises(grpc.RpcError) as refused:
                    a.report_metrics(task.round, {"accuracy": 0.5}, 1)
            else:  # round: both updates receipted, then the round entry cannot be written at the deadline
                a.upload_update(task.round, _const(0.1), 1.0, attempt=task.attempt)
                b.upload_update(task.round, _const(0.3), 1.0, attempt=task.attempt)
                _limit_next_append(first, deployment)
                refused = None
        status = _stopped(first)
    finally:
        for client in (a, b, c):
            client.close()
        first.stop()
    assert status == 3  # fail-stop, not a crash
    if refused is not None:
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "stopped on a fault" in refused.value.details()
    stderr = first.stderr_path.read_text() if first.stderr_path.exists() else ""
    logged = _entries(deployment)
    kinds = [e["kind"] for e in logged]
    assert "round" not in kinds and "metrics" not in kinds  # nothing applied without its entry
    if point != "round":
        assert "update_accepted" not in kinds
    else:
        assert kinds.count("update_accepted") == 2  # receipted, never aggregated (no round entry)
    _verified(deployment)  # after "space returns": the log is whole

    started = time.perf_counter()
    second = deployment.start()  # no limit: space is back
    recovery = time.perf_counter() - started
    record_property(f"recovery_seconds_after_disk_full_at_{point}", round(recovery, 3))
    try:
        _train(deployment, second, ["site-a", "site-b"], rounds=2)
        deadline = time.time() + 30
        while not any(e["message"] == "training_finished" for e in second.events()) and time.time() < deadline:
            time.sleep(0.1)
        finished = [e for e in second.events() if e["message"] == "training_finished"]
    finally:
        second.stop()
    assert finished and finished[0]["model_sha256"] == _expected_final(2)  # every round applied exactly once
    rounds = [e["fields"]["round"] for e in _entries(deployment) if e["kind"] == "round"]
    assert rounds == [1, 2]
    _verified(deployment)
    assert "Traceback" not in stderr
