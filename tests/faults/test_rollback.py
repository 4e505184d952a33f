"""The host snapshots the aggregator's disk and later restores it (rollback). A site that kept a
newer signed tree head refuses the rolled-back aggregator; a checkpoint rolled back under a
newer log is flagged by `audit verify`."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from attestation.policy import Policy
from auditor.verify import verify_log
from federation import MODEL, Deployment
from fedsite.client import AggregatorNotTrusted, SiteClient


def _round(clients: list[SiteClient]) -> int:
    task = clients[0].task()
    for value, client in zip((0.1, 0.3), clients, strict=True):
        client.upload_update(
            task.round, {k: np.full(v.shape, value, np.float32) for k, v in MODEL.items()}, 1.0, attempt=task.attempt
        )
    deadline = time.time() + 30
    while clients[0].task().round == task.round and time.time() < deadline:
        time.sleep(0.05)
    return task.round


def _snapshot(deployment: Deployment, where: Path) -> None:
    for name in ("audit-log", "state"):
        shutil.copytree(deployment.directory / name, where / name, ignore=shutil.ignore_patterns("lock"))


def _restore(deployment: Deployment, where: Path, names: tuple[str, ...]) -> None:
    for name in names:
        shutil.rmtree(deployment.directory / name)
        shutil.copytree(where / name, deployment.directory / name)


@pytest.fixture
def history(tmp_path: Path) -> tuple[Deployment, Path, SiteClient]:
    """Round 1, a snapshot of the disk, round 2; the aggregator is stopped. Site a keeps its head."""
    deployment = Deployment(
        tmp_path / "run",
        tmp_path / "vendor",
        sites={"site-a": "", "site-b": ""},
        task='rounds = 5\nmin_sites = 2\nround_deadline = "600s"',
    )
    deployment.directory.mkdir()
    aggregator = deployment.start()
    clients = [deployment.client(aggregator.target, site_id=site) for site in ("site-a", "site-b")]
    try:
        for client in clients:
            client.join()
        assert _round(clients) == 1
        _snapshot(deployment, tmp_path / "snapshot")
        assert _round(clients) == 2
        clients[0].task()  # site a keeps the newest head
    finally:
        aggregator.stop()
        clients[1].close()
    return deployment, tmp_path / "snapshot", clients[0]


def test_a_rejoining_site_refuses_a_rolled_back_aggregator(history: tuple[Deployment, Path, SiteClient]) -> None:
    deployment, snapshot, site = history
    kept = site.tree_head
    _restore(deployment, snapshot, ("audit-log", "state"))  # the whole disk, as it was after round 1
    aggregator = deployment.start()
    try:
        site.channel.close()
        rejoined = deployment.client(aggregator.target, site_id="site-a")
        rejoined.tree_head = kept  # what the site kept (tree-head.cbor in its state directory)
        rejoined.join()  # the new evidence and admission are fine ...
        with pytest.raises(AggregatorNotTrusted, match=r"rollback|rolled back"):
            rejoined.task()  # ... but the log it shows does not extend the head this site saw
        rejoined.close()
    finally:
        aggregator.stop()


def test_audit_verify_flags_a_checkpoint_rolled_back_under_a_newer_log(
    history: tuple[Deployment, Path, SiteClient],
) -> None:
    deployment, snapshot, site = history
    site.close()
    _restore(deployment, snapshot, ("state",))  # only the sealed checkpoint goes back to round 2's start
    aggregator = deployment.start()
    aggregator.stop()
    policy = Policy.from_toml((deployment.directory / "site-policy.toml").read_text())
    result = verify_log(deployment.directory / "audit-log", policy)
    assert not result.valid
    assert any(p.check == "restart.round" for p in result.problems), [str(p) for p in result.problems]
